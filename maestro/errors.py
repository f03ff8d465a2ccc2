"""Exceptions every Maestro layer raises, so notebooks can catch them by name."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class MaestroError(Exception):
    """Base class of Maestro's own errors."""


class AccessDenied(MaestroError, PermissionError):
    """A method was called beyond the wrapper's access level."""


class QueryBudgetExceeded(MaestroError):
    """A call would send more inputs than the query budget has left; nothing was run."""


class AssetUnavailable(MaestroError, FileNotFoundError):
    """A dataset or model could not be found locally and could not be fetched."""


class ThreatModelViolation(MaestroError, ValueError):
    """Adversarial inputs break the threat model; `violations` lists each broken rule."""

    def __init__(self, message: str, violations: list | None = None) -> None:
        super().__init__(message)
        self.violations = list(violations or [])


def did_you_mean(name: object, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest known name, ignoring case; empty when none is close."""
    if not isinstance(name, str):
        return ""
    lookup = {k.lower(): k for k in known}
    close = difflib.get_close_matches(name.lower(), list(lookup), n=1, cutoff=0.6)
    return f" (did you mean {lookup[close[0]]!r}?)" if close else ""

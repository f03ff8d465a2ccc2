"""Exceptions every Maestro layer raises, so notebooks can catch them by name."""

from __future__ import annotations


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

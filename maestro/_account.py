"""Access levels and query budgets, written once for every model wrapper (images and text:
:class:`maestro.ModelWrapper`; chat: :class:`maestro.chat.ChatModel`).

A wrapper holds one :class:`QueryAccount`: its access level (``labels`` < ``scores`` <
``white-box``), an optional budget of queries, and its counters behind its own lock, so any
number of wrappers can run side by side in threads and every count stays exact. What a query is
depends on the modality (one input sent forward for a classifier; one sequence sent forward for
a chat model); the account only counts.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

from .errors import AccessDenied, QueryBudgetExceeded

ACCESS_LEVELS = ("labels", "scores", "white-box")
RANK = {a: i for i, a in enumerate(ACCESS_LEVELS)}


def check_access(access: str) -> str:
    if access not in RANK:
        raise ValueError(f"access must be one of {', '.join(ACCESS_LEVELS)}; got {access!r}")
    return access


def check_budget(budget) -> int | None:
    if budget is None:
        return None
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
        raise ValueError(f"budget must be a non-negative int or None, got {budget!r}")
    return budget


class QueryAccount:
    """The access level, budget and counters of one wrapper.

    ``allows``: for each access level, the methods it allows (named in refusals)."""

    def __init__(self, access: str, budget: int | None, allows: dict[str, str]) -> None:
        self.access = check_access(access)
        self.budget = check_budget(budget)
        self.allows = allows
        self.lock = threading.Lock()
        self.queries = 0
        self.gradient_queries = 0

    @property
    def remaining(self) -> int | None:
        return None if self.budget is None else self.budget - self.queries

    def reset(self) -> None:
        with self.lock:
            self.queries = 0
            self.gradient_queries = 0

    def lower(self, access: str) -> str:
        """``access``, checked to be no higher than this account's."""
        check_access(access)
        if RANK[access] > RANK[self.access]:
            raise AccessDenied(f"cannot raise access from {self.access!r} to {access!r}")
        return access

    def require(self, level: str, method: str) -> None:
        if RANK[self.access] < RANK[level]:
            raise AccessDenied(
                f"{method}() needs {level!r} access, but this wrapper has {self.access!r} access, "
                f"which allows: {self.allows[self.access]}"
            )

    @contextmanager
    def charge(self, n: int, gradient: bool = False):
        """Reserve ``n`` queries before running anything; refund them if the call fails."""
        with self.lock:
            if self.budget is not None and self.queries + n > self.budget:
                raise QueryBudgetExceeded(
                    f"this call needs {n} queries but only {self.budget - self.queries} of the "
                    f"budget of {self.budget} are left; nothing was run"
                )
            self.queries += n
            if gradient:
                self.gradient_queries += n
        try:
            yield
        except BaseException:
            with self.lock:
                self.queries -= n
                if gradient:
                    self.gradient_queries -= n
            raise


class Accounted:
    """The properties every model wrapper shows of its :class:`QueryAccount` (``self._account``):
    its access level, budget and counters."""

    _account: QueryAccount

    @property
    def access(self) -> str:
        return self._account.access

    @property
    def budget(self) -> int | None:
        return self._account.budget

    @property
    def queries(self) -> int:
        """Queries sent forward so far (inputs of a classifier, conversations of a chat model;
        every method that runs the model counts)."""
        return self._account.queries

    @property
    def gradient_queries(self) -> int:
        """Queries for which a gradient was computed so far."""
        return self._account.gradient_queries

    @property
    def remaining(self) -> int | None:
        """Queries the budget still allows (``None`` when unlimited)."""
        return self._account.remaining

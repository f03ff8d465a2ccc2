"""Square Attack (Andriushchenko et al. 2020), L∞: random search that sets a random s×s window of
δ to ±eps per channel and keeps the change if the margin z_y − max_{j≠y} z_j drops; eps in input
units, s² ≈ p·H·W with p shrinking on a fixed schedule."""

from __future__ import annotations

import math

import torch

from ._loop import Budget, bcast, goal_margin
from .base import Attack

_SCHEDULE = ((10, 2), (50, 4), (200, 8), (500, 16), (1000, 32), (2000, 64), (4000, 128), (6000, 256), (8000, 512))


def p_selection(p_init: float, it: int, n_iters: int) -> float:
    """Fraction of pixels in the window at iteration ``it`` (schedule rescaled to 10,000)."""
    it = int(it / max(n_iters, 1) * 10000)
    div = 1
    for start, d in _SCHEDULE:
        if it > start:
            div = d
    return p_init / div


class SquareAttack(Attack):
    """Score-based Square Attack, L∞ only, untargeted or targeted.

    Needs ``scores`` access (it reads logits). Query use: one query per example for the clean
    check (already misclassified examples succeed with ``x_adv = x``), one for the vertical-
    stripes start, then one per iteration for each example still unbroken (active set).
    ``max_queries`` (default 1,000) and ``ThreatModel.query_budget`` are per example, the
    wrapper's budget a total; all are kept exactly (see :mod:`maestro.attacks._loop`), and the
    attack stops cleanly when they run out. The p schedule is laid over the per-example budget.
    """

    name = "SquareAttack"
    requires = "scores"
    norms = ("linf",)

    def __init__(self, threat, *, max_queries: int = 1000, p_init: float = 0.05,
                 targeted: bool = False, seed: int = 0) -> None:
        super().__init__(threat, targeted=targeted, seed=seed)
        if not isinstance(max_queries, int) or max_queries < 1:
            raise ValueError(f"max_queries must be an int ≥ 1, got {max_queries!r}")
        if not 0 < p_init <= 1:
            raise ValueError(f"p_init must lie in (0, 1], got {p_init!r}")
        self.max_queries, self.p_init = max_queries, float(p_init)

    def _run(self, model, x, y, target):
        n, dev = len(x), x.device
        eps = float(self.threat.eps)
        lo, hi = self.threat.bounds
        _, c, h, w = x.shape
        gen = self._generator(dev)
        budget = Budget(model, self.threat, n, dev, cap=self.max_queries)
        success = torch.zeros(n, dtype=torch.bool, device=dev)
        x_best = x.clone()
        idx = torch.arange(n, device=dev)
        t_all = target if self.targeted else None

        def query(idx, xs):
            """Margins at xs for the affordable part of idx (others dropped)."""
            ok = budget.afford(idx)
            if ok is not None and not ok.all():
                idx, xs = idx[ok], xs[ok]
            if len(idx) == 0:
                return idx, xs, None
            logits = model.logits(xs)
            budget.charge(idx)
            return idx, xs, goal_margin(logits, y[idx], t_all[idx] if t_all is not None else None, self.targeted)

        # clean check, then the vertical-stripes start
        idx, _, margin = query(idx, x)
        if margin is not None:
            hit = margin < 0
            success[idx[hit]] = True
            idx = idx[~hit]
        stripes = eps * (torch.randint(0, 2, (n, c, 1, w), generator=gen, device=dev) * 2 - 1).to(x.dtype)
        start = (x + stripes).clamp(lo, hi)
        best_margin = torch.full((n,), math.inf, device=dev)
        if len(idx):
            idx, xs, margin = query(idx, start[idx])
            if margin is not None:
                x_best[idx], best_margin[idx] = xs, margin
                hit = margin < 0
                success[idx[hit]] = True
                idx = idx[~hit]
        if eps == 0:  # nothing to search: the clean check was all
            idx = idx[:0]
        n_iters = budget.per_example if budget.per_example is not None else self.max_queries
        rows = torch.arange(h, device=dev).view(1, 1, h, 1)
        cols = torch.arange(w, device=dev).view(1, 1, 1, w)
        it = 0
        while len(idx) and margin is not None:
            it += 1
            m = len(idx)
            p = p_selection(self.p_init, it, n_iters)
            s = min(max(round(math.sqrt(p * h * w)), 1), max(min(h, w) - 1, 1))
            r0 = torch.randint(0, h - s + 1, (m,), generator=gen, device=dev).view(m, 1, 1, 1)
            c0 = torch.randint(0, w - s + 1, (m,), generator=gen, device=dev).view(m, 1, 1, 1)
            window = (rows >= r0) & (rows < r0 + s) & (cols >= c0) & (cols < c0 + s)
            signs = eps * (torch.randint(0, 2, (m, c, 1, 1), generator=gen, device=dev) * 2 - 1).to(x.dtype)
            x0, cur = x[idx], x_best[idx]
            cand = torch.where(window, (x0 + signs).clamp(lo, hi), cur)
            same = (cand == cur).flatten(1).all(1)  # the window already held these values: flip
            if same.any():
                flipped = torch.where(window, (x0 - signs).clamp(lo, hi), cur)
                cand = torch.where(bcast(same, cand), flipped, cand)
            idx_q, cand, margin = query(idx, cand)
            if margin is None:
                break
            improved = margin < best_margin[idx_q]
            where = idx_q[improved]
            x_best[where], best_margin[where] = cand[improved], margin[improved]
            hit = improved & (margin < 0)
            success[idx_q[hit]] = True
            idx = idx_q[~hit]
        return x_best, success, {"queries_per_example": budget.spent.cpu() if budget.per_example is not None else None,
                                 "iterations": it}

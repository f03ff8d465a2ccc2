"""SimBA (Guo et al. 2019), pixel basis: for random coordinates q, x ← x ∓ step·q when that lowers
p(y | x) (raises p(t | x) when targeted); eps and step in input units."""

from __future__ import annotations

import math

import torch

from ._loop import Budget
from .base import Attack


class SimBA(Attack):
    """Simple Black-box Attack with the pixel (Cartesian) basis, L∞ or L2.

    Needs ``scores`` access (it reads ``predict_proba``). Each example walks its own random
    permutation of the pixels once: try −step on the pixel, and +step only if −step did not
    help (a try that clipping to ``bounds`` would make a no-op is skipped and costs nothing).
    L∞: ``step`` = eps and each pixel changes at most once, so ‖δ‖∞ ≤ eps. L2: ``step``
    (default min(0.2·(hi − lo), eps)) and an example stops before ‖δ‖₂ would pass eps.
    Queries: one clean query per example, then one or two per coordinate tried, for examples
    not yet broken only (active set). ``max_queries`` and ``ThreatModel.query_budget`` are per
    example, the wrapper's budget a total, all kept exactly.
    """

    name = "SimBA"
    requires = "scores"

    def __init__(self, threat, *, max_queries: int = 1000, step: float | None = None,
                 targeted: bool = False, seed: int = 0) -> None:
        super().__init__(threat, targeted=targeted, seed=seed)
        if not isinstance(max_queries, int) or max_queries < 1:
            raise ValueError(f"max_queries must be an int ≥ 1, got {max_queries!r}")
        if step is not None and not step > 0:
            raise ValueError(f"step must be > 0, got {step!r}")
        self.max_queries, self.step = max_queries, step

    def _run(self, model, x, y, target):
        n, dev = len(x), x.device
        lo, hi = self.threat.bounds
        eps = float(self.threat.eps)
        if self.threat.norm == "linf":
            step, max_moves = eps, None
        else:
            step = float(self.step) if self.step is not None else min(0.2 * (hi - lo), eps)
            max_moves = math.floor((eps / step) ** 2 + 1e-9) if step > 0 else 0
        gen = self._generator(dev)
        budget = Budget(model, self.threat, n, dev, cap=self.max_queries)
        goal = target if self.targeted else y
        flat = x.flatten(1)
        d = flat.shape[1]
        order = torch.argsort(torch.rand(n, d, generator=gen, device=dev), dim=1)
        cur = flat.clone()
        prob = torch.zeros(n, device=dev)
        success = torch.zeros(n, dtype=torch.bool, device=dev)
        moves = torch.zeros(n, dtype=torch.long, device=dev)
        sign = -1.0 if self.targeted else 1.0  # minimize sign·p(goal)

        def query(idx, xs):
            """Probabilities of the goal class at xs for the affordable part of idx."""
            ok = budget.afford(idx)
            if ok is not None and not ok.all():
                idx, xs = idx[ok], xs[ok]
            if len(idx) == 0:
                return idx, xs, None, None
            p = model.predict_proba(xs.view(len(idx), *x.shape[1:]))
            budget.charge(idx)
            hit = p.argmax(1) == goal[idx] if self.targeted else p.argmax(1) != y[idx]
            return idx, xs, p.gather(1, goal[idx, None]).squeeze(1), hit

        idx, _, p, hit = query(torch.arange(n, device=dev), cur)
        if p is None or step == 0 or max_moves == 0:
            if p is not None:
                success[idx[hit]] = True
            return x.clone(), success, {"coordinates": 0}
        prob[idx], success[idx] = p, hit
        active = idx[~hit]
        k = 0
        while len(active) and k < d:
            coord = order[active, k]
            base = cur[active]
            old = base.gather(1, coord[:, None]).squeeze(1)
            done_minus = torch.zeros(len(active), dtype=torch.bool, device=dev)
            for direction in (-1.0, 1.0):
                new = (old + direction * step).clamp(lo, hi)
                want = (new != old) & ~done_minus
                ids = want.nonzero().flatten()
                if len(ids) == 0:
                    continue
                cand = base[ids].scatter(1, coord[ids, None], new[ids, None])
                got, cand, p, hit = query(active[ids], cand)
                if p is None:
                    continue
                better = sign * p < sign * prob[got]
                take = got[better]
                cur[take], prob[take] = cand[better], p[better]
                moves[take] += 1
                success[take[hit[better]]] = True
                # examples of `active` that improved with −step skip the +step try
                done_minus |= torch.isin(active, take)
            k += 1
            keep = ~success[active]
            if budget.per_example is not None:
                keep &= budget.spent[active] < budget.per_example
            if max_moves is not None:
                keep &= moves[active] < max_moves
            active = active[keep]
            if budget.remaining_total() == 0:
                break
        x_adv = cur.view_as(x)
        return x_adv, success, {"coordinates": k, "moves": moves.cpu()}

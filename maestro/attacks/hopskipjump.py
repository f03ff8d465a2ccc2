"""HopSkipJump (Chen, Jordan & Wainwright 2020), decision-based: estimate the boundary normal
∇S ≈ mean_b φ(x_b + δu_b)·u_b from labels only, step x_b + ξ·∇S/‖∇S‖ (sign(∇S) for L∞), binary-search
back to the boundary; distances and eps in input units of the threat model's norm (L2 or L∞)."""

from __future__ import annotations

import math

import torch

from ._loop import Budget, bcast, lp_norm, project
from .base import Attack


class HopSkipJump(Attack):
    """Label-only (``labels`` access) minimum-norm attack, L2 or L∞, untargeted or targeted.

    Start: examples already misclassified succeed at once (one query each); the rest get
    uniform noise over ``bounds`` until a draw is adversarial (``init_tries`` rounds at most),
    then a binary search along the segment to x finds a boundary point. Each iteration t
    estimates the gradient at the boundary point with min(``init_evals``·√t, ``max_evals``)
    label queries, takes a geometric step search, and binary-searches back to the boundary.
    An example is broken, and leaves the batch (active set), once its boundary point lies within
    eps of x. Unbroken examples return their boundary point projected onto the eps-ball, counted
    as a failure (it was not checked).

    Budgets: ``max_queries`` and ``ThreatModel.query_budget`` are per example, the wrapper's
    budget a total; every batch is planned to fit what is left (a gradient estimate shrinks to
    the queries left), so the totals are kept exactly and the attack stops cleanly.
    """

    name = "HopSkipJump"
    requires = "labels"

    def __init__(self, threat, *, max_queries: int = 1000, steps: int = 50, init_evals: int = 50,
                 max_evals: int = 500, init_tries: int = 20, gamma: float = 1.0,
                 targeted: bool = False, seed: int = 0) -> None:
        super().__init__(threat, targeted=targeted, seed=seed)
        for name, v in (("max_queries", max_queries), ("steps", steps), ("init_evals", init_evals),
                        ("max_evals", max_evals), ("init_tries", init_tries)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int ≥ 1, got {v!r}")
        self.max_queries, self.steps = max_queries, steps
        self.init_evals, self.max_evals, self.init_tries, self.gamma = init_evals, max_evals, init_tries, float(gamma)

    def _run(self, model, x, y, target):
        n, dev = len(x), x.device
        norm, eps = self.threat.norm, float(self.threat.eps)
        lo, hi = self.threat.bounds
        shape = x.shape[1:]
        d = x[0].numel()
        theta = self.gamma / (d ** 1.5 if norm == "l2" else d * d)
        gen = self._generator(dev)
        budget = Budget(model, self.threat, n, dev, cap=self.max_queries)

        def is_adv(idx, xs):
            pred = model.predict(xs)
            return pred == target[idx] if self.targeted else pred != y[idx]

        def phi(idx, xs):
            """Adversarial? for the affordable part of idx: (kept mask over idx, decisions)."""
            ok = budget.afford(idx)
            if ok is not None and not ok.all():
                idx, xs = idx[ok], xs[ok]
            if len(idx) == 0:
                return ok, None
            out = is_adv(idx, xs)
            budget.charge(idx)
            return ok, out

        success = torch.zeros(n, dtype=torch.bool, device=dev)
        x_adv = x.clone()
        boundary = x.clone()
        found = torch.zeros(n, dtype=torch.bool, device=dev)

        # clean check
        idx = torch.arange(n, device=dev)
        ok, adv = phi(idx, x)
        if adv is None:
            return x_adv, success, {"iterations": 0}
        idx = idx if ok is None else idx[ok]
        success[idx[adv]] = True
        active = idx[~adv]

        # initialization: random noise until adversarial
        for _ in range(self.init_tries):
            todo = active[~found[active]]
            if len(todo) == 0:
                break
            noise = torch.rand((n, *shape), generator=gen, device=dev, dtype=x.dtype) * (hi - lo) + lo
            ok, adv = phi(todo, noise[todo])
            if adv is None:
                break
            todo = todo if ok is None else todo[ok]
            boundary[todo[adv]] = noise[todo[adv]]
            found[todo[adv]] = True
        active = active[found[active]]
        if len(active):
            boundary[active] = self._binary_search(phi, x, boundary, active, theta, norm, lo, hi)
            active = self._settle(active, x, boundary, success, eps, norm)

        t = 0
        while len(active) and t < self.steps:
            t += 1
            xb, x0 = boundary[active], x[active]
            dist = lp_norm(xb - x0, norm)
            if t == 1:
                delta = torch.full_like(dist, 0.1 * (hi - lo))
            else:
                delta = (math.sqrt(d) if norm == "l2" else d) * theta * dist
            want = min(int(self.init_evals * math.sqrt(t)), self.max_evals)
            counts = budget.allot(active, want)
            grad = self._estimate(active, xb, delta, counts, is_adv, budget, gen, norm, lo, hi)
            live = counts >= 2
            if not live.all():
                active, xb, x0, dist, grad = active[live], xb[live], x0[live], dist[live], grad[live]
            if len(active) == 0:
                break
            direction = grad.sign() if norm == "linf" else grad
            # geometric step search: halve the step until the point is adversarial
            step = dist / math.sqrt(t)
            stepped = xb.clone()
            searching = torch.ones(len(active), dtype=torch.bool, device=dev)
            for _ in range(25):
                s_idx = searching.nonzero().flatten()
                if len(s_idx) == 0:
                    break
                cand = (xb[s_idx] + bcast(step[s_idx], xb) * direction[s_idx]).clamp(lo, hi)
                ok, adv = phi(active[s_idx], cand)
                if adv is None:
                    break
                if ok is not None and not ok.all():
                    searching[s_idx[~ok]] = False  # out of budget: keeps its old boundary point
                    s_idx, cand = s_idx[ok], cand[ok]
                stepped[s_idx[adv]] = cand[adv]
                searching[s_idx[adv]] = False
                step[s_idx[~adv]] /= 2
            boundary[active] = stepped
            boundary[active] = self._binary_search(phi, x, boundary, active, theta, norm, lo, hi)
            active = self._settle(active, x, boundary, success, eps, norm)
            if budget.remaining_total() == 0:
                break
            if budget.per_example is not None:
                active = active[budget.spent[active] < budget.per_example]

        x_adv = torch.where(bcast(success, x), boundary, project(x, boundary, norm, eps, lo, hi))
        x_adv = project(x, x_adv, norm, eps, lo, hi)  # float safety for the successes
        x_adv[~found & ~success] = x[~found & ~success]
        info = {"iterations": t, "distance": lp_norm(boundary - x, norm).cpu(), "found": found.cpu()}
        return x_adv, success, info

    def _settle(self, active, x, boundary, success, eps, norm):
        """Mark examples whose boundary point lies within eps as broken; return the rest."""
        dist = lp_norm(boundary[active] - x[active], norm)
        inside = dist <= eps
        success[active[inside]] = True
        return active[~inside]

    def _estimate(self, active, xb, delta, counts, is_adv, budget, gen, norm, lo, hi):
        """Monte-Carlo estimate of the boundary normal at xb (rows of ``active``), ``counts``
        queries per row (rows with fewer than 2 get no estimate)."""
        m, shape = len(active), xb.shape[1:]
        b = int(counts.max()) if len(counts) else 0
        grad = torch.zeros_like(xb)
        if b < 2:
            return grad
        if norm == "l2":
            u = torch.randn((m, b, *shape), generator=gen, device=xb.device, dtype=xb.dtype)
        else:
            u = torch.rand((m, b, *shape), generator=gen, device=xb.device, dtype=xb.dtype) * 2 - 1
        u = u / u.flatten(2).norm(dim=2).clamp_min(1e-12).view(m, b, *([1] * len(shape)))
        pert = (xb[:, None] + delta.view(m, 1, *([1] * len(shape))) * u).clamp(lo, hi)
        u = (pert - xb[:, None]) / delta.view(m, 1, *([1] * len(shape))).clamp_min(1e-12)
        valid = torch.arange(b, device=xb.device)[None, :] < counts[:, None]  # m×b
        valid &= (counts >= 2)[:, None]
        rows = torch.arange(m, device=xb.device)[:, None].expand(m, b)[valid]
        flat = pert[valid]
        decisions = torch.zeros(m, b, device=xb.device)
        if len(flat):
            adv = is_adv(active[rows], flat)
            budget.charge(active, counts * (counts >= 2))
            decisions[valid] = adv.float() * 2 - 1
        k = valid.sum(1).clamp(min=1).float()
        mean = decisions.sum(1) / k
        centred = torch.where(valid, decisions - mean[:, None], torch.zeros_like(decisions))
        # all one sign: use the sign itself (the original's special case)
        uniform = (mean.abs() == 1)[:, None]
        weights = torch.where(uniform, decisions, centred) * valid
        g = (weights.view(m, b, *([1] * len(shape))) * u).sum(1) / bcast(k, xb)
        return g / bcast(g.flatten(1).norm(dim=1).clamp_min(1e-12), g)

    def _binary_search(self, phi, x, boundary, active, theta, norm, lo, hi):
        """Move each boundary[active] (adversarial) toward x until within the threshold."""
        x0, xa = x[active], boundary[active]
        m = len(active)
        if norm == "l2":
            high, low = torch.ones(m, device=x.device), torch.zeros(m, device=x.device)
            thresh = torch.full((m,), theta, device=x.device)
        else:
            high = lp_norm(xa - x0, norm)
            low = torch.zeros(m, device=x.device)
            thresh = torch.clamp(high * theta, max=theta)

        def blend(a, rows):
            if norm == "l2":
                return (1 - bcast(a, xa)) * x0[rows] + bcast(a, xa) * xa[rows]
            return torch.maximum(torch.minimum(xa[rows], x0[rows] + bcast(a, xa)), x0[rows] - bcast(a, xa))

        searching = torch.ones(m, dtype=torch.bool, device=x.device)
        for _ in range(64):
            searching &= (high - low) > thresh
            rows = searching.nonzero().flatten()
            if len(rows) == 0:
                break
            mid = (high[rows] + low[rows]) / 2
            ok, adv = phi(active[rows], blend(mid, rows))
            if adv is None:
                break
            if ok is not None and not ok.all():
                searching[rows[~ok]] = False
                rows, mid = rows[ok], mid[ok]
            high[rows] = torch.where(adv, mid, high[rows])
            low[rows] = torch.where(adv, low[rows], mid)
        return blend(high, torch.arange(m, device=x.device))

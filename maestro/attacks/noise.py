"""Random noise baseline: x_adv = clip(x + δ), δ ~ U([−eps, eps]^d) for L∞ or a uniformly random
direction of L2 length eps; eps in input units. Tries ``samples`` draws per example."""

from __future__ import annotations

import torch

from ._loop import Budget, on_sphere
from .base import Attack


class RandomNoise(Attack):
    """Uniform random noise at the threat model's eps: a sanity-check baseline (a real attack
    must do better; a defense that only stops this one is not robust).

    Needs only ``labels`` access. Up to ``samples`` draws per example, one query each; an example
    stops at its first draw that breaks it (active set). Budgets (``ThreatModel.query_budget``
    per example, the wrapper's total) are kept exactly. Unbroken examples return their last draw.
    """

    name = "RandomNoise"
    requires = "labels"

    def __init__(self, threat, *, samples: int = 10, targeted: bool = False, seed: int = 0) -> None:
        super().__init__(threat, targeted=targeted, seed=seed)
        if not isinstance(samples, int) or samples < 1:
            raise ValueError(f"samples must be an int ≥ 1, got {samples!r}")
        self.samples = samples

    def _run(self, model, x, y, target):
        n, dev = len(x), x.device
        lo, hi = self.threat.bounds
        gen = self._generator(dev)
        budget = Budget(model, self.threat, n, dev, cap=self.samples)
        x_adv = x.clone()
        success = torch.zeros(n, dtype=torch.bool, device=dev)
        idx = torch.arange(n, device=dev)
        tries = 0
        for _ in range(self.samples):
            # one draw for every example each round, so results do not depend on the active set
            noise = on_sphere(x.shape, self.threat.norm, float(self.threat.eps), gen, dev, x.dtype)
            ok = budget.afford(idx)
            if ok is not None:
                idx = idx[ok]
            if len(idx) == 0:
                break
            cand = (x[idx] + noise[idx]).clamp(lo, hi)
            pred = model.predict(cand)
            budget.charge(idx)
            tries += 1
            x_adv[idx] = cand
            hit = pred == target[idx] if self.targeted else pred != y[idx]
            success[idx[hit]] = True
            idx = idx[~hit]
            if len(idx) == 0:
                break
        return x_adv, success, {"rounds": tries}

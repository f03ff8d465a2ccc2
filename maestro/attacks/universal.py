"""Universal perturbation (SGD-on-δ variant of Moosavi-Dezfooli et al. 2017): one δ ∈ R^{C×H×W},
δ ← Π_eps(δ + α·sign(Σᵢ ∇ₓL(f(xᵢ + δ), yᵢ))) over batches of images not yet fooled; eps and α in
input units."""

from __future__ import annotations

import torch

from ._loop import Budget, normalize
from .base import Attack


class UniversalPerturbation(Attack):
    """One perturbation for all images, fitted on part of ``x`` and scored on the rest.

    A random ``holdout`` fraction of ``x`` (by ``seed``) is kept aside. For ``epochs`` passes
    over the other part in batches of ``batch_size``: the gradient of the summed loss at
    ``xᵢ + δ`` over the batch's images that ``δ`` did not fool yet (those fooled at the last
    look leave the pass: active set) gives a step of size ``step_size`` (default eps/4;
    sign step for L∞, normalized step for L2), then δ is projected onto the eps-ball.
    Every image gets ``x_adv = clip(x + δ)``, so its perturbation is never larger than δ.

    ``success[i]``: ``x_adv[i]`` is misclassified (the target class when targeted).
    ``info["delta"]`` is δ (C×H×W); ``info["fooling_rate"]`` is the share of held-out images
    whose predicted label δ changes (the classic definition), ``info["holdout_success_rate"]``
    the share of held-out images misclassified. Queries: the gradient calls, plus one clean and
    one final forward per image.
    """

    name = "UniversalPerturbation"

    def __init__(self, threat, *, epochs: int = 5, step_size: float | None = None, batch_size: int = 64,
                 holdout: float = 0.25, loss: str = "ce", targeted: bool = False, seed: int = 0) -> None:
        super().__init__(threat, targeted=targeted, seed=seed)
        if not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be an int ≥ 1, got {epochs!r}")
        if not 0 <= holdout < 1:
            raise ValueError(f"holdout must lie in [0, 1), got {holdout!r}")
        if loss not in ("ce", "margin"):
            raise ValueError(f"loss must be 'ce' or 'margin', got {loss!r}")
        self.epochs, self.batch_size, self.holdout, self.loss = epochs, int(batch_size), float(holdout), loss
        self.step_size = float(step_size) if step_size is not None else threat.eps / 4

    def _run(self, model, x, y, target):
        n, dev = len(x), x.device
        norm, eps = self.threat.norm, float(self.threat.eps)
        lo, hi = self.threat.bounds
        gen = self._generator(dev)
        budget = Budget(model, self.threat, n, dev)
        goal = target if self.targeted else y
        perm = torch.randperm(n, generator=gen, device=dev)
        n_hold = round(self.holdout * n) if n > 1 else 0
        hold, fit = perm[:n_hold], perm[n_hold:]
        delta = torch.zeros_like(x[0])
        fooled = torch.zeros(n, dtype=torch.bool, device=dev)
        steps = 0
        for _ in range(self.epochs):
            order = fit[torch.randperm(len(fit), generator=gen, device=dev)]
            order = order[~fooled[order]]
            if len(order) == 0:
                break
            for s in range(0, len(order), self.batch_size):
                idx = order[s:s + self.batch_size]
                ok = budget.afford(idx)
                if ok is not None:
                    idx = idx[ok]
                if len(idx) == 0:
                    continue
                xs = (x[idx] + delta).clamp(lo, hi)
                grad, logits = model.gradient(xs, goal[idx], self.loss, self.targeted, return_logits=True)
                budget.charge(idx)
                hit = self._goal(logits, y[idx], target[idx] if self.targeted else None)
                fooled[idx] = hit
                g = grad[~hit].sum(0, keepdim=True)
                if not (~hit).any() or not g.abs().sum() > 0:
                    continue
                delta = delta + self.step_size * normalize(g, norm)[0]
                if norm == "linf":
                    delta = delta.clamp(-eps, eps)
                else:
                    delta = delta * min(1.0, eps / max(float(delta.norm()), 1e-12))
                steps += 1
        x_adv = (x + delta).clamp(lo, hi)
        # clean and perturbed predictions, within what the budgets allow
        idx = torch.arange(n, device=dev)
        success = torch.zeros(n, dtype=torch.bool, device=dev)
        changed = torch.zeros(n, dtype=torch.bool, device=dev)
        judged = torch.zeros(n, dtype=torch.bool, device=dev)
        ok = budget.afford(idx, cost=2)
        if ok is not None:
            idx = idx[ok]
        if len(idx):
            both = model.predict(torch.cat([x[idx], x_adv[idx]]))
            budget.charge(idx, 2)
            clean, adv = both[: len(idx)], both[len(idx):]
            success[idx] = adv == target[idx] if self.targeted else adv != y[idx]
            changed[idx], judged[idx] = adv != clean, True
        held = hold[judged[hold]]
        info = {
            "delta": delta.detach().cpu(),
            "delta_norm": float(delta.abs().max() if norm == "linf" else delta.norm()),
            "fooling_rate": float(changed[held].float().mean()) if len(held) else float("nan"),
            "holdout_success_rate": float(success[held].float().mean()) if len(held) else float("nan"),
            "holdout_indices": hold.cpu(),
            "steps": steps,
        }
        return x_adv, success, info

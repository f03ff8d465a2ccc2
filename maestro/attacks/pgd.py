"""PGD (Madry et al. 2018): x ← Π_{B_p(x₀, eps) ∩ [lo, hi]}(x + α·sign(∇ₓL)) for L∞, or
x + α·∇ₓL/‖∇ₓL‖₂ for L2; eps and the step size α are in input units (the scale of ``bounds``)."""

from __future__ import annotations

import torch

from ._loop import Budget, attacker_loss, bcast, random_in_ball
from .base import Attack


class PGD(Attack):
    """Projected gradient descent, untargeted or targeted, L∞ or L2.

    ``steps`` gradient steps of size ``step_size`` (default 2.5·eps/steps, input units) from a
    random start in the ball (``random_start``), ``restarts`` times; ``loss`` is ``"ce"`` or
    ``"margin"``. Each step costs one forward+backward (``model.gradient(...,
    return_logits=True)``): the logits at the current point say which examples are already
    broken, and those leave the batch (the active set), so later steps are cheaper and spend no
    queries on them; one extra forward checks the last iterate. Across restarts each example
    keeps its best point: a success, else the final iterate of the restart with the highest loss. ``early_stop=False`` keeps every
    example in the batch for all steps (same results, more cost: for overhead measurements).
    Query budgets: see :mod:`maestro.attacks._loop` (``ThreatModel.query_budget`` is per
    example; a gradient counts as one query).
    """

    name = "PGD"

    def __init__(
        self,
        threat,
        steps: int = 20,
        step_size: float | None = None,
        *,
        random_start: bool = True,
        restarts: int = 1,
        loss: str = "ce",
        targeted: bool = False,
        seed: int = 0,
        early_stop: bool = True,
    ) -> None:
        super().__init__(threat, targeted=targeted, seed=seed)
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an int ≥ 1, got {steps!r}")
        if not isinstance(restarts, int) or restarts < 1:
            raise ValueError(f"restarts must be an int ≥ 1, got {restarts!r}")
        if loss not in ("ce", "margin"):
            raise ValueError(f"loss must be 'ce' or 'margin', got {loss!r}")
        if step_size is not None and not step_size > 0:
            raise ValueError(f"step_size must be > 0, got {step_size!r}")
        self.steps = steps
        self.step_size = float(step_size) if step_size is not None else 2.5 * threat.eps / steps
        self.random_start = bool(random_start)
        self.restarts = restarts
        self.loss = loss
        self.early_stop = bool(early_stop)

    def _run(self, model, x, y, target):
        n = len(x)
        norm, eps, alpha = self.threat.norm, float(self.threat.eps), self.step_size
        lo, hi = self.threat.bounds
        goal = target if self.targeted else y
        gen = self._generator(x.device)
        budget = Budget(model, self.threat, n, x.device)

        x_best = x.clone()
        success = torch.zeros(n, dtype=torch.bool, device=x.device)
        best_loss = torch.full((n,), float("-inf"), device=x.device)
        steps_run = torch.zeros(n, dtype=torch.long, device=x.device)

        for _restart in range(self.restarts):
            idx = (~success).nonzero().flatten()
            if len(idx) == 0:
                break
            noise = None
            if self.random_start and eps > 0:
                noise = random_in_ball(x.shape, norm, eps, gen, x.device, x.dtype)
            x0, g_a, y_a = x[idx], goal[idx], y[idx]
            t_a = target[idx] if self.targeted else None
            if norm == "linf":
                lower, upper = (x0 - eps).clamp_(min=lo), (x0 + eps).clamp_(max=hi)
            cur = x0 if noise is None else (x0 + noise[idx]).clamp_(lo, hi)

            for step in range(self.steps + 1):
                ok = budget.afford(idx)
                if ok is not None and not ok.all():  # out of queries: these keep their best point so far
                    idx, cur, x0, g_a, y_a = idx[ok], cur[ok], x0[ok], g_a[ok], y_a[ok]
                    t_a = t_a[ok] if t_a is not None else None
                    if norm == "linf":
                        lower, upper = lower[ok], upper[ok]
                    if len(idx) == 0:
                        break
                if step < self.steps:
                    grad, logits = model.gradient(cur, g_a, self.loss, self.targeted, return_logits=True)
                else:  # the last iterate still needs its check
                    logits = model.logits(cur)
                budget.charge(idx)
                hit = self._goal(logits, y_a, t_a)
                new = hit & ~success[idx] if not self.early_stop else hit
                if new.any():
                    where = idx[new]
                    x_best[where], success[where] = cur[new], True
                steps_run[idx] += 1
                if step == self.steps:
                    # unbroken after the last step: keep the final iterate of the restart with
                    # the highest loss
                    value = attacker_loss(self.loss, logits, g_a, self.targeted)
                    better = ~success[idx] & (value > best_loss[idx])
                    if better.any():
                        where = idx[better]
                        x_best[where], best_loss[where] = cur[better], value[better]
                    break
                if self.early_stop and hit.any():
                    keep = ~hit
                    idx, cur, x0, g_a, y_a, grad = idx[keep], cur[keep], x0[keep], g_a[keep], y_a[keep], grad[keep]
                    t_a = t_a[keep] if t_a is not None else None
                    if norm == "linf":
                        lower, upper = lower[keep], upper[keep]
                    if len(idx) == 0:
                        break
                if norm == "linf":
                    cur = torch.clamp(cur + alpha * grad.sign(), lower, upper)
                else:
                    g_norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
                    cur = cur + grad * bcast(alpha / g_norm, grad)
                    delta = cur - x0
                    d_norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
                    cur = (x0 + delta * bcast((eps / d_norm).clamp(max=1.0), delta)).clamp_(lo, hi)
            if budget.remaining_total() == 0:
                break

        info = {"evaluations": steps_run.cpu(), "restarts": self.restarts, "step_size": alpha}
        return x_best, success, info

"""APGD (Croce & Hein 2020): z = Π(xₖ + ηₖ·sign(∇L)), xₖ₊₁ = Π(xₖ + 0.75(z − xₖ) + 0.25(xₖ − xₖ₋₁)),
η halved at checkpoints where progress stalls; eps and η in input units (η₀ = 2·eps)."""

from __future__ import annotations

import math

import torch

from ._loop import Budget, attacker_loss, bcast, normalize, project
from .base import Attack


def checkpoints(steps: int) -> list[int]:
    """Iterations where APGD checks its progress: p₀ = 0, p₁ = 0.22,
    pⱼ₊₁ = pⱼ + max(pⱼ − pⱼ₋₁ − 0.03, 0.06), scaled by ``steps``."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return sorted({math.ceil(q * steps) for q in p[1:] if math.ceil(q * steps) <= steps})


class APGD(Attack):
    """Auto-PGD with the cross-entropy loss (APGD-CE), L∞ or L2.

    Step size starts at 2·eps (input units) and is halved at each checkpoint (see
    :func:`checkpoints`) where (1) the loss increased in at most 75 % of the steps since the
    last checkpoint, or (2) the step size was not reduced at the last checkpoint and the best
    loss has not improved since; after a reduction the iterate restarts from the best point.
    Momentum 0.75. One forward+backward (one query) per step plus one at the start; examples
    leave the batch as soon as they are broken (active set). ``loss`` may also be ``"margin"``;
    targeted mode ascends −CE(target).
    """

    name = "APGD"

    def __init__(self, threat, steps: int = 100, *, loss: str = "ce", rho: float = 0.75,
                 targeted: bool = False, seed: int = 0) -> None:
        super().__init__(threat, targeted=targeted, seed=seed)
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an int ≥ 1, got {steps!r}")
        if loss not in ("ce", "margin"):
            raise ValueError(f"loss must be 'ce' or 'margin', got {loss!r}")
        self.steps, self.loss, self.rho = steps, loss, float(rho)

    def _run(self, model, x, y, target):
        n, dev = len(x), x.device
        norm, eps = self.threat.norm, float(self.threat.eps)
        lo, hi = self.threat.bounds
        goal = target if self.targeted else y
        gen = self._generator(dev)
        budget = Budget(model, self.threat, n, dev)
        marks = set(checkpoints(self.steps))

        def proj(x0, xa):
            return project(x0, xa, norm, eps, lo, hi)

        t = torch.rand(x.shape, generator=gen, device=dev, dtype=x.dtype) * 2 - 1 if norm == "linf" else (
            torch.randn(x.shape, generator=gen, device=dev, dtype=x.dtype))
        t = t / bcast(t.flatten(1).abs().amax(1) if norm == "linf" else t.flatten(1).norm(dim=1), t).clamp_min(1e-12)
        start = proj(x, x + eps * t)

        x_out = x.clone()
        success = torch.zeros(n, dtype=torch.bool, device=dev)
        S = {"idx": torch.arange(n, device=dev), "x0": x, "cur": start, "goal": goal, "y": y}
        if self.targeted:
            S["t"] = target
        evaluations = torch.zeros(n, dtype=torch.long, device=dev)

        def keep(S, mask):
            return {k: v[mask] for k, v in S.items()}

        def evaluate(S):
            """Gradient, loss and success at S['cur']; record successes and drop them."""
            ok = budget.afford(S["idx"])
            if ok is not None and not ok.all():  # out of queries: these keep their best point
                if "best_x" in S:
                    x_out[S["idx"][~ok]] = S["best_x"][~ok]
                S = keep(S, ok)
            if len(S["idx"]) == 0:
                return S, False
            grad, logits = model.gradient(S["cur"], S["goal"], self.loss, self.targeted, return_logits=True)
            budget.charge(S["idx"])
            evaluations[S["idx"]] += 1
            hit = self._goal(logits, S["y"], S.get("t"))
            S["grad"], S["loss"] = grad, attacker_loss(self.loss, logits, S["goal"], self.targeted)
            if hit.any():
                where = S["idx"][hit]
                x_out[where], success[where] = S["cur"][hit], True
                S = keep(S, ~hit)
            return S, len(S["idx"]) > 0

        S, alive = evaluate(S)
        if alive:
            m = len(S["idx"])
            S["prev"] = S["cur"].clone()
            S["eta"] = torch.full((m,), 2 * eps, device=dev)
            S["best_x"], S["best_grad"], S["best_loss"] = S["cur"].clone(), S["grad"].clone(), S["loss"].clone()
            S["last_loss"] = S["loss"].clone()
            S["increases"] = torch.zeros(m, device=dev)
            S["check_loss"] = S["loss"].clone()
            S["reduced"] = torch.ones(m, dtype=torch.bool, device=dev)
        since = 0
        for i in range(self.steps if alive else 0):
            momentum = 0.75 if i > 0 else 1.0
            cur, eta = S["cur"], bcast(S["eta"], S["cur"])
            z = proj(S["x0"], cur + eta * normalize(S["grad"], norm))
            nxt = proj(S["x0"], cur + momentum * (z - cur) + (1 - momentum) * (cur - S["prev"]))
            S["prev"], S["cur"] = cur, nxt
            S, alive = evaluate(S)
            if not alive:
                break
            since += 1
            S["increases"] += (S["loss"] > S["last_loss"]).float()
            S["last_loss"] = S["loss"]
            better = S["loss"] > S["best_loss"]
            S["best_x"] = torch.where(bcast(better, cur), S["cur"], S["best_x"])
            S["best_grad"] = torch.where(bcast(better, cur), S["grad"], S["best_grad"])
            S["best_loss"] = torch.where(better, S["loss"], S["best_loss"])
            if i + 1 in marks:
                stalled = S["increases"] <= since * self.rho
                stalled |= ~S["reduced"] & (S["check_loss"] >= S["best_loss"])
                S["reduced"], S["check_loss"] = stalled, S["best_loss"].clone()
                S["eta"] = torch.where(stalled, S["eta"] / 2, S["eta"])
                back = bcast(stalled, cur)
                S["cur"] = torch.where(back, S["best_x"], S["cur"])
                S["grad"] = torch.where(back, S["best_grad"], S["grad"])
                S["increases"] = torch.zeros_like(S["increases"])
                since = 0
        if alive and "best_x" in S:  # unbroken: keep the highest-loss point
            x_out[S["idx"]] = S["best_x"]
        return x_out, success, {"evaluations": evaluations.cpu(), "checkpoints": sorted(marks)}

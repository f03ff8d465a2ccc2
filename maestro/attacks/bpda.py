"""BPDA (Athalye, Carlini & Wagner 2018): projected gradient steps on f(t(x)) where the
backward pass treats the non-differentiable transform t as the identity (or as a
differentiable ``approximation``): ∇ₓ L(f(t(x))) ≈ ∇_z L(f(z)) at z = t(x).

Works on a :class:`~maestro.defenses.TransformedModel` (input and output transforms are both
bypassed on the backward pass); on any other white-box model it is plain PGD. The default
loss is the margin (best other score − true score), whose gradient survives saturated outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch

from .base import Attack

StepFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class BPDA(Attack):
    """L∞ / L2 PGD through straight-through gradients of a transformed model.

    ``steps`` iterations of size ``step_size`` (default 2.5·eps/steps), ``restarts`` random
    starts (an example stays broken once any restart breaks it), ``approximation``: a
    differentiable stand-in for the input transform on the backward pass (default identity).
    """

    name = "BPDA"
    requires = "white-box"

    def __init__(
        self,
        threat,
        *,
        steps: int = 40,
        step_size: float | None = None,
        restarts: int = 1,
        random_start: bool = True,
        approximation=None,
        loss="margin",
        targeted: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(threat, targeted=targeted, seed=seed)
        _check_iterations(steps, restarts)
        self.steps, self.restarts, self.random_start = steps, restarts, bool(random_start)
        self.step_size = _step_size(threat, steps, step_size)
        self.approximation = approximation
        self.loss = loss

    def _context(self, model):
        from ..defenses.transforms import TransformedModel

        if isinstance(model, TransformedModel):
            return model.straight_through(self.approximation), True
        return nullcontext(), False

    def _run(self, model, x, y, target):
        goal = target if self.targeted else y
        ctx, bypassed = self._context(model)

        def step(xa: torch.Tensor, g: torch.Tensor):
            grad, logits = model.gradient(xa, g, loss=self.loss, targeted=self.targeted, return_logits=True)
            return grad, logits.argmax(1)

        def final(xa: torch.Tensor) -> torch.Tensor:
            return model.logits(xa).argmax(1)

        with ctx:
            x_adv, success = pgd_iterations(self, x, y, target, goal, step, final)
        return x_adv, success, {"straight_through": bypassed}


def _check_iterations(steps: int, restarts: int) -> None:
    for arg, v in (("steps", steps), ("restarts", restarts)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{arg} must be a positive int, got {v!r}")


def _step_size(threat, steps: int, step_size: float | None) -> float:
    if step_size is None:
        return 2.5 * float(threat.eps) / steps
    if not step_size > 0:
        raise ValueError(f"step_size must be positive, got {step_size!r}")
    return float(step_size)


def random_start(threat, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A uniform point of the L∞ ball, or a uniform point of the L2 ball, projected."""
    eps = float(threat.eps)
    if threat.norm == "linf":
        delta = (torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype) * 2 - 1) * eps
    else:
        d = x[0].numel()
        direction = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        direction = direction / direction.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
        r = torch.rand(len(x), generator=gen, device=x.device, dtype=x.dtype) ** (1.0 / d) * eps
        delta = direction * r.view(-1, *[1] * (x.dim() - 1))
    return threat.project(x, x + delta)


def ascent_step(threat, x_cur: torch.Tensor, grad: torch.Tensor, size: float) -> torch.Tensor:
    """One steepest-ascent step in the threat model's norm (sign for L∞, unit L2 otherwise)."""
    if threat.norm == "linf":
        return x_cur + size * grad.sign()
    n = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (grad.dim() - 1))
    return x_cur + size * grad / n


def pgd_iterations(attack, x, y, target, goal, step: StepFn, final: Callable[[torch.Tensor], torch.Tensor]):
    """The projected-gradient loop BPDA and EOT share.

    ``step(x_cur, goal) -> (gradient, predicted labels at x_cur)``; ``final(x) -> labels``.
    Examples stop once broken (their x_adv is kept); the rest go on to the next restart.
    """
    threat = attack.threat
    gen = attack._generator(x.device)
    x_adv = x.clone()
    success = torch.zeros(len(x), dtype=torch.bool, device=x.device)

    def reached(pred, idx):
        return pred == target[idx] if attack.targeted else pred != y[idx]

    for _ in range(attack.restarts):
        active = (~success).nonzero().flatten()
        if not len(active):
            break
        x0 = x[active]
        cur = random_start(threat, x0, gen) if attack.random_start else x0.clone()
        for _ in range(attack.steps):
            grad, pred = step(cur, goal[active])
            hit = reached(pred.to(x.device), active)
            if hit.any():
                x_adv[active[hit]] = cur[hit]
                success[active[hit]] = True
                keep = ~hit
                active, x0, cur, grad = active[keep], x0[keep], cur[keep], grad[keep]
                if not len(active):
                    break
            cur = threat.project(x0, ascent_step(threat, cur, grad, attack.step_size)).detach()
        if len(active):
            hit = reached(final(cur).to(x.device), active)
            x_adv[active] = cur  # the last iterate, broken or not
            success[active[hit]] = True
    return x_adv, success

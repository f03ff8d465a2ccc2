"""FGSM (Goodfellow et al. 2015): x_adv = clip(x + eps · sign(∇ₓ L(f(x), y))), eps in input units."""

from __future__ import annotations

from .base import Attack


class FGSM(Attack):
    """One signed-gradient step of size ``eps`` (L∞), or a gradient step of L2 length ``eps``."""

    name = "FGSM"

    def _run(self, model, x, y, target):
        goal = target if self.targeted else y
        grad = model.gradient(x, goal, targeted=self.targeted)
        if self.threat.norm == "linf":
            step = self.threat.eps * grad.sign()
        else:
            norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
            step = self.threat.eps * grad / norm
        x_adv = self.threat.project(x, x + step)
        success = self._goal(model.logits(x_adv), y, target)
        return x_adv, success, {}

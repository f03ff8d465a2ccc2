"""Carlini–Wagner L2 (2017): min_w ‖x' − x‖₂² + c·max(z_y − max_{j≠y} z_j, −κ) with
x' = lo + (hi − lo)·(tanh(w) + 1)/2; distances in input units, κ in logit units."""

from __future__ import annotations

import math

import torch

from ._loop import Budget, bcast, goal_margin, project
from .base import Attack


class CarliniWagnerL2(Attack):
    """The C&W L2 attack: a tanh change of variables keeps x' inside ``bounds``; Adam
    (``lr``, ``steps`` per constant) minimizes squared distance + c·margin; a binary search over
    c (``binary_search_steps``, starting at ``initial_const``) finds the smallest c that breaks
    each example, and the closest adversarial point seen is kept.

    The threat model's ``eps`` is the L2 **acceptance radius**: C&W is a minimum-norm attack, so
    a point it finds farther than eps from x is projected onto the eps-ball and checked once
    more (one forward each); it counts as a success only if the projected point still reaches
    the goal. ``x_adv`` is always inside the threat model.

    Active set: a minimum-norm attack keeps refining points that are already adversarial, so
    here an example leaves the batch when its objective stops improving (checked every
    ``steps // 10`` steps, the original "abort early"), or when budgets run out. Each step is
    one forward+backward (one query).
    """

    name = "CarliniWagnerL2"
    norms = ("l2",)

    def __init__(
        self,
        threat,
        *,
        steps: int = 100,
        binary_search_steps: int = 5,
        initial_const: float = 1.0,
        confidence: float = 0.0,
        lr: float = 0.05,
        targeted: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(threat, targeted=targeted, seed=seed)
        if steps < 1 or binary_search_steps < 1:
            raise ValueError("steps and binary_search_steps must be ≥ 1")
        if not initial_const > 0 or not lr > 0 or confidence < 0:
            raise ValueError("initial_const and lr must be > 0, confidence ≥ 0")
        self.steps, self.binary_search_steps = int(steps), int(binary_search_steps)
        self.initial_const, self.confidence, self.lr = float(initial_const), float(confidence), float(lr)

    def _run(self, model, x, y, target):
        n, dev = len(x), x.device
        lo, hi = self.threat.bounds
        goal = target if self.targeted else y
        kappa = self.confidence
        budget = Budget(model, self.threat, n, dev)

        def to_x(w):
            return lo + (hi - lo) * (torch.tanh(w) + 1) / 2

        def margin_loss(logits, cls):  # per-example f, minimized; bounded below by −κ
            return goal_margin(logits, cls, cls, self.targeted).clamp(min=-kappa)

        scaled = ((x - lo) / (hi - lo) * 2 - 1).clamp(-1 + 1e-6, 1 - 1e-6)
        w0 = torch.atanh(scaled)
        const = torch.full((n,), self.initial_const, device=dev)
        c_low = torch.zeros(n, device=dev)
        c_high = torch.full((n,), math.inf, device=dev)
        best_dist = torch.full((n,), math.inf, device=dev)
        best_x = x.clone()
        last_x = x.clone()
        b1, b2, adam_eps = 0.9, 0.999, 1e-8
        check_every = max(1, self.steps // 10)

        for _ in range(self.binary_search_steps):
            idx = torch.arange(n, device=dev)
            w = w0.clone()
            m_t, v_t = torch.zeros_like(w), torch.zeros_like(w)
            found = torch.zeros(n, dtype=torch.bool, device=dev)
            prev = torch.full((n,), math.inf, device=dev)
            for step in range(self.steps):
                ok = budget.afford(idx)
                if ok is not None and not ok.all():
                    idx = idx[ok]
                if len(idx) == 0:
                    break
                wa = w[idx]
                xa = to_x(wa)
                grad_f, logits = model.gradient(xa, goal[idx], margin_loss, False, return_logits=True)
                budget.charge(idx)
                f = margin_loss(logits, goal[idx])
                diff = xa - x[idx]
                dist = diff.flatten(1).pow(2).sum(1)
                c = const[idx]
                hit = self._goal(logits, y[idx], target[idx] if self.targeted else None)
                if kappa > 0:  # with a confidence κ, a hit needs margin ≤ −κ
                    hit &= f <= -kappa + 1e-6
                l2 = dist.sqrt()
                better = hit & (l2 < best_dist[idx])
                if better.any():
                    where = idx[better]
                    best_dist[where], best_x[where] = l2[better], xa[better]
                found[idx[hit]] = True
                last_x[idx] = xa
                # ∂/∂w of ‖x'−x‖² + c·f, chained through x' = lo + (hi−lo)(tanh w + 1)/2
                g_x = 2 * diff + bcast(c, diff) * grad_f
                g_w = g_x * (1 - torch.tanh(wa) ** 2) * (hi - lo) / 2
                t = step + 1
                m_a = b1 * m_t[idx] + (1 - b1) * g_w
                v_a = b2 * v_t[idx] + (1 - b2) * g_w * g_w
                m_t[idx], v_t[idx] = m_a, v_a
                w[idx] = wa - self.lr * (m_a / (1 - b1**t)) / ((v_a / (1 - b2**t)).sqrt() + adam_eps)
                if (step + 1) % check_every == 0:
                    objective = dist + c * f
                    stalled = objective > prev[idx] * 0.9999
                    prev[idx] = objective
                    idx = idx[~stalled]
            # binary search on c: smaller where broken, larger where not
            c_high = torch.where(found, torch.minimum(c_high, const), c_high)
            c_low = torch.where(found, c_low, torch.maximum(c_low, const))
            const = torch.where(torch.isfinite(c_high), (c_low + c_high) / 2, const * 10)
            if budget.remaining_total() == 0:
                break

        # acceptance radius: project anything farther than eps, and check it once
        eps = float(self.threat.eps)
        success = best_dist <= eps
        x_adv = project(x, torch.where(bcast(success, x), best_x, x), "l2", eps, lo, hi)
        far = (~success).nonzero().flatten()
        candidates = torch.where(bcast(torch.isfinite(best_dist), x), best_x, last_x)
        projected_checked = 0
        if len(far):
            ok = budget.afford(far)
            if ok is not None:
                far = far[ok]
            if len(far):
                xp = project(x[far], candidates[far], "l2", eps, lo, hi)
                pred = model.predict(xp)
                budget.charge(far)
                hit = pred == target[far] if self.targeted else pred != y[far]
                x_adv[far] = torch.where(bcast(hit, xp), xp, x[far])
                success[far] = hit
                projected_checked = len(far)
        info = {"min_distance": best_dist.cpu(), "const": const.cpu(), "projected_checked": projected_checked}
        return x_adv, success, info

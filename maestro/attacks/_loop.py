"""Shared pieces of the image attacks: query budgets, active sets, norms and random draws.

Query budgets, one rule for every attack:

* the wrapper's own budget (``model.remaining``, a total over all calls) is never exceeded: each
  batch of queries is planned to fit what is left, so no attack ever raises
  :class:`~maestro.errors.QueryBudgetExceeded` mid-attack; it stops cleanly instead;
* ``ThreatModel.query_budget`` is **per example**: at most that many inputs are sent forward on
  behalf of each example by one attack call (every input counts, the clean check included), as
  in the query-based attack literature ("10,000 queries per image"). An attack's own
  ``max_queries`` setting (where it has one) is also per example; the smaller one wins.

When the total left cannot cover every example that still wants a query, the examples earliest in
the batch go first (deterministic).
"""

from __future__ import annotations

import torch

from ..wrapper import per_example_loss


class Budget:
    """Queries still allowed: the wrapper's total and a per-example cap (``None``: unlimited)."""

    def __init__(self, model, threat, n: int, device, cap: int | None = None) -> None:
        caps = [c for c in (threat.query_budget, cap) if c is not None]
        self.per_example = min(caps) if caps else None
        self.model = model
        self.spent = torch.zeros(n, dtype=torch.long, device=device)
        self.unlimited = self.per_example is None and _remaining(model) is None

    def remaining_total(self) -> int | None:
        return _remaining(self.model)

    def left(self, idx: torch.Tensor) -> torch.Tensor | None:
        """Per-example queries left for ``idx`` under the per-example cap (``None``: no cap)."""
        if self.per_example is None:
            return None
        return self.per_example - self.spent[idx]

    def afford(self, idx: torch.Tensor, cost: int = 1) -> torch.Tensor | None:
        """Mask over ``idx``: which examples may spend ``cost`` queries now (``None``: all may).

        Respects the per-example cap and, in batch order, what the wrapper's total has left.
        """
        if self.unlimited:
            return None
        ok = torch.ones(len(idx), dtype=torch.bool, device=idx.device)
        if self.per_example is not None:
            ok &= self.spent[idx] + cost <= self.per_example
        total = self.remaining_total()
        if total is not None:
            ok &= torch.cumsum(ok.long(), 0) <= max(total, 0) // max(cost, 1)
        return ok

    def allot(self, idx: torch.Tensor, want: int) -> torch.Tensor:
        """Queries each example of ``idx`` may spend on a batch that wants ``want`` each: capped
        by its per-example budget, then by the wrapper's total in batch order."""
        counts = torch.full((len(idx),), int(want), dtype=torch.long, device=idx.device)
        if self.per_example is not None:
            counts = torch.minimum(counts, (self.per_example - self.spent[idx]).clamp(min=0))
        total = self.remaining_total()
        if total is not None:
            before = torch.cumsum(counts, 0) - counts
            counts = torch.minimum(counts, (max(total, 0) - before).clamp(min=0))
        return counts

    def charge(self, idx: torch.Tensor, cost: int | torch.Tensor = 1) -> None:
        if self.per_example is not None:
            self.spent[idx] += cost


def _remaining(model) -> int | None:
    return getattr(model, "remaining", None)


def bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-example vector reshaped to broadcast over N×C×H×W."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def lp_norm(d: torch.Tensor, norm: str) -> torch.Tensor:
    flat = d.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


def normalize(g: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-ascent direction of unit size: sign(g) for L∞, g/‖g‖₂ for L2."""
    if norm == "linf":
        return g.sign()
    return g / bcast(g.flatten(1).norm(dim=1).clamp_min(1e-12), g)


def project(x: torch.Tensor, x_adv: torch.Tensor, norm: str, eps, lo: float, hi: float) -> torch.Tensor:
    """Closest point of the eps-ball around ``x`` (L∞ or L2; ``eps`` scalar or per example)
    intersected with the box [lo, hi]. For L2 the ball step comes first, then the box (the
    box only shortens the perturbation, so the result stays inside the ball)."""
    delta = x_adv - x
    if norm == "linf":
        if isinstance(eps, torch.Tensor):
            e = bcast(eps, x)
            delta = torch.maximum(torch.minimum(delta, e), -e)
        else:
            delta = delta.clamp(-eps, eps)
    else:
        n = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        delta = delta * bcast((eps / n).clamp(max=1.0), x)
    return (x + delta).clamp(lo, hi)


def random_in_ball(shape, norm: str, eps: float, gen: torch.Generator, device, dtype) -> torch.Tensor:
    """Random perturbations inside the eps-ball: uniform per coordinate for L∞; for L2 a
    uniformly random direction with length eps·u, u ~ U(0, 1)."""
    if norm == "linf":
        return (torch.rand(shape, generator=gen, device=device, dtype=dtype) * 2 - 1) * eps
    d = torch.randn(shape, generator=gen, device=device, dtype=dtype)
    d = d / bcast(d.flatten(1).norm(dim=1).clamp_min(1e-12), d)
    r = torch.rand(shape[0], generator=gen, device=device, dtype=dtype)
    return d * bcast(r * eps, d)


def on_sphere(shape, norm: str, eps: float, gen: torch.Generator, device, dtype) -> torch.Tensor:
    """Random perturbations of size exactly eps: uniform in [−eps, eps] per coordinate for L∞
    (the whole cube), a uniformly random direction of length eps for L2."""
    if norm == "linf":
        return (torch.rand(shape, generator=gen, device=device, dtype=dtype) * 2 - 1) * eps
    d = torch.randn(shape, generator=gen, device=device, dtype=dtype)
    return d * bcast(eps / d.flatten(1).norm(dim=1).clamp_min(1e-12), d)


def attacker_loss(loss, logits: torch.Tensor, goal: torch.Tensor, targeted: bool) -> torch.Tensor:
    """Per-example loss the attacker ascends: L(f(x), y), or −L(f(x), target) when targeted."""
    value = per_example_loss(loss)(logits, goal)
    return -value if targeted else value


def goal_margin(logits: torch.Tensor, y: torch.Tensor, target, targeted: bool) -> torch.Tensor:
    """Margin the attacker drives below zero: z_y − max_{j≠y} z_j (untargeted) or
    max_{j≠t} z_j − z_t (targeted); negative exactly when the goal is reached (ties aside)."""
    cls = target if targeted else y
    own = logits.gather(1, cls[:, None]).squeeze(1)
    other = logits.scatter(1, cls[:, None], float("-inf")).amax(1)
    return other - own if targeted else own - other

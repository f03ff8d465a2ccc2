"""Transfer attack: x_adv = A(surrogate, x, y), crafted white-box on a surrogate model and then
evaluated on the target; eps in the threat model's units (input units)."""

from __future__ import annotations

import torch

from .base import Attack


class TransferAttack(Attack):
    """Craft adversarial examples on ``surrogate`` (a white-box wrapper) with ``attack`` (any
    image attack, default PGD-20 in the same threat model), then send them once to the target.

    The target needs only ``labels`` access. ``success`` says whether each example fools the
    *target* (misclassified, or the target class when targeted); ``queries`` counts target
    queries only (one per example, fewer if its budget runs out: examples past the budget are
    not sent and count as failures). ``info`` holds the surrogate's success and queries.
    """

    name = "TransferAttack"
    requires = "labels"

    def __init__(self, threat, surrogate, attack: Attack | None = None, *, targeted: bool = False,
                 seed: int = 0) -> None:
        super().__init__(threat, targeted=targeted, seed=seed)
        if attack is None:
            from .pgd import PGD

            attack = PGD(threat, steps=20, targeted=targeted, seed=seed)
        if not isinstance(attack, Attack):
            raise TypeError(f"attack: expected a maestro Attack, got {type(attack).__name__}")
        if attack.targeted != self.targeted:
            raise ValueError("the surrogate attack and TransferAttack must agree on targeted=")
        if attack.threat.norm != threat.norm or attack.threat.eps > threat.eps or tuple(attack.threat.bounds) != tuple(threat.bounds):
            raise ValueError("the surrogate attack's threat model must fit inside the transfer threat model")
        self.surrogate, self.attack = surrogate, attack

    def _run(self, model, x, y, target):
        if self.surrogate is model:
            raise ValueError("surrogate and target are the same wrapper; a transfer attack needs two models")
        crafted = self.attack(self.surrogate, x, y, target=target)
        x_adv = crafted.x_adv.to(x.device)
        n = len(x)
        success = torch.zeros(n, dtype=torch.bool, device=x.device)
        left = getattr(model, "remaining", None)
        k = n if left is None else min(n, max(left, 0))
        if self.threat.query_budget is not None:
            k = k if self.threat.query_budget >= 1 else 0
        if k:
            pred = model.predict(x_adv[:k])
            success[:k] = pred == target[:k] if self.targeted else pred != y[:k]
        info = {
            "surrogate_success": crafted.success,
            "surrogate_queries": crafted.queries,
            "surrogate_attack": crafted.attack,
            "evaluated": k,
        }
        return x_adv, success, info

"""Attacks on :class:`~maestro.wrapper.ModelWrapper`: one file per attack, all returning
:class:`~maestro.attacks.base.AttackResult`. Names load lazily."""

from __future__ import annotations

from .._lazy import lazy_getattr
from .base import Attack, AttackResult

# name -> module (inside maestro.attacks) that defines it
_REGISTRY = {
    "FGSM": "fgsm",
    "PGD": "pgd",
    "CarliniWagnerL2": "cw",
    "APGD": "apgd",
    "SquareAttack": "square",
    "SimBA": "simba",
    "HopSkipJump": "hopskipjump",
    "TransferAttack": "transfer",
    "UniversalPerturbation": "universal",
    "HotFlip": "hotflip",
    "UniversalTrigger": "triggers",
    "WordSubstitution": "word_substitution",
    "BPDA": "bpda",
    "EOT": "eot",
    "RandomNoise": "noise",
    "BadNets": "backdoor",
    "LossThresholdMIA": "membership",
    "ShadowModelMIA": "membership",
    "MIAReport": "membership",
    "roc_auc": "membership",
    "roc_curve": "membership",
    "clean_accuracy_cost": "backdoor",
    "GCG": "gcg",
    "UniversalGCG": "gcg",
    "RandomSearch": "gcg",
    "PromptInjection": "injection",
    "Assistant": "injection",
}

__all__ = ["Attack", "AttackResult", *_REGISTRY]  # noqa: PLE0604 (the registry keys are strings)


__getattr__ = lazy_getattr(__name__, _REGISTRY)

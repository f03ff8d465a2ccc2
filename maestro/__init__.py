"""Maestro: a teaching kit for adversarial machine learning.

    import maestro
    model = maestro.models.load("lenet-mnist")          # a ModelWrapper
    data = maestro.datasets.load("mnist", split="dev")
    grad = model.gradient(data.x[:8], data.y[:8])

Submodules and heavy dependencies (transformers, sklearn, datasets) load on first use.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "ModelWrapper": ("maestro.wrapper", "ModelWrapper"),
    "ACCESS_LEVELS": ("maestro.wrapper", "ACCESS_LEVELS"),
    "ThreatModel": ("maestro.threat", "ThreatModel"),
    "TokenBatch": ("maestro.text", "TokenBatch"),
    "wrap": ("maestro.models.wrap", "wrap"),
    "AccessDenied": ("maestro.errors", "AccessDenied"),
    "QueryBudgetExceeded": ("maestro.errors", "QueryBudgetExceeded"),
    "AssetUnavailable": ("maestro.errors", "AssetUnavailable"),
    "ThreatModelViolation": ("maestro.errors", "ThreatModelViolation"),
    "MaestroError": ("maestro.errors", "MaestroError"),
    "evaluate": ("maestro.evaluation", "evaluate"),
    "robustness_curve": ("maestro.evaluation", "robustness_curve"),
}
_SUBMODULES = {
    "datasets", "models", "text", "wrapper", "threat", "errors", "attacks", "defenses", "evaluation", "cli",
    "remote", "server", "widgets",
}

__all__ = sorted(_LAZY.keys() | _SUBMODULES)  # noqa: PLE0605


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"maestro.{name}")
    else:
        raise AttributeError(f"module 'maestro' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__

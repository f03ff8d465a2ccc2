"""Evaluation: clean and robust accuracy over an attack suite, robustness curves, and sanity
checks that flag false robustness. ``maestro.evaluate`` is :func:`evaluate`."""

from __future__ import annotations

import importlib

# name -> module (inside maestro.evaluation) that defines it
_REGISTRY = {
    "evaluate": "evaluate",
    "EvaluationReport": "evaluate",
    "robustness_curve": "curves",
    "plot_robustness_curve": "curves",
    "sanity_checks": "sanity",
    "SanityFlag": "sanity",
}

__all__ = list(_REGISTRY)


def __getattr__(name: str):
    if name in _REGISTRY:
        value = getattr(importlib.import_module(f"maestro.evaluation.{_REGISTRY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'maestro.evaluation' has no attribute {name!r}")

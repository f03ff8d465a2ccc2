"""Evaluation: clean and robust accuracy over an attack suite, robustness curves, sanity
checks that flag false robustness, and for chat models attack success beside what a defense
costs benign use. ``maestro.evaluate`` is :func:`evaluate`."""

from __future__ import annotations

from .._lazy import lazy_getattr

# name -> module (inside maestro.evaluation) that defines it
_REGISTRY = {
    "evaluate": "suite",
    "EvaluationReport": "suite",
    "robustness_curve": "curves",
    "plot_robustness_curve": "curves",
    "sanity_checks": "sanity",
    "SanityFlag": "sanity",
    "target_success": "llm",
    "forced": "llm",
    "benign_cost": "llm",
    "defense_report": "llm",
    "DefenseReport": "llm",
}

__all__ = list(_REGISTRY)


__getattr__ = lazy_getattr(__name__, _REGISTRY)

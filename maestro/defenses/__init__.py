"""Defenses: adversarial training, input transformations, randomized smoothing, backdoor
detection. Names load lazily."""

from __future__ import annotations

import importlib

# name -> module (inside maestro.defenses) that defines it
_REGISTRY = {
    "adversarial_training": "adversarial_training",
    "TrainingRecord": "adversarial_training",
    "BitDepthSqueeze": "transforms",
    "MedianSmoothing": "transforms",
    "TransformedModel": "transforms",
    "RandomizedSmoothing": "smoothing",
    "activation_clustering": "backdoor_detection",
    "spectral_signatures": "backdoor_detection",
    "DetectionReport": "backdoor_detection",
    "penultimate_activations": "backdoor_detection",
}

__all__ = list(_REGISTRY)


def __getattr__(name: str):
    if name in _REGISTRY:
        value = getattr(importlib.import_module(f"maestro.defenses.{_REGISTRY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'maestro.defenses' has no attribute {name!r}")

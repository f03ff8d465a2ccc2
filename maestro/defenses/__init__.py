"""Defenses: adversarial training, input transformations, randomized smoothing, backdoor
detection, and for chat models a perplexity filter, SmoothLLM and fenced untrusted data. Names
load lazily."""

from __future__ import annotations

from .._lazy import lazy_getattr

# name -> module (inside maestro.defenses) that defines it
_REGISTRY = {
    "adversarial_training": "training",
    "TrainingRecord": "training",
    "BitDepthSqueeze": "transforms",
    "MedianSmoothing": "transforms",
    "TransformedModel": "transforms",
    "RandomizedSmoothing": "smoothing",
    "activation_clustering": "backdoor_detection",
    "spectral_signatures": "backdoor_detection",
    "DetectionReport": "backdoor_detection",
    "penultimate_activations": "backdoor_detection",
    "PerplexityFilter": "llm",
    "SmoothLLM": "llm",
    "Delimit": "llm",
    "Sandwich": "llm",
}

__all__ = list(_REGISTRY)


__getattr__ = lazy_getattr(__name__, _REGISTRY)

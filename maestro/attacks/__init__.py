"""Attacks on :class:`~maestro.wrapper.ModelWrapper`: one file per attack, all returning
:class:`~maestro.attacks.base.AttackResult`. Names load lazily."""

from __future__ import annotations

import importlib

from .base import Attack, AttackResult

# name -> module (inside maestro.attacks) that defines it
_REGISTRY = {
    "FGSM": "fgsm",
}

__all__ = ["Attack", "AttackResult", *_REGISTRY]


def __getattr__(name: str):
    if name in _REGISTRY:
        value = getattr(importlib.import_module(f"maestro.attacks.{_REGISTRY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'maestro.attacks' has no attribute {name!r}")

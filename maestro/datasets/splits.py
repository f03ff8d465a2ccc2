"""Deterministic train/dev/test splits, and the instructor-only hidden split.

Every example gets one place in a public permutation (fixed by ``seed``): the first 65% are
``train``, the next 10% ``dev``, the next 10% ``test``, and the last 15% are a reserve that no
public split ever contains. ``hidden`` is a subset of that reserve (two thirds of it, 10% of
the data), chosen and ordered by the course secret: without the secret nobody can say which
reserved examples are hidden, nor in which order the grader uses them.

The raw built-in data sets are public, so a determined student could still match hidden
inputs against the raw files; for a hidden set that is secret in the strong sense, an
instructor loads a course-private data set (``npz:``, ``folder:``, ``csv:``).
"""

from __future__ import annotations

import hashlib
import os

import torch

from .base import SPLITS

FRACTIONS = {"train": 0.65, "dev": 0.10, "test": 0.10}  # the rest (15%) is the reserve
HIDDEN_SHARE_OF_RESERVE = 2 / 3
SECRET_ENV = "MAESTRO_COURSE_SECRET"


def _bounds(n: int) -> dict[str, tuple[int, int]]:
    out, start = {}, 0
    for name, frac in FRACTIONS.items():
        stop = start + int(round(frac * n))
        out[name] = (start, stop)
        start = stop
    out["reserve"] = (start, n)
    return out


def secret_seed(secret: str | bytes, name: str) -> int:
    """A 63-bit seed derived from the course secret and the data set's name."""
    raw = secret.encode() if isinstance(secret, str) else bytes(secret)
    digest = hashlib.sha256(b"maestro-hidden\x00" + name.encode() + b"\x00" + raw).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def resolve_secret(secret: str | bytes | None) -> str | bytes:
    """The explicit secret, else ``$MAESTRO_COURSE_SECRET``; a clear error when neither exists."""
    if secret is None:
        secret = os.environ.get(SECRET_ENV) or None
    if not secret:
        raise PermissionError(
            "split='hidden' is instructor-only: pass secret=<the course secret> or set "
            f"${SECRET_ENV}. Students work with split='train', 'dev' or 'test'."
        )
    return secret


def split_indices(
    n: int, split: str, *, seed: int = 0, name: str = "", secret: str | bytes | None = None
) -> torch.Tensor:
    """Indices (into the full data of size ``n``) of one split."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    if not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    bounds = _bounds(n)
    if split != "hidden":
        start, stop = bounds[split]
        return perm[start:stop]
    reserve = perm[slice(*bounds["reserve"])]
    gen = torch.Generator().manual_seed(secret_seed(resolve_secret(secret), name))
    order = torch.randperm(len(reserve), generator=gen)
    keep = int(round(HIDDEN_SHARE_OF_RESERVE * len(reserve)))
    return reserve[order[:keep]]

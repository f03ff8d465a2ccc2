"""Deterministic train/dev/test splits, and the instructor-only hidden split.

A fixed permutation of the data (the same for every ``seed``) sets aside its last 15% as a
reserve that no public split ever contains, whatever the seed. The other 85% is the public
pool: ``train`` takes 65% of the data, ``dev`` 10% and ``test`` 10%, in the pool's order for
``seed=0`` (the canonical split) and in an order shuffled by ``seed`` otherwise. ``hidden`` is a
subset of the reserve (two thirds of it, 10% of the data), chosen and ordered by the course
secret: without the secret nobody can say which reserved examples are hidden, nor in which
order the grader uses them. Because the reserve does not depend on ``seed``, no choice of seed
lets a student train on hidden examples.

The raw built-in data sets are public, so a determined student could still match hidden
inputs against the raw files; for a hidden set that is secret in the strong sense, an
instructor loads a course-private data set (``npz:``, ``folder:``, ``csv:``).
"""

from __future__ import annotations

import hashlib
import numbers
import os

import torch

from .base import SPLITS

FRACTIONS = {"train": 0.65, "dev": 0.10, "test": 0.10}  # the rest (15%) is the reserve
HIDDEN_SHARE_OF_RESERVE = 2 / 3
SECRET_ENV = "MAESTRO_COURSE_SECRET"
_RESERVE_SEED = 0  # the fixed permutation; seed=0 keeps the pool in this order


def _bounds(n: int) -> dict[str, tuple[int, int]]:
    out, start = {}, 0
    for name, frac in FRACTIONS.items():
        stop = start + round(frac * n)
        out[name] = (start, stop)
        start = stop
    out["reserve"] = (start, n)
    return out


def secret_seed(secret: str | bytes, *names: str, domain: str = "maestro-hidden", bits: int = 63) -> int:
    """A ``bits``-bit (63 or 31) seed from sha256(domain ‖ names ‖ course secret), parts separated
    by NUL: students cannot reproduce it without the secret, and each domain (hidden splits, a
    unit's noise draws, a private model build, …) gets seeds of its own."""
    if bits not in (31, 63):
        raise ValueError(f"bits must be 31 or 63, got {bits}")
    raw = secret.encode() if isinstance(secret, str) else bytes(secret)
    label = b"\x00".join(part.encode() for part in (domain, *names))
    digest = hashlib.sha256(label + b"\x00" + raw).digest()
    return int.from_bytes(digest[:(bits + 1) // 8], "big") >> 1


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
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    seed = int(seed)
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed must lie in [0, 2**63), got {seed}")
    if not isinstance(n, numbers.Integral) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(_RESERVE_SEED))
    bounds = _bounds(n)
    if split != "hidden":
        pool = perm[: bounds["reserve"][0]]
        if seed != _RESERVE_SEED:
            pool = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))]
        start, stop = bounds[split]
        return pool[start:stop]
    reserve = perm[slice(*bounds["reserve"])]
    gen = torch.Generator().manual_seed(secret_seed(resolve_secret(secret), name))
    order = torch.randperm(len(reserve), generator=gen)
    keep = round(HIDDEN_SHARE_OF_RESERVE * len(reserve))
    return reserve[order[:keep]]

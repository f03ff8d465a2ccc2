"""Helpers shared by evaluate, curves and sanity (kept apart so that importing one of them
never loads the ``evaluate`` submodule, whose name the package's ``evaluate`` function shares)."""

from __future__ import annotations

import torch

from ..datasets.base import Dataset, from_arrays


def attack_label(attack) -> str:
    """A short name: ``PGD-20``, ``PGD-20×5`` (restarts), ``APGD-100``, ``EOT-40×16``…"""
    name = getattr(attack, "name", type(attack).__name__)
    steps = getattr(attack, "steps", None)
    label = f"{name}-{steps}" if isinstance(steps, int) else name
    restarts = getattr(attack, "restarts", 1)
    if isinstance(restarts, int) and restarts > 1:
        label += f"×{restarts}r"
    samples = getattr(attack, "samples", None)
    if isinstance(samples, int) and name == "EOT":
        label += f"({samples} draws)"
    return label



def _as_dataset(data) -> Dataset:
    if isinstance(data, Dataset):
        return data
    if isinstance(data, tuple) and len(data) == 2:
        x, y = data
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().float() if not x.is_floating_point() else x.detach().cpu()
            if x.dim() != 4:
                raise ValueError(f"x: expected N×C×H×W images, got shape {tuple(x.shape)}")
        y = torch.as_tensor(y).cpu()
        k = int(y.max()) + 1 if len(y) else 0
        return from_arrays(x, y, [str(i) for i in range(k)])
    raise TypeError(f"data: expected a maestro Dataset or an (x, y) pair, got {type(data).__name__}")


def _view(model, access: str):
    """A view of ``model`` at ``access`` with fresh counters and no total budget."""
    restrict = getattr(model, "restrict", None)
    return restrict(access) if callable(restrict) else model


def _chunks(idx: torch.Tensor, size: int | None):
    if size is None:
        yield idx
        return
    for s in range(0, len(idx), size):
        yield idx[s : s + size]


def _predict(model, x, batch_size: int | None) -> torch.Tensor:
    n = len(x)
    size = batch_size or n
    return torch.cat([model.predict(x[s : s + size]).cpu() for s in range(0, n, size)])

"""The one value every loader returns: inputs, labels and class names, sliceable and batchable."""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

SPLITS = ("train", "dev", "test", "hidden")


@dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled dataset.

    ``x`` is a float tensor N×C×H×W with values in [0, 1] for images, or a ``list[str]`` for
    text; ``y`` is a LongTensor of N class indices into ``classes``. Two Datasets compare equal
    only when they are the same object (compare ``x`` and ``y`` yourself for contents).
    """

    x: torch.Tensor | list[str]
    y: torch.Tensor
    classes: list[str]
    name: str = ""
    split: str = ""
    info: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.x, torch.Tensor):
            if not self.x.is_floating_point() or self.x.dim() != 4:
                raise TypeError(
                    f"Dataset x: expected a float tensor N×C×H×W, got {self.x.dtype} "
                    f"of shape {tuple(self.x.shape)}"
                )
        elif isinstance(self.x, list):
            if not all(isinstance(t, str) for t in self.x):
                raise TypeError("Dataset x: a text dataset needs a list of str")
        else:
            raise TypeError(f"Dataset x: expected a tensor or a list of str, got {type(self.x).__name__}")
        if not isinstance(self.y, torch.Tensor) or self.y.dtype != torch.long or self.y.dim() != 1:
            raise TypeError("Dataset y: expected a 1-D LongTensor of class indices")
        if len(self.y) != len(self.x):
            raise ValueError(f"Dataset: {len(self.x)} inputs but {len(self.y)} labels")
        if len(self.y) and (int(self.y.min()) < 0 or int(self.y.max()) >= len(self.classes)):
            raise ValueError(
                f"Dataset y: labels must lie in [0, {len(self.classes) - 1}] for "
                f"{len(self.classes)} classes"
            )

    # -- shape ---------------------------------------------------------------------------
    @property
    def modality(self) -> str:
        """``"image"`` or ``"text"``."""
        return "image" if isinstance(self.x, torch.Tensor) else "text"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """C×H×W for images, ``None`` for text."""
        return tuple(self.x.shape[1:]) if isinstance(self.x, torch.Tensor) else None

    def __len__(self) -> int:
        return len(self.y)

    def __repr__(self) -> str:
        shape = f", input_shape={self.input_shape}" if self.input_shape else ""
        return (
            f"Dataset(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"modality={self.modality!r}, classes={self.num_classes}{shape})"
        )

    # -- access --------------------------------------------------------------------------
    def __getitem__(self, index):
        """An int gives ``(x_i, y_i)``; a slice, index list or index/boolean tensor gives a Dataset."""
        if isinstance(index, bool):
            raise IndexError("a single bool is not an index; use a boolean mask with one entry per example")
        if isinstance(index, numbers.Integral) or (
            isinstance(index, torch.Tensor) and index.dim() == 0 and not index.is_floating_point()
            and index.dtype != torch.bool
        ):
            i = int(index)
            if not -len(self) <= i < len(self):
                raise IndexError(f"index {i} is out of range for {len(self)} examples")
            return self.x[i], int(self.y[i])
        idx = self._as_index(index)
        if isinstance(self.x, torch.Tensor):
            x = self.x[idx]
        else:
            x = [self.x[i] for i in idx.tolist()]
        return Dataset(x, self.y[idx], list(self.classes), self.name, self.split, dict(self.info))

    def _as_index(self, index) -> torch.Tensor:
        n = len(self)
        if isinstance(index, slice):
            return torch.arange(n)[index]
        if isinstance(index, (list, tuple)) and len(index) == 0:
            return torch.zeros(0, dtype=torch.long)
        try:
            idx = torch.as_tensor(index)
        except (TypeError, ValueError, RuntimeError) as e:
            raise IndexError(
                f"index must be an int, slice, or integer/boolean tensor or list, got {type(index).__name__}"
            ) from e
        if idx.dtype == torch.bool:
            if idx.shape != (n,):
                raise IndexError(f"boolean mask of shape {tuple(idx.shape)} for {n} examples")
            return idx.nonzero().flatten()
        if idx.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
            raise IndexError(f"index must be an int, slice, or integer/boolean tensor, got {idx.dtype}")
        idx = idx.long().flatten()
        if len(idx) and (int(idx.min()) < -n or int(idx.max()) >= n):
            raise IndexError(f"index out of range for {n} examples")
        return idx % n if len(idx) else idx

    def batches(
        self, batch_size: int = 128, *, shuffle: bool = False, seed: int = 0
    ) -> Iterator[tuple[torch.Tensor | list[str], torch.Tensor]]:
        """Yield ``(x, y)`` batches; with ``shuffle`` the order is fixed by ``seed``."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        n = len(self)
        if shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        else:
            order = torch.arange(n)
        for start in range(0, n, batch_size):
            part = self[order[start : start + batch_size]]
            yield part.x, part.y

    def take(self, n: int) -> Dataset:
        """The first ``n`` examples."""
        return self[:n]

    def class_counts(self) -> dict[str, int]:
        counts = torch.bincount(self.y, minlength=self.num_classes).tolist()
        return dict(zip(self.classes, counts))


def from_arrays(
    x: torch.Tensor | Sequence[str],
    y,
    classes: Sequence[str] | None = None,
    *,
    name: str = "",
    split: str = "",
    info: dict | None = None,
) -> Dataset:
    """Build a Dataset from arrays: ``y`` may hold ints or class-name strings."""
    if classes is None and len(y) and isinstance(y[0], str):
        classes = sorted(set(y))
    if classes is not None and len(y) and isinstance(y[0], str):
        lookup = {c: i for i, c in enumerate(classes)}
        y = [lookup[v] for v in y]
    y_t = torch.as_tensor(y, dtype=torch.long)
    if classes is None:
        classes = [str(i) for i in range(int(y_t.max()) + 1 if len(y_t) else 0)]
    x_val = x if isinstance(x, torch.Tensor) else list(x)
    return Dataset(x_val, y_t, [str(c) for c in classes], name, split, dict(info or {}))

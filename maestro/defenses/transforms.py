"""Input (and output) transformations as defenses, wrapped so the defended model is a
:class:`~maestro.wrapper.ModelWrapper` like any other.

Feature squeezing (Xu et al. 2018): ``BitDepthSqueeze(bits)`` rounds each pixel to one of
``2**bits`` levels, ``MedianSmoothing(kernel)`` replaces each pixel by the median of its
``kernel×kernel`` neighbourhood. ``TransformedModel(model, transform)`` is the model
``f(t(x))``. Rounding has zero gradient almost everywhere, so gradient attacks on
``f(t(x))`` fail for the wrong reason (gradient masking): attack it with
:class:`~maestro.attacks.BPDA`, which uses the identity (or a differentiable approximation)
in place of ``t`` on the backward pass (Athalye et al. 2018).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from ..wrapper import ModelWrapper

Transform = Callable[[torch.Tensor], torch.Tensor]


class BitDepthSqueeze(torch.nn.Module):
    """Round every value to ``2**bits`` evenly spaced levels of ``bounds``:
    t(x) = lo + round((x − lo)/(hi − lo) · (2^b − 1)) / (2^b − 1) · (hi − lo)."""

    def __init__(self, bits: int, bounds: tuple[float, float] = (0.0, 1.0)) -> None:
        super().__init__()
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
            raise ValueError(f"bits must be an int in 1..16, got {bits!r}")
        lo, hi = (float(b) for b in bounds)
        if not lo < hi:
            raise ValueError(f"bounds must be (low, high) with low < high, got {bounds!r}")
        self.bits = bits
        self.bounds = (lo, hi)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.bounds
        levels = 2**self.bits - 1
        unit = ((x - lo) / (hi - lo)).clamp(0.0, 1.0)
        return lo + torch.round(unit * levels) / levels * (hi - lo)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


class MedianSmoothing(torch.nn.Module):
    """Median of each ``kernel×kernel`` spatial neighbourhood, per channel (reflect padding;
    for an even kernel the lower median)."""

    def __init__(self, kernel: int = 2) -> None:
        super().__init__()
        if isinstance(kernel, bool) or not isinstance(kernel, int) or kernel < 1:
            raise ValueError(f"kernel must be a positive int, got {kernel!r}")
        self.kernel = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"MedianSmoothing expects N×C×H×W images, got shape {tuple(x.shape)}")
        k = self.kernel
        if k == 1:
            return x
        n, c, h, w = x.shape
        before, after = (k - 1) // 2, k // 2
        mode = "reflect" if min(h, w) > max(before, after) else "replicate"
        padded = F.pad(x, (before, after, before, after), mode=mode)
        patches = F.unfold(padded.reshape(n * c, 1, *padded.shape[2:]), kernel_size=k)  # (NC, k², HW)
        return patches.median(dim=1).values.reshape(n, c, h, w)

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}"


def _as_module(fn, arg: str) -> torch.nn.Module | None:
    if fn is None or isinstance(fn, torch.nn.Module):
        return fn
    if callable(fn):
        return _Lambda(fn)
    raise TypeError(f"{arg}: expected a torch.nn.Module or a callable tensor -> tensor, got {type(fn).__name__}")


class _Lambda(torch.nn.Module):
    def __init__(self, fn: Transform) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return getattr(self.fn, "__name__", repr(self.fn))


class _Composed(torch.nn.Module):
    """``output_transform(base(transform(x)))``; with ``straight_through`` set, both
    transforms keep their forward values but pass gradients through unchanged (BPDA), or
    through ``approximation`` when one is given."""

    def __init__(self, base: torch.nn.Module, transform, output_transform) -> None:
        super().__init__()
        self.base = base
        self.transform = transform
        self.output_transform = output_transform
        self.straight_through = False
        self.approximation: torch.nn.Module | None = None

    def _bypass(self, fn, x, approx=None):
        y = fn(x)
        if not self.straight_through:
            return y
        surrogate = approx(x) if approx is not None else x
        return surrogate + (y - surrogate).detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.transform is not None:
            x = self._bypass(self.transform, x, self.approximation)
        out = self.base(x)
        if self.output_transform is not None:
            out = self._bypass(self.output_transform, out)
        return out


class TransformedModel(ModelWrapper):
    """The defended model ``x ↦ output_transform(f(transform(x)))`` as a ModelWrapper.

    ``model`` is the undefended :class:`ModelWrapper` (white-box: the defender owns it);
    ``transform`` maps an input batch to an input batch (e.g. :class:`BitDepthSqueeze`);
    ``output_transform`` (optional) maps logits to the scores the defended model reports
    (e.g. ``lambda z: 1000 * z.softmax(-1)``, a gradient-masking "defense"). Every method
    of a ModelWrapper works and is counted on this wrapper; ``base`` is the undefended
    wrapper. :meth:`straight_through` is the BPDA switch.
    """

    def __init__(
        self,
        model: ModelWrapper,
        transform: Transform | torch.nn.Module | None = None,
        *,
        output_transform: Transform | torch.nn.Module | None = None,
        access: str | None = None,
        budget: int | None = None,
        name: str | None = None,
    ) -> None:
        if not isinstance(model, ModelWrapper):
            raise TypeError(f"model: expected a maestro ModelWrapper, got {type(model).__name__}")
        if transform is None and output_transform is None:
            raise ValueError("give a transform, an output_transform, or both")
        composed = _Composed(model.model, _as_module(transform, "transform"),
                             _as_module(output_transform, "output_transform"))
        parts = [p for p in (transform, output_transform) if p is not None]
        label = " + ".join(type(p).__name__ if isinstance(p, torch.nn.Module) else getattr(p, "__name__", "fn")
                           for p in parts)
        super().__init__(
            composed,
            modality=model.modality,
            num_classes=model.num_classes,
            input_shape=model.input_shape,
            input_bounds=model.input_bounds,
            access=access or model.access,
            budget=budget,
            batch_size=model.batch_size,
            classes=model.classes,
            name=name or f"{model.name or 'model'} + {label}",
            info={**model.info, "defense": label},
        )
        self.base = model
        self._composed = composed

    @property
    def transform(self) -> torch.nn.Module | None:
        return self._composed.transform

    @property
    def output_transform(self) -> torch.nn.Module | None:
        return self._composed.output_transform

    def restrict(self, access: str, budget: int | None = None) -> TransformedModel:
        """The same defended model at an equal or lower access level, with fresh counters."""
        plain = super().restrict(access, budget)  # checks the access level
        return TransformedModel(self.base, self.transform, output_transform=self.output_transform,
                                access=plain.access, budget=budget, name=self.name)

    @contextmanager
    def straight_through(self, approximation: Transform | torch.nn.Module | None = None):
        """Within this block, gradients bypass the transforms (identity on the backward pass,
        or the gradient of ``approximation`` for the input transform); forward values are
        unchanged. Needs white-box access."""
        self._require("white-box", "straight_through")
        old = (self._composed.straight_through, self._composed.approximation)
        self._composed.straight_through = True
        self._composed.approximation = _as_module(approximation, "approximation")
        try:
            yield self
        finally:
            self._composed.straight_through, self._composed.approximation = old

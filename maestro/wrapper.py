"""One model wrapper for image and text classifiers: logits, gradients, embeddings, access
levels and query budgets.

Image models take float tensors N×C×H×W inside ``input_bounds``. Text models take a
``list[str]`` or a :class:`~maestro.text.TokenBatch`; their gradients are taken with respect to
the input token embeddings (B×T×D). A text module must either be a Hugging Face
sequence-classification model (``get_input_embeddings()`` and ``inputs_embeds=``) or provide
``get_input_embeddings()``, ``forward(input_ids, attention_mask)`` and
``forward_embeds(inputs_embeds, attention_mask)``.

Inputs may live on any device (NumPy arrays too): every method moves them to the model's
device (``device``, set with ``to()``), and the tensors it returns (logits, probabilities,
labels, gradients, embeddings) are on the model's device; compare them with labels there, or
call ``.cpu()``.

Every wrapper owns its counters and lock: any number can run side by side.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from ._account import ACCESS_LEVELS, Accounted, QueryAccount, check_access
from ._account import RANK as _RANK  # noqa: F401  (evaluation imports it from here)
from ._account import check_budget as _check_budget  # noqa: F401  (models imports it from here)
from .text import TokenBatch, as_tokenizer

__all__ = ["ACCESS_LEVELS", "ModelWrapper", "check_access", "margin_loss", "per_example_loss"]

_ALLOWS = {
    "labels": "predict, tokenize, detokenize",
    "scores": "predict, predict_proba, logits, tokenize, detokenize",
    "white-box": "everything: also gradient, embeddings, embedding_matrix, "
    "logits_from_embeddings and the model itself",
}
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class ModelWrapper(Accounted):
    """A classifier behind one interface, with enforced access level and query budget.

    Parameters
    ----------
    module: the ``torch.nn.Module``; it is used in eval mode.
    modality: ``"image"`` or ``"text"``.
    num_classes: number of output classes.
    input_shape: C×H×W for image models (checked on every call).
    input_bounds: the valid input range for image models, default (0, 1).
    tokenizer: for text models, a Maestro or Hugging Face tokenizer.
    access: ``"white-box"`` (all), ``"scores"`` (probabilities/logits) or ``"labels"``.
    budget: maximum number of inputs sent forward (``None``: unlimited).
    batch_size: inputs per forward pass inside one call (any call size is accepted); default
        256 for images, 64 for text.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        *,
        modality: str,
        num_classes: int,
        input_shape: Sequence[int] | None = None,
        input_bounds: tuple[float, float] = (0.0, 1.0),
        tokenizer=None,
        access: str = "white-box",
        budget: int | None = None,
        batch_size: int | None = None,
        classes: Sequence[str] | None = None,
        name: str = "",
        info: dict | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"module: expected a torch.nn.Module, got {type(module).__name__}")
        if modality not in ("image", "text"):
            raise ValueError(f"modality must be 'image' or 'text', got {modality!r}")
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int ≥ 2, got {num_classes!r}")
        if modality == "text" and tokenizer is None:
            raise ValueError("a text model needs its tokenizer: pass tokenizer=...")
        lo, hi = (float(v) for v in input_bounds)
        if not lo < hi:
            raise ValueError(f"input_bounds must be (low, high) with low < high, got {input_bounds!r}")
        if classes is not None and len(classes) != num_classes:
            raise ValueError(f"classes has {len(classes)} names for {num_classes} classes")
        self.__module = module.eval()
        self.__tokenizer = as_tokenizer(tokenizer) if tokenizer is not None else None
        self._modality = modality
        self._num_classes = num_classes
        self._input_shape = tuple(int(s) for s in input_shape) if input_shape is not None else None
        self._bounds = (lo, hi)
        self._account = QueryAccount(access, budget, _ALLOWS)
        # 256 images a pass: lenet-mnist's gradient on CPU takes 30 % less time per image than
        # at 512 (oneDNN's convolutions leave the cache above that), the other zoo models the same
        self.batch_size = int(batch_size or (256 if modality == "image" else 64))
        self.classes = list(classes) if classes is not None else [str(i) for i in range(num_classes)]
        self.name = name
        self.info = dict(info or {})
        if device is not None:
            self.to(device)

    # -- properties ----------------------------------------------------------------------
    @property
    def modality(self) -> str:
        return self._modality

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        return self._input_shape

    @property
    def input_bounds(self) -> tuple[float, float]:
        return self._bounds

    @property
    def device(self) -> torch.device:
        for p in self.__module.parameters():
            return p.device
        for b in self.__module.buffers():
            return b.device
        return torch.device("cpu")

    @property
    def model(self) -> torch.nn.Module:
        """The wrapped module (white-box access only)."""
        self._require("white-box", "model")
        return self.__module

    @property
    def tokenizer(self):
        """The tokenizer of a text model, ``None`` for image models (any access level)."""
        return self.__tokenizer

    def __repr__(self) -> str:
        budget = "unlimited" if self.budget is None else f"{self.remaining}/{self.budget} left"
        return (
            f"ModelWrapper({self.name or type(self.__module).__name__!s}, modality={self._modality}, "
            f"classes={self._num_classes}, access={self.access}, budget={budget}, device={self.device})"
        )

    # -- housekeeping --------------------------------------------------------------------
    def to(self, device: str | torch.device) -> ModelWrapper:
        """Move the model to ``device`` (``"cuda"`` when available, ``"cpu"``); returns self."""
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but torch sees no CUDA GPU; use 'cpu'")
        self.__module.to(device)
        return self

    def reset(self) -> None:
        """Set the query counters back to zero."""
        self._account.reset()

    def restrict(self, access: str, budget: int | None = None) -> ModelWrapper:
        """A new wrapper over the same model at an equal or lower access level, with fresh
        counters and its own ``budget``."""
        return ModelWrapper(
            self.__module,
            modality=self._modality,
            num_classes=self._num_classes,
            input_shape=self._input_shape,
            input_bounds=self._bounds,
            tokenizer=self.__tokenizer,
            access=self._account.lower(access),
            budget=budget,
            batch_size=self.batch_size,
            classes=self.classes,
            name=self.name,
            info=self.info,
        )

    # -- checks --------------------------------------------------------------------------
    def _require(self, level: str, method: str) -> None:
        self._account.require(level, method)

    def _require_text(self, method: str) -> None:
        if self._modality != "text":
            raise TypeError(f"{method}() is for text models; this is an {self._modality} model")

    def _charge(self, n: int, gradient: bool = False):
        """Reserve ``n`` queries before running anything; refund them if the call fails."""
        return self._account.charge(n, gradient)

    def _images(self, x, arg: str = "x") -> torch.Tensor:
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        if not isinstance(x, torch.Tensor):
            kind = "text" if isinstance(x, (str, list, TokenBatch)) else type(x).__name__
            hint = " — pass its inputs, data.x" if hasattr(x, "x") and hasattr(x, "y") else ""
            raise TypeError(f"{arg}: this image model expects a float tensor N×C×H×W, got {kind}{hint}")
        if not x.is_floating_point():
            hint = " — convert with x.float() / 255" if x.dtype == torch.uint8 else ""
            raise TypeError(
                f"{arg}: expected a floating-point tensor with values in {self._bounds}, got {x.dtype}{hint}"
            )
        if self._input_shape is not None and tuple(x.shape[1:]) != self._input_shape:
            hint = ""
            if x.numel() == math.prod(self._input_shape):
                hint = f" — one image without a batch dimension: use x.reshape(1, {', '.join(map(str, self._input_shape))})"
            raise ValueError(
                f"{arg}: expected shape N×{'×'.join(map(str, self._input_shape))}, got "
                f"{'×'.join(map(str, x.shape))}{hint}"
            )
        if x.dim() < 2 or x.shape[0] == 0:
            raise ValueError(f"{arg}: expected a non-empty batch, got shape {tuple(x.shape)}")
        lo, hi = (float(v) for v in torch.aminmax(x))  # one pass; NaN/inf show up in lo or hi
        if not (math.isfinite(lo) and math.isfinite(hi)):
            bad = (~torch.isfinite(x.flatten(1))).any(1).nonzero().flatten()[:5].tolist()
            raise ValueError(f"{arg}: contains NaN or infinite values (examples {bad})")
        blo, bhi = self._bounds
        if lo < blo - 1e-6 or hi > bhi + 1e-6:
            raise ValueError(
                f"{arg}: values must lie in input_bounds [{blo}, {bhi}], got [{lo:.4g}, {hi:.4g}]" + (" — did you forget to divide by 255?" if hi > 1.5 and bhi == 1 else "")
            )
        return x.to(self.device)

    def _tokens(self, x, arg: str = "x") -> TokenBatch:
        if isinstance(x, str):
            raise TypeError(f"{arg}: expected a list of str, got one str: use [{x[:20]!r}...]")
        if isinstance(x, TokenBatch):
            tb = x
        elif isinstance(x, (list, tuple)) and all(isinstance(t, str) for t in x):
            if not x:
                raise ValueError(f"{arg}: expected a non-empty list of str")
            tb = self.__tokenizer.encode(list(x))
        else:
            kind = type(x).__name__ + (f" {tuple(x.shape)}" if hasattr(x, "shape") else "")
            raise TypeError(f"{arg}: this text model expects a list of str or a TokenBatch, got {kind}")
        vocab = self.__tokenizer.vocab_size
        if len(tb) == 0:
            raise ValueError(f"{arg}: expected a non-empty batch")
        if int(tb.input_ids.min()) < 0 or int(tb.input_ids.max()) >= vocab:
            raise ValueError(f"{arg}: token ids must lie in [0, {vocab - 1}]")
        return tb.to(self.device)

    def prepare_inputs(self, x, arg: str = "x"):
        """Validate model inputs (type, shape, finite values, bounds) and move them to the device."""
        return self._images(x, arg) if self._modality == "image" else self._tokens(x, arg)

    def prepare_labels(self, y, n: int, arg: str = "y") -> torch.Tensor:
        """Validate ``n`` integer class labels (or one int for all) and move them to the device."""
        if isinstance(y, np.ndarray):
            y = torch.from_numpy(y)
        if isinstance(y, int):
            y = torch.full((n,), y)
        y = torch.as_tensor(y)
        if y.is_floating_point() or y.dtype == torch.bool:
            raise TypeError(f"{arg}: expected integer class labels, got {y.dtype}")
        if y.shape != (n,):
            raise ValueError(f"{arg}: expected {n} labels (shape ({n},)), got shape {tuple(y.shape)}")
        lo, hi = (int(v) for v in torch.aminmax(y))
        if lo < 0 or hi >= self._num_classes:
            raise ValueError(f"{arg}: labels must lie in [0, {self._num_classes - 1}], got [{lo}, {hi}]")
        return y.long().to(self.device)

    # -- forward passes ------------------------------------------------------------------
    def _forward(self, x) -> torch.Tensor:
        module = self.__module
        if module.training:
            module.eval()
        if self._modality == "image":
            return module(x)
        return _logits_of(module(input_ids=x.input_ids, attention_mask=x.attention_mask))

    def _forward_embeds(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        module = self.__module
        if module.training:
            module.eval()
        if hasattr(module, "forward_embeds"):
            return module.forward_embeds(embeds, mask)
        return _logits_of(module(inputs_embeds=embeds, attention_mask=mask))

    def _backward_ready(self):
        """A context for forward passes that will be differentiated: cuDNN runs the backward
        pass of an RNN (LSTM, GRU) only in training mode, and this model is in eval mode, so on
        a GPU an RNN model's forward goes through torch's own RNN kernels instead (same math;
        cuDNN is switched off process-wide for the length of the call)."""
        if self.device.type == "cuda" and any(isinstance(m, torch.nn.RNNBase) for m in self.__module.modules()):
            return _cudnn_disabled()
        return nullcontext()

    def _chunks(self, n: int):
        for start in range(0, n, self.batch_size):
            yield slice(start, min(n, start + self.batch_size))

    def _logits_unchecked(self, x) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([self._forward(x[s]) for s in self._chunks(len(x))])

    def logits(self, x) -> torch.Tensor:
        """Raw class scores N×K (needs ``scores`` access)."""
        self._require("scores", "logits")
        x = self.prepare_inputs(x)
        with self._charge(len(x)):
            return self._logits_unchecked(x)

    def predict_proba(self, x) -> torch.Tensor:
        """Class probabilities N×K (needs ``scores`` access)."""
        self._require("scores", "predict_proba")
        x = self.prepare_inputs(x)
        with self._charge(len(x)):
            return self._logits_unchecked(x).softmax(-1)

    def predict(self, x) -> torch.Tensor:
        """Predicted labels, a LongTensor of N (any access level)."""
        x = self.prepare_inputs(x)
        with self._charge(len(x)):
            return self._logits_unchecked(x).argmax(-1)

    def gradient(
        self,
        x,
        y,
        loss: str | LossFn = "ce",
        targeted: bool = False,
        *,
        return_logits: bool = False,
    ):
        """∇ of the per-example loss L(f(x), y), summed over the batch (so rows are independent).

        For images: with respect to the pixels (same shape as ``x``). For text: with respect to
        the input token embeddings, B×T×D. ``loss`` is ``"ce"`` (cross-entropy), ``"margin"``
        (best other logit − true logit) or a callable ``(logits, y) -> per-example or scalar
        loss``. With ``targeted=True``, ``y`` holds target classes and the gradient is that of
        −L, so ascending it always moves toward the attacker's goal. With
        ``return_logits=True`` returns ``(gradient, logits)`` from the same forward pass.
        Needs ``white-box`` access.
        """
        self._require("white-box", "gradient")
        loss_fn = _summed_loss(loss)
        x = self.prepare_inputs(x)
        y = self.prepare_labels(y, len(x))
        grads, outs = [], []
        with self._charge(len(x), gradient=True), self._backward_ready():
            for s in self._chunks(len(x)):
                with torch.enable_grad():
                    if self._modality == "image":
                        xs = x[s].detach().requires_grad_(True)
                        out = self._forward(xs)
                    else:
                        xs = self._embed(x[s]).detach().requires_grad_(True)
                        out = self._forward_embeds(xs, x[s].attention_mask)
                    value = loss_fn(out, y[s])
                    if targeted:
                        value = -value
                    # outputs with no gradient path (e.g. a hard one-hot defense) have zero gradient
                    g = torch.autograd.grad(value, xs, allow_unused=True)[0] if value.requires_grad else None
                    if g is None:
                        g = torch.zeros_like(xs)
                grads.append(g)
                if return_logits:
                    outs.append(out.detach())
        grad = grads[0] if len(grads) == 1 else torch.cat(grads)
        if return_logits:
            return grad, torch.cat(outs)
        return grad

    # -- text ----------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> TokenBatch:
        """Token ids and attention mask for ``texts`` (any access level)."""
        self._require_text("tokenize")
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("tokenize(texts): expected a list of str")
        return self.__tokenizer.encode(list(texts))

    def detokenize(self, tokens: TokenBatch | torch.Tensor) -> list[str]:
        """Readable strings back from a TokenBatch or a B×T id tensor (any access level)."""
        self._require_text("detokenize")
        if isinstance(tokens, TokenBatch):
            return self.__tokenizer.decode(tokens.input_ids.cpu(), tokens.attention_mask.cpu())
        if isinstance(tokens, torch.Tensor) and tokens.dim() == 2 and not tokens.is_floating_point():
            return self.__tokenizer.decode(tokens.long().cpu())
        raise TypeError("detokenize(tokens): expected a TokenBatch or a B×T integer tensor")

    def _embedding_layer(self) -> torch.nn.Embedding:
        return self.__module.get_input_embeddings()

    def _embed(self, tb: TokenBatch) -> torch.Tensor:
        return self._embedding_layer()(tb.input_ids)

    def embedding_matrix(self) -> torch.Tensor:
        """The input embedding table V×D, detached (white-box)."""
        self._require_text("embedding_matrix")
        self._require("white-box", "embedding_matrix")
        return self._embedding_layer().weight.detach()

    def embeddings(self, x) -> torch.Tensor:
        """Input token embeddings B×T×D of ``x`` (white-box; sends nothing forward)."""
        self._require_text("embeddings")
        self._require("white-box", "embeddings")
        with torch.no_grad():
            return self._embed(self._tokens(x))

    def logits_from_embeddings(self, embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits N×K from input token embeddings B×T×D (white-box)."""
        self._require_text("logits_from_embeddings")
        self._require("white-box", "logits_from_embeddings")
        dim = self._embedding_layer().embedding_dim
        if not isinstance(embeds, torch.Tensor) or embeds.dim() != 3 or embeds.shape[-1] != dim:
            raise ValueError(f"embeds: expected a float tensor B×T×{dim}")
        if not torch.isfinite(embeds).all():
            raise ValueError("embeds: contains NaN or infinite values")
        mask = torch.as_tensor(attention_mask)
        if mask.shape != embeds.shape[:2]:
            raise ValueError(f"attention_mask: expected shape {tuple(embeds.shape[:2])}, got {tuple(mask.shape)}")
        embeds, mask = embeds.to(self.device), mask.to(self.device)
        differentiable = torch.is_grad_enabled() and embeds.requires_grad
        with self._charge(len(embeds)), self._backward_ready() if differentiable else nullcontext():
            return torch.cat(
                [self._forward_embeds(embeds[s], mask[s]) for s in self._chunks(len(embeds))]
            )


#: cuDNN's switch is one flag for the whole process: wrappers in several threads count their
#: holds, so that the last one out (not the first) switches it back to what it was
_CUDNN_OFF = {"lock": threading.Lock(), "holds": 0, "was": True}


@contextmanager
def _cudnn_disabled():
    with _CUDNN_OFF["lock"]:
        if _CUDNN_OFF["holds"] == 0:
            _CUDNN_OFF["was"] = torch.backends.cudnn.enabled
            torch.backends.cudnn.enabled = False
        _CUDNN_OFF["holds"] += 1
    try:
        yield
    finally:
        with _CUDNN_OFF["lock"]:
            _CUDNN_OFF["holds"] -= 1
            if _CUDNN_OFF["holds"] == 0:
                torch.backends.cudnn.enabled = _CUDNN_OFF["was"]


def _logits_of(out) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example margin: best other logit − true logit (positive once misclassified)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return other - true


def per_example_loss(loss: str | LossFn) -> LossFn:
    """The loss per example: ``"ce"`` (cross-entropy), ``"margin"`` or a callable ``(logits, y)``."""
    if loss == "ce":
        return lambda logits, y: F.cross_entropy(logits, y, reduction="none")
    if loss == "margin":
        return margin_loss
    if callable(loss):
        return loss
    raise ValueError(f"loss must be 'ce', 'margin' or a callable (logits, y) -> loss; got {loss!r}")


def _summed_loss(loss: str | LossFn) -> LossFn:
    """The loss summed over a batch (so each row's gradient is its own); CE in one fused call."""
    if loss == "ce":
        return lambda logits, y: F.cross_entropy(logits, y, reduction="sum")
    per = per_example_loss(loss)
    return lambda logits, y: per(logits, y).sum()

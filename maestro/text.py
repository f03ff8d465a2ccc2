"""Token batches and tokenizers: one interface for the kit's word tokenizer and Hugging Face's.

A tokenizer here has ``encode(texts) -> TokenBatch``, ``decode(ids) -> list[str]``,
``id_to_token``/``token_to_id``, ``vocab_size``, ``pad_id`` and ``special_ids`` (ids an attack
must never insert). :func:`as_tokenizer` adapts a Hugging Face tokenizer to it.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class TokenBatch:
    """Token ids B×T and the attention mask B×T (1 for real tokens, 0 for padding)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    def __post_init__(self) -> None:
        ids, mask = self.input_ids, self.attention_mask
        if not isinstance(ids, torch.Tensor) or ids.dtype != torch.long or ids.dim() != 2:
            raise TypeError("TokenBatch.input_ids: expected a B×T LongTensor")
        if not isinstance(mask, torch.Tensor) or mask.shape != ids.shape:
            raise TypeError(
                f"TokenBatch.attention_mask: expected shape {tuple(ids.shape)}, "
                f"got {tuple(getattr(mask, 'shape', ()))}"
            )

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, index) -> TokenBatch:
        if isinstance(index, int):
            index = slice(index, index + 1)
        return TokenBatch(self.input_ids[index], self.attention_mask[index])

    @property
    def lengths(self) -> torch.Tensor:
        return self.attention_mask.sum(1)

    def to(self, device) -> TokenBatch:
        return TokenBatch(self.input_ids.to(device), self.attention_mask.to(device))

    @staticmethod
    def cat(parts: Sequence[TokenBatch], pad_id: int = 0) -> TokenBatch:
        """Concatenate batches, padding to the longest."""
        width = max(p.input_ids.shape[1] for p in parts)
        ids, masks = [], []
        for p in parts:
            extra = width - p.input_ids.shape[1]
            ids.append(torch.nn.functional.pad(p.input_ids, (0, extra), value=pad_id))
            masks.append(torch.nn.functional.pad(p.attention_mask, (0, extra), value=0))
        return TokenBatch(torch.cat(ids), torch.cat(masks))


_WORD = re.compile(r"[#@]?[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")
_NO_SPACE_BEFORE = set(".,!?;:)'%")
_NO_SPACE_AFTER = set("($")


class WordTokenizer:
    """Lower-case word tokenizer with a fixed vocabulary (saved as JSON, never pickled).

    Id 0 is ``[PAD]`` and id 1 ``[UNK]``; words seen fewer than ``min_freq`` times in the
    training texts map to ``[UNK]``.
    """

    PAD, UNK = "[PAD]", "[UNK]"

    def __init__(self, vocab: Sequence[str], max_length: int = 64) -> None:
        vocab = list(vocab)
        if vocab[:2] != [self.PAD, self.UNK]:
            raise ValueError("WordTokenizer vocab must start with [PAD], [UNK]")
        if len(set(vocab)) != len(vocab):
            raise ValueError("WordTokenizer vocab has duplicate entries")
        self.vocab = vocab
        self.index = {w: i for i, w in enumerate(vocab)}
        self.max_length = int(max_length)
        self.pad_id, self.unk_id = 0, 1
        self.special_ids = (0, 1)

    @classmethod
    def fit(
        cls, texts: Iterable[str], *, min_freq: int = 2, max_size: int = 20000, max_length: int = 64
    ) -> WordTokenizer:
        counts = Counter(w for t in texts for w in cls.split(t))
        words = [w for w, c in counts.most_common() if c >= min_freq][: max_size - 2]
        return cls([cls.PAD, cls.UNK, *sorted(words)], max_length=max_length)

    @staticmethod
    def split(text: str) -> list[str]:
        return _WORD.findall(text.lower())

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def token_to_id(self, token: str) -> int:
        return self.index.get(token, self.unk_id)

    def id_to_token(self, i: int) -> str:
        return self.vocab[i]

    def encode(self, texts: Sequence[str]) -> TokenBatch:
        rows = [[self.token_to_id(w) for w in self.split(t)][: self.max_length] or [self.unk_id] for t in texts]
        width = max((len(r) for r in rows), default=1)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return TokenBatch(ids, mask)

    def decode(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> list[str]:
        out = []
        mask = attention_mask if attention_mask is not None else (ids != self.pad_id)
        for row, m in zip(ids.tolist(), mask.tolist()):
            words = [self.vocab[i] for i, keep in zip(row, m) if keep and i != self.pad_id]
            out.append(_join_words(words))
        return out

    def to_json(self) -> dict:
        return {"kind": "word", "vocab": self.vocab, "max_length": self.max_length}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json()))

    @classmethod
    def load(cls, path: str | Path) -> WordTokenizer:
        data = json.loads(Path(path).read_text())
        if data.get("kind") != "word":
            raise ValueError(f"{path}: not a Maestro word-tokenizer file")
        return cls(data["vocab"], max_length=data.get("max_length", 64))


def _join_words(words: list[str]) -> str:
    text = ""
    for w in words:
        if text and not (w in _NO_SPACE_BEFORE or w.startswith("'") or text[-1] in _NO_SPACE_AFTER):
            text += " "
        text += w
    return text


class HFTokenizer:
    """A Hugging Face tokenizer seen through Maestro's tokenizer interface."""

    def __init__(self, tokenizer, max_length: int = 128) -> None:
        self.hf = tokenizer
        self.max_length = int(max_length)
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else 0)
        self.special_ids = tuple(sorted(set(tokenizer.all_special_ids)))

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def token_to_id(self, token: str) -> int:
        return int(self.hf.convert_tokens_to_ids(token))

    def id_to_token(self, i: int) -> str:
        return self.hf.convert_ids_to_tokens(int(i))

    def encode(self, texts: Sequence[str]) -> TokenBatch:
        enc = self.hf(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return TokenBatch(enc["input_ids"].long(), enc["attention_mask"].long())

    def decode(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> list[str]:
        mask = attention_mask if attention_mask is not None else torch.ones_like(ids)
        rows = [[i for i, k in zip(r, m) if k] for r, m in zip(ids.tolist(), mask.tolist())]
        return [s.strip() for s in self.hf.batch_decode(rows, skip_special_tokens=True)]


def as_tokenizer(tokenizer, max_length: int | None = None):
    """Return ``tokenizer`` in Maestro's interface (adapting a Hugging Face tokenizer)."""
    if isinstance(tokenizer, (WordTokenizer, HFTokenizer)):
        return tokenizer
    if hasattr(tokenizer, "encode") and hasattr(tokenizer, "decode") and hasattr(tokenizer, "pad_id"):
        return tokenizer  # already speaks our interface
    if hasattr(tokenizer, "convert_ids_to_tokens") and hasattr(tokenizer, "batch_decode"):
        return HFTokenizer(tokenizer, max_length=max_length or 128)
    raise TypeError(
        f"tokenizer: expected a Maestro tokenizer or a Hugging Face tokenizer, got {type(tokenizer).__name__}"
    )


def tokenizer_to_json(tokenizer) -> dict:
    """A tokenizer as plain JSON data (never code): what a remote client needs to tokenize
    exactly as the served model does. A :class:`WordTokenizer` gives its vocabulary; a fast
    Hugging Face tokenizer its ``tokenizer.json`` and special tokens."""
    if getattr(tokenizer, "chat_template", None) and getattr(tokenizer, "is_fast", False):
        # a chat model's Hugging Face tokenizer, with its chat template (also data: Jinja text)
        return {"kind": "hf-chat", "tokenizer_json": tokenizer.backend_tokenizer.to_str(),
                "special_tokens": {k: str(v) for k, v in tokenizer.special_tokens_map.items()
                                   if isinstance(v, str)},
                "chat_template": tokenizer.chat_template}
    tokenizer = as_tokenizer(tokenizer)
    if isinstance(tokenizer, WordTokenizer):
        return tokenizer.to_json()
    if isinstance(tokenizer, HFTokenizer) and getattr(tokenizer.hf, "is_fast", False):
        hf = tokenizer.hf
        return {"kind": "hf-fast", "tokenizer_json": hf.backend_tokenizer.to_str(),
                "special_tokens": {k: str(v) for k, v in hf.special_tokens_map.items() if isinstance(v, str)},
                "max_length": tokenizer.max_length}
    raise TypeError(f"{type(tokenizer).__name__} cannot be sent as data: only Maestro word tokenizers "
                    "and fast Hugging Face tokenizers can")


def tokenizer_from_json(data: dict):
    """The tokenizer :func:`tokenizer_to_json` described (a real, local one)."""
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind == "word":
        return WordTokenizer(data["vocab"], max_length=data.get("max_length", 64))
    if kind in ("hf-fast", "hf-chat"):
        from tokenizers import Tokenizer
        from transformers import PreTrainedTokenizerFast

        hf = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(data["tokenizer_json"]),
                                     **data.get("special_tokens", {}))
        if kind == "hf-chat":  # a chat model's: the Hugging Face tokenizer itself
            hf.chat_template = str(data["chat_template"])
            return hf
        return HFTokenizer(hf, max_length=int(data.get("max_length", 128)))
    raise ValueError(f"not a tokenizer description (kind {kind!r}; expected 'word', 'hf-fast' or "
                     "'hf-chat')")

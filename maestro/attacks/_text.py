"""Shared pieces of the text attacks: the text-attack base class, the words an attack may insert,
token ↔ character alignment, and string edits that cost exactly one counted token each.

Text attacks take ``list[str]`` (or a :class:`~maestro.text.TokenBatch`, turned into strings
first) and return ``list[str]``. The threat model counts word-level edits on strings (units
``\\w+`` or one punctuation mark, see :mod:`maestro.threat`), so an attack only edits model
tokens that cover exactly one such unit, and only inserts vocabulary tokens that *are* one such
unit and re-encode to themselves. Each swap then costs exactly one edit, the rest of the
original string (case, words outside the model's vocabulary) is kept as it was, and every
inserted token is a real vocabulary token, never a special token such as ``[PAD]``/``[UNK]``.
"""

from __future__ import annotations

import torch

from ..text import HFTokenizer, TokenBatch, WordTokenizer
from ..threat import _WORDS
from .base import Attack


class TextAttack(Attack):
    """Base class of the text attacks: string inputs and outputs, eps counted in tokens."""

    modalities = ("text",)
    norms = ("tokens",)

    def __init__(self, threat, *, targeted: bool = False, seed: int = 0) -> None:
        super().__init__(threat, targeted=targeted, seed=seed)
        if threat.eps < 1:
            raise ValueError(
                f"{self.name}: ThreatModel eps counts tokens an attack may change; it must be ≥ 1, "
                f"got {threat.eps:g}"
            )
        if threat.vocab is not None and not all(isinstance(w, str) for w in threat.vocab):
            raise ValueError(
                f"{self.name} returns strings, which the threat model checks word by word: give "
                "ThreatModel(vocab=...) as words, e.g. [model.tokenizer.id_to_token(i) for i in ids]"
            )
        self._vocab_cache: dict[int, torch.Tensor] = {}

    @property
    def eps(self) -> int:
        return int(self.threat.eps)

    def _check_model(self, model) -> None:
        if getattr(model, "modality", None) == "image":
            raise TypeError(
                f"{self.name} is a text attack: text attacks on image models are not possible; "
                "use an image attack (FGSM, PGD, ...) instead"
            )
        super()._check_model(model)

    def _check_inputs(self, model, x) -> list[str]:
        tb = model.prepare_inputs(x, "x")  # validates type and token ids
        return model.detokenize(tb) if isinstance(x, TokenBatch) else list(x)

    def allowed_tokens(self, tokenizer) -> torch.Tensor:
        """Bool mask over the vocabulary: tokens this attack may insert (cached per tokenizer)."""
        key = id(tokenizer)
        if key not in self._vocab_cache:
            self._vocab_cache = {key: insertable_tokens(tokenizer, self.threat.vocab)}
        return self._vocab_cache[key]

    def _finish(self, x: list[str], x_adv: list[str]) -> list[str]:
        """Return ``x_adv`` with any example the threat model would reject put back to clean
        (a safety net: the edits are built to pass, this guarantees it)."""
        bad = ~self.threat.valid(x, x_adv)
        return [x[i] if bad[i] else a for i, a in enumerate(x_adv)]


def token_surface(tokenizer, i: int) -> str:
    return str(tokenizer.id_to_token(int(i)))


def special_ids(tokenizer) -> set[int]:
    """Ids an attack never inserts: the tokenizer's special tokens and its unknown token."""
    special = {int(s) for s in getattr(tokenizer, "special_ids", ())}
    unk = getattr(tokenizer, "unk_id", None)
    if unk is not None:
        special.add(int(unk))
    return special


def insertable_tokens(tokenizer, vocab: frozenset | None = None) -> torch.Tensor:
    """Bool mask V: tokens that are one word (or one punctuation mark), not special, allowed by
    ``vocab`` (words; ``None``: all), and that re-encode to exactly themselves."""
    n = tokenizer.vocab_size
    special = special_ids(tokenizer)
    ids, words = [], []
    for i in range(n):
        if i in special:
            continue
        w = token_surface(tokenizer, i)
        if _WORDS.fullmatch(w) is None or (vocab is not None and w not in vocab):
            continue
        ids.append(i)
        words.append(w)
    mask = torch.zeros(n, dtype=torch.bool)
    if not ids:
        return mask
    for start in range(0, len(words), 4096):
        chunk_ids, chunk = ids[start : start + 4096], words[start : start + 4096]
        tb = tokenizer.encode(chunk)
        for i, row, m in zip(chunk_ids, tb.input_ids.tolist(), tb.attention_mask.tolist()):
            kept = [t for t, k in zip(row, m) if k and t not in special]
            if kept == [i]:
                mask[i] = True
    return mask


def token_spans(tokenizer, texts: list[str], tb: TokenBatch) -> list[list[tuple[int, int] | None]]:
    """Character span in ``texts[b]`` of each token position of ``tb`` (``None``: none, e.g.
    padding or special tokens)."""
    width = tb.input_ids.shape[1]
    out: list[list[tuple[int, int] | None]] = []
    if isinstance(tokenizer, WordTokenizer):
        from ..text import _WORD

        for t in texts:
            low = t.lower()
            spans: list[tuple[int, int] | None] = []
            if len(low) == len(t):  # lower() kept character positions
                spans = [m.span() for m in _WORD.finditer(low)][: tokenizer.max_length]
            out.append((spans + [None] * width)[:width])
        return out
    if isinstance(tokenizer, HFTokenizer) and getattr(tokenizer.hf, "is_fast", False):
        enc = tokenizer.hf(
            list(texts), padding=True, truncation=True, max_length=tokenizer.max_length,
            return_offsets_mapping=True,
        )
        for ids, offs, row in zip(enc["input_ids"], enc["offset_mapping"], tb.input_ids.tolist()):
            if list(ids) != row[: len(ids)]:
                out.append([None] * width)
                continue
            spans = [tuple(o) if o[1] > o[0] else None for o in offs]
            out.append((spans + [None] * width)[:width])
        return out
    raise TypeError(
        "text attacks need a maestro WordTokenizer or a fast Hugging Face tokenizer to map tokens "
        f"back to the text; got {type(tokenizer).__name__}"
    )


def editable_positions(texts: list[str], spans, tb: TokenBatch, special_ids) -> torch.Tensor:
    """Bool B×T: real (non-padding, non-special) tokens whose span is exactly one counted unit
    of the string, so swapping them costs exactly one edit."""
    mask = torch.zeros(tb.input_ids.shape, dtype=torch.bool)
    special = {int(s) for s in special_ids}
    ids, att = tb.input_ids.tolist(), tb.attention_mask.tolist()
    for b, text in enumerate(texts):
        units = {m.span() for m in _WORDS.finditer(text)}
        for t, span in enumerate(spans[b]):
            if span is not None and att[b][t] and ids[b][t] not in special and span in units:
                mask[b, t] = True
    return mask


def replace_spans(text: str, edits: list[tuple[int, int, str]]) -> str:
    """``text`` with each (start, end, word) span replaced by ``word``, adding a space where the
    word would otherwise run into its neighbours (so it stays one unit)."""
    for start, end, word in sorted(edits, reverse=True):
        left = " " if start > 0 and _joins(text[start - 1], "#@") else ""
        right = " " if end < len(text) and _joins(text[end], "") else ""
        text = text[:start] + left + word + right + text[end:]
    return text


def _joins(char: str, extra: str) -> bool:
    """Whether a word next to ``char`` could merge with it into one token."""
    return char.isalnum() or char == "_" or char in extra

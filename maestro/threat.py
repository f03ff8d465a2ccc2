"""The one threat-model validator: attacks, ``evaluate``, the autograder and the server all use it.

``ThreatModel(norm, eps, bounds, query_budget, access)`` says what an adversary may do;
``check(x, x_adv)`` raises :class:`~maestro.errors.ThreatModelViolation` naming each example
that breaks each rule (shape, dtype, finite values, bounds, norm ≤ eps + atol), and
``violations`` returns the same findings as data for a grader to score.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import ThreatModelViolation
from .text import TokenBatch
from .wrapper import check_access

NORMS = ("linf", "l2", "l0", "tokens", "suffix")
_NAMES = {"linf": "L∞", "l2": "L2", "l0": "L0 (changed values)", "tokens": "changed tokens",
          "suffix": "suffix tokens"}
_WORDS = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True)
class Violation:
    """One broken rule: ``rule`` in shape/dtype/finite/bounds/norm/vocab, the offending
    example indices (empty when the whole input is wrong) and a sentence saying what is wrong."""

    rule: str
    indices: tuple[int, ...]
    detail: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.detail}"


def valid_rows(violations, n: int) -> torch.Tensor:
    """Per-example boolean mask of ``n`` examples from :meth:`ThreatModel.violations`: True
    where the example breaks no rule (all False when a violation concerns the whole input)."""
    mask = torch.ones(n, dtype=torch.bool)
    for v in violations:
        if not v.indices:
            return torch.zeros(n, dtype=torch.bool)
        mask[list(v.indices)] = False
    return mask


@dataclass(frozen=True)
class ThreatModel:
    """What the adversary may change.

    ``norm``: ``"linf"``, ``"l2"``, ``"l0"`` (images, eps in pixel units of ``bounds``),
    ``"tokens"`` (text: eps = most tokens changed, inserted or deleted per example) or
    ``"suffix"`` (chat models: ``x_adv`` is the adversarial text put in each prompt's slot, at
    most eps tokens of ``tokenizer``, none of them a special or control token, and reading back
    as the same tokens — so no template escape such as a fake end of turn).
    ``vocab``: for ``tokens``, the token ids (or words, for string inputs) an attack may insert.
    ``tokenizer``: for ``suffix``, the chat model's tokenizer (``ChatModel.tokenizer``).
    ``dtype``: a required floating dtype for image inputs (``None``: any floating dtype).
    """

    norm: str
    eps: float
    bounds: tuple[float, float] = (0.0, 1.0)
    query_budget: int | None = None
    access: str = "white-box"
    vocab: frozenset | None = field(default=None, repr=False)
    dtype: torch.dtype | None = None
    atol: float = 1e-6
    tokenizer: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"ThreatModel norm must be one of {', '.join(NORMS)}; got {self.norm!r}")
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float)) or not math.isfinite(self.eps):
            raise TypeError(f"ThreatModel eps must be a finite number, got {self.eps!r}")
        if self.eps < 0:
            raise ValueError(f"ThreatModel eps must be ≥ 0, got {self.eps}")
        if self.norm in ("l0", "tokens", "suffix") and float(self.eps) != int(self.eps):
            raise ValueError(f"ThreatModel eps counts {_NAMES[self.norm]} for norm={self.norm!r}: use a whole number")
        try:
            lo, hi = (float(b) for b in self.bounds)
        except (TypeError, ValueError):
            raise TypeError(f"ThreatModel bounds must be (low, high), got {self.bounds!r}") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"ThreatModel bounds must be finite with low < high, got {self.bounds!r}")
        object.__setattr__(self, "bounds", (lo, hi))
        if self.norm == "linf" and self.eps > (hi - lo) + self.atol:
            raise ValueError(
                f"ThreatModel eps={self.eps:g} is larger than the whole input range {hi - lo:g} of bounds "
                f"{(lo, hi)}: eps is in input units — for pixels in [0, 1], 8/255 is written eps={8 / 255:.4f}"
            )
        if self.query_budget is not None and (
            isinstance(self.query_budget, bool) or not isinstance(self.query_budget, int) or self.query_budget < 0
        ):
            raise ValueError(f"ThreatModel query_budget must be a non-negative int or None, got {self.query_budget!r}")
        check_access(self.access)
        if self.vocab is not None:
            if self.norm != "tokens":
                raise ValueError("ThreatModel vocab applies only to norm='tokens'")
            object.__setattr__(self, "vocab", frozenset(self.vocab))
        if (self.norm == "suffix") != (self.tokenizer is not None):
            raise ValueError("ThreatModel: norm='suffix' needs tokenizer=<the chat model's tokenizer> "
                             "(and tokenizer= is for that norm only)")
        if self.dtype is not None and not (isinstance(self.dtype, torch.dtype) and self.dtype.is_floating_point):
            raise TypeError(f"ThreatModel dtype must be a floating torch dtype, got {self.dtype!r}")

    @property
    def is_text(self) -> bool:
        return self.norm in ("tokens", "suffix")

    def describe(self) -> str:
        unit = "tokens" if self.is_text else f"in {_NAMES[self.norm]}, inputs in [{self.bounds[0]:g}, {self.bounds[1]:g}]"
        parts = [f"eps={self.eps:g} {unit}", f"access={self.access}"]
        if self.query_budget is not None:
            parts.append(f"query budget {self.query_budget}")
        return f"{self.norm} threat model: " + ", ".join(parts)

    # -- norms and projection (images) ---------------------------------------------------
    def norms(self, x, x_adv) -> torch.Tensor:
        """Per-example distance between ``x`` and ``x_adv`` in this threat model's norm."""
        if self.norm == "suffix":
            return torch.tensor([float(len(_suffix_ids(self.tokenizer, a))) for a in x_adv])
        if self.is_text:
            return torch.tensor([float(d) for d in _token_distances(x, x_adv)])
        x, x_adv = _as_tensor(x), _as_tensor(x_adv)
        return _image_norms(self.norm, x, x_adv, self.atol)

    def project(self, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        """The closest point to ``x_adv`` (for linf/l2 exactly) inside the ball and the bounds."""
        if self.is_text:
            raise TypeError("project() is for image threat models; token edits are counted, not projected")
        delta = x_adv - x
        if self.norm == "linf":
            delta = delta.clamp(-self.eps, self.eps)
        elif self.norm == "l2":
            n = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
            delta = delta * (self.eps / n).clamp(max=1.0).view(-1, *([1] * (x.dim() - 1)))
        elif self.norm == "l0":
            k = int(self.eps)
            flat = delta.flatten(1)
            if k < flat.shape[1]:
                keep = flat.abs().topk(k, dim=1).indices if k else flat[:, :0].long()
                mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, keep, True)
                delta = (flat * mask).view_as(delta)
        return (x + delta).clamp(*self.bounds)

    def check_inputs(self, x, arg: str = "x") -> None:
        """Raise ``ValueError`` when clean image inputs lie outside ``bounds`` (they must match)."""
        if self.is_text:
            return
        t = _as_tensor(x)
        lo, hi = float(t.min()), float(t.max())
        if lo < self.bounds[0] - self.atol or hi > self.bounds[1] + self.atol:
            raise ValueError(
                f"{arg}: values lie in [{lo:.4g}, {hi:.4g}] but the threat model's bounds are "
                f"{self.bounds}; set ThreatModel(bounds=...) to the data's range"
            )

    # -- validation ----------------------------------------------------------------------
    def violations(self, x, x_adv) -> list[Violation]:
        """Every rule ``x_adv`` breaks, as data (empty when it is valid)."""
        if self.norm == "suffix":
            return _suffix_violations(self, x, x_adv)
        return _text_violations(self, x, x_adv) if self.is_text else _image_violations(self, x, x_adv)

    def valid(self, x, x_adv) -> torch.Tensor:
        """Per-example boolean mask: True where the example breaks no rule."""
        return valid_rows(self.violations(x, x_adv), len(x))

    def check(self, x, x_adv) -> None:
        """Raise :class:`ThreatModelViolation` listing which examples broke which rule."""
        found = self.violations(x, x_adv)
        if found:
            lines = "\n".join(f"  - {v}" for v in found)
            raise ThreatModelViolation(
                f"x_adv breaks the {self.describe()}:\n{lines}", violations=found
            )


# -- images ------------------------------------------------------------------------------
def _as_tensor(x) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        if x.dtype == object:
            raise TypeError("expected a numeric array, got an object array")
        return torch.from_numpy(np.ascontiguousarray(x))
    if isinstance(x, torch.Tensor):
        return x.detach()
    raise TypeError(f"expected a tensor or numpy array, got {type(x).__name__}")


def _image_norms(norm: str, x: torch.Tensor, x_adv: torch.Tensor, atol: float) -> torch.Tensor:
    delta = (x_adv.double() - x.double()).flatten(1)
    if norm == "linf":
        return delta.abs().amax(1) if delta.shape[1] else torch.zeros(len(delta), dtype=torch.double)
    if norm == "l2":
        return delta.norm(dim=1)
    return (delta.abs() > atol).sum(1).double()


def _listed(indices: torch.Tensor, limit: int = 10) -> tuple[tuple[int, ...], str]:
    idx = tuple(int(i) for i in indices.tolist())
    shown = ", ".join(map(str, idx[:limit])) + (f" (+{len(idx) - limit} more)" if len(idx) > limit else "")
    return idx, f"example{'s' if len(idx) > 1 else ''} {shown}"


def _image_violations(tm: ThreatModel, x, x_adv) -> list[Violation]:
    try:
        x = _as_tensor(x)
    except TypeError as err:
        raise TypeError(f"x (clean inputs): {err}") from None
    try:
        x_adv = _as_tensor(x_adv)
    except TypeError as err:
        return [Violation("dtype", (), f"x_adv: {err}")]
    if x_adv.shape != x.shape:
        return [Violation("shape", (), f"x_adv has shape {tuple(x_adv.shape)}, expected {tuple(x.shape)}")]
    if not x_adv.is_floating_point():
        return [Violation("dtype", (), f"x_adv has dtype {x_adv.dtype}; expected floating point values in {tm.bounds}")]
    if tm.dtype is not None and x_adv.dtype != tm.dtype:
        return [Violation("dtype", (), f"x_adv has dtype {x_adv.dtype}; expected {tm.dtype}")]
    if x.shape[0] == 0:
        return []
    found: list[Violation] = []
    flat = x_adv.flatten(1)
    bad = ~torch.isfinite(flat).all(1)
    if bad.any():
        idx, text = _listed(bad.nonzero().flatten())
        found.append(Violation("finite", idx, f"{text}: NaN or infinite values"))
    lo, hi = tm.bounds
    finite = torch.where(torch.isfinite(flat), flat, torch.full_like(flat, lo))
    out = (finite < lo - tm.atol).any(1) | (finite > hi + tm.atol).any(1)
    if out.any():
        idx, text = _listed(out.nonzero().flatten())
        found.append(
            Violation("bounds", idx, f"{text}: values outside [{lo:g}, {hi:g}] "
                      f"(range seen: [{float(finite.min()):.4g}, {float(finite.max()):.4g}])")
        )
    norms = _image_norms(tm.norm, x, torch.where(torch.isfinite(x_adv), x_adv, x), tm.atol)
    over = norms > tm.eps + tm.atol
    if over.any():
        idx, text = _listed(over.nonzero().flatten())
        found.append(
            Violation("norm", idx, f"{text}: {_NAMES[tm.norm]} distance up to "
                      f"{float(norms.max()):.6g} > eps {tm.eps:g}")
        )
    return found


# -- text --------------------------------------------------------------------------------
def _token_rows(x) -> list[list]:
    if isinstance(x, TokenBatch):
        return [[i for i, m in zip(r, k) if m] for r, k in zip(x.input_ids.tolist(), x.attention_mask.tolist())]
    if isinstance(x, torch.Tensor) and x.dim() == 2 and not x.is_floating_point():
        return x.tolist()
    if isinstance(x, Sequence) and not isinstance(x, str) and all(isinstance(t, str) for t in x):
        return [_WORDS.findall(t) for t in x]
    raise TypeError("text inputs must be a list of str, a TokenBatch or a B×T integer tensor")


def _edits(a: list, b: list) -> tuple[int, list]:
    """Levenshtein distance between token lists and the tokens ``b`` brings in (subs/inserts)."""
    n, m = len(a), len(b)
    prev = list(range(m + 1))
    rows = [prev]
    for i in range(1, n + 1):
        cur = [i] + [0] * m
        for j in range(1, m + 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1]))
        rows.append(cur)
        prev = cur
    new, i, j = [], n, m
    while i > 0 or j > 0:  # walk back to find the tokens that x_adv introduced
        if i > 0 and j > 0 and rows[i][j] == rows[i - 1][j - 1] + (a[i - 1] != b[j - 1]):
            if a[i - 1] != b[j - 1]:
                new.append(b[j - 1])
            i, j = i - 1, j - 1
        elif j > 0 and rows[i][j] == rows[i][j - 1] + 1:
            new.append(b[j - 1])
            j -= 1
        else:
            i -= 1
    return rows[n][m], new


def _token_distances(x, x_adv) -> list[int]:
    return [_edits(a, b)[0] for a, b in zip(_token_rows(x), _token_rows(x_adv))]


def _text_violations(tm: ThreatModel, x, x_adv) -> list[Violation]:
    clean = _token_rows(x)
    try:
        adv = _token_rows(x_adv)
    except TypeError as err:
        return [Violation("dtype", (), f"x_adv: {err}")]
    if len(adv) != len(clean):
        return [Violation("shape", (), f"x_adv has {len(adv)} examples, expected {len(clean)}")]
    over, foreign, worst = [], [], 0
    for i, (a, b) in enumerate(zip(clean, adv)):
        dist, new = _edits(a, b)
        worst = max(worst, dist)
        if dist > tm.eps:
            over.append(i)
        if tm.vocab is not None and any(t not in tm.vocab for t in new):
            foreign.append(i)
    found = []
    if over:
        idx, text = _listed(torch.tensor(over))
        found.append(Violation("norm", idx, f"{text}: up to {worst} tokens changed > eps {int(tm.eps)}"))
    if foreign:
        idx, text = _listed(torch.tensor(foreign))
        found.append(Violation("vocab", idx, f"{text}: tokens inserted from outside the allowed vocabulary"))
    return found


# -- chat suffixes -------------------------------------------------------------------------
def _suffix_ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def special_token_ids(tokenizer) -> frozenset:
    """The ids of a Hugging Face tokenizer's special and added tokens (``<|im_end|>`` and kin)."""
    ids = set(getattr(tokenizer, "all_special_ids", ()) or ())
    ids |= set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    return frozenset(int(i) for i in ids)


def bad_suffix_text(text: str) -> bool:
    """True where a suffix's text holds control characters (a newline and a tab excepted) or
    lone surrogates: the text rule of the ``"suffix"`` norm."""
    return any(unicodedata.category(ch) in ("Cc", "Cs") and ch not in "\n\t" for ch in text)


def clean_suffix_ids(tokenizer, ids: list[int], special: frozenset | None = None) -> bool:
    """True where suffix tokens ``ids`` hold no special token, decode to text without control
    characters (:func:`bad_suffix_text`) and read back as the same ids: what a suffix handed in
    as text must satisfy to mean the same tokens (``special``: the tokenizer's
    :func:`special_token_ids`, if already known)."""
    special = special_token_ids(tokenizer) if special is None else special
    if any(t in special for t in ids):
        return False
    text = tokenizer.decode(ids)
    return not bad_suffix_text(text) and _suffix_ids(tokenizer, text) == list(ids)


def _suffix_violations(tm: ThreatModel, x, x_adv) -> list[Violation]:
    if isinstance(x_adv, str) or not isinstance(x_adv, Sequence) or not all(isinstance(a, str) for a in x_adv):
        return [Violation("dtype", (), "x_adv: expected a list of str (one suffix per prompt)")]
    if len(x_adv) != len(x):
        return [Violation("shape", (), f"x_adv has {len(x_adv)} suffixes, expected {len(x)}")]
    special = special_token_ids(tm.tokenizer)
    over, bad, text_rule, worst = [], [], [], 0
    for i, adv in enumerate(x_adv):
        if bad_suffix_text(adv):
            text_rule.append(i)  # control characters, lone surrogates
            continue
        ids = _suffix_ids(tm.tokenizer, adv)
        worst = max(worst, len(ids))
        if len(ids) > tm.eps:
            over.append(i)
        if not clean_suffix_ids(tm.tokenizer, ids, special):
            bad.append(i)
    found = []
    if text_rule:
        idx, text = _listed(torch.tensor(text_rule))
        found.append(Violation("finite", idx, f"{text}: control characters or invalid text"))
    if over:
        idx, text = _listed(torch.tensor(over))
        found.append(Violation("norm", idx, f"{text}: up to {worst} suffix tokens > eps {int(tm.eps)}"))
    if bad:
        idx, text = _listed(torch.tensor(bad))
        found.append(Violation("vocab", idx, f"{text}: special or control tokens (e.g. a fake end of "
                                             "turn), or text that does not read back as the same tokens"))
    return found

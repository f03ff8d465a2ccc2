"""Universal adversarial triggers (Wallace et al. 2019): ``eps`` tokens prepended to every input.

The trigger is learned once, on a batch of examples, by maximising the mean loss: the embedding
gradient at each trigger position, averaged over the batch, ranks every vocabulary token by the
first-order loss change (e_b − e_a)·ḡ; the best ``candidates`` per position are then re-scored by
the real loss in a left-to-right beam search of width ``beam``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..text import TokenBatch
from ._text import TextAttack, token_surface


class UniversalTrigger(TextAttack):
    """A universal trigger of ``length`` tokens (default ``eps``), white-box.

    ``fit(model, texts, labels)`` learns the trigger (``trigger``: the words, ``trigger_ids``);
    calling the attack then prepends it to every input. Called before ``fit``, the attack first
    fits the trigger on the inputs it is given (and those queries count in its result).
    ``steps``: search rounds, each on a fresh random ``batch_size`` examples (fixed by ``seed``);
    ``init``: the starting word of every trigger position. Targeted: the trigger drives inputs
    toward ``target`` (one class, or one per example) instead of away from their labels.
    """

    name = "UniversalTrigger"
    requires = "white-box"

    def __init__(
        self,
        threat,
        *,
        length: int | None = None,
        beam: int = 2,
        candidates: int = 10,
        steps: int = 8,
        batch_size: int = 128,
        init: str = "the",
        targeted: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(threat, targeted=targeted, seed=seed)
        length = self.eps if length is None else length
        if not isinstance(length, int) or not 1 <= length <= self.eps:
            raise ValueError(f"length must be an int in [1, eps={self.eps}], got {length!r}")
        for arg, value in (("beam", beam), ("candidates", candidates), ("steps", steps), ("batch_size", batch_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{arg} must be an int ≥ 1, got {value!r}")
        self.length, self.beam, self.candidates = length, beam, candidates
        self.steps, self.batch_size, self.init = steps, batch_size, init
        self.trigger_ids: list[int] | None = None
        self.trigger: str | None = None
        self.history: list[float] = []

    def __repr__(self) -> str:
        return f"UniversalTrigger(length={self.length}, trigger={self.trigger!r})"

    # -- learning ----------------------------------------------------------------------------
    def fit(self, model, texts, labels, *, target=None) -> UniversalTrigger:
        """Learn the trigger on ``texts`` (list[str]) with their ``labels``; returns self.

        ``history`` records the best mean loss after each search round."""
        texts, y, target = self._check_call(model, texts, labels, target)
        if self.targeted:
            y = target
        tok = model.tokenizer
        allowed = self.allowed_tokens(tok)
        if not allowed.any():
            raise ValueError(f"{self.name}: no vocabulary token may be inserted under this threat model")
        start = tok.token_to_id(self.init)
        if not (0 <= start < len(allowed) and allowed[start]):
            start = int(allowed.nonzero()[0])
        trig = [start] * self.length
        emb = model.embedding_matrix()
        allowed = allowed.to(emb.device)
        gen = torch.Generator().manual_seed(self.seed)
        self.history = []
        for _ in range(self.steps):
            pick = torch.randperm(len(texts), generator=gen)[: self.batch_size].tolist()
            tb, pos = self._with_trigger(model, [texts[i] for i in pick], trig)
            tb = tb.to(model.device)
            goal = y[pick]
            grad, logits = model.gradient(tb, goal, "ce", self.targeted, return_logits=True)
            g = grad[:, pos, :].mean(0)  # length×D: the batch-averaged gradient per position
            score = g @ emb.T - (g * emb[trig]).sum(-1, keepdim=True)
            score.masked_fill_(~allowed[None, :], float("-inf"))
            cands = score.topk(min(self.candidates, int(allowed.sum())), dim=1).indices.tolist()
            beams = [(self._loss(logits, goal), trig)]
            for j in range(self.length):
                options = {tuple(t) for _, t in beams}
                options |= {tuple(t[:j] + [c] + t[j + 1 :]) for _, t in beams for c in cands[j]}
                options = sorted(options)  # a fixed order: deterministic ties
                losses = self._score(model, tb, pos, options, goal)
                ranked = sorted(zip(losses, options), key=lambda p: -p[0])[: self.beam]
                beams = [(loss, list(t)) for loss, t in ranked]
            trig = beams[0][1]
            self.history.append(beams[0][0])
        self.trigger_ids = trig
        self.trigger = " ".join(token_surface(tok, i) for i in trig)
        return self

    def _loss(self, logits: torch.Tensor, goal: torch.Tensor) -> float:
        """Mean loss the trigger ascends: CE to the labels, or −CE to the targets."""
        value = float(F.cross_entropy(logits, goal))
        return -value if self.targeted else value

    def _score(self, model, tb: TokenBatch, pos: list[int], options: list[tuple], goal) -> list[float]:
        """Real mean loss of each candidate trigger on the batch (one batched forward)."""
        n = len(tb)
        ids = tb.input_ids.repeat(len(options), 1)
        ids[:, pos] = torch.tensor(options, device=ids.device).repeat_interleave(n, 0)
        logits = model.logits(TokenBatch(ids, tb.attention_mask.repeat(len(options), 1)))
        # the same mean CE per option as _loss, read back in one transfer (not one sync each)
        losses = torch.stack([F.cross_entropy(logits[i * n : (i + 1) * n], goal) for i in range(len(options))])
        return [-v if self.targeted else v for v in losses.tolist()]

    def _with_trigger(self, model, texts: list[str], trig: list[int]) -> tuple[TokenBatch, list[int]]:
        """Tokens of the triggered texts and the trigger's positions (after leading specials)."""
        tb = model.tokenize(self._apply(model.tokenizer, texts, trig))
        row = tb.input_ids[0].tolist()
        lead = next((i for i in range(len(row)) if row[i : i + len(trig)] == trig), None)
        if lead is None or not (tb.input_ids[:, lead : lead + len(trig)] == torch.tensor(trig)).all():
            raise RuntimeError(f"{self.name}: the tokenizer did not keep the trigger tokens in place")
        return tb, list(range(lead, lead + len(trig)))

    @staticmethod
    def _apply(tok, texts: list[str], trig: list[int]) -> list[str]:
        words = " ".join(token_surface(tok, i) for i in trig)
        return [f"{words} {t}" for t in texts]

    # -- applying ------------------------------------------------------------------------------
    def _run(self, model, x, y, target):
        if self.trigger_ids is None:
            self.fit(model, x, y, target=target)
        tok = model.tokenizer
        if any(i >= tok.vocab_size or token_surface(tok, i) != w
               for i, w in zip(self.trigger_ids, self.trigger.split(" "))):
            raise ValueError(f"{self.name}: the trigger was learned on a model with another tokenizer")
        x_adv = self._finish(x, self._apply(tok, x, self.trigger_ids))
        success = self._goal(model.logits(x_adv), y, target)
        return x_adv, success, {"trigger": self.trigger, "trigger_ids": list(self.trigger_ids)}

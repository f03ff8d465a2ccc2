"""Adversarial suffixes for chat models: make the assistant begin its answer with a target.

``GCG`` (Zou et al. 2023, greedy coordinate gradient) and its universal, multi-prompt form
``UniversalGCG`` need white-box access; ``RandomSearch`` (Andriushchenko et al. 2024) needs only
the target's log-probability (``scores``). All three are called like every attack::

    threat = ThreatModel("suffix", 20, tokenizer=chat.tokenizer)
    result = GCG(threat, steps=100)(chat, prompts, targets)
    result.x_adv            # one suffix (text) per prompt, each within the threat model
    result.success          # the greedy answer begins with the target

One GCG step, for each prompt not yet broken:

1. g = ∇ over the one-hot suffix tokens of the target's cross-entropy (``token_gradient``);
2. per position, the ``top_k`` tokens with the most negative g (special tokens excluded);
3. ``batch`` candidates, each one token of the suffix swapped for one of those;
4. every candidate scored in one batched pass (the shared prefix — system prompt and template —
   computed once and reused), candidates that would not read back as the same tokens dropped;
5. keep the best; stop once the greedy answer begins with the target.

A prompt counts as broken when greedy decoding reproduces every target token (read off the same
teacher-forced pass), and is confirmed by generating the answer at the end.
"""

from __future__ import annotations

import time

import torch

from ..errors import AccessDenied
from ..threat import ThreatModel, bad_suffix_text
from ..wrapper import _RANK
from .base import Attack, AttackResult

__all__ = ["GCG", "RandomSearch", "UniversalGCG"]


class ChatAttack(Attack):
    """Base class of the suffix attacks (an :class:`~maestro.attacks.Attack` called with
    ``(model, prompts, targets)``): checks, timing, query counting and the threat model."""

    name = "chat-attack"
    requires = "white-box"
    modalities = ("chat",)
    norms = ("suffix",)

    def __init__(self, threat: ThreatModel, *, init: str = "! " * 20, seed: int = 0,
                 callback=None) -> None:
        if not isinstance(threat, ThreatModel) or threat.norm != "suffix":
            raise TypeError(f"{self.name} needs ThreatModel('suffix', N, tokenizer=chat.tokenizer)")
        super().__init__(threat, seed=seed)
        self.init = init
        self.callback = callback

    def _progress(self, model, prompt: int, step: int, loss: float, adv) -> None:
        """Tell ``callback`` (if any) how the attack is getting on: ``{"prompt", "step", "loss"
        (mean target cross-entropy), "suffix" (text)}`` after each step."""
        if self.callback is not None:
            self.callback({"prompt": prompt, "step": step, "loss": loss,
                           "suffix": model.detokenize(adv)})

    def __call__(self, model, prompts, targets) -> AttackResult:
        prompts, targets = self._check_call(model, prompts, targets)
        before = model.queries
        start = time.perf_counter()
        suffixes, info = self._run(model, prompts, targets)
        answers = model.generate(prompts, suffixes, max_new_tokens=max(
            len(model.tokenize(t)) for t in targets) + 4)
        elapsed = time.perf_counter() - start
        self.threat.check(prompts, suffixes)
        success = torch.tensor([a.startswith(t) for a, t in zip(answers, targets)])
        return AttackResult(x_adv=suffixes, success=success,
                            norms=self.threat.norms(prompts, suffixes).float(),
                            queries=model.queries - before, time=elapsed, attack=self.name,
                            info={**info, "answers": answers})

    def _check_call(self, model, prompts, targets):
        access = getattr(model, "access", None)
        if getattr(model, "modality", None) != "chat":
            raise TypeError(f"{self.name} attacks chat models (maestro.chat.ChatModel); got "
                            f"{type(model).__name__}")
        if _RANK[access] < _RANK[self.requires] or _RANK[self.threat.access] < _RANK[self.requires]:
            raise AccessDenied(f"{self.name} needs {self.requires!r} access; the model offers "
                               f"{access!r} and the threat model {self.threat.access!r}")
        if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)) or not prompts:
            raise TypeError("prompts: expected a non-empty list of Chat or str")
        if isinstance(targets, str):
            targets = [targets] * len(prompts)
        if len(targets) != len(prompts) or not all(isinstance(t, str) and t for t in targets):
            raise ValueError(f"targets: one non-empty str for each of the {len(prompts)} prompts")
        return list(prompts), list(targets)

    def _start(self, model) -> torch.Tensor:
        """The first suffix: ``init`` cut to the threat model's token budget."""
        ids = model.tokenize(self.init)[: int(self.threat.eps)]
        if len(ids) == 0:
            raise ValueError("init: the starting suffix has no tokens")
        return ids

    def _allowed(self, model) -> torch.Tensor:
        """Boolean mask over the vocabulary: the tokens a suffix may hold."""
        return suffix_vocab(model)

    def _run(self, model, prompts, targets):
        raise NotImplementedError


def suffix_vocab(model) -> torch.Tensor:
    """Boolean mask over ``model``'s vocabulary: the tokens a suffix may hold on their own — no
    special token, none whose text has a control character (:func:`maestro.threat.bad_suffix_text`).
    Computed once per model (about a second for 49k tokens) and kept on it."""
    mask = getattr(model, "_suffix_vocab", None)
    if mask is None:
        mask = torch.ones(model.vocab_size, dtype=torch.bool)
        mask[sorted(i for i in model.special_ids if i < model.vocab_size)] = False
        decode = model.tokenizer.convert_ids_to_tokens
        texts = model.tokenizer.convert_tokens_to_string
        for i in range(model.vocab_size):
            if mask[i] and bad_suffix_text(texts([decode(i)])):
                mask[i] = False
        model._suffix_vocab = mask
    return mask


def _swap_candidates(adv: torch.Tensor, top: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` copies of ``adv``, each with one position replaced by one of its ``top`` tokens
    (positions spread evenly over the suffix, the token drawn at random)."""
    length, k = top.shape
    pos = (torch.arange(n) * length // n) % length
    pick = torch.randint(k, (n,), generator=gen)
    cand = adv.repeat(n, 1)
    cand[torch.arange(n), pos] = top[pos, pick]
    return cand


class GCG(ChatAttack):
    """Greedy coordinate gradient (Zou et al. 2023), one suffix per prompt (see the module
    docstring). ``steps``: the most steps per prompt; ``top_k`` tokens per position; ``batch``
    candidates per step; ``callback``: called after every step with the step's progress (a
    widget shows the attack as it runs this way)."""

    name = "gcg"
    requires = "white-box"

    def __init__(self, threat: ThreatModel, *, steps: int = 100, top_k: int = 128, batch: int = 64,
                 init: str = "! " * 20, seed: int = 0, callback=None) -> None:
        super().__init__(threat, init=init, seed=seed, callback=callback)
        if steps < 1 or top_k < 1 or batch < 1:
            raise ValueError("steps, top_k and batch must be ≥ 1")
        self.steps, self.top_k, self.batch = int(steps), int(top_k), int(batch)

    def _run(self, model, prompts, targets):
        allowed = self._allowed(model)
        gen = torch.Generator().manual_seed(self.seed)
        suffixes, history, steps_used = [], [], []
        for i, (chat, target) in enumerate(zip(prompts, targets)):
            adv, losses, n = self._one([chat], [target], model, allowed, gen, prompt=i)
            suffixes.append(model.detokenize(adv))
            history.append(losses)
            steps_used.append(n)
        return suffixes, {"loss": history, "steps": steps_used}

    def _one(self, chats, targets, model, allowed, gen, prompt: int = 0):
        """GCG on ``chats`` together (one shared suffix): the suffix ids, the loss per step and
        the steps taken."""
        adv = self._start(model)
        n_target = [len(model.tokenize(t)) for t in targets]
        scores = model.target_logprobs(chats, targets, adv=adv)
        best = float((-scores.total / torch.tensor(n_target)).mean())
        losses = [best]
        self._progress(model, prompt, 0, best, adv)
        if bool(scores.greedy.all()):
            return adv, losses, 0
        for step in range(1, self.steps + 1):
            found = self.step(model, chats, targets, adv, allowed, gen, n_target)
            if found is None:
                continue
            adv, best, broken = found  # GCG keeps the best candidate, always
            losses.append(best)
            self._progress(model, prompt, step, best, adv)
            if broken:
                return adv, losses, step
        return adv, losses, self.steps

    def step(self, model, chats, targets, adv, allowed, gen, n_target):
        """One GCG step from suffix ``adv``: ``(best candidate, its loss, whether it breaks
        every chat)``, or None when no candidate reads back as the same tokens."""
        grad, _ = model.token_gradient(chats, adv, targets)
        grad = grad.cpu().masked_fill(~allowed, float("inf"))
        top = (-grad).topk(self.top_k, dim=1).indices
        cand = _swap_candidates(adv, top, self.batch, gen)
        cand = cand[[i for i in range(len(cand)) if model.clean_tokens(cand[i])]]
        if len(cand) == 0:
            return None
        cand_losses, greedy = self._score(model, chats, targets, cand, n_target)
        i = int(cand_losses.argmin())
        return cand[i], float(cand_losses[i]), bool(greedy[i])

    @staticmethod
    def _score(model, chats, targets, cand, n_target):
        """Mean target loss over ``chats`` of each candidate, and whether every chat's greedy
        answer begins with its target."""
        rows = [(c, t, a) for a in cand for c, t in zip(chats, targets)]
        s = model.target_logprobs([r[0] for r in rows], [r[1] for r in rows], adv=[r[2] for r in rows])
        per = (-s.total / torch.tensor(n_target * len(cand))).view(len(cand), len(chats))
        return per.mean(1), s.greedy.view(len(cand), len(chats)).all(1)


class UniversalGCG(GCG):
    """One suffix for all the prompts (Zou et al.'s multi-prompt GCG): the gradient and the
    candidates' losses are summed over the prompts; ``x_adv`` repeats that suffix per prompt,
    and ``info["suffix"]`` holds it. It stops once every prompt is broken."""

    name = "universal-gcg"

    def _run(self, model, prompts, targets):
        gen = torch.Generator().manual_seed(self.seed)
        adv, losses, steps = self._one(prompts, targets, model, self._allowed(model), gen)
        text = model.detokenize(adv)
        return [text] * len(prompts), {"loss": losses, "steps": steps, "suffix": text}


class RandomSearch(ChatAttack):
    """Random search on the suffix with the target's log-probability only (Andriushchenko et
    al. 2024; ``scores`` access): each step tries ``batch`` suffixes, each with ``n_swap``
    random positions set to random allowed tokens, and keeps the best if it improves."""

    name = "random-search"
    requires = "scores"

    def __init__(self, threat: ThreatModel, *, steps: int = 100, batch: int = 32, n_swap: int = 2,
                 init: str = "! " * 20, seed: int = 0, callback=None) -> None:
        super().__init__(threat, init=init, seed=seed, callback=callback)
        if steps < 1 or batch < 1 or n_swap < 1:
            raise ValueError("steps, batch and n_swap must be ≥ 1")
        self.steps, self.batch, self.n_swap = int(steps), int(batch), int(n_swap)

    def _run(self, model, prompts, targets):
        allowed = self._allowed(model).nonzero().flatten()
        gen = torch.Generator().manual_seed(self.seed)
        suffixes, history, steps_used = [], [], []
        for k, (chat, target) in enumerate(zip(prompts, targets)):
            n = len(model.tokenize(target))
            adv = self._start(model)
            s = model.target_logprobs([chat], [target], adv=adv)
            best, losses, used = float(-s.total[0] / n), [], 0
            losses.append(best)
            self._progress(model, k, 0, best, adv)
            done = bool(s.greedy[0])
            while not done and used < self.steps:
                used += 1
                cand = adv.repeat(self.batch, 1)
                for _ in range(self.n_swap):
                    pos = torch.randint(len(adv), (self.batch,), generator=gen)
                    tok = allowed[torch.randint(len(allowed), (self.batch,), generator=gen)]
                    cand[torch.arange(self.batch), pos] = tok
                cand = cand[[i for i in range(len(cand)) if model.clean_tokens(cand[i])]]
                if len(cand) == 0:
                    continue
                s = model.target_logprobs([chat], [target] * len(cand), adv=list(cand))
                cand_loss = -s.total / n
                i = int(cand_loss.argmin())
                if float(cand_loss[i]) < best:
                    adv, best = cand[i], float(cand_loss[i])
                    done = bool(s.greedy[i])
                losses.append(best)
                self._progress(model, k, used, best, adv)
            suffixes.append(model.detokenize(adv))
            history.append(losses)
            steps_used.append(used)
        return suffixes, {"loss": history, "steps": steps_used}

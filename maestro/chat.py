"""Chat models: a causal language model behind the same contract as :class:`~maestro.ModelWrapper`
(access levels, exact query budgets also under threads, no global state, ``restrict``).

A conversation is a :class:`Chat`: a user message (and a system message, or the model's default).
Adversarial text goes into the **slot** ``{adv}`` of the user message (at its end, after a space,
when the message has none). A chat is tokenized in three pieces — the template up to the slot,
the slot, the rest up to the assistant's turn — each on its own, so a suffix found as token ids
and the same suffix handed in as text reach the model as the same tokens. ``ids(chat, adv)`` is
that sequence; ``render(chat, adv)`` its text.

Access levels:

* ``labels``: :meth:`ChatModel.generate` (text out), ``render``, ``tokenize``, ``detokenize``;
* ``scores``: also :meth:`ChatModel.target_logprobs` and :meth:`ChatModel.text_logprobs` (like an
  API that returns log-probabilities);
* ``white-box``: also :meth:`ChatModel.token_gradient`, :meth:`ChatModel.embedding_matrix` and
  the module itself.

**What a query is** here: one sequence sent forward — one conversation generated from, or one
conversation with a target scored (teacher-forced) or differentiated. The budget counts queries;
the tokens a generation produces are counted apart (``generated_tokens``), and so are gradient
queries. A prefix shared by every row of a call (the system prompt and the template before the
slot) is computed once and reused, which changes no count.
"""

from __future__ import annotations

import copy
import inspect
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ._account import Accounted, QueryAccount
from .threat import clean_suffix_ids, special_token_ids

__all__ = ["ADV", "Chat", "ChatModel", "ChatText", "TargetScores"]

ADV = "{adv}"
_ALLOWS = {
    "labels": "generate, render, ids, tokenize, detokenize",
    "scores": "generate, target_logprobs, text_logprobs, render, ids, tokenize, detokenize",
    "white-box": "everything: also token_gradient, embedding_matrix and the model itself",
}


@dataclass(frozen=True)
class Chat:
    """One conversation: ``user`` (holding the slot ``{adv}`` at most once; without it the
    slot is at the end) and ``system`` (``None``: the model's default system prompt)."""

    user: str
    system: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.user, str):
            raise TypeError(f"Chat.user must be a str, got {type(self.user).__name__}")
        if self.system is not None and not isinstance(self.system, str):
            raise TypeError(f"Chat.system must be a str or None, got {type(self.system).__name__}")
        if self.user.count(ADV) > 1:
            raise ValueError(f"Chat.user holds the slot {ADV} more than once")

    def parts(self, adv: bool = True) -> tuple[str, str]:
        """The user message before and after the slot (``adv=False``: no adversarial text, so
        a message without a slot is left as it is, with no space added)."""
        if ADV in self.user:
            before, after = self.user.split(ADV)
            return before, after
        return (self.user + " " if adv else self.user), ""


@dataclass
class TargetScores:
    """Teacher-forced log-probabilities of each target after its conversation: ``per_token[i]``
    (one value per target token, CPU), ``total`` (their sums, a CPU tensor of N) and ``greedy``
    (True where every target token is the most likely one at its place: the greedy answer then
    begins with the target's tokens)."""

    per_token: list[torch.Tensor]
    total: torch.Tensor
    greedy: torch.Tensor


def _as_chats(chats) -> list[Chat]:
    if isinstance(chats, (Chat, str)):
        chats = [chats]
    out = [Chat(c) if isinstance(c, str) else c for c in chats]
    if not out or not all(isinstance(c, Chat) for c in out):
        raise TypeError("chats: expected a Chat, a str, or a non-empty list of them")
    return out


class ChatText:
    """What a chat model does with text alone (any access level): its template with the slot,
    tokenization, and the checks on suffix tokens. :class:`ChatModel` and the remote client
    (:class:`maestro.remote.RemoteChatModel`) share it, so both read a chat as the same tokens."""

    modality = "chat"

    def _init_text(self, tokenizer) -> None:
        self._tok = tokenizer
        self._pieces: dict[tuple[str | None, str, bool], tuple[list[int], list[int]]] = {}
        tok = tokenizer
        self.eos_ids = sorted({i for i in (tok.eos_token_id, tok.convert_tokens_to_ids("<|endoftext|>"))
                               if isinstance(i, int) and i >= 0})
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else self.eos_ids[0]
        self.special_ids = special_token_ids(tok)

    @property
    def tokenizer(self):
        return self._tok

    # -- text and tokens (any access) ------------------------------------------------------
    def tokenize(self, text: str) -> torch.Tensor:
        """The token ids of ``text`` (no special tokens added), a LongTensor."""
        if not isinstance(text, str):
            raise TypeError(f"tokenize(text): expected a str, got {type(text).__name__}")
        return torch.tensor(self._tok.encode(text, add_special_tokens=False), dtype=torch.long)

    def detokenize(self, ids) -> str:
        return self._tok.decode(torch.as_tensor(ids).flatten().tolist())

    def _template(self, chat: Chat, adv: bool = True) -> tuple[list[int], list[int]]:
        """Token ids before the slot, and after it up to the assistant's turn; the two pieces
        are tokenized on their own, and cached per chat."""
        key = (chat.system, chat.user, adv)
        if key not in self._pieces:
            before, after = chat.parts(adv)
            marker = "\x00MAESTRO-ADV\x00"
            messages = ([] if chat.system is None else [{"role": "system", "content": chat.system}])
            messages.append({"role": "user", "content": before + marker + after})
            text = self._tok.apply_chat_template(messages, tokenize=False,
                                                 add_generation_prompt=True)
            head, tail = text.split(marker)
            enc = self._tok.encode
            self._pieces[key] = (enc(head, add_special_tokens=False),
                                 enc(tail, add_special_tokens=False))
        return self._pieces[key]

    def _adv_ids(self, adv) -> list[int]:
        if adv is None or adv == "":
            return []
        if isinstance(adv, str):
            return self._tok.encode(adv, add_special_tokens=False)
        ids = torch.as_tensor(adv).flatten().tolist()
        if ids and (min(ids) < 0 or max(ids) >= self.vocab_size):
            raise ValueError(f"adv: token ids must lie in [0, {self.vocab_size - 1}]")
        return ids

    def ids(self, chat: Chat | str, adv=None) -> torch.Tensor:
        """The token ids the model reads for ``chat`` with ``adv`` (text or token ids) in its
        slot, up to the assistant's turn."""
        (chat,) = _as_chats(chat)
        adv_ids = self._adv_ids(adv)
        head, tail = self._template(chat, bool(adv_ids))
        return torch.tensor(head + adv_ids + tail, dtype=torch.long)

    def render(self, chat: Chat | str, adv=None) -> str:
        """The text of :meth:`ids` (the chat template filled in)."""
        return self.detokenize(self.ids(chat, adv))

    def clean_tokens(self, ids) -> bool:
        """True where ``ids`` hold no special or control token and read back as the same ids
        (what a suffix handed in as text must satisfy to mean the same tokens)."""
        return clean_suffix_ids(self._tok, torch.as_tensor(ids).flatten().tolist(), self.special_ids)

    def _broadcast(self, chats, adv) -> tuple[list[Chat], list]:
        chats = _as_chats(chats)
        if adv is None or isinstance(adv, str) or (isinstance(adv, torch.Tensor) and adv.dim() == 1):
            advs = [adv] * len(chats)
        else:
            advs = list(adv)
            if len(chats) == 1 and len(advs) > 1:
                chats = chats * len(advs)
        if len(advs) != len(chats):
            raise ValueError(f"adv: {len(advs)} suffixes for {len(chats)} chats")
        return chats, advs


class ChatModel(ChatText, Accounted):
    """A causal language model (a Hugging Face ``*ForCausalLM`` and its tokenizer) with an
    access level and a query budget; see the module docstring.

    ``batch_size``: sequences per forward pass inside one call (any call size is accepted).
    ``prefix_cache``: reuse the keys and values of a prefix shared by a call's rows (the same
    numbers up to float rounding; off only to measure what it saves)."""

    def __init__(self, module: torch.nn.Module, tokenizer, *, access: str = "white-box",
                 budget: int | None = None, name: str = "", info: dict | None = None,
                 batch_size: int = 32, prefix_cache: bool = True) -> None:
        if not isinstance(module, torch.nn.Module) or not hasattr(module, "get_input_embeddings"):
            raise TypeError("module: expected a Hugging Face causal language model")
        self.__module = module.eval()
        self._init_text(tokenizer)
        self._account = QueryAccount(access, budget, _ALLOWS)
        self.name = name
        self.info = dict(info or {})
        self.batch_size = int(batch_size)
        self.prefix_cache = bool(prefix_cache)
        self._generated = 0
        self._cache_lock = threading.Lock()
        self._prefix_cache: tuple[tuple[int, ...], object] | None = None
        # transformers 5 calls the key/value cache `cache`; 4.x called it `past_key_values`
        params = inspect.signature(module.get_decoder().forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    # -- beside the contract shared with ModelWrapper (maestro._account.Accounted) ---------
    @property
    def generated_tokens(self) -> int:
        """Tokens produced by :meth:`generate` so far (not part of the budget)."""
        return self._generated

    @property
    def vocab_size(self) -> int:
        return int(self.__module.get_input_embeddings().num_embeddings)

    @property
    def device(self) -> torch.device:
        return next(self.__module.parameters()).device

    @property
    def model(self) -> torch.nn.Module:
        self._account.require("white-box", "model")
        return self.__module

    def __repr__(self) -> str:
        budget = "unlimited" if self.budget is None else f"{self.remaining}/{self.budget} left"
        return (f"ChatModel({self.name or type(self.__module).__name__}, access={self.access}, "
                f"budget={budget}, device={self.device})")

    def to(self, device) -> ChatModel:
        self.__module.to(torch.device(device))
        with self._cache_lock:
            self._prefix_cache = None
        return self

    def reset(self) -> None:
        self._account.reset()
        with self._account.lock:
            self._generated = 0

    def restrict(self, access: str, budget: int | None = None) -> ChatModel:
        """A new wrapper over the same model at an equal or lower access level, with fresh
        counters and its own ``budget``."""
        return ChatModel(self.__module, self._tok, access=self._account.lower(access),
                         budget=budget, name=self.name, info=self.info, batch_size=self.batch_size,
                         prefix_cache=self.prefix_cache)

    # -- forward passes --------------------------------------------------------------------
    def _prefix(self, head: list[int]):
        """The key/value cache of the shared prefix ``head`` (batch 1), computed once."""
        key = tuple(head)
        with self._cache_lock:
            if self._prefix_cache is not None and self._prefix_cache[0] == key:
                return self._prefix_cache[1]
        with torch.no_grad():
            out = self.__module.get_decoder()(input_ids=torch.tensor([head], device=self.device),
                                              use_cache=True)
        cache = _cache_of(out)
        with self._cache_lock:
            self._prefix_cache = (key, cache)
        return cache

    def _expanded(self, cache, n: int):
        cache = copy.deepcopy(cache)
        if n > 1:
            cache.batch_repeat_interleave(n)
        return cache

    def _scored(self, rows: list[list[int]], targets: list[list[int]]):
        """Log-probabilities of each target after its row (teacher-forced), and whether each
        target is the greedy continuation, computed in chunks; rows sharing their first tokens
        reuse one cache of them."""
        out: list[torch.Tensor] = []
        greedy: list[bool] = []
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start:start + self.batch_size]
            tchunk = targets[start:start + self.batch_size]
            shared = _common_prefix(chunk)
            shared = shared[:max(0, min(map(len, chunk)) - 1)]
            use = self.prefix_cache and len(shared) >= 8
            cache = self._expanded(self._prefix(shared), len(chunk)) if use else None
            skip = len(shared) if cache is not None else 0
            seqs = [r[skip:] + t for r, t in zip(chunk, tchunk)]
            width = max(map(len, seqs))
            ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
            for i, s in enumerate(seqs):
                ids[i, :len(s)] = torch.tensor(s)  # right padding: nothing reads the pads
            ids = ids.to(self.device)
            with torch.no_grad():
                hidden = self._hidden(ids=ids, cache=cache)
                # the output layer (V × D) only where a target token is predicted
                where = [(i, len(r) - skip - 1 + j) for i, (r, t) in enumerate(zip(chunk, tchunk))
                         for j in range(len(t))]
                rows_i, cols = (torch.tensor(v, device=self.device) for v in zip(*where))
                logp = self.__module.get_output_embeddings()(hidden[rows_i, cols]).float().log_softmax(-1)
                flat = torch.tensor([x for t in tchunk for x in t], device=self.device)
                picked = logp.gather(1, flat[:, None])[:, 0].cpu()
                hits = (logp.argmax(-1) == flat).cpu()
            sizes = [len(t) for t in tchunk]
            out += list(picked.split(sizes))
            greedy += [bool(h.all()) for h in hits.split(sizes)]
        return out, greedy

    def _hidden(self, *, ids=None, embeds=None, cache=None) -> torch.Tensor:
        """The decoder's last hidden states, after ``cache`` (a prefix's keys and values)."""
        kw = {self._cache_kw: cache} if cache is not None else {}
        out = self.__module.get_decoder()(input_ids=ids, inputs_embeds=embeds,
                                          use_cache=cache is not None, **kw)
        return out.last_hidden_state

    def target_logprobs(self, chats, targets, adv=None) -> TargetScores:
        """log p(target | chat with ``adv`` in its slot), teacher-forced, per target token and
        summed (``scores`` access; one query per conversation). ``adv``: one suffix (text or
        ids) for every chat, or one per chat; a single chat with many suffixes scores each."""
        self._account.require("scores", "target_logprobs")
        chats, advs = self._broadcast(chats, adv)
        if isinstance(targets, str):
            targets = [targets] * len(chats)
        if len(targets) != len(chats) or not all(isinstance(t, str) and t for t in targets):
            raise ValueError(f"targets: one non-empty str for each of the {len(chats)} chats")
        rows = [self.ids(c, a).tolist() for c, a in zip(chats, advs)]
        tids = [self._tok.encode(t, add_special_tokens=False) for t in targets]
        with self._account.charge(len(rows)):
            per, greedy = self._scored(rows, tids)
        return TargetScores(per, torch.stack([p.sum() for p in per]), torch.tensor(greedy))

    def text_logprobs(self, texts: Sequence[str]) -> list[torch.Tensor]:
        """log p of each token of each text given the tokens before it, read as the start of a
        user message (``scores`` access; one query per text): what perplexity filters measure.
        The first token is scored after the template up to the user's text (the default system
        prompt and the user turn's header)."""
        self._account.require("scores", "text_logprobs")
        if isinstance(texts, str) or not all(isinstance(t, str) and t for t in texts):
            raise TypeError("text_logprobs(texts): expected a list of non-empty str")
        head, _ = self._template(Chat(ADV))
        tids = [self._tok.encode(t, add_special_tokens=False) for t in texts]
        with self._account.charge(len(texts)):
            per, _ = self._scored([head] * len(texts), tids)
        return per

    def token_gradient(self, chats, adv, targets) -> tuple[torch.Tensor, torch.Tensor]:
        """∇ of the mean target cross-entropy with respect to the one-hot tokens of the slot,
        summed over ``chats`` (one shared ``adv``: the multi-prompt form universal suffixes
        need). Returns ``(gradient L×V, loss per chat)``; white-box, one gradient query per chat."""
        self._account.require("white-box", "token_gradient")
        chats = _as_chats(chats)
        if isinstance(targets, str):
            targets = [targets] * len(chats)
        adv_ids = self._adv_ids(adv)
        if not adv_ids:
            raise ValueError("token_gradient: adv holds no tokens")
        emb = self.__module.get_input_embeddings()
        weight = emb.weight
        one_hot = torch.zeros(len(adv_ids), weight.shape[0], device=self.device, dtype=weight.dtype)
        one_hot[torch.arange(len(adv_ids)), torch.tensor(adv_ids)] = 1.0
        one_hot.requires_grad_(True)
        losses = []
        with self._account.charge(len(chats), gradient=True), torch.enable_grad():
            adv_emb = one_hot @ weight
            total = 0.0
            for chat, target in zip(chats, targets):
                head, tail = self._template(chat)
                tid = torch.tensor(self._tok.encode(target, add_special_tokens=False),
                                   device=self.device)
                parts = [adv_emb, emb(torch.tensor(tail, device=self.device)), emb(tid)]
                if self.prefix_cache:
                    cache, skip = self._expanded(self._prefix(head), 1), 0
                else:
                    parts.insert(0, emb(torch.tensor(head, device=self.device)))
                    cache, skip = None, len(head)
                hidden = self._hidden(embeds=torch.cat(parts)[None], cache=cache)[0]
                start = skip + len(adv_ids) + len(tail) - 1
                logits = self.__module.get_output_embeddings()(hidden[start:start + len(tid)])
                loss = F.cross_entropy(logits.float(), tid)
                total = total + loss
                losses.append(loss.detach().cpu())
            grad = torch.autograd.grad(total, one_hot)[0]
        return grad, torch.stack(losses)

    def embedding_matrix(self) -> torch.Tensor:
        """The input embedding table V×D, detached (white-box)."""
        self._account.require("white-box", "embedding_matrix")
        return self.__module.get_input_embeddings().weight.detach()

    # -- generation ------------------------------------------------------------------------
    def generate(self, chats, adv=None, *, max_new_tokens: int = 32, sample: bool = False,
                 temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
                 counts: list | None = None) -> list[str]:
        """The assistant's answers (any access level; one query per conversation, the tokens
        produced counted in ``generated_tokens``). Greedy by default; ``sample=True`` draws
        with ``temperature`` and nucleus ``top_p`` from a generator seeded with ``seed`` (the
        same seed, the same answers). Batched with left padding; each answer ends at the
        end-of-turn token or after ``max_new_tokens``. ``counts``: a list that receives the
        number of tokens produced for each answer."""
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int ≥ 1, got {max_new_tokens!r}")
        if sample and not (temperature > 0 and 0 < top_p <= 1):
            raise ValueError("sampling needs temperature > 0 and 0 < top_p ≤ 1")
        chats, advs = self._broadcast(chats, adv)
        rows = [self.ids(c, a).tolist() for c, a in zip(chats, advs)]
        gen = torch.Generator(device="cpu").manual_seed(int(seed)) if sample else None
        answers: list[str] = []
        with self._account.charge(len(rows)):
            for start in range(0, len(rows), self.batch_size):
                ids = self._generate_ids(rows[start:start + self.batch_size], max_new_tokens,
                                         sample, temperature, top_p, gen, counts)
                answers += [self._tok.decode(r, skip_special_tokens=True) for r in ids]
        return answers

    def _generate_ids(self, rows, max_new, sample, temperature, top_p, gen,
                      counts=None) -> list[list[int]]:
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        done = torch.zeros(len(rows), dtype=torch.bool, device=self.device)
        out: list[list[int]] = [[] for _ in rows]
        eos = torch.tensor(self.eos_ids, device=self.device)
        cache = None
        step_ids = ids
        with torch.no_grad():
            for _ in range(max_new):
                kw = {self._cache_kw: cache} if cache is not None else {}
                res = self.__module(input_ids=step_ids, attention_mask=mask, position_ids=pos,
                                    use_cache=True, logits_to_keep=1, **kw)
                cache = _cache_of(res)
                logits = res.logits[:, -1].float()
                nxt = _choose(logits, sample, temperature, top_p, gen).to(self.device)
                nxt = torch.where(done, torch.full_like(nxt, self.pad_id), nxt)
                for i in (~done).nonzero().flatten().tolist():
                    out[i].append(int(nxt[i]))
                done = done | torch.isin(nxt, eos)
                if bool(done.all()):
                    break
                step_ids = nxt[:, None]
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                pos = pos[:, -1:] + 1
        with self._account.lock:
            self._generated += sum(len(o) for o in out)
        if counts is not None:
            counts.extend(len(o) for o in out)
        return [[t for t in o if t not in self.eos_ids] for o in out]


def _cache_of(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def _choose(logits: torch.Tensor, sample: bool, temperature: float, top_p: float, gen) -> torch.Tensor:
    if not sample:
        return logits.argmax(-1)
    probs = (logits / temperature).softmax(-1).cpu()
    if top_p < 1:
        sorted_p, order = probs.sort(-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=gen)[:, 0]


def _common_prefix(rows: Sequence[Sequence[int]]) -> list[int]:
    first = rows[0]
    n = len(first)
    for r in rows[1:]:
        n = min(n, len(r))
        for i in range(n):
            if r[i] != first[i]:
                n = i
                break
    return list(first[:n])

"""Kind ``text-attack``: token-level attacks on a zoo text classifier, with token budgets.

The notebook gets the first ``[text] examples`` hidden texts (in the course secret's order) as
the model's own token ids and attention mask — ``token_ids.npy`` and ``attention_mask.npy``,
``N×T`` int64, padded on the right with the tokenizer's pad id; papermill parameters ``ids_path``
and ``mask_path``, with ``trigger_length`` and ``target`` from ``[text]``; never the labels — and
hands back two artifacts, both ``int64`` ``.npy``:

* ``adv_ids`` (``N×T``, the shape of the given ids, same row order): one adversarial version of
  every text (HotFlip-style token swaps). Conventions, all checked here:
  a row keeps its length — padding positions (mask 0) keep the pad id, the mask is the given
  one; every id lies in ``[0, vocab_size)``; the row is at most ``[threat] eps`` token edits
  away from the clean row (:class:`maestro.ThreatModel` ``"tokens"``: Levenshtein distance over
  the real tokens), and every token it brings in is in the allowed vocabulary (all ids but the
  tokenizer's special tokens and its unknown token).
* ``trigger`` (1-d, 1 to ``[text] trigger_length`` ids): a universal trigger. The scorer
  prepends it to the real tokens of every hidden text itself (the ``trigger_length``-token
  ThreatModel validates that: insertions only, allowed vocabulary) and measures how many texts
  of the other classes it drives into ``[text] target``.

Metrics per part (public / private) of the hidden set, on the hidden labels:

* ``success_rate``: share of the texts the model classifies correctly whose adversarial row it
  gets wrong;
* ``mean_tokens_changed``: mean token edits of the successful rows (lower is better);
* ``trigger_success_rate``: share of the texts of a non-target class that the model classifies
  correctly and that it assigns to the target class once the trigger is prepended;
* ``clean_accuracy``: the model's accuracy on the part without attack (the same for everyone).

A refused artifact voids its own terms (with the reason: the rule broken and the row numbers of
the student's own file, never labels or predictions); the other artifact is still scored. The
model runs on one CPU thread in eval mode: scoring is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from . import Kind, Prepared, listed, not_produced

#: grading.toml keys of the two artifacts this kind reads
ADV, TRIGGER = "adv_ids", "trigger"
_PER_TWEET = ("success_rate", "mean_tokens_changed")
_TRIGGER = ("trigger_success_rate",)
_HEADER_SLACK = 4096


@dataclass(frozen=True)
class TextSpec:
    """The parsed ``[text]`` table (and what it implies)."""

    examples: int  # hidden texts given to the notebook (the first ones in the secret order)
    trigger_length: int  # most tokens a universal trigger may have
    target: str  # the class the trigger drives texts into (a class name of the model)
    adv_file: str
    trigger_file: str


@dataclass
class TextHidden:
    """What the scorer keeps: the clean ids and mask, the hidden labels, the public mask."""

    ids: torch.Tensor
    mask: torch.Tensor
    y: torch.Tensor
    public: np.ndarray
    vocab_size: int
    banned: tuple[int, ...]  # ids never allowed in: special tokens and the unknown token
    target: int
    classes: tuple[str, ...]
    home: str | None = None  # the model zoo's folder (None: $MAESTRO_HOME)

    def __repr__(self) -> str:  # never print the labels
        return (f"TextHidden(n={len(self.y)}, width={self.ids.shape[1]}, public={int(self.public.sum())}, "
                f"target={self.classes[self.target]!r})")

    def allowed(self) -> frozenset:
        banned = set(self.banned)
        return frozenset(i for i in range(self.vocab_size) if i not in banned)


def banned_ids(tokenizer) -> tuple[int, ...]:
    """Ids no attack may bring in: the tokenizer's special tokens (padding, …) and its unknown
    token (what maestro's text attacks never insert either)."""
    from maestro.attacks._text import special_ids

    return tuple(sorted(special_ids(tokenizer) | {int(tokenizer.pad_id)}))


def apply_trigger(ids: torch.Tensor, mask: torch.Tensor, trigger) -> tuple[torch.Tensor, torch.Tensor]:
    """Prepend ``trigger`` (k ids) to every row's real tokens: ``(N×(T+k) ids, N×(T+k) mask)``.
    Rows are padded on the right, so the trigger simply comes first and the mask gains k ones
    (the notebook gets the very same helper)."""
    trigger = torch.as_tensor(trigger, dtype=torch.long).flatten()
    k = len(trigger)
    out = torch.zeros(ids.shape[0], ids.shape[1] + k, dtype=torch.long)
    out[:, :k] = trigger
    out[:, k:] = ids
    new_mask = torch.cat([torch.ones(ids.shape[0], k, dtype=mask.dtype), mask], 1)
    return out, new_mask


class TextAttackKind(Kind):
    name = "text-attack"
    table = "text"
    metrics = {
        "success_rate": "share of the hidden texts the model classifies correctly that the "
        "adversarial token ids (at most eps edits each) make it misclassify",
        "mean_tokens_changed": "mean number of token edits of the successful adversarial texts",
        "trigger_success_rate": "share of the correctly classified hidden texts of the other classes "
        "that the model assigns to the target class once the universal trigger is prepended",
        "clean_accuracy": "share of the hidden texts the model classifies correctly without attack",
    }
    needs_threat = True
    lower_is_better = ("mean_tokens_changed",)

    # -- grading.toml ------------------------------------------------------------------------
    def parse(self, where: str, raw, config) -> TextSpec:
        from ..config import ConfigError, _Table

        if raw is None:
            raise ConfigError(f"{where}: [text] missing: a text-attack unit gives examples, "
                              "trigger_length and target, e.g. examples = 1000, trigger_length = 3, "
                              "target = \"positive\"")
        t = _Table(where, raw, "text")
        examples = t.get("examples", int, check=lambda v: None if v >= 10 else "must be ≥ 10")
        length = t.get("trigger_length", int, check=lambda v: None if 1 <= v <= 16 else "must lie in [1, 16]")
        target = t.get("target", str, check=lambda v: None if v.strip() else "must name a class")
        t.done()
        if config.threat.norm != "tokens":
            raise ConfigError(f"{where}: [threat] norm: a text-attack unit counts tokens: norm = "
                              f"\"tokens\", got {config.threat.norm!r}")
        if config.threat.eps < 1 or config.threat.eps != int(config.threat.eps):
            raise ConfigError(f"{where}: [threat] eps: the number of tokens an attack may edit per "
                              f"text, a whole number ≥ 1; got {config.threat.eps:g}")
        from maestro.models.zoo import ZOO

        if config.model not in ZOO or ZOO[config.model].recipe == "image":
            text_models = [k for k, v in ZOO.items() if v.recipe != "image"]
            raise ConfigError(f"{where}: [assignment] model: a text-attack unit attacks a text model "
                              f"of the zoo ({', '.join(text_models)}), got {config.model!r}")
        if ZOO[config.model].dataset != config.dataset:
            raise ConfigError(f"{where}: [assignment] dataset: {config.model!r} was trained on "
                              f"{ZOO[config.model].dataset!r}, got {config.dataset!r}")
        arts = {a.key: a for a in config.artifacts}
        if set(arts) != {ADV, TRIGGER}:
            raise ConfigError(f"{where}: a text-attack unit has exactly two artifacts, "
                              f"[artifacts.{ADV}] (the adversarial token ids) and [artifacts.{TRIGGER}] "
                              f"(the universal trigger); got {', '.join(sorted(arts))}")
        for key, shape in ((ADV, "inputs"), (TRIGGER, "any")):
            a = arts[key]
            if a.format != "npy" or a.dtype != "int64" or a.shape != shape:
                raise ConfigError(f"{where}: [artifacts.{key}] must be an int64 .npy file with "
                                  f"shape = \"{shape}\" (token ids); got {a.file!r}, dtype {a.dtype}, "
                                  f"shape {a.shape!r}")
        return TextSpec(examples, length, target.strip(), arts[ADV].file, arts[TRIGGER].file)

    # -- the grader's inputs -----------------------------------------------------------------
    def prepare(self, config, secret, home=None) -> Prepared:
        import maestro
        from maestro.datasets.splits import resolve_secret

        from ..scoring import public_mask

        spec: TextSpec = config.unit
        secret = resolve_secret(secret)
        data = maestro.datasets.load(config.dataset, split="hidden", secret=secret, home=home)
        if len(data) < spec.examples:
            raise ValueError(f"{config.id}: [text] examples = {spec.examples}, but the hidden split "
                             f"of {config.dataset!r} has only {len(data)} texts")
        data = data.take(spec.examples)
        model = maestro.models.load(config.model, home=home)
        classes = tuple(model.info.get("classes") or data.classes)
        if spec.target not in classes:
            raise ValueError(f"{config.id}: [text] target = {spec.target!r} is not a class of "
                             f"{config.model} ({', '.join(classes)})")
        tb = model.tokenize(data.x)
        ids = tb.input_ids.long().cpu()
        mask = tb.attention_mask.long().cpu()
        tok = model.tokenizer
        state = TextHidden(ids, mask, data.y.long().clone(), public_mask(len(ids), config, secret),
                           int(tok.vocab_size), banned_ids(tok), classes.index(spec.target), classes,
                           None if home is None else str(home))
        inputs = {"token_ids.npy": ids.numpy(), "attention_mask.npy": mask.numpy()}
        params = {"ids_path": "token_ids.npy", "mask_path": "attention_mask.npy",
                  "trigger_length": spec.trigger_length, "target": spec.target}
        return Prepared(inputs, params, state)

    def hidden_labels(self, prepared: Prepared):
        return prepared.state.y.numpy().astype(np.int64)

    # -- scoring -----------------------------------------------------------------------------
    def score(self, config, artifacts: dict, prepared: Prepared, *, queries=None):
        import maestro
        from maestro.models.train import num_threads
        from maestro.text import TokenBatch

        from ..scoring import score_parts

        spec: TextSpec = config.unit
        hidden: TextHidden = prepared.state
        rows = {"public": hidden.public, "private": ~hidden.public}
        model = maestro.models.load(config.model, home=hidden.home)
        allowed = hidden.allowed()
        threat = maestro.ThreatModel("tokens", int(config.threat.eps), vocab=allowed)
        problems: list[str] = []
        refused: dict[tuple[str, str], str] = {}  # (part, "adv" | "trigger") -> reason
        clean = TokenBatch(hidden.ids, hidden.mask)

        with num_threads(1):
            pred = model.predict(clean).cpu()
            ok = pred == hidden.y

            # 1. the per-text attack
            adv, why = self._load_adv(artifacts, spec, hidden)
            adv_metrics: dict[str, dict] = {}
            if adv is None:
                problems.append(why)
                for label in rows:
                    refused[(label, "adv")] = why
            else:
                bad = self._adv_violations(adv, hidden, threat)
                # rows that break a rule void their part; they are measured as clean rows, so that
                # the model never sees an id outside its vocabulary
                void = sorted({i for _, idx, _ in bad for i in idx})
                safe = adv.clone()
                safe[void] = hidden.ids[void]
                adv_tb = TokenBatch(safe, hidden.mask)
                hit = ok & (model.predict(adv_tb).cpu() != hidden.y)
                dist = threat.norms(clean, adv_tb)
                for label, mask in rows.items():
                    broken = [f"{rule}: {listed([i for i in idx if mask[i]])} of {spec.adv_file} ({text})"
                              for rule, idx, text in bad if any(mask[i] for i in idx)]
                    if broken:
                        why = (f"{spec.adv_file} breaks the token threat model ({threat.describe()}; "
                               f"rows keep their length and padding): " + "; ".join(broken))
                        problems.append(f"{label} part: {why}")
                        refused[(label, "adv")] = why
                        continue
                    m = torch.from_numpy(mask)
                    n_ok = int((ok & m).sum())
                    good = hit & m
                    adv_metrics[label] = {
                        "success_rate": int(good.sum()) / n_ok if n_ok else float("nan"),
                        "mean_tokens_changed": float(dist[good].mean()) if good.any() else float("nan"),
                    }

            # 2. the universal trigger
            trig, why = self._load_trigger(artifacts, spec, hidden)
            trig_metrics: dict[str, dict] = {}
            if trig is None:
                problems.append(why)
                for label in rows:
                    refused[(label, "trigger")] = why
            else:
                t_ids, t_mask = apply_trigger(hidden.ids, hidden.mask, trig)
                t_threat = maestro.ThreatModel("tokens", spec.trigger_length, vocab=allowed)
                found = t_threat.violations(clean, TokenBatch(t_ids, t_mask))
                if found:  # _load_trigger's checks make this unreachable; the validator has the last word
                    why = f"{spec.trigger_file} breaks the trigger's threat model: " + "; ".join(map(str, found))
                    problems.append(why)
                    for label in rows:
                        refused[(label, "trigger")] = why
                else:
                    t_pred = model.predict(TokenBatch(t_ids, t_mask)).cpu()
                    source = ok & (hidden.y != hidden.target)
                    for label, mask in rows.items():
                        src = source & torch.from_numpy(mask)
                        n_src = int(src.sum())
                        flipped = int((src & (t_pred == hidden.target)).sum())
                        trig_metrics[label] = {"trigger_success_rate": flipped / n_src if n_src else float("nan"),
                                               "trigger_length": len(trig)}

        metrics: dict[str, dict | None] = {}
        for label, mask in rows.items():
            if (label, "adv") in refused and (label, "trigger") in refused:
                metrics[label] = None
                continue
            m = torch.from_numpy(mask)
            part = {"n": int(mask.sum())}
            part.update(adv_metrics.get(label, {k: None for k in _PER_TWEET}))
            part.update(trig_metrics.get(label, {k: None for k in _TRIGGER}))
            part["clean_accuracy"] = float(ok[m].float().mean())
            metrics[label] = part
        overall = None
        if adv_metrics.keys() == rows.keys() or trig_metrics.keys() == rows.keys():
            overall = {"n": len(hidden.y), "clean_accuracy": float(ok.float().mean())}
        result = score_parts(config, metrics, problems, overall=overall, kind=self.name)
        # a refused artifact: its terms carry the reason (score_parts wrote the metric's "n/a")
        group = {t.name: ("adv" if t.metric in _PER_TWEET else "trigger" if t.metric in _TRIGGER else None)
                 for t in config.terms}
        parts = []
        for p in result.parts:
            label, _, term = p.name.partition(": ")
            why = refused.get((label, group.get(term)))
            parts.append(replace(p, reason=why, points=0.0) if why is not None else p)
        result.parts = parts
        result.score = round(sum(p.points for p in parts), 4)
        result.passed = result.score >= config.pass_score
        return result

    # -- artifacts ---------------------------------------------------------------------------
    @staticmethod
    def _read(artifacts: dict, name: str, max_items: int):
        """The array in artifact ``name`` whose length may vary (the trigger), read by the safe
        loader of :mod:`autograder.artifacts` (regular file, size cap, no pickle), or (None, reason)."""
        from ..artifacts import ArtifactError, ArtifactTooLarge, load

        path = artifacts.get(name)
        if path is None:
            return None, not_produced(name)
        try:
            array = load(Path(path), max_bytes=16 * max_items + _HEADER_SLACK)
        except ArtifactTooLarge:
            return None, f"{name} is much larger than the token ids it should hold; save exactly that array"
        except ArtifactError as err:
            return None, str(err)
        if not isinstance(array, np.ndarray) or array.dtype.hasobject:
            return None, f"{name} is not a plain int64 array (save it with np.save)"
        if array.dtype.kind != "i" or array.dtype.itemsize != 8:
            return None, (f"{name} has dtype {array.dtype}; expected int64 token ids "
                          "(ids.numpy().astype(np.int64))")
        return np.ascontiguousarray(array.astype(np.int64, copy=False)), ""

    def _load_adv(self, artifacts: dict, spec: TextSpec, hidden: TextHidden):
        """The adversarial ids as a LongTensor shaped like the clean ids, or (None, reason) for a
        file that cannot be read as one (rule checks per row come after)."""
        from ..scoring import ArtifactRefused, load_artifact

        path = artifacts.get(spec.adv_file)
        if path is None:
            return None, not_produced(spec.adv_file)
        try:
            array = load_artifact(path, dtype="int64", shape=tuple(hidden.ids.shape),
                                  shape_hint="the shape of the token ids you were given (same rows, "
                                  "same order, same padding)", cast_hint="adv_ids.astype(np.int64)")
        except ArtifactRefused as err:
            return None, str(err)
        return torch.from_numpy(array), ""

    @staticmethod
    def _adv_violations(adv: torch.Tensor, hidden: TextHidden, threat) -> list[tuple[str, list[int], str]]:
        """(rule, rows, what) for every rule some rows of ``adv`` break: ids outside the
        vocabulary, changed padding, then the token threat model (edit count, vocabulary)."""
        from maestro.text import TokenBatch

        found = []
        out = ((adv < 0) | (adv >= hidden.vocab_size)).any(1)
        if out.any():
            found.append(("ids", out.nonzero().flatten().tolist(),
                          f"ids outside [0, {hidden.vocab_size - 1}], the model's vocabulary"))
        pad = ((hidden.mask == 0) & (adv != hidden.ids)).any(1)
        if pad.any():
            found.append(("padding", pad.nonzero().flatten().tolist(),
                          "padding positions (mask 0) changed: an attack swaps tokens, it keeps each "
                          "text's length and the pad id after it"))
        if found:  # the threat model is only meaningful on rows of real ids
            return found
        for v in threat.violations(TokenBatch(hidden.ids, hidden.mask), TokenBatch(adv, hidden.mask)):
            if not v.indices:  # unreachable: the shape was checked
                found.append((v.rule, list(range(len(adv))), v.detail))
                continue
            what = {"norm": f"more than eps = {int(threat.eps)} token edits",
                    "vocab": "tokens brought in from outside the allowed vocabulary (special or "
                             "unknown tokens)"}.get(v.rule, v.detail)
            found.append((v.rule, list(v.indices), what))
        return found

    def _load_trigger(self, artifacts: dict, spec: TextSpec, hidden: TextHidden):
        """The trigger as a 1-d LongTensor, or (None, reason)."""
        array, why = self._read(artifacts, spec.trigger_file, spec.trigger_length)
        if array is None:
            return None, why
        if array.ndim != 1 or not 1 <= array.shape[0]:
            return None, (f"{spec.trigger_file} has shape {array.shape}; expected a 1-d array of 1 to "
                          f"{spec.trigger_length} token ids")
        if array.shape[0] > spec.trigger_length:
            return None, (f"{spec.trigger_file} holds {array.shape[0]} tokens; the trigger budget is "
                          f"{spec.trigger_length} ([text] trigger_length)")
        banned = set(hidden.banned)
        bad = [i for i, v in enumerate(array.tolist()) if not 0 <= v < hidden.vocab_size or v in banned]
        if bad:
            which = (f"entries {', '.join(map(str, bad))} are not allowed token ids" if len(bad) > 1
                     else f"entry {bad[0]} is not an allowed token id")
            return None, (f"{spec.trigger_file}: {which} (ids lie in "
                          f"[0, {hidden.vocab_size - 1}]; the special and unknown tokens "
                          f"{', '.join(map(str, hidden.banned))} may not be used)")
        return torch.from_numpy(array), ""

    def leaderboard_columns(self) -> list[tuple[str, str, str]]:
        return [("success_rate", "success rate", "desc"),
                ("trigger_success_rate", "trigger success rate", "desc"),
                ("mean_tokens_changed", "tokens changed", "asc")]


KIND = TextAttackKind()

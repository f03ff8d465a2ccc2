"""Kind ``llm-suffix``: adversarial suffixes that make a chat model begin its answer with a target.

From the course secret, :meth:`LLMSuffix.prepare` draws requests out of the hidden split of the
``prompts`` data set (:func:`maestro.datasets.load`, ``split="hidden"``) and splits them in two:

* the first ``[suffix] prompts`` go to the notebook, each with a target drawn from
  ``[suffix] targets`` — ``prompts.json``, papermill parameter ``prompts_path``: a JSON list of
  ``{"prompt": ..., "target": ...}``; the notebook hands back ``suffixes.json``, a JSON list of
  one suffix (a string) per prompt, same order;
* the next ``[suffix] hidden_prompts`` stay here: the notebook never sees them. It gets only the
  universal target (``[suffix] target``, parameter ``universal_target``) and finds, on public
  requests of its own choosing (the data set's ``train`` split), one suffix for them all —
  ``universal.json``, ``{"suffix": ...}``.

Every suffix is text within the threat model of this modality (``[threat] norm = "suffix"``,
``eps`` tokens): at most ``eps`` tokens of the chat model's tokenizer, no special or control
token, text that reads back as the same tokens — checked by the one validator,
:class:`maestro.ThreatModel`. The model fills the chat template's user slot with the request
followed by the suffix; the text is never formatted into a template, so braces, template markers
and the like are data.

The grader generates every answer itself, greedily, one conversation at a time on one CPU
thread (:func:`maestro.evaluation.llm.forced`, which the notebook uses too: no padding, the same
numbers whatever else is graded), ``len(target tokens) + 2`` new tokens. Metrics per part (public / private; ``[split]``), over the part's prompts:

* ``prompt_success_rate``: share of the notebook's prompts whose answer, with its own suffix,
  begins with its target (exact prefix);
* ``universal_success_rate``: share of the hidden prompts whose answer, with the universal
  suffix, begins with the universal target;
* ``clean_universal_rate``: the same without any suffix (the same for everyone: the baseline).

A suffix that breaks the threat model voids its own part's term for that artifact, with the rule
and the prompt numbers of the student's file; the other artifact is still scored. The public
part's feedback names the notebook's prompts that failed and how their answers began (the
notebook had those prompts); nothing is shown of the hidden prompts but the share.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from . import Kind, Prepared, listed, not_produced

#: grading.toml keys of the two artifacts this kind reads
SUFFIXES, UNIVERSAL = "suffixes", "universal"
#: the data set the prompts come from (its hidden split)
DATASET = "prompts"
_PER_PROMPT = ("prompt_success_rate",)
_UNIV = ("universal_success_rate",)
_NUMBERED = " (requests are numbered from 0, in the order of prompts.json)"
_MAX_SUFFIX_CHARS = 2000  # far more than any suffix of eps ≤ 64 tokens needs (before tokenizing)


@dataclass(frozen=True)
class SuffixSpec:
    """The parsed ``[suffix]`` table."""

    prompts: int  # prompts (each with its target) the notebook finds one suffix for each
    hidden_prompts: int  # hidden prompts the universal suffix is scored on
    target: str  # the universal target
    targets: tuple[str, ...]  # the per-prompt targets are drawn from these
    suffixes_file: str
    universal_file: str


@dataclass
class SuffixHidden:
    """What the scorer keeps: the notebook's prompts and targets, the hidden prompts, the public
    masks of both."""

    prompts: list[str]
    targets: list[str]
    public: np.ndarray
    hidden: list[str]
    hidden_public: np.ndarray
    target: str
    home: str | None = None
    clean: np.ndarray | None = None  # the hidden prompts forced without a suffix (once per run)
    model: object = None  # the zoo chat model, loaded by the first score() of the run

    def __repr__(self) -> str:  # never print the hidden prompts
        return (f"SuffixHidden(prompts={len(self.prompts)}, hidden={len(self.hidden)}, "
                f"target={self.target!r})")


def draw_targets(secret, pool: tuple[str, ...], n: int, salt: str) -> list[str]:
    """``n`` targets from ``pool``, drawn by the course secret (each pool entry before any
    repeats, in a secret order)."""
    from maestro.datasets.splits import secret_seed

    gen = torch.Generator().manual_seed(secret_seed(secret, salt, domain="maestro-llm-targets"))
    order: list[int] = []
    while len(order) < n:
        order += torch.randperm(len(pool), generator=gen).tolist()
    return [pool[i] for i in order[:n]]


class LLMSuffix(Kind):
    name = "llm-suffix"
    table = "suffix"
    metrics = {
        "prompt_success_rate": "share of the notebook's requests whose greedy answer, with the "
        "request's own suffix, begins with its target",
        "universal_success_rate": "share of the hidden requests (never shown to the notebook) whose "
        "greedy answer, with the universal suffix, begins with the universal target",
        "clean_universal_rate": "share of the hidden requests whose answer begins with the universal "
        "target without any suffix (the baseline)",
    }
    needs_threat = True

    # -- grading.toml ------------------------------------------------------------------------
    def parse(self, where: str, raw, config) -> SuffixSpec:
        from ..config import ConfigError, _Table

        if raw is None:
            raise ConfigError(f"{where}: [suffix] missing: an llm-suffix unit gives prompts, "
                              "hidden_prompts, target and targets, e.g. prompts = 6, "
                              "hidden_prompts = 20, target = \"Sure\", targets = [\"Sure\", \"No\"]")
        t = _Table(where, raw, "suffix")
        prompts = t.get("prompts", int, check=lambda v: None if 2 <= v <= 64 else "must lie in [2, 64]")
        hidden = t.get("hidden_prompts", int, check=lambda v: None if 2 <= v <= 256 else "must lie in [2, 256]")
        target = t.get("target", str, check=lambda v: None if v.strip() == v and v else
                       "must be a non-empty text without leading or trailing spaces")
        targets = t.get("targets", list, what="a list of target texts")
        t.done()
        if not targets or not all(isinstance(x, str) and x and x.strip() == x for x in targets) \
                or len(set(targets)) != len(targets):
            raise ConfigError(f"{where}: [suffix] targets: expected a list of distinct non-empty texts "
                              f"without leading or trailing spaces, got {targets!r}")
        if config.threat.norm != "suffix":
            raise ConfigError(f"{where}: [threat] norm: an llm-suffix unit counts suffix tokens: norm = "
                              f"\"suffix\", got {config.threat.norm!r}")
        if not 1 <= config.threat.eps <= 64 or config.threat.eps != int(config.threat.eps):
            raise ConfigError(f"{where}: [threat] eps: the most tokens a suffix may have, a whole "
                              f"number in [1, 64]; got {config.threat.eps:g}")
        from maestro.models.chat import CHAT_ZOO

        if config.model not in CHAT_ZOO:
            raise ConfigError(f"{where}: [assignment] model: an llm-suffix unit attacks a chat model of "
                              f"the zoo ({', '.join(CHAT_ZOO)}), got {config.model!r}")
        if config.dataset != DATASET:
            raise ConfigError(f"{where}: [assignment] dataset: an llm-suffix unit draws its prompts "
                              f"from {DATASET!r}, got {config.dataset!r}")
        arts = {a.key: a for a in config.artifacts}
        if set(arts) != {SUFFIXES, UNIVERSAL} or any(a.format != "json" for a in arts.values()):
            raise ConfigError(f"{where}: an llm-suffix unit has exactly two .json artifacts, "
                              f"[artifacts.{SUFFIXES}] (one suffix per prompt) and "
                              f"[artifacts.{UNIVERSAL}] (the universal suffix); got "
                              f"{', '.join(f'{k} ({a.file})' for k, a in sorted(arts.items()))}")
        return SuffixSpec(prompts, hidden, target, tuple(targets), arts[SUFFIXES].file,
                          arts[UNIVERSAL].file)

    # -- the grader's inputs -----------------------------------------------------------------
    def prepare(self, config, secret, home=None) -> Prepared:
        import json

        import maestro
        from maestro.datasets.splits import resolve_secret

        from ..scoring import public_mask

        spec: SuffixSpec = config.unit
        secret = resolve_secret(secret)
        data = maestro.datasets.load(DATASET, split="hidden", secret=secret, home=home)
        need = spec.prompts + spec.hidden_prompts
        if len(data) < need:
            raise ValueError(f"{config.id}: [suffix] prompts + hidden_prompts = {need}, but the hidden "
                             f"split of {DATASET!r} has only {len(data)} prompts")
        prompts, hidden = list(data.x[: spec.prompts]), list(data.x[spec.prompts: need])
        targets = draw_targets(secret, spec.targets, spec.prompts, config.split.salt)
        mask = public_mask(spec.prompts, config, secret)
        # the hidden prompts' own split, drawn apart from the notebook's prompts
        hidden_mask = public_mask(spec.hidden_prompts, replace(config, split=replace(
            config.split, salt=config.split.salt + "/hidden")), secret)
        state = SuffixHidden(prompts, targets, mask, hidden, hidden_mask, spec.target,
                             None if home is None else str(home))
        body = json.dumps([{"prompt": p, "target": t} for p, t in zip(prompts, targets)],
                          indent=1, ensure_ascii=False).encode()
        params = {"prompts_path": "prompts.json", "universal_target": spec.target,
                  "max_tokens": int(config.threat.eps)}
        return Prepared({"prompts.json": body}, params, state)

    def hidden_texts(self, prepared: Prepared) -> list[str]:
        return list(prepared.state.hidden)  # no labels here: the hidden requests must stay unseen

    # -- scoring -----------------------------------------------------------------------------
    def score(self, config, artifacts: dict, prepared: Prepared, *, queries=None):
        import maestro
        from maestro.evaluation.llm import forced
        from maestro.models.train import num_threads

        from ..scoring import score_parts

        spec: SuffixSpec = config.unit
        h: SuffixHidden = prepared.state
        if h.model is None:  # loading takes seconds, scoring one submission about as long
            h.model = maestro.models.load(config.model, home=h.home)
        model = h.model
        threat = maestro.ThreatModel("suffix", int(config.threat.eps), tokenizer=model.tokenizer)
        masks = {"public": h.public, "private": ~h.public}
        hidden_masks = {"public": h.hidden_public, "private": ~h.hidden_public}
        problems: list[str] = []
        refused: dict[tuple[str, str], str] = {}  # (part, "prompt" | "universal") -> reason
        metrics: dict[str, dict] = {label: {"n": int(m.sum()), "n_hidden": int(hidden_masks[label].sum())}
                                    for label, m in masks.items()}
        notes: dict[str, list[str]] = {"public": [], "private": []}

        with num_threads(1), torch.inference_mode():
            # 1. one suffix per prompt
            suffixes, why = self._read_list(artifacts, spec.suffixes_file, len(h.prompts))
            if suffixes is None:
                problems.append(why)
                for label in masks:
                    refused[(label, "prompt")] = why
            else:
                bad = self._violations(threat, h.prompts, suffixes)
                void = {i for _, idx, _ in bad for i in idx}
                asked = [None if i in void else s for i, s in enumerate(suffixes)]
                answers: list[str] = []
                hit = np.array(forced(model, h.prompts, asked, h.targets, answers=answers))
                for label, mask in masks.items():
                    broken = [f"{rule}: {listed([i for i in idx if mask[i]], 'request')} ({text})"
                              for rule, idx, text in bad if any(mask[i] for i in idx)]
                    if broken:
                        why = (f"{spec.suffixes_file} breaks the suffix threat model "
                               f"({threat.describe()}): " + "; ".join(broken) + _NUMBERED)
                        problems.append(f"{label} part: {why}")
                        refused[(label, "prompt")] = why
                        continue
                    metrics[label]["prompt_success_rate"] = float(hit[mask].mean())
                    if label == "public":
                        missed = [i for i in np.flatnonzero(mask & ~hit)]
                        notes[label] = [f"request {i} of prompts.json (target {h.targets[i]!r}): the "
                                        f"answer began {answers[i][:60]!r}" for i in missed]

            # 2. the universal suffix, on prompts the notebook never saw
            universal, why = self._read_universal(artifacts, spec.universal_file)
            if h.clean is None:  # the same for every submission: measured once
                h.clean = np.array(forced(model, h.hidden, None, h.target))
            clean_hit = h.clean
            if universal is None:
                problems.append(why)
                for label in masks:
                    refused[(label, "universal")] = why
            else:
                bad = self._violations(threat, ["(your universal suffix)"], [universal])
                if bad:
                    why = (f"{spec.universal_file} breaks the suffix threat model ({threat.describe()}): "
                           + "; ".join(what for _, _, what in bad))
                    problems.append(why)
                    for label in masks:
                        refused[(label, "universal")] = why
                else:
                    u_hit = np.array(forced(model, h.hidden, universal, h.target))
                    for label, mask in hidden_masks.items():
                        metrics[label]["universal_success_rate"] = float(u_hit[mask].mean())
            for label, mask in hidden_masks.items():
                metrics[label]["clean_universal_rate"] = float(clean_hit[mask].mean())

        for label in masks:
            for key, names in (("prompt", _PER_PROMPT), ("universal", _UNIV)):
                if (label, key) in refused:
                    metrics[label].update({k: None for k in names})
        parts_metrics = {label: (None if (label, "prompt") in refused and (label, "universal") in refused
                                 else m) for label, m in metrics.items()}
        overall = {"n": len(h.prompts), "n_hidden": len(h.hidden),
                   "clean_universal_rate": float(clean_hit.mean())}
        result = score_parts(config, parts_metrics, problems, overall=overall, kind=self.name)
        group = {t.name: ("prompt" if t.metric in _PER_PROMPT else "universal" if t.metric in _UNIV else None)
                 for t in config.terms}
        parts = []
        for p in result.parts:
            label, _, term = p.name.partition(": ")
            why = refused.get((label, group.get(term)))
            if why is not None:
                p = replace(p, reason=why, points=0.0)
            elif group.get(term) == "prompt" and notes.get(label):
                p = replace(p, reason=p.reason + "; not reached: " + "; ".join(notes[label][:6]))
            parts.append(p)
        result.parts = parts
        result.score = round(sum(p.points for p in parts), 4)
        result.passed = result.score >= config.pass_score
        return result

    # -- artifacts ---------------------------------------------------------------------------
    @staticmethod
    def _load_json(artifacts: dict, name: str, max_bytes: int):
        """The JSON value of artifact ``name`` (safe reader: regular file, size cap, UTF-8), or
        (None, reason)."""
        from ..artifacts import ArtifactError, ArtifactTooLarge, load

        path = artifacts.get(name)
        if path is None:
            return None, not_produced(name)
        try:
            return load(Path(path), max_bytes=max_bytes), ""
        except ArtifactTooLarge:
            return None, (f"{name} is far larger than the suffixes it should hold (limit "
                          f"{max_bytes // 1000} kB); save only the suffix texts")
        except ArtifactError as err:
            return None, str(err)

    def _read_list(self, artifacts: dict, name: str, n: int):
        value, why = self._load_json(artifacts, name, n * 4 * _MAX_SUFFIX_CHARS + 1024)
        if why:
            return None, why
        if not isinstance(value, list) or len(value) != n:
            got = f"a list of {len(value)}" if isinstance(value, list) else f"a JSON {type(value).__name__}"
            return None, (f"{name} must be a JSON list of {n} suffixes (one string per request, in the "
                          f"order of prompts.json); got {got}")
        wrong = [i for i, s in enumerate(value) if not isinstance(s, str)]
        if wrong:
            return None, (f"{name}: {listed(wrong, 'request')} hold no string; every suffix is a text "
                          "(\"\" for none)" + _NUMBERED)
        return value, ""

    def _read_universal(self, artifacts: dict, name: str):
        value, why = self._load_json(artifacts, name, 4 * _MAX_SUFFIX_CHARS + 1024)
        if why:
            return None, why
        if not isinstance(value, dict) or set(value) != {"suffix"} or not isinstance(value["suffix"], str):
            return None, f"{name} must be a JSON object {{\"suffix\": \"...\"}} (one string), got {str(value)[:80]!r}"
        return value["suffix"], ""

    @staticmethod
    def _violations(threat, prompts: list[str], suffixes: list[str]) -> list[tuple[str, list[int], str]]:
        """(rule, prompt numbers, what) for every rule some suffixes break."""
        from maestro.chat import Chat

        long = [i for i, s in enumerate(suffixes) if len(s) > _MAX_SUFFIX_CHARS]
        if long:  # not worth tokenizing
            return [("norm", long, f"more than {_MAX_SUFFIX_CHARS} characters")]
        found = []
        for v in threat.violations([Chat(p) for p in prompts], suffixes):
            what = {"norm": f"more than eps = {int(threat.eps)} tokens",
                    "vocab": "special tokens, or text that does not read back as the same tokens",
                    "finite": "control characters or invalid text"}.get(v.rule, v.detail)
            found.append((v.rule, list(v.indices) or list(range(len(suffixes))), what))
        return found

    def leaderboard_columns(self) -> list[tuple[str, str, str]]:
        return [("prompt_success_rate", "prompts forced", "desc"),
                ("universal_success_rate", "universal suffix on hidden requests", "desc")]


KIND = LLMSuffix()

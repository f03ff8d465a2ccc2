"""Assignment kinds beyond ``attack`` and ``defense``: one module per kind, one :class:`Kind` each.

A grading.toml names its kind in ``[assignment] kind``. The two built-in kinds (adversarial
inputs against a zoo model; model weights attacked by a reference suite) live in
:mod:`autograder.scoring`. Every other kind — text attacks with a token budget, backdoors,
membership inference, certified robustness, adaptive attacks on masked defenses, the
attack-vs-defense war, adversarial suffixes and prompt injection on the zoo's chat model — is a
:class:`Kind` registered in :data:`KINDS` and found here by name.

A kind does three things, all in the trusted grader process:

* :meth:`Kind.parse` validates its own grading.toml table (``[text]``, ``[privacy]``, …; the name
  is :attr:`Kind.table`) and returns a frozen spec stored as ``GradingConfig.unit``;
* :meth:`Kind.prepare` builds, from the course secret, what one grading run of the unit needs:
  the input files the notebook may see (:attr:`Prepared.inputs`, written as ``.npy`` or
  ``.safetensors`` into the sandbox's read-only inputs folder; each file named by a papermill
  parameter, :attr:`Prepared.params`) and the hidden state the scorer keeps to itself
  (:attr:`Prepared.state`: labels, member masks, … — never written where a sandbox can read it);
* :meth:`Kind.score` turns the artifacts one sandboxed run left (file name -> path, already
  copied out of the sandbox) into a :class:`~autograder.scoring.ScoreResult`, reading each with
  :func:`autograder.scoring.load_artifact` / :func:`~autograder.scoring.load_weights` (no pickle,
  headers checked first) and, where inputs are perturbed, checking them with the one threat-model
  validator, :class:`maestro.ThreatModel`. :func:`autograder.scoring.score_parts` makes the
  public/private parts from per-part metrics.

The kinds' metrics (their names may appear in ``[[score.terms]] metric``) are listed in
:attr:`Kind.metrics`, with a sentence each for the feedback.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["KINDS", "Kind", "Prepared", "get", "is_unit_kind", "listed", "not_produced"]

#: kind name -> module (under autograder.units) whose ``KIND`` attribute is its :class:`Kind`
KINDS = {
    "text-attack": "text",
    "adaptive-attack": "adaptive",
    "backdoor": "backdoor",
    "membership": "privacy",
    "certified": "certified",
    "war": "war",
    "llm-suffix": "llm_suffix",
    "prompt-injection": "injection",
}


@dataclass
class Prepared:
    """What one grading run of a unit needs, made by :meth:`Kind.prepare`.

    ``inputs``: sandbox input file name -> content (an ndarray, saved as ``.npy``; or ``bytes``,
    written as they are, e.g. a ``.safetensors`` file). Everything here is visible to the
    student's code: hidden *inputs* at most, never labels.
    ``params``: papermill parameter -> input file name (the driver passes the file's path inside
    the sandbox) or a plain value (number, string, list).
    ``state``: what :meth:`Kind.score` needs and the sandbox must never see.
    """

    inputs: dict[str, Any]
    params: dict[str, Any] = field(default_factory=dict)
    state: Any = None

    def input_params(self) -> dict[str, str]:
        """The parameters that name an input file."""
        return {k: v for k, v in self.params.items() if isinstance(v, str) and v in self.inputs}

    def plain_params(self) -> dict[str, Any]:
        """The parameters that are plain values."""
        files = self.input_params()
        return {k: v for k, v in self.params.items() if k not in files}


class Kind:
    """Base class of a unit kind (see the module docstring)."""

    name: str = ""
    table: str | None = None  # its grading.toml table; None: it reads none
    metrics: dict[str, str] = {}  # metric -> one sentence (the feedback and the docs show it)
    needs_threat: bool = False  # [threat] is required
    lower_is_better: tuple[str, ...] = ()  # metrics ranked ascending on the leaderboard
    #: keep each student's latest valid artifacts in the course (``.maestro/artifacts/<assignment>/
    #: <student>/``, instructor side, never in a sandbox): for units scored ACROSS submissions (war)
    keep_artifacts: bool = False

    def parse(self, where: str, raw: dict | None, config) -> Any:
        """Validate ``raw`` (the kind's table, or None when absent) for ``config`` (the rest of
        the grading.toml, already checked); raise :class:`autograder.config.ConfigError`."""
        if raw is not None:
            from ..config import ConfigError

            raise ConfigError(f"{where}: [{self.table}] is not read by kind {self.name!r}")
        return None

    def prepare(self, config, secret: str | bytes, home=None) -> Prepared:
        raise NotImplementedError

    def score(self, config, artifacts: dict[str, Path], prepared: Prepared, *, queries=None):
        raise NotImplementedError

    def hidden_labels(self, prepared: Prepared):
        """The hidden answers of a prepared run (labels, member mask, …) as a 1-d integer array:
        tests check that no feedback page shows them."""
        return None

    def hidden_texts(self, prepared: Prepared) -> list[str]:
        """Hidden texts of a prepared run (requests the sandbox never sees, secrets, …): tests check
        that no feedback page shows them."""
        return []

    def summary(self, metrics: dict) -> str:
        """One line of a part's metrics for results.json's output."""
        from ..scoring import _fmt

        return ", ".join(f"{k.replace('_', ' ')} {_fmt(k, v)}" for k, v in metrics.items()
                         if k in self.metrics and isinstance(v, (int, float)) and not isinstance(v, bool))

    def leaderboard_columns(self) -> list[tuple[str, str, str]]:
        """(metric, title, "asc" | "desc") of the public metrics results.json's leaderboard shows."""
        return [(m, m.replace("_", " "), "asc" if m in self.lower_is_better else "desc") for m in self.metrics]


def not_produced(name: str) -> str:
    """The reason for an artifact file the notebook did not save."""
    return (f"{name} was not produced: the notebook must save it in output_dir (did every cell "
            "before its save cell run without an error?)")


def listed(indices, what: str = "row", limit: int = 10) -> str:
    """``"rows 3, 7, 9"``: the numbers of the student's own file a reason names (the first
    ``limit``, then how many more)."""
    idx = [int(i) for i in indices]
    shown = ", ".join(map(str, idx[:limit])) + (f" (+{len(idx) - limit} more)" if len(idx) > limit else "")
    return f"{what}{'s' if len(idx) > 1 else ''} {shown}"


def is_unit_kind(kind: str) -> bool:
    return kind in KINDS


def get(kind: str) -> Kind:
    """The :class:`Kind` registered as ``kind``."""
    if kind not in KINDS:
        raise KeyError(f"unknown assignment kind {kind!r}; known: attack, defense, {', '.join(KINDS)}")
    module = importlib.import_module(f"{__name__}.{KINDS[kind]}")
    return module.KIND

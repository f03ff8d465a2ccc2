"""Robust accuracy of a model over an attack suite, AutoAttack style.

``evaluate(model, data, threat=...)`` measures clean accuracy, then runs each attack of the
suite on the points still robust (``cascade=True``; each next attack only sees what the
previous ones failed to break), validates every ``x_adv`` with ``ThreatModel.check``,
re-classifies it itself (an attack's own claim of success is recorded, not trusted) and
reports, per attack: points attacked, points broken, success rate, robust accuracy after the
attack, median/max perturbation norm of the successful adversarial examples, queries and
time; and per example the worst case over the suite.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from ..threat import ThreatModel
from ..wrapper import _RANK, ACCESS_LEVELS
from ._common import _as_dataset, _chunks, _predict, _view, attack_label


@dataclass
class AttackRow:
    """One attack's line of the report (norms over the points it broke; NaN when none)."""

    attack: str
    attacked: int
    broken: int
    success_rate: float
    robust_accuracy: float
    median_norm: float
    max_norm: float
    queries: int
    time: float
    claimed: int = 0  # successes the attack itself reported on the attacked points
    error: str | None = None  # set when the attack could not run (e.g. not for this access level)


@dataclass
class EvaluationReport:
    """The outcome of :func:`evaluate`. ``robust`` / ``broken_by`` are per example (in data
    order); ``x_adv`` holds each example's worst case (the clean input where nothing broke
    it). ``str(report)`` is a table, ``to_dict()`` is JSON-able."""

    model: str
    threat: ThreatModel
    n: int
    clean_accuracy: float
    robust_accuracy: float
    rows: list[AttackRow]
    cascade: bool
    clean_correct: torch.Tensor
    robust: torch.Tensor
    broken_by: list[str | None]
    x_adv: object = field(repr=False, default=None)
    time: float = 0.0

    @property
    def worst_case_accuracy(self) -> float:
        return self.robust_accuracy

    def row(self, attack: str) -> AttackRow:
        for r in self.rows:
            if r.attack == attack:
                return r
        raise KeyError(f"no attack {attack!r} in this report; have {', '.join(r.attack for r in self.rows)}")

    def to_dict(self) -> dict:
        t = self.threat
        return {
            "model": self.model,
            "threat": {"norm": t.norm, "eps": float(t.eps), "bounds": list(t.bounds),
                       "query_budget": t.query_budget, "access": t.access, "description": t.describe()},
            "n": self.n,
            "clean_accuracy": _num(self.clean_accuracy),
            "robust_accuracy": _num(self.robust_accuracy),
            "cascade": self.cascade,
            "time": _num(self.time),
            "attacks": [{k: _num(v) for k, v in vars(r).items()} for r in self.rows],
            "per_example": {
                "clean_correct": [bool(v) for v in self.clean_correct.tolist()],
                "robust": [bool(v) for v in self.robust.tolist()],
                "broken_by": list(self.broken_by),
            },
        }

    def __str__(self) -> str:
        mode = "each attack on the points still robust" if self.cascade else "each attack on every clean-correct point"
        lines = [
            f"Robustness of {self.model or 'model'} on {self.n} examples — {self.threat.describe()}",
            f"clean accuracy {self.clean_accuracy:.1%}; suite run {mode}",
            "",
            (f"{'attack':<18} {'attacked':>8} {'broken':>7} {'success':>8} {'robust acc':>10} "
             f"{'median norm':>11} {'max norm':>9} {'queries':>9} {'time':>8}"),
        ]
        for r in self.rows:
            if r.error:
                lines.append(f"{r.attack:<18} not run: {r.error}")
                continue
            lines.append(
                f"{r.attack:<18} {r.attacked:>8} {r.broken:>7} {r.success_rate:>8.1%} {r.robust_accuracy:>10.1%} "
                f"{_fmt(r.median_norm):>11} {_fmt(r.max_norm):>9} {r.queries:>9} {r.time:>7.2f}s"
            )
        lines += ["", (f"worst case over the suite: robust accuracy {self.robust_accuracy:.1%} "
                       f"({int(self.robust.sum())}/{self.n})")]
        return "\n".join(lines)


def evaluate(
    model,
    data_or_xy,
    *,
    threat: ThreatModel,
    attacks=None,
    batch_size: int | None = None,
    cascade: bool = True,
    progress: bool = True,
) -> EvaluationReport:
    """Clean and robust accuracy of ``model`` on ``data_or_xy`` (a Dataset or ``(x, y)``)
    under ``threat``.

    ``attacks``: a list of Attack objects (or ``(label, attack)`` pairs); ``None`` picks a
    default suite for the lower of the model's and the threat model's access level (see
    :func:`default_suite`). Attacks run in ``batch_size`` chunks (``None``: all at once), on
    a view of the model at that access level with fresh counters; ``query_budget`` of the
    threat model is per example and enforced by the attacks.
    """
    from tqdm.auto import tqdm

    if not isinstance(threat, ThreatModel):
        raise TypeError(f"threat: expected a maestro.ThreatModel, got {type(threat).__name__}")
    if getattr(model, "access", None) not in _RANK:
        raise TypeError(f"model: expected a maestro ModelWrapper, got {type(model).__name__}")
    data = _as_dataset(data_or_xy)
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    access = ACCESS_LEVELS[min(_RANK[model.access], _RANK[threat.access])]
    suite = _labelled(default_suite(model, threat) if attacks is None else attacks)
    start = time.perf_counter()
    judge = _view(model, model.access)  # the evaluator's own, uncounted view
    n = len(data)
    y = data.y.cpu()
    clean_pred = _predict(judge, data.x, batch_size).cpu()
    clean_correct = clean_pred == y
    robust = clean_correct.clone()
    broken_by: list[str | None] = [None] * n
    x_worst = data.x.clone() if isinstance(data.x, torch.Tensor) else list(data.x)
    rows: list[AttackRow] = []
    bar = tqdm(suite, desc="evaluate", disable=not progress, unit="attack")
    for label, attack in bar:
        bar.set_postfix(attack=label)
        todo = (robust if cascade else clean_correct).nonzero().flatten()
        row = AttackRow(label, len(todo), 0, 0.0, float(robust.float().mean()), math.nan, math.nan, 0, 0.0)
        rows.append(row)
        if not len(todo):
            continue
        view = _view(model, access)
        t0 = time.perf_counter()
        norms: list[torch.Tensor] = []
        try:
            for part in _chunks(todo, batch_size):
                sub = data[part]
                result = attack(view, sub.x, sub.y)
                threat.check(sub.x, result.x_adv)  # the one validator, whatever the attack says
                pred = _predict(judge, result.x_adv, batch_size).cpu()
                hit = pred != sub.y.cpu()
                row.claimed += int(result.success.cpu().sum())
                row.queries += int(result.queries)
                if hit.any():
                    norms.append(threat.norms(sub.x, result.x_adv).float().cpu()[hit])
                for j in hit.nonzero().flatten().tolist():
                    i = int(part[j])
                    row.broken += 1
                    if robust[i]:
                        robust[i] = False
                        broken_by[i] = label
                        x_worst[i] = result.x_adv[j]
        except Exception as err:  # an attack unfit for this model: say so, keep going
            if attacks is not None:
                raise
            row.error = f"{type(err).__name__}: {err}"
            continue
        row.time = time.perf_counter() - t0
        row.success_rate = row.broken / row.attacked
        if norms:
            allnorms = torch.cat(norms)
            row.median_norm, row.max_norm = float(allnorms.median()), float(allnorms.max())
        row.robust_accuracy = (float(robust.float().mean()) if cascade
                               else (int(clean_correct.sum()) - row.broken) / n)
    return EvaluationReport(
        model=getattr(model, "name", "") or type(model).__name__,
        threat=threat,
        n=n,
        clean_accuracy=float(clean_correct.float().mean()),
        robust_accuracy=float(robust.float().mean()),
        rows=rows,
        cascade=cascade,
        clean_correct=clean_correct,
        robust=robust,
        broken_by=broken_by,
        x_adv=x_worst,
        time=time.perf_counter() - start,
    )


def default_suite(model, threat: ThreatModel) -> list:
    """Attacks for the lower of the model's and the threat model's access level:
    white-box images: FGSM, PGD-20, APGD-100 and Square (1,000 queries, which catches
    gradient masking); scores: Square, SimBA; labels: HopSkipJump; text: HotFlip (white-box)
    or word substitution. Attacks whose module is not installed, or that do not support the
    threat model's norm, are left out."""
    access = ACCESS_LEVELS[min(_RANK[model.access], _RANK[threat.access])]
    if threat.is_text:
        wanted = [("HotFlip", {}, "white-box"), ("WordSubstitution", {}, "scores")]
    else:
        wanted = [
            ("FGSM", {}, "white-box"),
            ("PGD", {"steps": 20}, "white-box"),
            ("APGD", {"steps": 100}, "white-box"),
            ("SquareAttack", {}, "scores"),
            ("SimBA", {}, "scores"),
            ("HopSkipJump", {}, "labels"),
        ]
        if access == "white-box":
            wanted = [w for w in wanted if w[0] != "SimBA" and w[0] != "HopSkipJump"]
        elif access == "scores":
            wanted = [w for w in wanted if w[2] == "scores"]
    suite = []
    for name, kwargs, needs in wanted:
        if _RANK[needs] > _RANK[access]:
            continue
        attack = _make(name, threat, kwargs)
        if attack is not None:
            suite.append(attack)
    if not suite:
        noise = _make("RandomNoise", threat, {})
        if noise is not None:
            suite.append(noise)
    if not suite:
        raise ValueError(f"no attack available for a {model.modality} model with {access!r} access under "
                         f"the {threat.norm} threat model; pass attacks=[...]")
    return suite


def _make(name: str, threat: ThreatModel, kwargs: dict):
    from .. import attacks as A

    try:
        cls = getattr(A, name)
    except (AttributeError, ImportError):
        return None
    if threat.norm not in getattr(cls, "norms", ()):
        return None
    try:
        return cls(threat, **kwargs)
    except (TypeError, ValueError):
        return None


def _labelled(attacks) -> list[tuple[str, object]]:
    if not isinstance(attacks, (list, tuple)) or not attacks:
        raise TypeError("attacks must be a non-empty list of attacks (or (label, attack) pairs)")
    out, seen = [], {}
    for a in attacks:
        label, attack = a if isinstance(a, tuple) else (attack_label(a), a)
        if not callable(attack):
            raise TypeError(f"attacks: {attack!r} is not callable")
        seen[label] = seen.get(label, 0) + 1
        out.append((label if seen[label] == 1 else f"{label} #{seen[label]}", attack))
    return out


def _num(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _fmt(v: float) -> str:
    return "—" if not math.isfinite(v) else f"{v:.4g}"

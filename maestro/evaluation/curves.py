"""Robust accuracy as a function of eps, and its plot.

``robustness_curve`` builds one threat model per eps (``ThreatModel(eps=eps, **threat_kwargs)``),
runs ``attack_factory(threat)`` on every example and records which examples stay correctly
classified. ``accuracy`` is what the attack achieved at each eps; ``cumulative`` counts an
example as broken at eps once it was broken at any smaller eps (an adversarial example inside
a smaller ball lies inside every larger one), so it never increases.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise

import torch

from ..threat import ThreatModel
from ._common import _as_dataset, _chunks, _predict, _view, attack_label


@dataclass
class RobustnessCurve:
    """``eps[i]`` ↦ ``accuracy[i]``; ``per_example[i, j]`` is True where example j is still
    correctly classified under the attack at ``eps[i]``."""

    eps: list[float]
    accuracy: list[float]
    cumulative: list[float]
    per_example: torch.Tensor
    attack: str
    norm: str
    model: str = ""

    def to_dict(self) -> dict:
        return {
            "eps": list(self.eps),
            "accuracy": list(self.accuracy),
            "cumulative": list(self.cumulative),
            "attack": self.attack,
            "norm": self.norm,
            "model": self.model,
            "per_example": [[bool(v) for v in row] for row in self.per_example.tolist()],
        }

    def plot(self, **kwargs):
        return plot_robustness_curve(self, **kwargs)

    def __str__(self) -> str:
        rows = [f"{self.attack} on {self.model or 'model'} ({self.norm}):",
                f"{'eps':>8}  {'accuracy':>8}  {'cumulative':>10}"]
        rows += [f"{e:>8.4g}  {a:>8.1%}  {c:>10.1%}" for e, a, c in zip(self.eps, self.accuracy, self.cumulative)]
        return "\n".join(rows)


def robustness_curve(
    model,
    data,
    *,
    attack_factory: Callable[[ThreatModel], object],
    eps_list: Sequence[float],
    threat_kwargs: dict | None = None,
    batch_size: int | None = None,
    progress: bool = True,
) -> RobustnessCurve:
    """Accuracy of ``model`` on ``data`` (Dataset or ``(x, y)``) under
    ``attack_factory(ThreatModel(eps=eps, **threat_kwargs))`` for each eps of ``eps_list``
    (default norm L∞). eps = 0 measures clean accuracy without running the attack."""
    from tqdm.auto import tqdm

    if not callable(attack_factory):
        raise TypeError("attack_factory must be callable: ThreatModel -> attack, e.g. lambda t: PGD(t, steps=20)")
    eps_values = [float(e) for e in eps_list]
    if not eps_values:
        raise ValueError("eps_list is empty")
    if any(not math.isfinite(e) or e < 0 for e in eps_values):
        raise ValueError(f"eps_list must hold finite values ≥ 0, got {list(eps_list)}")
    kwargs = {"norm": "linf", "bounds": tuple(getattr(model, "input_bounds", (0.0, 1.0))), **(threat_kwargs or {})}
    if "eps" in kwargs:
        raise ValueError("threat_kwargs must not contain eps: the curve sets it from eps_list")
    d = _as_dataset(data)
    y = d.y.cpu()
    judge = _view(model, model.access)
    clean = _predict(judge, d.x, batch_size).cpu() == y
    rows, name = [], ""
    for eps in tqdm(eps_values, desc="robustness curve", disable=not progress, unit="eps"):
        threat = ThreatModel(eps=eps, **kwargs)
        attack = attack_factory(threat)
        name = name or attack_label(attack)
        correct = clean.clone()
        if eps > 0:
            view = _view(model, threat.access if _lower(threat.access, model.access) else model.access)
            for part in _chunks(clean.nonzero().flatten(), batch_size):
                if not len(part):
                    continue
                sub = d[part]
                result = attack(view, sub.x, sub.y)
                threat.check(sub.x, result.x_adv)
                correct[part] = _predict(judge, result.x_adv, batch_size).cpu() == sub.y.cpu()
        rows.append(correct)
    per_example = torch.stack(rows)
    order = sorted(range(len(eps_values)), key=lambda i: eps_values[i])
    cum = per_example.clone()
    for a, b in pairwise(order):
        cum[b] &= cum[a]
    n = max(len(d), 1)
    return RobustnessCurve(
        eps=eps_values,
        accuracy=[float(r.sum()) / n for r in per_example],
        cumulative=[float(r.sum()) / n for r in cum],
        per_example=per_example,
        attack=name,
        norm=kwargs["norm"],
        model=getattr(model, "name", "") or "",
    )


def _lower(a: str, b: str) -> bool:
    from ..wrapper import _RANK

    return _RANK[a] < _RANK[b]


def plot_robustness_curve(curves, *, labels: Sequence[str] | None = None, title: str | None = None,
                          ax=None, cumulative: bool = False):
    """A matplotlib Figure of accuracy against eps for one curve or a list of curves.

    Uses matplotlib's object API with the Agg canvas (no display needed); pass ``ax`` to
    draw into an existing Axes (its figure is returned)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    items = [curves] if isinstance(curves, RobustnessCurve) else list(curves)
    if not items or not all(isinstance(c, RobustnessCurve) for c in items):
        raise TypeError("curves: expected a RobustnessCurve or a list of them")
    if labels is not None and len(labels) != len(items):
        raise ValueError(f"labels: {len(labels)} labels for {len(items)} curves")
    if ax is None:
        fig = Figure(figsize=(5.5, 3.8), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
    else:
        fig = ax.figure
    for i, c in enumerate(items):
        order = sorted(range(len(c.eps)), key=lambda j: c.eps[j])
        ys = c.cumulative if cumulative else c.accuracy
        label = labels[i] if labels is not None else (f"{c.model} — {c.attack}" if c.model else c.attack)
        ax.plot([c.eps[j] for j in order], [100 * ys[j] for j in order], marker="o", label=label)
    norm = {"linf": "L∞", "l2": "L2", "l0": "L0"}.get(items[0].norm, items[0].norm)
    ax.set_xlabel(f"eps ({norm})")
    ax.set_ylabel("accuracy under attack (%)")
    ax.set_ylim(-2, 102)
    ax.grid(True, alpha=0.3)
    ax.set_title(title or "Robustness curve")
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    return fig

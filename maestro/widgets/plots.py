"""Static plots for notebooks and reports: robustness curves and attack comparisons, as
matplotlib Figures on the Agg canvas (show one as a cell's value, save it with ``savefig``, or
put its PNG into an ``ipywidgets.Image`` with :func:`~maestro.widgets.figure_png`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from ..evaluation.curves import plot_robustness_curve
from ._render import new_figure

__all__ = ["plot_attack_comparison", "plot_robustness_curve"]

_METRICS = {
    "success_rate": ("success rate (%)", True),
    "robust_accuracy": ("accuracy under attack (%)", True),
    "median_norm": ("median perturbation norm", False),
    "queries": ("queries", False),
    "time": ("time (s)", False),
}


def _rows(results, metric: str | None):
    """``(label, value or None, note)`` per attack, the metric, and reference lines."""
    from ..attacks.base import AttackResult
    from ..evaluation.suite import AttackRow, EvaluationReport

    refs: list[tuple[str, float]] = []
    if isinstance(results, EvaluationReport):
        metric = metric or "robust_accuracy"
        rows = results.rows
        if metric == "robust_accuracy":
            refs = [(f"clean {results.clean_accuracy:.1%}", results.clean_accuracy),
                    (f"worst case {results.robust_accuracy:.1%}", results.robust_accuracy)]
    elif isinstance(results, Mapping):
        metric = metric or "success_rate"
        if metric == "robust_accuracy":
            raise ValueError("robust_accuracy needs an EvaluationReport (an AttackResult does not know which "
                             "points were correct before the attack); use metric='success_rate'")
        out = []
        for label, r in results.items():
            if not isinstance(r, AttackResult):
                raise TypeError(f"results[{label!r}]: expected an AttackResult, got {type(r).__name__}")
            broken = r.norms[r.success] if len(r.norms) else r.norms
            value = {"success_rate": r.success_rate, "queries": r.queries, "time": r.time,
                     "median_norm": float(broken.median()) if len(broken) else math.nan}.get(metric)
            out.append((str(label), value, ""))
        return out, metric, refs
    elif isinstance(results, Sequence) and all(isinstance(r, AttackRow) for r in results):
        metric = metric or "robust_accuracy"
        rows = list(results)
    else:
        raise TypeError("results: expected an EvaluationReport, a list of its AttackRows, or a mapping "
                        "name -> AttackResult")
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {', '.join(_METRICS)}, got {metric!r}")
    return [(r.attack, None if r.error else getattr(r, metric), r.error or "") for r in rows], metric, refs


def plot_attack_comparison(results, *, metric: str | None = None, title: str | None = None, ax=None):
    """A bar per attack: from an EvaluationReport (default metric ``robust_accuracy``, with the
    clean and worst-case accuracy as lines), its rows, or a mapping ``name -> AttackResult``
    (default ``success_rate``). ``metric``: ``success_rate``, ``robust_accuracy``,
    ``median_norm``, ``queries`` or ``time``. Attacks that did not run are marked "not run".
    Returns the Figure (``ax``: draw into an existing Axes)."""
    if metric is not None and metric not in _METRICS:
        raise ValueError(f"metric must be one of {', '.join(_METRICS)}, got {metric!r}")
    rows, metric, refs = _rows(results, metric)
    if not rows:
        raise ValueError("results holds no attack to compare")
    ylabel, percent = _METRICS[metric]
    if ax is None:
        fig = new_figure((max(4.5, 1.1 * len(rows) + 2.0), 3.6))
        ax = fig.add_subplot(1, 1, 1)
    else:
        fig = ax.figure
    scale = 100.0 if percent else 1.0
    heights = [0.0 if v is None or (isinstance(v, float) and math.isnan(v)) else scale * v for _, v, _ in rows]
    bars = ax.bar(range(len(rows)), heights, color="#c44e52" if metric == "success_rate" else "#4c72b0")
    for bar, (_, value, _note) in zip(bars, rows):
        if value is None:
            text = "not run"
        elif isinstance(value, float) and math.isnan(value):
            text = "n/a"
        else:
            text = f"{scale * value:.1f}%" if percent else f"{value:.3g}"
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                    fontsize=8, xytext=(0, 2), textcoords="offset points")
    for (text, value), style in zip(refs, ("--", ":")):
        ax.axhline(scale * value, linestyle=style, color="#555", linewidth=1, label=text)
    if refs:
        ax.legend(fontsize="small", loc="upper right")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([label for label, _, _ in rows], rotation=20 if len(rows) > 4 else 0, fontsize=9)
    ax.set_ylabel(ylabel)
    if percent:
        ax.set_ylim(0, 112)
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_title(title or "Attack comparison")
    fig.tight_layout()
    return fig

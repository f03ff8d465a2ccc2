"""A leaderboard as an HTML table (and an ipywidgets.HTML that shows it): rows are plain dicts
with ``rank``, ``name`` and ``score`` and any further columns, e.g. what
``autograder.leaderboard`` writes. Every value is escaped: names come from students."""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection, Mapping, Sequence

from ._render import esc

REQUIRED = ("rank", "name", "score")


def _check_rows(rows) -> list[Mapping]:
    if isinstance(rows, (str, bytes, Mapping)) or not isinstance(rows, Sequence):
        raise TypeError("rows: expected a list of dicts with keys rank, name, score (and any extra columns)")
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise TypeError(f"rows[{i}]: expected a dict, got {type(row).__name__}")
        missing = [k for k in REQUIRED if k not in row]
        if missing:
            raise ValueError(f"rows[{i}] lacks {', '.join(missing)}: every row needs rank, name and score")
        rank = row["rank"]
        if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or rank < 1:
            raise ValueError(f"rows[{i}]: rank must be an int ≥ 1, got {rank!r}")
        score = row["score"]
        if score is not None and (isinstance(score, bool) or not isinstance(score, numbers.Real)):
            raise ValueError(f"rows[{i}]: score must be a number (or None), got {score!r}")
    return list(rows)


def _cell(value, precision: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, numbers.Integral)):
        return f"{float(value):.{precision}f}"
    return esc(value)


def leaderboard_html(rows, *, highlight: str | Collection[str] | None = None,
                     columns: Sequence[str] | None = None, title: str | None = None,
                     precision: int = 3, max_rows: int | None = None) -> str:
    """The rows as an HTML ``<table class="maestro-leaderboard">`` sorted by rank.

    ``columns``: extra columns to show, in order (default: every extra key, in order of first
    appearance); ``highlight``: a name (or names) whose rows are marked, e.g. the student's
    own; ``precision``: decimals for non-integer numbers; ``max_rows``: show only the first."""
    rows = _check_rows(rows)
    if columns is None:
        extra: list[str] = []
        for row in rows:
            extra += [k for k in row if k not in REQUIRED and k not in extra]
    else:
        extra = [c for c in columns if c not in REQUIRED]
    marked = {highlight} if isinstance(highlight, str) else set(highlight or ())
    ordered = sorted(rows, key=lambda r: (int(r["rank"]), str(r["name"])))
    if max_rows is not None:
        ordered = ordered[:max_rows]
    head = "".join(f'<th style="padding:4px 10px;text-align:left">{esc(c)}</th>'
                   for c in (*REQUIRED, *extra))
    body = []
    for row in ordered:
        mark = str(row["name"]) in marked
        style = "background:#fff3c4;font-weight:bold" if mark else ""
        cells = "".join(f'<td style="padding:3px 10px">{_cell(row.get(c), precision)}</td>'
                        for c in (*REQUIRED, *extra))
        body.append(f'<tr class="maestro-row{" maestro-highlight" if mark else ""}" style="{style}">{cells}</tr>')
    caption = f'<caption style="font-weight:bold;text-align:left">{esc(title)}</caption>' if title else ""
    return (f'<table class="maestro-leaderboard" style="border-collapse:collapse;font-size:13px">{caption}'
            f'<thead><tr style="border-bottom:1px solid #999">{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def leaderboard_table(rows, **kwargs):
    """An ``ipywidgets.HTML`` showing :func:`leaderboard_html` (same arguments); give it new
    rows later with ``widget.value = leaderboard_html(rows)``."""
    import ipywidgets as W

    widget = W.HTML(value=leaderboard_html(rows, **kwargs))
    widget.add_class("maestro-leaderboard-widget")
    return widget

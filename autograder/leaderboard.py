"""Leaderboards: the best graded submission per student, ranked, as CSV, HTML and a PNG chart.

Every graded submission becomes one :class:`Entry` (what the driver appends to
``.maestro/history/<assignment>.jsonl`` in the course folder, and what the server stores for an
uploaded artifact). :func:`rank` keeps each student's best entry and orders them:

* before the deadline (``final=False``) by the score on the PUBLIC part of the hidden set,
  scaled to the assignment's ``max_score``; private numbers are not shown at all;
* after it (``final=True``) by the score on the PRIVATE part (scaled likewise), the public and
  total scores shown beside it.

Ties go to the earlier submission. ``pseudonyms`` (a course secret) replaces student ids by
stable made-up names (HMAC of the id), so a leaderboard can be shown in class.

:func:`tournament` turns a "war" matrix (every attack against every defense) into rows scored
averaged over opponents.

Nothing here reads hidden data: the entries carry only aggregate scores and metrics.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import html
import io
import json
import math
import functools
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["Board", "Entry", "Row", "append_history", "board_metrics", "from_course", "pseudonym", "rank",
           "read_history", "render_html", "to_csv", "to_png", "tournament", "write_all"]

#: the metrics shown as columns, with their titles and how to print them (in this order)
METRIC_COLUMNS = {
    "success_rate": ("success", "pct"),
    "robust_accuracy": ("robust acc.", "pct"),
    "clean_accuracy": ("clean acc.", "pct"),
    "median_linf": ("median L∞", "num"),
    "median_l2": ("median L2", "num"),
    "auc": ("AUC", "num"),
    "certified_accuracy": ("certified acc.", "pct"),
    "attack_score": ("attack", "pct"),      # war: mean over opponents of the attack's cells
    "defense_score": ("defense", "pct"),    # war: mean over opponents of 1 − their attack's cell
    "targeted_success_rate": ("targeted", "pct"),
}


@functools.cache
def _unit_columns() -> dict[str, tuple[str, str]]:
    """The unit kinds' own leaderboard columns (:meth:`autograder.units.Kind.leaderboard_columns`):
    metric -> (title, "pct" for shares, else "num")."""
    from . import units

    out = {}
    for name in units.KINDS:
        for key, title, _ in units.get(name).leaderboard_columns():
            pct = key.endswith(("_rate", "_accuracy", "_utility")) or key.startswith("tpr_")
            out.setdefault(key, (title, "pct" if pct else "num"))
    return out


def metric_column(key: str) -> tuple[str, str] | None:
    """(title, kind) of a metric column, or None: a :data:`METRIC_COLUMNS` key, a unit kind's own
    column, or the metric of an attack's other artifact, ``"<artifact>.<metric>"`` (titled
    "success (x_adv_l2)")."""
    if key in METRIC_COLUMNS:
        return METRIC_COLUMNS[key]
    if key in _unit_columns():
        return _unit_columns()[key]
    artifact, _, base = key.partition(".")
    if artifact and base in METRIC_COLUMNS:
        title, kind = METRIC_COLUMNS[base]
        return f"{title} ({artifact})", kind
    return None


@dataclass
class Entry:
    """One graded submission. Scores are points out of ``max_score`` for the whole assignment;
    ``public_score``/``private_score`` are the points earned on each part and
    ``public_max``/``private_max`` what each part could earn."""

    student: str
    assignment: str
    submitted_at: str                  # ISO 8601 (UTC), when the student handed it in
    score: float
    max_score: float
    public_score: float
    public_max: float
    private_score: float
    private_max: float
    public_metrics: dict = field(default_factory=dict)
    private_metrics: dict = field(default_factory=dict)
    duration_s: float | None = None     # notebook run time
    queries: int | None = None          # oracle queries used (black-box units)
    status: str = "ok"                  # the run's status; a failed run still counts (score 0)
    sha256: str = ""                    # of the submitted notebook / artifact

    @classmethod
    def from_result(cls, config, student: str, result, *, submitted_at: str, sha256: str = "",
                    duration_s: float | None = None, status: str = "ok") -> Entry:
        """The entry of a scored submission (an ``autograder.scoring.ScoreResult``): points summed
        per part, and the numeric metrics of each part (no NaN: JSON has none)."""
        def part(label):
            return (float(sum(p.points for p in result.parts if p.visibility == label)),
                    float(sum(p.max_points for p in result.parts if p.visibility == label)))

        def numbers(metrics):
            return {k: _json_number(v) for k, v in (metrics or {}).items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)}

        (pub, pub_max), (priv, priv_max) = part("public"), part("private")
        queries = result.metrics.get("queries")
        return cls(student, config.id, submitted_at, float(result.score), float(config.max_score),
                   pub, pub_max, priv, priv_max, numbers(result.public_metrics),
                   numbers(result.private_metrics), duration_s,
                   int(queries) if isinstance(queries, (int, float)) and math.isfinite(queries) else None,
                   status, sha256)

    @classmethod
    def from_dict(cls, d: dict) -> Entry:
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in known})

    def scaled(self, part: str) -> float:
        """``public``/``private``/``total`` score on the assignment's 0..max_score scale."""
        if part == "total":
            return float(self.score)
        got, top = ((self.public_score, self.public_max) if part == "public"
                    else (self.private_score, self.private_max))
        return float(self.max_score) * float(got) / float(top) if top else 0.0


@dataclass
class Row:
    rank: int
    name: str                 # the student id, or its pseudonym
    score: float              # the ranking score (public before the deadline, private after)
    entry: Entry
    submissions: int          # how many graded submissions the student has

    def as_dict(self, final: bool) -> dict:
        e = self.entry
        d = {"rank": self.rank, "name": self.name, "score": round(self.score, 2),
             "max_score": e.max_score, "submissions": self.submissions,
             "submitted_at": e.submitted_at, "duration_s": e.duration_s, "queries": e.queries}
        metrics = e.private_metrics if final else e.public_metrics
        for key in metrics:
            if metric_column(key) is not None:
                d[key] = _json_number(metrics[key])
        if final:
            d["public_score"] = round(e.scaled("public"), 2)
            d["total_score"] = round(e.scaled("total"), 2)
        return d


@dataclass
class Board:
    assignment: str
    title: str
    final: bool
    rows: list[Row]
    max_score: float = 100.0
    metrics: tuple = ()               # metric columns always shown (those the scorer computes)
    matrix: dict | None = None        # tournament: {"attackers": [...], "defenders": [...], "cells": [[...]]}

    def as_dict(self) -> dict:
        return {"assignment": self.assignment, "title": self.title, "final": self.final,
                "max_score": self.max_score, "part": "private" if self.final else "public",
                "rows": [r.as_dict(self.final) for r in self.rows],
                **({"tournament": self.matrix} if self.matrix else {})}


def _json_number(v):
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return round(float(v), 6) if math.isfinite(v) else None
    return None


# -- pseudonyms -------------------------------------------------------------------------------
_ADJ = ("amber", "brave", "calm", "dapper", "eager", "fuzzy", "gentle", "hasty", "icy", "jolly",
        "keen", "lucky", "mellow", "nimble", "odd", "plucky", "quiet", "rapid", "shy", "tidy",
        "upbeat", "vivid", "witty", "young", "zesty", "bold", "crisp", "dusty", "fancy", "golden",
        "hidden", "misty")
_NOUN = ("otter", "falcon", "badger", "heron", "lynx", "marmot", "newt", "ocelot", "panda",
         "quail", "raven", "stoat", "tapir", "urchin", "vole", "walrus", "yak", "zebra", "bison",
         "cobra", "dingo", "egret", "ferret", "gecko", "hyena", "ibis", "jackal", "koala",
         "lemur", "moose", "narwhal", "puffin")


def pseudonym(student: str, secret: str) -> str:
    """A stable made-up name for ``student``: the same secret always gives the same name, and
    without the secret the name says nothing about the id (HMAC-SHA256)."""
    digest = hmac.new(secret.encode(), b"maestro-pseudonym\0" + student.encode(), hashlib.sha256).digest()
    n = int.from_bytes(digest[:8], "big")
    return f"{_ADJ[n % len(_ADJ)]}-{_NOUN[(n >> 8) % len(_NOUN)]}-{(n >> 16) % 100:02d}"


# -- ranking ----------------------------------------------------------------------------------
def rank(entries, *, final: bool = False, pseudonyms: str | None = None, assignment: str = "",
         title: str = "") -> Board:
    """The best entry per student, ranked (see the module docstring). ``entries``: Entry objects
    or dicts. Equal scores share a rank (1, 2, 2, 4) and are listed earlier-submission first."""
    part = "private" if final else "public"
    best: dict[str, Entry] = {}
    count: dict[str, int] = {}
    max_score = 100.0
    for raw in entries:
        e = raw if isinstance(raw, Entry) else Entry.from_dict(raw)
        if assignment and e.assignment != assignment:
            continue
        assignment = assignment or e.assignment
        max_score = float(e.max_score)
        count[e.student] = count.get(e.student, 0) + 1
        old = best.get(e.student)
        if old is None or _key(e, part) < _key(old, part):
            best[e.student] = e
    ordered = sorted(best.values(), key=lambda e: (*_key(e, part), e.student))
    rows: list[Row] = []
    for i, e in enumerate(ordered):
        score = e.scaled(part)
        r = rows[-1].rank if rows and math.isclose(rows[-1].score, score, abs_tol=1e-9) else i + 1
        name = pseudonym(e.student, pseudonyms) if pseudonyms and not _is_reference(e.student) else e.student
        rows.append(Row(r, name, score, e, count[e.student]))
    return Board(assignment, title or assignment, final, rows, max_score)


def _key(e: Entry, part: str):
    return (-round(e.scaled(part), 9), e.submitted_at)


def _is_reference(name: str) -> bool:
    """The grader's own players in a war ("reference/robust", ...) keep their names."""
    return name.startswith("reference/")


def tournament(matrix: dict, *, pseudonyms: str | None = None, assignment: str = "",
               title: str = "", max_score: float = 100.0, final: bool = False, history=()) -> Board:
    """A war leaderboard. ``matrix`` = {"attackers": [ids], "defenders": [ids], "cells":
    [[attack success of attacker i against defender j, in 0..1, or None if not played]]}.
    Each student's score is the mean over opponents (never against themselves) of their attack
    success (as attacker) and of 1 − the opponents' success (as defender), scaled to max_score.
    ``final``: the matrix was played on the private part (the board says so; the score is the
    same number in every column). ``history``: the assignment's graded submissions (Entry
    objects): each player's count and latest submission time fill those columns."""
    atk, dfn, cells = list(matrix["attackers"]), list(matrix["defenders"]), matrix["cells"]
    if len(cells) != len(atk) or any(len(row) != len(dfn) for row in cells):
        raise ValueError("tournament: cells must be len(attackers) × len(defenders)")
    as_atk: dict[str, list[float]] = {}
    as_dfn: dict[str, list[float]] = {}
    for i, a in enumerate(atk):
        for j, d in enumerate(dfn):
            v = cells[i][j]
            if v is None or a == d:
                continue
            v = min(max(float(v), 0.0), 1.0)
            as_atk.setdefault(a, []).append(v)
            as_dfn.setdefault(d, []).append(1.0 - v)
    latest: dict[str, str] = {}
    count: dict[str, int] = {}
    for e in history:
        count[e.student] = count.get(e.student, 0) + 1
        latest[e.student] = max(latest.get(e.student, ""), e.submitted_at)
    entries = []
    for s in sorted(set(atk) | set(dfn)):
        a = sum(as_atk.get(s, [])) / len(as_atk[s]) if as_atk.get(s) else 0.0
        d = sum(as_dfn.get(s, [])) / len(as_dfn[s]) if as_dfn.get(s) else 0.0
        pts = max_score / 2 * (a + d)
        metrics = {"attack_score": a, "defense_score": d}
        entries.append(Entry(s, assignment, latest.get(s, ""), pts, max_score, pts, max_score, pts, max_score,
                             metrics, dict(metrics)))
    board = rank(entries, final=final, pseudonyms=pseudonyms, assignment=assignment, title=title)
    for row in board.rows:  # one entry per player above: the real counts come from the history
        row.submissions = count.get(row.entry.student, 0)
    board.max_score = max_score
    board.metrics = ("attack_score", "defense_score")
    names = {s: (pseudonym(s, pseudonyms) if pseudonyms and not _is_reference(s) else s)
             for s in set(atk) | set(dfn)}
    board.matrix = {"attackers": [names[a] for a in atk], "defenders": [names[d] for d in dfn],
                    "cells": [[None if v is None else round(float(v), 4) for v in row] for row in cells]}
    return board


# -- the history file ---------------------------------------------------------------------------
def history_path(course, assignment: str) -> Path:
    return Path(course) / ".maestro" / "history" / f"{assignment}.jsonl"


def append_history(course, entry: Entry) -> None:
    """Append one graded submission (one JSON line; the driver is the only writer)."""
    path = history_path(course, entry.assignment)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(asdict(entry), allow_nan=False, default=_json_number) + "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def read_history(course, assignment: str) -> list[Entry]:
    """All graded submissions of ``assignment``; the same notebook (sha256) graded twice (with
    ``--force``) counts once, with its latest grade. A torn last line (a grader killed while
    writing) is ignored."""
    path = history_path(course, assignment)
    latest: dict[tuple[str, str], Entry] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                e = Entry.from_dict(json.loads(line))
            except (ValueError, TypeError):
                continue
            latest[(e.student, e.sha256 or e.submitted_at)] = e
    return list(latest.values())


def from_course(course, assignment: str, *, final: bool = False, pseudonyms: bool = False,
                prepared=None, home=None, memo: dict | None = None) -> Board:
    """The leaderboard of ``assignment`` in an nbgrader course folder made by ``maestro course
    init`` (pseudonyms keyed by the course secret). The war: ``prepared`` is its unit's
    ``prepare`` (made here when None), ``home`` the model zoo of its reference players, ``memo``
    what :func:`autograder.units.war.tournament_matrix` may keep from call to call."""
    from .config import load_config
    from .course import read_secret

    course = Path(course)
    cfg = load_config(course / "source" / assignment / "grading.toml")
    secret = read_secret(course) if pseudonyms else None
    if cfg.kind == "war":  # every kept attack against every kept defense, on the hidden labels
        from .units.war import tournament_matrix

        matrix = tournament_matrix(course, cfg, read_secret(course), part="private" if final else "public",
                                   prepared=prepared, home=home, memo=memo)
        return tournament(matrix, pseudonyms=secret, assignment=assignment, title=cfg.title or assignment,
                          max_score=cfg.max_score, final=final, history=read_history(course, assignment))
    board = rank(read_history(course, assignment), final=final, pseudonyms=secret,
                 assignment=assignment, title=cfg.title or assignment)
    board.max_score = cfg.max_score
    board.metrics = board_metrics(cfg)
    return board


def board_metrics(config) -> tuple:
    """The metric columns of an assignment's leaderboard: a unit kind's own columns
    (:meth:`~autograder.units.Kind.leaderboard_columns`); for attacks and defenses those its score
    terms use (another artifact's as ``"<artifact>.<metric>"``), plus success rate and robust
    accuracy."""
    from . import units

    if units.is_unit_kind(config.kind):
        return tuple(key for key, _, _ in units.get(config.kind).leaderboard_columns())
    used = [t.key for t in config.terms]
    main = tuple(k for k in METRIC_COLUMNS if k in used or k in ("success_rate", "robust_accuracy"))
    return main + tuple(k for k in used if "." in k and metric_column(k) is not None)


# -- output -------------------------------------------------------------------------------------
def _columns(board: Board) -> list[tuple[str, str, str]]:
    """(key, title, kind) of the columns present in the board."""
    cols = [("rank", "#", "int"), ("name", "name", "str"),
            ("score", "private score" if board.final else "score", "score")]
    if board.final:
        cols += [("public_score", "public score", "score"), ("total_score", "total", "score")]
    rows = [r.as_dict(board.final) for r in board.rows]
    # another artifact's metrics only when a score term uses them (board_metrics): an artifact
    # measures all of them, and a column each would bury the ones that count
    keys = list(METRIC_COLUMNS) + [k for k in board.metrics if k not in METRIC_COLUMNS]
    for key in dict.fromkeys(keys):
        if key in board.metrics or any(key in d for d in rows):
            cols.append((key, *metric_column(key)))
    if any(d.get("queries") is not None for d in rows):
        cols.append(("queries", "queries", "int"))
    cols += [("submissions", "subs.", "int"), ("submitted_at", "submitted", "time")]
    return cols


def to_csv(board: Board, path=None) -> str:
    """CSV (for the LMS or a spreadsheet): one row per student, raw numbers. Written to
    ``path`` if given; the text is returned."""
    buf = io.StringIO()
    cols = [c for c, _, _ in _columns(board)]
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in board.rows:
        w.writerow({k: ("" if v is None else v) for k, v in r.as_dict(board.final).items()})
    text = buf.getvalue()
    if path is not None:
        Path(path).write_text(text, encoding="utf-8")
    return text


def _cell(v, kind: str) -> str:
    if v is None or v == "":
        return ""
    if kind == "pct":
        return f"{100 * v:.1f}%"
    if kind == "num":
        return f"{v:.3f}"
    if kind == "score":
        return f"{v:.1f}"
    if kind == "time":
        return str(v)[:16].replace("T", " ")
    return str(v)


def render_html(board: Board, *, live_url: str | None = None, refresh_s: int = 10) -> str:
    """A self-contained page (no external assets), readable on a phone. With ``live_url`` (the
    leaderboard's JSON address) the page refetches it every ``refresh_s`` seconds and redraws
    the table, so it stays live while submissions are graded."""
    e = html.escape
    cols = _columns(board)
    head = "".join(f'<th class="{e(k)}">{e(t)}</th>' for k, t, _ in cols)
    body = []
    for r in board.rows:
        d = r.as_dict(board.final)
        body.append("<tr>" + "".join(f'<td class="{e(k)}">{e(_cell(d.get(k), kind))}</td>'
                                     for k, _, kind in cols) + "</tr>")
    if not body:
        body.append(f'<tr><td colspan="{len(cols)}">no graded submissions yet</td></tr>')
    part = ("final ranking: the private part of the hidden set" if board.final
            else "public part of the hidden set (the private part decides after the deadline)")
    matrix = _matrix_html(board.matrix) if board.matrix else ""
    script = ""
    if live_url:
        spec = json.dumps([[k, kind] for k, _, kind in cols])
        script = (
            "<script>\n"
            f"const URL_ = {json.dumps(live_url)}, COLS = {spec};\n"
            "function fmt(v, k) { if (v === null || v === undefined || v === '') return '';\n"
            "  if (k === 'pct') return (100 * v).toFixed(1) + '%'; if (k === 'num') return v.toFixed(3);\n"
            "  if (k === 'score') return v.toFixed(1); if (k === 'time') return String(v).slice(0, 16).replace('T', ' ');\n"
            "  return String(v); }\n"
            "async function refresh() { try { const r = await fetch(URL_, {cache: 'no-store'});\n"
            "  if (!r.ok) return; const b = await r.json(); const tb = document.querySelector('#board tbody');\n"
            "  tb.replaceChildren(...b.rows.map(row => { const tr = document.createElement('tr');\n"
            "    for (const [key, kind] of COLS) { const td = document.createElement('td'); td.className = key;\n"
            "      td.textContent = fmt(row[key], kind); tr.appendChild(td); } return tr; }));\n"
            "  if (b.tournament) drawMatrix(b.tournament);\n"
            "  document.getElementById('updated').textContent = new Date().toLocaleTimeString(); } catch (e) {} }\n"
            "function cell(tag, text, cls) { const c = document.createElement(tag); c.textContent = text;\n"
            "  if (cls) c.className = cls; return c; }\n"
            "function drawMatrix(m) { const t = document.getElementById('matrix'); if (!t) return;\n"
            "  const head = document.createElement('tr'); head.appendChild(cell('th', 'attacker \\\\ defender'));\n"
            "  for (const d of m.defenders) head.appendChild(cell('th', d));\n"
            "  t.tHead.replaceChildren(head);\n"
            "  t.tBodies[0].replaceChildren(...m.attackers.map((a, i) => { const tr = document.createElement('tr');\n"
            "    tr.appendChild(cell('th', a, 'name'));\n"
            "    for (const v of m.cells[i]) tr.appendChild(cell('td', v === null ? '' : (100 * v).toFixed(0) + '%'));\n"
            "    return tr; })); }\n"
            f"setInterval(refresh, {int(refresh_s) * 1000});\n"
            "</script>\n")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{e(board.title)} — leaderboard</title>\n<style>\n"
        "body{font-family:system-ui,sans-serif;margin:0 auto;padding:.8em;max-width:64em;color:#222}\n"
        "h1{font-size:1.3em;margin:.2em 0}h2{font-size:1.05em;margin:1em 0 .3em}p{margin:.3em 0;color:#555}\n"
        ".wrap{overflow-x:auto}table{border-collapse:collapse;width:100%;font-size:.95em}\n"
        "th,td{padding:.35em .5em;border-bottom:1px solid #ddd;text-align:right;white-space:nowrap}\n"
        "th.name,td.name{text-align:left}tbody tr:nth-child(1) td.rank{font-weight:bold}\n"
        "th{background:#f3f3f3;position:sticky;top:0}\n"
        "@media (max-width:600px){td.submitted_at,th.submitted_at,td.submissions,th.submissions"
        "{display:none}body{padding:.4em}}\n</style></head><body>\n"
        f"<h1>{e(board.title)}</h1>\n<p>{e(part)} · scores out of {board.max_score:g}"
        + (' · updated <span id="updated">now</span>' if live_url else "") + "</p>\n"
        f'<div class="wrap"><table id="board"><thead><tr>{head}</tr></thead>\n<tbody>\n'
        + "\n".join(body) + "\n</tbody></table></div>\n" + matrix + script + "</body></html>\n"
    )


def _matrix_html(m: dict) -> str:
    e = html.escape
    head = "".join(f"<th>{e(d)}</th>" for d in m["defenders"])
    rows = []
    for a, cells in zip(m["attackers"], m["cells"]):
        tds = "".join(f"<td>{'' if v is None else f'{100 * v:.0f}%'}</td>" for v in cells)
        rows.append(f'<tr><th class="name">{e(a)}</th>{tds}</tr>')
    return ("<h2>Tournament: share of the hidden images each defender (column) misreads at each attacker’s (row) inputs</h2>\n"
            f'<div class="wrap"><table id="matrix"><thead><tr><th>attacker \\ defender</th>{head}'
            "</tr></thead><tbody>" + "".join(rows) + "</tbody></table></div>\n")


def to_png(board: Board, path, *, top: int = 30) -> Path:
    """A horizontal bar chart of the top ``top`` scores (matplotlib, no global pyplot state)."""
    from matplotlib.figure import Figure

    rows = board.rows[:top]
    fig = Figure(figsize=(7, 0.35 * max(len(rows), 1) + 1.2), dpi=110)
    ax = fig.add_subplot()
    labels = [f"{r.rank}. {r.name}" for r in rows][::-1]
    scores = [r.score for r in rows][::-1]
    ax.barh(range(len(rows)), scores, color="#4c78a8")
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.set_xlim(0, board.max_score)
    ax.set_xlabel(("private" if board.final else "public") + f" score (out of {board.max_score:g})")
    ax.set_title(board.title, fontsize=10)
    for i, s in enumerate(scores):
        ax.text(min(s, board.max_score) + 0.5, i, f"{s:.1f}", va="center", fontsize=7)
    if not rows:
        ax.text(0.5, 0.5, "no graded submissions yet", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png")
    return path


def write_all(board: Board, folder) -> dict[str, Path]:
    """``leaderboard[-final].csv|html|png|json`` in ``folder``; returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stem = "leaderboard-final" if board.final else "leaderboard"
    paths = {k: folder / f"{stem}.{k}" for k in ("csv", "html", "png", "json")}
    to_csv(board, paths["csv"])
    paths["html"].write_text(render_html(board), encoding="utf-8")
    to_png(board, paths["png"])
    paths["json"].write_text(json.dumps(board.as_dict(), indent=1, allow_nan=False) + "\n", encoding="utf-8")
    return paths

"""Server configuration: which tasks are served, at which access level, with which budgets.

A course directory holds ``server.toml``::

    [server]
    database = "maestro-server.db"   # a SQLite file (relative: in the course dir) or any SQLAlchemy URL
    max_body_bytes = 8_000_000                  # larger requests get 413
    rate_limit = 20.0                           # requests per second per token (0: off)
    max_batch = 1024                            # inputs per request (chat: conversations)
    max_new_tokens = 256                        # chat tasks: tokens per generated answer
    max_chat_tokens = 1024                      # chat tasks: tokens per conversation read

    [tasks.digits-scores]
    model = "cnn-digits"                        # maestro.models.load name
    dataset = "digits"
    access = "scores"                           # labels | scores | white-box
    budget = 10000                              # inputs per student (omit: unlimited)
    threat = { norm = "linf", eps = 0.1 }       # ThreatModel fields

    [submissions]                               # graded uploads and leaderboards (optional)
    assignments = ["01-whitebox"]               # ids under COURSE/source/ (a `maestro course init` course)
    boards = ["10-war"]                         # a live leaderboard alone (graded by `maestro autograde`)
    course = "."                                # the course folder (default: this file's folder)
    max_per_day = 20                            # uploads per token, assignment and UTC day (0: unlimited)
    pseudonyms = true                           # leaderboards show made-up names (keyed by the course secret)
    public_leaderboard = true                   # /leaderboard/ID (HTML) and /leaderboard/ID.json without a token
    final = false                               # true: rank by the private part, show students everything
    deadline = 2026-12-01T23:59:00Z             # optional: uploads refused after it, then final
    workers = 1                                 # grading threads per server process
    refresh_s = 10                              # how often the leaderboard page refetches its data

A relative SQLite path is taken relative to the course directory. A server needs tasks, or
[submissions], or both. ``assignments`` take uploads: white-box attack units. ``boards`` are
assignments the server only shows: their leaderboard of notebook grades from ``maestro
autograde`` (defense and black-box units; for the attack-vs-defense war, the tournament of every
kept attack against every kept defense), refreshed as grades and artifacts arrive. A course
folder made by ``maestro course init`` with no server.toml is served as if it held
``[submissions]`` with every assignment in source/: uploads for those that can take them,
boards for the others.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..threat import ThreatModel
from ..wrapper import check_access

CONFIG_NAME = "server.toml"
_TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_THREAT_KEYS = {"norm", "eps", "bounds", "query_budget"}


@dataclass
class TaskConfig:
    """One served task: a zoo model behind an access level, a threat model and a budget."""

    name: str
    model: str
    dataset: str | None = None
    access: str = "labels"
    budget: int | None = None
    threat: dict | None = None  # default: linf eps 0.1 for image models, 1 token for text models

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _TASK_NAME.match(self.name):
            raise ValueError(f"task name {self.name!r}: use letters, digits, '-', '_' or '.' (≤ 64)")
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"task {self.name!r}: 'model' must be a model name such as 'cnn-digits'")
        check_access(self.access)
        if self.budget is not None and (
            isinstance(self.budget, bool) or not isinstance(self.budget, int) or self.budget < 0
        ):
            raise ValueError(f"task {self.name!r}: budget must be a non-negative int, got {self.budget!r}")
        if self.threat is not None:
            if not isinstance(self.threat, dict):
                raise ValueError(f"task {self.name!r}: threat must be a table such as {{ norm = \"linf\", eps = 0.1 }}")
            unknown = set(self.threat) - _THREAT_KEYS
            if unknown:
                raise ValueError(f"task {self.name!r}: unknown threat keys {sorted(unknown)}; use {sorted(_THREAT_KEYS)}")
            try:
                if self.threat.get("norm") == "suffix":  # its tokenizer comes with the model
                    eps = self.threat.get("eps")
                    if isinstance(eps, bool) or not isinstance(eps, int) or eps < 1:
                        raise TypeError(f"a suffix threat needs eps = the most suffix tokens (an "
                                        f"int ≥ 1), got {eps!r}")
                else:
                    self.threat_model()  # validate now, not at the first request
            except TypeError as err:
                raise ValueError(f"task {self.name!r}: {err}") from None

    def threat_model(self, modality: str | None = None, tokenizer=None) -> ThreatModel:
        """The task's ThreatModel (``modality`` picks the default when none is configured:
        linf 0.1 for images, 1 token for text, a 20-token suffix for chat models, whose
        ``tokenizer`` it then needs)."""
        default = {"text": {"norm": "tokens", "eps": 1}, "chat": {"norm": "suffix", "eps": 20}}
        kw = dict(self.threat or default.get(modality, {"norm": "linf", "eps": 0.1}))
        if "bounds" in kw:
            kw["bounds"] = tuple(kw["bounds"])
        if kw.get("norm") == "suffix":
            kw["tokenizer"] = tokenizer
        norms = {"text": ("tokens",), "chat": ("suffix",)}.get(modality, ("linf", "l2", "l0"))
        if modality is not None and kw.get("norm") not in norms:
            want = " or ".join(f"'{n}'" for n in norms)
            raise ValueError(f"task {self.name!r}: a {modality} model needs threat norm {want}, "
                             f"got {kw.get('norm')!r}")
        return ThreatModel(access=self.access, **kw)


@dataclass
class SubmissionsConfig:
    """[submissions]: which assignments take uploaded artifacts, graded by the trusted scorer,
    and which have a live leaderboard only (``boards``)."""

    assignments: list[str] = field(default_factory=list)
    boards: list[str] = field(default_factory=list)
    course: Path | None = None        # the course folder; relative: to server.toml's folder
    max_per_day: int = 20             # per token, assignment and UTC day; 0: unlimited
    pseudonyms: bool = True
    public_leaderboard: bool = True
    final: bool = False
    deadline: _dt.datetime | None = None
    workers: int = 1
    refresh_s: int = 10

    def __post_init__(self) -> None:
        for key in ("assignments", "boards"):
            ids = getattr(self, key)
            if not isinstance(ids, list) or not all(isinstance(a, str) and _TASK_NAME.match(a) for a in ids):
                raise ValueError(f"[submissions] {key}: a list of assignment ids such as "
                                 f"[\"01-whitebox\"] (folders under COURSE/source/), got {ids!r}")
            if len(set(ids)) != len(ids):
                raise ValueError(f"[submissions] {key}: listed twice in {ids!r}")
        if not self.assignments and not self.boards:
            raise ValueError("[submissions] assignments: a non-empty list of assignment ids such as "
                             "[\"01-whitebox\"] (folders under COURSE/source/), or boards = [...]")
        both = sorted(set(self.assignments) & set(self.boards))
        if both:
            raise ValueError(f"[submissions] {both}: in assignments (uploads and a leaderboard) and in "
                             "boards (a leaderboard only); list each assignment once")
        for key, low in (("max_per_day", 0), ("workers", 1), ("refresh_s", 1)):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"[submissions] {key} must be an int ≥ {low}, got {v!r}")
        for key in ("pseudonyms", "public_leaderboard", "final"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"[submissions] {key} must be true or false, got {getattr(self, key)!r}")
        if self.course is not None:
            if not isinstance(self.course, (str, os.PathLike)):
                raise ValueError(f"[submissions] course must be a folder path, got {self.course!r}")
            self.course = Path(self.course).expanduser()
        if self.deadline is not None:
            when = self.deadline
            if isinstance(when, str):
                try:
                    when = _dt.datetime.fromisoformat(when)
                except ValueError:
                    raise ValueError(f"[submissions] deadline {when!r}: not an ISO 8601 time such as "
                                     "2026-12-01T23:59:00Z") from None
            if not isinstance(when, _dt.datetime) or when.tzinfo is None:
                raise ValueError(f"[submissions] deadline {self.deadline!r}: give a date and time with "
                                 "its time zone, such as 2026-12-01T23:59:00Z or 2026-12-01T23:59:00+01:00")
            self.deadline = when.astimezone(_dt.UTC)

    def is_final(self, now: _dt.datetime | None = None) -> bool:
        """Ranked on the private part (and results shown whole): ``final``, or past the deadline."""
        return self.final or self.past_deadline(now)

    def past_deadline(self, now: _dt.datetime | None = None) -> bool:
        return self.deadline is not None and (now or _dt.datetime.now(_dt.UTC)) >= self.deadline


@dataclass
class ServerConfig:
    """The whole server: tasks, submissions, database URL and limits."""

    tasks: dict[str, TaskConfig]
    course_dir: Path = field(default_factory=Path.cwd)
    database: str | None = None
    max_body_bytes: int = 8_000_000
    rate_limit: float = 20.0
    rate_burst: int | None = None
    max_batch: int = 1024
    max_new_tokens: int = 256
    max_chat_tokens: int = 1024
    home: str | None = None  # $MAESTRO_HOME for the models
    submissions: SubmissionsConfig | None = None

    def __post_init__(self) -> None:
        self.course_dir = Path(self.course_dir).expanduser()
        if not self.tasks and self.submissions is None:
            raise ValueError("the server config lists no tasks and no [submissions]: add a [tasks.NAME] "
                             "table or a [submissions] table")
        for key in ("max_body_bytes", "max_batch", "max_new_tokens", "max_chat_tokens"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{key} must be a positive int, got {v!r}")
        if not isinstance(self.rate_limit, (int, float)) or self.rate_limit < 0:
            raise ValueError(f"rate_limit must be ≥ 0 requests per second (0: off), got {self.rate_limit!r}")

    @property
    def database_url(self) -> str:
        """The SQLAlchemy URL; relative SQLite paths are resolved in the course directory."""
        url = self.database or "sqlite:///maestro-server.db"
        if "://" not in url:  # a plain file path: SQLite
            url = "sqlite:///" + url
        if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
            path = url[len("sqlite:///"):]
            if path and path != ":memory:" and not os.path.isabs(path):
                return "sqlite:///" + str((self.course_dir / path).resolve())
        return url

    @property
    def course(self) -> Path:
        """The course folder of the submitted assignments (``[submissions] course``)."""
        course = self.submissions.course if self.submissions and self.submissions.course else Path(".")
        return (self.course_dir / course).resolve()

    @classmethod
    def from_dict(cls, data: dict, course_dir: str | os.PathLike | None = None) -> ServerConfig:
        data = dict(data)
        server = dict(data.pop("server", {}))
        tasks_raw = data.pop("tasks", {})
        subs_raw = data.pop("submissions", None)
        if data:
            raise ValueError(f"unknown top-level keys in the server config: {sorted(data)}; use [server], "
                             "[tasks.NAME] and [submissions]")
        if not isinstance(tasks_raw, dict):
            raise ValueError("[tasks] must be a table of [tasks.NAME] tables")
        tasks = {}
        for name, spec in tasks_raw.items():
            if not isinstance(spec, dict):
                raise ValueError(f"[tasks.{name}] must be a table")
            spec = dict(spec)
            known = {"model", "dataset", "access", "budget", "threat"}
            extra = set(spec) - known
            if extra:
                raise ValueError(f"[tasks.{name}]: unknown keys {sorted(extra)}; use {sorted(known)}")
            if "model" not in spec:
                raise ValueError(f"[tasks.{name}]: 'model' is required")
            tasks[name] = TaskConfig(name=name, **spec)
        allowed = {"database", "max_body_bytes", "rate_limit", "rate_burst", "max_batch",
                   "max_new_tokens", "max_chat_tokens", "home"}
        extra = set(server) - allowed
        if extra:
            raise ValueError(f"[server]: unknown keys {sorted(extra)}; use {sorted(allowed)}")
        submissions = None
        if subs_raw is not None:
            if not isinstance(subs_raw, dict):
                raise ValueError("[submissions] must be a table")
            known = set(SubmissionsConfig.__dataclass_fields__)
            extra = set(subs_raw) - known
            if extra:
                raise ValueError(f"[submissions]: unknown keys {sorted(extra)}; use {sorted(known)}")
            if "assignments" not in subs_raw and "boards" not in subs_raw:
                raise ValueError("[submissions]: 'assignments' is required, e.g. assignments = [\"01-whitebox\"] "
                                 "(or boards = [...] for leaderboards alone)")
            submissions = SubmissionsConfig(**subs_raw)
        return cls(tasks=tasks, course_dir=Path(course_dir) if course_dir else Path.cwd(), submissions=submissions,
                   **server)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ServerConfig:
        """Read ``server.toml`` (or a course directory containing it)."""
        path = Path(path).expanduser()
        if path.is_dir():
            found = {p.parent.name: _uploadable(p) for p in sorted(path.glob("source/*/grading.toml"))}
            found = {a: up for a, up in found.items() if up is not None}
            if not (path / CONFIG_NAME).is_file() and (path / "maestro.toml").is_file() and found:
                # a `maestro course init` course: uploads where they can be graded, else a board
                return cls.from_dict({"submissions": {"assignments": [a for a, up in found.items() if up],
                                                      "boards": [a for a, up in found.items() if not up]}},
                                     course_dir=path)
            path = path / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no server config at {path}: write a {CONFIG_NAME} (see maestro.server.config)")
        with open(path, "rb") as fh:
            try:
                data = tomllib.load(fh)
            except tomllib.TOMLDecodeError as err:
                raise ValueError(f"{path}: not valid TOML: {err}") from None
        return cls.from_dict(data, course_dir=path.parent)


def _uploadable(grading_toml: Path) -> bool | None:
    """Can the server take uploads for this assignment? White-box attack units (an ``.npy``
    artifact) yes; defense units (model weights) and black-box units (scored with the oracle's
    query count) no: ``maestro autograde`` grades those. None: the grading config is broken."""
    from autograder.config import load_config

    try:
        config = load_config(grading_toml)
    except ValueError:
        return None
    return getattr(config, "kind", "attack") == "attack" and getattr(config, "oracle", None) is None

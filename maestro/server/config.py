"""Server configuration: which tasks are served, at which access level, with which budgets.

A course directory holds ``server.toml``::

    [server]
    database = "maestro-server.db"   # a SQLite file (relative: in the course dir) or any SQLAlchemy URL
    max_body_bytes = 8_000_000                  # larger requests get 413
    rate_limit = 20.0                           # requests per second per token (0: off)
    max_batch = 1024                            # inputs per request

    [tasks.digits-scores]
    model = "cnn-digits"                        # maestro.models.load name
    dataset = "digits"
    access = "scores"                           # labels | scores | white-box
    budget = 10000                              # inputs per student (omit: unlimited)
    threat = { norm = "linf", eps = 0.1 }       # ThreatModel fields

A relative SQLite path is taken relative to the course directory.
"""

from __future__ import annotations

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
                self.threat_model()  # validate now, not at the first request
            except TypeError as err:
                raise ValueError(f"task {self.name!r}: {err}") from None

    def threat_model(self, modality: str | None = None) -> ThreatModel:
        """The task's ThreatModel (``modality`` picks the default when none is configured)."""
        kw = dict(self.threat or ({"norm": "tokens", "eps": 1} if modality == "text" else {"norm": "linf", "eps": 0.1}))
        if "bounds" in kw:
            kw["bounds"] = tuple(kw["bounds"])
        tm = ThreatModel(access=self.access, **kw)
        if modality is not None and (modality == "text") != tm.is_text:
            want = "'tokens'" if modality == "text" else "'linf', 'l2' or 'l0'"
            raise ValueError(f"task {self.name!r}: a {modality} model needs threat norm {want}, got {tm.norm!r}")
        return tm


@dataclass
class ServerConfig:
    """The whole server: tasks, database URL and limits."""

    tasks: dict[str, TaskConfig]
    course_dir: Path = field(default_factory=Path.cwd)
    database: str | None = None
    max_body_bytes: int = 8_000_000
    rate_limit: float = 20.0
    rate_burst: int | None = None
    max_batch: int = 1024
    home: str | None = None  # $MAESTRO_HOME for the models

    def __post_init__(self) -> None:
        self.course_dir = Path(self.course_dir).expanduser()
        if not self.tasks:
            raise ValueError("the server config lists no tasks: add a [tasks.NAME] table")
        for key in ("max_body_bytes", "max_batch"):
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

    @classmethod
    def from_dict(cls, data: dict, course_dir: str | os.PathLike | None = None) -> ServerConfig:
        data = dict(data)
        server = dict(data.pop("server", {}))
        tasks_raw = data.pop("tasks", {})
        if data:
            raise ValueError(f"unknown top-level keys in the server config: {sorted(data)}; use [server] and [tasks.NAME]")
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
        allowed = {"database", "max_body_bytes", "rate_limit", "rate_burst", "max_batch", "home"}
        extra = set(server) - allowed
        if extra:
            raise ValueError(f"[server]: unknown keys {sorted(extra)}; use {sorted(allowed)}")
        return cls(tasks=tasks, course_dir=Path(course_dir) if course_dir else Path.cwd(), **server)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ServerConfig:
        """Read ``server.toml`` (or a course directory containing it)."""
        path = Path(path).expanduser()
        if path.is_dir():
            path = path / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no server config at {path}: write a {CONFIG_NAME} (see maestro.server.config)")
        with open(path, "rb") as fh:
            try:
                data = tomllib.load(fh)
            except tomllib.TOMLDecodeError as err:
                raise ValueError(f"{path}: not valid TOML: {err}") from None
        return cls.from_dict(data, course_dir=path.parent)

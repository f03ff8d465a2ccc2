"""``maestro course init``: an ordinary nbgrader course folder with Maestro's grading settings.

Layout made by :func:`init_course` (``DIR``)::

    nbgrader_config.py      course id, CourseDirectory.root, db_url, ignore (+ grading.toml)
    source/<assignment>/    the nbgrader source notebook and grading.toml (instructor side:
                            ``CourseDirectory.ignore`` keeps grading.toml out of release/)
    gradebook.db            nbgrader's gradebook (SQLite), the assignments registered; or any
                            database by URL (``init_course(db_url=...)``, e.g. PostgreSQL)
    maestro.toml            [grading] limits and workers for ``maestro autograde``
    .maestro/secret         the course secret (0600, random; orders and splits the hidden set)

Students are added to the gradebook by ``maestro autograde`` (or nbgrader) when they submit.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .config import load_config

__all__ = ["CourseSettings", "REPO_ASSIGNMENTS", "check_db_url", "course_id", "db_url", "gradebook",
           "init_course", "load_settings", "read_secret"]

REPO_ASSIGNMENTS = Path(__file__).resolve().parents[1] / "assignments"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
#: the code nbgrader puts where a solution was removed
CODE_STUB = {
    "python": "# YOUR CODE HERE\n"
    'raise NotImplementedError("not implemented yet: replace this line with your code")',
}

#: nbgrader's default CourseDirectory.ignore, plus our instructor-only grading file
#: (results.json: the autograder's full result, private part included, must never be copied into
#: feedback/ by ``nbgrader generate_feedback``, which copies every other file of autograded/)
IGNORE = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback", ".maestro", "grading.toml",
          "results.json"]


@dataclass(frozen=True)
class CourseSettings:
    """maestro.toml [grading]: resource limits of one sandboxed run and the worker count."""

    workers: int = 1
    timeout_s: float = 0.0            # 0: the assignment's [notebook] timeout_s
    memory_bytes: int = 4 * 2**30
    cpu_seconds: int = 600
    processes: int = 256
    sandbox: str = "auto"             # "auto", "bwrap" or "fallback"
    gpu: bool = False                 # give each sandbox the host's NVIDIA GPU(s)


def gradebook(course: Path, ident: str | None = None):
    """nbgrader's ``Gradebook`` for the course, on the database :func:`db_url` names."""
    return _open_gradebook(db_url(course), ident or course_id(course))


def _open_gradebook(url: str, ident: str):
    """nbgrader runs the ``alembic`` command when it creates or upgrades a database: if it is
    not on PATH, the interpreter's bin folder (the virtual environment's, where pip put it) is
    prepended to ``$PATH`` for this process."""
    import sys

    from nbgrader.api import Gradebook

    bindir = Path(sys.executable).parent
    if shutil.which("alembic") is None and (bindir / "alembic").exists():
        os.environ["PATH"] = f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"
    return Gradebook(url, course_id=ident)


def db_url(course: Path) -> str:
    """The gradebook's SQLAlchemy URL, the one nbgrader itself uses: ``c.CourseDirectory.db_url``
    of the course's ``nbgrader_config.py`` (run as nbgrader runs it, so a URL read from the
    environment works too), else nbgrader's default ``gradebook.db`` in the course root."""
    course = Path(course).resolve()
    section: dict = {}
    if (course / "nbgrader_config.py").is_file():
        from traitlets.config.loader import PyFileConfigLoader

        try:
            cfg = PyFileConfigLoader("nbgrader_config.py", path=str(course)).load_config()
        except Exception as err:  # the instructor's file: report where it broke
            raise ValueError(f"{course / 'nbgrader_config.py'}: cannot be read: "
                             f"{type(err).__name__}: {err}") from None
        section = cfg.CourseDirectory if "CourseDirectory" in cfg else {}
    if section.get("db_url"):
        return str(section["db_url"])
    root = (course / str(section["root"])).resolve() if section.get("root") else course
    return f"sqlite:///{root / 'gradebook.db'}"


def check_db_url(url: str) -> str:
    """Validate a gradebook URL for ``init_course``; ``postgresql://`` (and ``postgres://``) get
    the psycopg (v3) driver, the one the ``server`` extra installs."""
    from maestro.server.db import with_driver
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    url = with_driver(url)
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError(f"gradebook URL {_hide_password(url)!r}: not a database URL such as "
                         "postgresql://USER@HOST/DB or sqlite:////abs/path/gradebook.db") from None
    if parsed.get_backend_name() == "sqlite" and parsed.database and not os.path.isabs(parsed.database):
        raise ValueError(f"gradebook URL {url!r}: give an absolute SQLite path (sqlite:////abs/path)")
    return url


def _hide_password(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable URL>"


def read_secret(course: Path) -> str:
    path = Path(course) / ".maestro" / "secret"
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ValueError(f"{course}: no course secret at {path} (run maestro course init)") from None


#: overrides ``[grading] sandbox`` of every course, e.g. ``MAESTRO_SANDBOX=fallback`` to grade
#: (or run ``maestro demo``) without bubblewrap on a machine that has it
SANDBOX_ENV = "MAESTRO_SANDBOX"


def load_settings(course: Path) -> CourseSettings:
    """maestro.toml's ``[grading]``; ``$MAESTRO_SANDBOX`` (auto, bwrap or fallback), where set,
    replaces its ``sandbox``."""
    path = Path(course) / "maestro.toml"
    if not path.is_file():
        raise ValueError(f"{course}: no maestro.toml (run maestro course init DIR first)")
    try:
        raw = dict(tomllib.loads(path.read_text(encoding="utf-8")).get("grading", {}))
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: not valid TOML: {err}") from None
    known = CourseSettings.__dataclass_fields__
    extra = sorted(set(raw) - set(known))
    if extra:
        raise ValueError(f"{path}: [grading] unknown key(s) {', '.join(extra)} (known: {', '.join(known)})")
    forced = os.environ.get(SANDBOX_ENV, "").strip()
    if forced:
        if forced not in ("auto", "bwrap", "fallback"):
            raise ValueError(f"${SANDBOX_ENV}={forced!r}: give auto, bwrap or fallback (or unset it "
                             f"to use {path}'s [grading] sandbox)")
        raw["sandbox"] = forced
    settings = CourseSettings(**raw)
    if settings.workers < 1 or settings.timeout_s < 0 or settings.sandbox not in ("auto", "bwrap", "fallback"):
        raise ValueError(f"{path}: [grading] workers must be ≥ 1, timeout_s ≥ 0, "
                         "sandbox one of auto/bwrap/fallback")
    return settings


def course_id(course: Path) -> str:
    """The nbgrader course id recorded in maestro.toml ([course] id)."""
    path = Path(course) / "maestro.toml"
    try:
        return str(tomllib.loads(path.read_text(encoding="utf-8"))["course"]["id"])
    except (OSError, KeyError, TypeError, tomllib.TOMLDecodeError):
        raise ValueError(f"{course}: maestro.toml has no [course] id (run maestro course init)") from None


def _settings_toml(s: CourseSettings, ident: str) -> str:
    return (
        "# Maestro's grading settings for this course (read by `maestro autograde`).\n"
        f"[course]\nid = \"{ident}\"                # the nbgrader course id\n\n"
        "[grading]\n"
        f"workers = {s.workers}              # submissions graded in parallel (--workers)\n"
        f"timeout_s = {s.timeout_s:g}            # wall clock per notebook; 0 = the assignment's "
        "grading.toml [notebook] timeout_s (--timeout)\n"
        f"memory_bytes = {s.memory_bytes}   # RLIMIT_AS per sandboxed process; a root grader also "
        "caps the whole run (+1.5 GiB: /tmp, /dev/shm, papermill) with a memory cgroup\n"
        f"cpu_seconds = {s.cpu_seconds}\n"
        f"processes = {s.processes}\n"
        f"sandbox = \"{s.sandbox}\"          # auto: bubblewrap, else a loud fallback\n"
        f"gpu = {str(s.gpu).lower()}               # true: the sandbox gets the host's NVIDIA GPU(s)\n"
    )


def init_course(course: str | os.PathLike[str], assignments: str | os.PathLike[str] | None = None,
                *, course_id: str | None = None, settings: CourseSettings | None = None,
                db_url: str | None = None) -> dict:
    """Create the course folder ``course`` (see the module docstring); returns a summary dict
    (course_id, assignments, paths, the gradebook URL without its password) — never the secret.
    Refuses a folder that already holds a course (nbgrader_config.py or maestro.toml).

    ``db_url``: the gradebook's database (default: ``gradebook.db``, SQLite, in the folder), e.g.
    ``postgresql://grader@dbhost/course_gradebook`` — an existing, otherwise empty database (not
    the model server's: nbgrader takes a database with tables for an existing gradebook). It is
    written to ``nbgrader_config.py``, where nbgrader and ``maestro autograde`` both read it, and
    checked (the assignments registered) before any marker file is written."""
    course = Path(course).expanduser().resolve()
    src_root = Path(assignments).expanduser().resolve() if assignments else REPO_ASSIGNMENTS
    course_id = course_id or course.name
    url = check_db_url(db_url) if db_url else f"sqlite:///{course / 'gradebook.db'}"
    if not _ID.match(course_id):
        raise ValueError(f"course id {course_id!r}: use letters, digits, '_', '-', '.'")
    for marker in ("nbgrader_config.py", "maestro.toml"):
        if (course / marker).exists():
            raise ValueError(f"{course} already holds a course ({marker} exists)")
    found = sorted(p.parent for p in src_root.glob("*/grading.toml")) if src_root.is_dir() else []
    if not found:
        raise ValueError(f"{src_root}: no assignments (folders with a grading.toml)")
    configs = []
    for folder in found:
        cfg = load_config(folder / "grading.toml")  # validates it
        if cfg.id != folder.name:
            raise ValueError(f"{folder / 'grading.toml'}: [assignment] id {cfg.id!r} differs from "
                             f"its folder name {folder.name!r}")
        nb = folder / (cfg.notebook.file or f"{cfg.id}.ipynb")
        if not nb.is_file():
            raise ValueError(f"{folder}: the notebook {nb.name} named by grading.toml is missing")
        configs.append((cfg, nb))

    course.mkdir(parents=True, exist_ok=True)
    for cfg, nb in configs:
        dest = course / "source" / cfg.id
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(nb, dest / nb.name)
        shutil.copyfile(cfg.path, dest / "grading.toml")
    # the database first: an unreachable server leaves no half-made course behind
    with _open_gradebook(url, course_id) as gb:
        for cfg, _ in configs:
            gb.update_or_create_assignment(cfg.id)
    (course / "nbgrader_config.py").write_text(
        "# nbgrader configuration written by `maestro course init`.\n"
        "c = get_config()  # noqa: F821\n"
        f"c.CourseDirectory.course_id = {course_id!r}\n"
        f"c.CourseDirectory.root = {str(course)!r}\n"
        f"c.CourseDirectory.db_url = {url!r}\n"
        "# grading.toml (score formula, split salt) and .maestro/ stay instructor-side: never released\n"
        f"c.CourseDirectory.ignore = {IGNORE!r}\n"
        "# what students see where a solution was: a clear message when they run it unchanged\n"
        f"c.ClearSolutions.code_stub = {CODE_STUB!r}\n",
        encoding="utf-8",
    )
    (course / "maestro.toml").write_text(_settings_toml(settings or CourseSettings(), course_id), encoding="utf-8")
    private = course / ".maestro"
    private.mkdir(mode=0o700, exist_ok=True)
    os.chmod(private, 0o700)
    secret_path = private / "secret"
    fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(secrets.token_urlsafe(32) + "\n")
    return {"course": str(course), "course_id": course_id,
            "assignments": [cfg.id for cfg, _ in configs], "gradebook": _hide_password(url)}

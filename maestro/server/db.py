"""Token and usage storage (SQLAlchemy Core): SQLite by default, any SQLAlchemy URL works;
PostgreSQL (``postgresql://USER@HOST/DB``, psycopg 3) for several server processes or machines.

Only the sha256 of a token is stored, never the token. A budget reservation is a single
conditional ``UPDATE usage SET used = used + n WHERE ... AND used + n <= budget``, checked
through its rowcount, so it is atomic across threads and processes sharing the database.
"""

from __future__ import annotations

import csv
import hashlib
import time
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError
import sqlalchemy as sa  # the submissions section below

ROLES = ("student", "instructor")
metadata = MetaData()

tokens = Table(
    "tokens",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("token_hash", String(64), nullable=False, unique=True, index=True),
    Column("student", String(200), nullable=False, index=True),
    Column("role", String(20), nullable=False, default="student"),
    Column("revoked", Boolean, nullable=False, default=False),
    Column("created", DateTime, nullable=False),
)

usage = Table(
    "usage",
    metadata,
    Column("token_id", Integer, ForeignKey("tokens.id"), primary_key=True),
    Column("task", String(64), primary_key=True),
    Column("used", Integer, nullable=False, default=0),
    Column("requests", Integer, nullable=False, default=0),
)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Caller:
    """An authenticated token holder."""

    token_id: int
    student: str
    role: str

    @property
    def is_instructor(self) -> bool:
        return self.role == "instructor"


class Store:
    """Tokens and per-(token, task) usage counters in one database.

    ``auth_ttl``: seconds :meth:`cached_caller` may answer from memory for a token it has seen
    (a server then skips one database round trip per request). A token revoked through THIS
    store is forgotten at once; one revoked by another process (``maestro tokens revoke``, a
    second server on the same PostgreSQL) stops working within ``auth_ttl`` seconds.
    """

    _AUTH_CACHE_MAX = 4096  # tokens remembered at once (a course has a few hundred)

    def __init__(self, url: str, *, auth_ttl: float = 1.0) -> None:
        self.auth_ttl = float(auth_ttl)
        self._auth_cache: dict[str, tuple[Caller, float]] = {}
        url = with_driver(url)
        kwargs: dict = {}
        if url.startswith("sqlite"):
            if url.startswith("sqlite:///") and url not in ("sqlite://", "sqlite:///:memory:"):
                Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 60}
        self.engine = create_engine(url, **kwargs)
        # the budget charge runs on every model request: one statement text, built once (SQLAlchemy's
        # expression building and cache-key work cost more than the UPDATE itself on SQLite)
        returning = " RETURNING used" if self.engine.dialect.update_returning else ""
        charge = ("UPDATE usage SET used = used + :n, requests = requests + 1 "
                  "WHERE token_id = :tid AND task = :task")
        self._charge_sql = {False: text(charge + returning),
                            True: text(charge + " AND used + :n <= :budget" + returning)}
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        _create_tables(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    # -- tokens --------------------------------------------------------------------------
    def create_token(self, student: str, role: str = "student") -> str:
        """Create a token for ``student``; returns the token (only its hash is stored)."""
        student = (student or "").strip()
        if not student:
            raise ValueError("student id must be a non-empty string")
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        token = "mt_" + secrets.token_urlsafe(32)
        with self.engine.begin() as conn:
            conn.execute(insert(tokens).values(
                token_hash=hash_token(token), student=student, role=role, revoked=False,
                created=datetime.now(UTC).replace(tzinfo=None),
            ))
        return token

    def list_tokens(self) -> list[dict]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(tokens).order_by(tokens.c.id)).mappings().all()
        return [
            {"id": r["id"], "student": r["student"], "role": r["role"], "revoked": bool(r["revoked"]),
             "created": r["created"].isoformat(timespec="seconds"), "hash_prefix": r["token_hash"][:12]}
            for r in rows
        ]

    def revoke(self, who: str) -> int:
        """Revoke every token of student ``who`` (or the token with id ``who``); returns how many."""
        cond = tokens.c.student == who
        if who.isdigit():
            cond = cond | (tokens.c.id == int(who))
        with self.engine.begin() as conn:
            n = conn.execute(update(tokens).where(cond & ~tokens.c.revoked).values(revoked=True)).rowcount
        self._auth_cache.clear()
        return int(n)

    def import_students(self, path: str | Path, role: str = "student") -> dict[str, str]:
        """Create one token per student of a CSV (an nbgrader ``student`` export works): the
        student id is the ``id`` / ``student_id`` / ``student`` / ``username`` column, or the
        first column. Returns ``{student: token}``."""
        path = Path(path)
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        if not rows:
            raise ValueError(f"{path}: empty student list")
        header = [h.strip().lower() for h in rows[0]]
        col, body = 0, rows
        for name in ("id", "student_id", "student", "username"):
            if name in header:
                col, body = header.index(name), rows[1:]
                break
        ids = [r[col].strip() for r in body if len(r) > col and r[col].strip()]
        if not ids:
            raise ValueError(f"{path}: no student ids found")
        return {s: self.create_token(s, role) for s in dict.fromkeys(ids)}

    def authenticate(self, token: str) -> Caller | None:
        """The caller holding ``token``, or None when unknown or revoked."""
        if not token:
            return None
        with self.engine.connect() as conn:
            row = conn.execute(
                select(tokens.c.id, tokens.c.student, tokens.c.role, tokens.c.revoked)
                .where(tokens.c.token_hash == hash_token(token))
            ).first()
        if row is None or row.revoked:
            return None
        caller = Caller(row.id, row.student, row.role)
        if self.auth_ttl > 0:
            if len(self._auth_cache) >= self._AUTH_CACHE_MAX:
                self._auth_cache.clear()
            self._auth_cache[token] = (caller, time.monotonic() + self.auth_ttl)  # memory only
        return caller

    def cached_caller(self, token: str) -> Caller | None:
        """The caller :meth:`authenticate` found for ``token`` less than ``auth_ttl`` seconds
        ago, else None (then ask :meth:`authenticate`). No database access: safe to call on an
        event loop."""
        hit = self._auth_cache.get(token) if token else None
        if hit is None or hit[1] < time.monotonic():
            return None
        return hit[0]

    # -- usage ---------------------------------------------------------------------------
    def _ensure_row(self, conn, token_id: int, task: str) -> None:
        name = self.engine.dialect.name
        values = {"token_id": token_id, "task": task, "used": 0, "requests": 0}
        if name in ("sqlite", "postgresql"):
            if name == "sqlite":
                from sqlalchemy.dialects.sqlite import insert as dialect_insert
            else:
                from sqlalchemy.dialects.postgresql import insert as dialect_insert
            conn.execute(dialect_insert(usage).values(**values).on_conflict_do_nothing())
            return
        try:
            with conn.begin_nested():
                conn.execute(insert(usage).values(**values))
        except IntegrityError:
            pass

    def reserve(self, token_id: int, task: str, n: int, budget: int | None) -> bool:
        """Charge ``n`` inputs to (token, task) if the budget allows it — atomically."""
        return self.charge(token_id, task, n, budget) is not None

    def charge(self, token_id: int, task: str, n: int, budget: int | None) -> int | None:
        """Charge ``n`` inputs to (token, task) if the budget allows it, atomically (one
        conditional UPDATE); returns the inputs used after this charge, or None when the budget
        cannot cover ``n`` (nothing is charged then)."""
        stmt = self._charge_sql[budget is not None]
        params = {"n": n, "tid": token_id, "task": task, "budget": budget}
        returning = self.engine.dialect.update_returning
        with self.engine.begin() as conn:
            for attempt in range(2):
                if returning:
                    used = conn.execute(stmt, params).scalar()
                    if used is not None:
                        return int(used)
                elif conn.execute(stmt, params).rowcount == 1:
                    return self._used(conn, token_id, task)
                if attempt == 0 and not self._has_row(conn, token_id, task):
                    self._ensure_row(conn, token_id, task)  # the first request of this token on this task
                    continue
                return None
        return None

    def _has_row(self, conn, token_id: int, task: str) -> bool:
        return conn.execute(select(usage.c.used).where(
            (usage.c.token_id == token_id) & (usage.c.task == task))).first() is not None

    def _used(self, conn, token_id: int, task: str) -> int:
        v = conn.execute(select(usage.c.used).where(
            (usage.c.token_id == token_id) & (usage.c.task == task))).scalar()
        return int(v or 0)

    def refund(self, token_id: int, task: str, n: int) -> None:
        """Give back ``n`` inputs of a reservation whose call failed on the server's side."""
        with self.engine.begin() as conn:
            conn.execute(
                update(usage).where((usage.c.token_id == token_id) & (usage.c.task == task))
                .values(used=usage.c.used - n)
            )

    def used(self, token_id: int, task: str) -> int:
        with self.engine.connect() as conn:
            return self._used(conn, token_id, task)

    def usage_table(self) -> list[dict]:
        """Usage per student and task (for instructors)."""
        q = select(tokens.c.student, tokens.c.role, usage.c.task, usage.c.used, usage.c.requests).join(
            usage, usage.c.token_id == tokens.c.id
        ).order_by(tokens.c.student, usage.c.task)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]


# -- PostgreSQL ------------------------------------------------------------------------------
#: pg_advisory_xact_lock key ("maestro" in ASCII) taken around CREATE TABLE
_DDL_LOCK = 0x6D61657374726F


def with_driver(url: str) -> str:
    """``postgresql://`` (or ``postgres://``) gets the psycopg (v3) driver of the ``server``
    extra; SQLAlchemy's default would be psycopg2, which is not installed."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain):]
    return url


def _create_tables(engine) -> None:
    """Create the missing tables. Server processes starting together on a fresh PostgreSQL
    database would race (each sees no table, the second CREATE TABLE fails on pg_type's unique
    index): there a transaction-scoped advisory lock serialises them, and DDL is transactional."""
    if engine.dialect.name != "postgresql":
        metadata.create_all(engine)
        return
    with engine.begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _DDL_LOCK})
        metadata.create_all(conn)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # under WAL the database stays consistent; a power cut may lose the last few usage
    # increments, in exchange for no fsync per budget reservation (~1 ms per request)
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=60000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


# -- submissions (uploaded artifacts graded by the trusted scorer; maestro.server.submissions) --
SUBMISSION_STATES = ("queued", "grading", "graded", "failed")

submissions = Table(
    "submissions",
    metadata,
    Column("id", String(32), primary_key=True),          # random, not guessable
    Column("assignment", String(64), nullable=False, index=True),
    Column("student", String(200), nullable=False, index=True),
    Column("token_id", Integer, ForeignKey("tokens.id"), nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("created", DateTime, nullable=False),          # UTC
    Column("claimed_at", DateTime, nullable=True),        # when a grader took it (UTC)
    Column("worker", String(100), nullable=True),         # which grader: host:pid:random
    Column("graded_at", DateTime, nullable=True),
    Column("sha256", String(64), nullable=False),         # of the uploaded .npy
    Column("score", sa.Float, nullable=True),
    Column("max_score", sa.Float, nullable=True),
    Column("reason", sa.Text, nullable=False, default=""),  # why it failed (grader errors)
    Column("result", sa.Text, nullable=True),              # JSON: every part, instructor view
    Column("entry", sa.Text, nullable=True),               # JSON: the leaderboard Entry
)

# the uploaded bytes, kept only until the submission is graded
submission_artifacts = Table(
    "submission_artifacts",
    metadata,
    Column("submission_id", String(32), ForeignKey("submissions.id"), primary_key=True),
    Column("data", sa.LargeBinary, nullable=False),
)

_PUBLIC_COLUMNS = [c for c in submissions.c if c.name not in ("token_id", "worker", "claimed_at")]


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Submissions:
    """The submission queue in the server's database (shared by every server process).

    A grader takes the oldest queued submission with one conditional UPDATE (``status =
    'queued'`` → ``'grading'``, checked through its rowcount), so two graders, in one process or
    in several, never grade the same one. The artifact's bytes are deleted once it is graded.
    """

    def __init__(self, store: Store) -> None:
        self.engine = store.engine

    def add(self, *, assignment: str, student: str, token_id: int, sha256: str, data: bytes) -> dict:
        sid = secrets.token_hex(8)
        row = {"id": sid, "assignment": assignment, "student": student, "token_id": token_id,
               "status": "queued", "created": _utcnow(), "sha256": sha256, "reason": ""}
        with self.engine.begin() as conn:
            conn.execute(insert(submissions).values(**row))
            conn.execute(insert(submission_artifacts).values(submission_id=sid, data=data))
        return self.get(sid)

    def claim(self, worker: str, assignments: list[str]) -> tuple[dict, bytes] | None:
        """Take the oldest queued submission of ``assignments`` for ``worker``: (row, bytes);
        the row also holds the ``token_id`` that uploaded it."""
        while True:
            with self.engine.begin() as conn:
                first = conn.execute(
                    select(submissions.c.id, submissions.c.token_id)
                    .where((submissions.c.status == "queued") & submissions.c.assignment.in_(assignments))
                    .order_by(submissions.c.created, submissions.c.id).limit(1)
                ).first()
                if first is None:
                    return None
                sid, token_id = first
                taken = conn.execute(
                    update(submissions).where((submissions.c.id == sid) & (submissions.c.status == "queued"))
                    .values(status="grading", worker=worker, claimed_at=_utcnow())
                ).rowcount
                if taken != 1:
                    continue  # another grader was faster: look again
                data = conn.execute(select(submission_artifacts.c.data)
                                    .where(submission_artifacts.c.submission_id == sid)).scalar()
            row = {**self.get(sid), "token_id": token_id}
            if data is None:  # cannot happen through this class; never grade nothing
                self.finish(sid, worker, status="failed", reason="the uploaded artifact is missing")
                continue
            return row, bytes(data)

    def finish(self, sid: str, worker: str, *, status: str, score: float | None = None,
               max_score: float | None = None, reason: str = "", result: str | None = None,
               entry: str | None = None) -> bool:
        """Record the grade of a submission ``worker`` holds; its bytes are dropped."""
        if status not in ("graded", "failed"):
            raise ValueError(f"finish: status must be 'graded' or 'failed', got {status!r}")
        with self.engine.begin() as conn:
            done = conn.execute(
                update(submissions)
                .where((submissions.c.id == sid) & (submissions.c.status == "grading")
                       & (submissions.c.worker == worker))
                .values(status=status, score=score, max_score=max_score, reason=reason, result=result,
                        entry=entry, graded_at=_utcnow())
            ).rowcount == 1
            if done:
                conn.execute(sa.delete(submission_artifacts).where(submission_artifacts.c.submission_id == sid))
        return done

    def requeue(self, *, worker: str | None = None, older_than: datetime | None = None,
                workers: list[str] | None = None) -> int:
        """Put submissions left in 'grading' back in the queue: those of ``worker``, of any of
        ``workers``, or claimed before ``older_than`` (UTC). Returns how many."""
        cond = submissions.c.status == "grading"
        which = []
        if worker is not None:
            which.append(submissions.c.worker == worker)
        if workers:
            which.append(submissions.c.worker.in_(workers))
        if older_than is not None:
            which.append(submissions.c.claimed_at < older_than)
        if not which:
            return 0
        with self.engine.begin() as conn:
            return int(conn.execute(update(submissions).where(cond & sa.or_(*which))
                                    .values(status="queued", worker=None, claimed_at=None)).rowcount)

    def graders(self) -> list[str]:
        """The workers holding submissions now."""
        with self.engine.connect() as conn:
            return [w for (w,) in conn.execute(select(submissions.c.worker).distinct()
                                               .where(submissions.c.status == "grading")) if w]

    def get(self, sid: str) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(*_PUBLIC_COLUMNS).where(submissions.c.id == sid)).mappings().first()
        return dict(row) if row else None

    def list(self, assignment: str | None = None, student: str | None = None) -> list[dict]:
        """Submissions, oldest first (with their result JSON)."""
        q = select(*[c for c in _PUBLIC_COLUMNS if c.name != "entry"])
        if assignment is not None:
            q = q.where(submissions.c.assignment == assignment)
        if student is not None:
            q = q.where(submissions.c.student == student)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q.order_by(submissions.c.created, submissions.c.id)).mappings()]

    def entries(self, assignment: str) -> list[str]:
        """The leaderboard entries (JSON) of the graded submissions of ``assignment`` made with
        student tokens (an instructor's test uploads stay off the leaderboard)."""
        q = (select(submissions.c.entry).join(tokens, tokens.c.id == submissions.c.token_id)
             .where((submissions.c.assignment == assignment) & (submissions.c.status == "graded")
                    & submissions.c.entry.is_not(None) & (tokens.c.role == "student"))
             .order_by(submissions.c.created, submissions.c.id))
        with self.engine.connect() as conn:
            return [e for (e,) in conn.execute(q)]

    def version(self, assignment: str) -> tuple:
        """Changes whenever a submission of ``assignment`` is graded (for caching leaderboards)."""
        with self.engine.connect() as conn:
            n, last = conn.execute(
                select(sa.func.count(), sa.func.max(submissions.c.graded_at))
                .where((submissions.c.assignment == assignment) & (submissions.c.status == "graded"))
            ).one()
        return int(n), last

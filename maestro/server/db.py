"""Token and usage storage (SQLAlchemy Core): SQLite by default, any SQLAlchemy URL works.

Only the sha256 of a token is stored, never the token. A budget reservation is a single
conditional ``UPDATE usage SET used = used + n WHERE ... AND used + n <= budget``, checked
through its rowcount, so it is atomic across threads and processes sharing the database.
"""

from __future__ import annotations

import csv
import hashlib
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
    update,
)
from sqlalchemy.exc import IntegrityError

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
    """Tokens and per-(token, task) usage counters in one database."""

    def __init__(self, url: str) -> None:
        kwargs: dict = {}
        if url.startswith("sqlite"):
            if url.startswith("sqlite:///") and url not in ("sqlite://", "sqlite:///:memory:"):
                Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 60}
        self.engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        metadata.create_all(self.engine)

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
        return Caller(row.id, row.student, row.role)

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
        cond = (usage.c.token_id == token_id) & (usage.c.task == task)
        if budget is not None:
            cond = cond & (usage.c.used + n <= budget)
        with self.engine.begin() as conn:
            self._ensure_row(conn, token_id, task)
            result = conn.execute(
                update(usage).where(cond).values(used=usage.c.used + n, requests=usage.c.requests + 1)
            )
            return result.rowcount == 1

    def refund(self, token_id: int, task: str, n: int) -> None:
        """Give back ``n`` inputs of a reservation whose call failed on the server's side."""
        with self.engine.begin() as conn:
            conn.execute(
                update(usage).where((usage.c.token_id == token_id) & (usage.c.task == task))
                .values(used=usage.c.used - n)
            )

    def used(self, token_id: int, task: str) -> int:
        with self.engine.connect() as conn:
            v = conn.execute(
                select(usage.c.used).where((usage.c.token_id == token_id) & (usage.c.task == task))
            ).scalar()
        return int(v or 0)

    def usage_table(self) -> list[dict]:
        """Usage per student and task (for instructors)."""
        q = select(tokens.c.student, tokens.c.role, usage.c.task, usage.c.used, usage.c.requests).join(
            usage, usage.c.token_id == tokens.c.id
        ).order_by(tokens.c.student, usage.c.task)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # under WAL the database stays consistent; a power cut may lose the last few usage
    # increments, in exchange for no fsync per budget reservation (~1 ms per request)
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=60000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()

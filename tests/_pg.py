"""A throwaway PostgreSQL server for the tests: ``initdb`` into a temporary folder, ``pg_ctl
start`` on a free loopback port (trust authentication, loopback only), databases on demand,
``pg_ctl stop`` and the folder removed afterwards.

    with postgres_or_skip() as pg:            # in a module-scoped fixture
        url = pg.create_database("server")    # "postgresql+psycopg://postgres@127.0.0.1:PORT/server"

Where PostgreSQL is missing or cannot start, the tests are skipped with the precise reason;
under CI as root (``make test`` installs Debian ``postgresql`` there) that is a failure instead, so a
green CI always ran them. ``initdb`` refuses root: as root the cluster runs as the ``postgres``
system user (made by the Debian package), which then owns the temporary folder.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

INSTALL_HINT = "make debs installs Debian postgresql as root; elsewhere: sudo apt-get install postgresql"
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class Unavailable(Exception):
    """PostgreSQL cannot run here; the message says why."""


def find_bindir() -> Path:
    """The folder holding initdb and pg_ctl: on PATH, else Debian's newest
    /usr/lib/postgresql/VERSION/bin (Debian keeps them off PATH)."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    found = [Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin") if Path(p, "initdb").exists()]
    found.sort(key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else -1)
    if not found:
        raise Unavailable(f"PostgreSQL is not installed (no initdb on PATH or under "
                          f"/usr/lib/postgresql/*/bin): {INSTALL_HINT}")
    return found[-1]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    """A running throwaway cluster; the superuser ``postgres`` needs no password on loopback."""

    bindir: Path
    root: Path
    port: int
    user: str = "postgres"

    def url(self, database: str = "postgres", driver: str = "psycopg") -> str:
        return f"postgresql+{driver}://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create the (empty) database ``name``; returns its SQLAlchemy URL."""
        import psycopg

        if not _NAME.match(name):
            raise ValueError(f"database name {name!r}: lower-case letters, digits and '_'")
        with psycopg.connect(host="127.0.0.1", port=self.port, user=self.user, dbname="postgres",
                             autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def log(self) -> str:
        try:
            return (self.root / "server.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""


def _as_owner(owner: str | None) -> dict:
    """subprocess arguments that run a command as ``owner`` (None: as ourselves)."""
    if owner is None:
        return {}
    pw = pwd.getpwnam(owner)
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": [],
            "env": {**os.environ, "HOME": pw.pw_dir, "USER": owner, "LOGNAME": owner}}


@contextlib.contextmanager
def postgres_cluster(timeout: float = 60.0):
    """Start a throwaway cluster; yields a :class:`Cluster`; stops it and removes its folder.
    Raises :class:`Unavailable` (with the reason) where it cannot start."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise Unavailable("the PostgreSQL driver is missing: pip install 'psycopg[binary]' "
                          "(the server extra)") from None
    bindir = find_bindir()
    owner = None
    if os.geteuid() == 0:  # initdb refuses root
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise Unavailable("running as root and there is no 'postgres' system user to run "
                              f"the server as: {INSTALL_HINT}") from None
        owner = "postgres"
    root = Path(tempfile.mkdtemp(prefix="maestro-pg-"))
    started = False
    try:
        if owner is not None:
            shutil.chown(root, owner, owner)
        as_owner = _as_owner(owner)
        run = dict(cwd=root, capture_output=True, text=True, timeout=timeout, **as_owner)
        proc = subprocess.run([str(bindir / "initdb"), "-D", str(root / "data"), "-A", "trust",
                               "-U", "postgres", "-E", "UTF8", "--no-locale", "--no-sync"], check=False, **run)
        if proc.returncode != 0:
            raise Unavailable(f"initdb failed ({bindir}): {(proc.stderr or proc.stdout).strip()[-1500:]}")
        # durability off (a throwaway cluster); enough connections for two apps' pools
        options = ("-c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
                   f"-c full_page_writes=off -c max_connections=200 -k {root}")
        why = ""
        for _ in range(3):  # the free port may be taken between probing and binding it
            port = _free_port()
            proc = subprocess.run([str(bindir / "pg_ctl"), "-D", str(root / "data"), "-l",
                                   str(root / "server.log"), "-w", "-t", str(int(timeout)),
                                   "-o", f"-p {port} {options}", "start"], check=False,
                                  **run)
            if proc.returncode == 0:
                started = True
                break
            why = (proc.stderr or proc.stdout).strip()
        cluster = Cluster(bindir=bindir, root=root, port=port if started else 0)
        if not started:
            raise Unavailable(f"pg_ctl start failed: {why[-800:]}; server log: {cluster.log()}")
        yield cluster
    finally:
        if started:
            subprocess.run([str(bindir / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate",
                            "-w", "stop"], cwd=root, capture_output=True, timeout=timeout,
                           check=False, **_as_owner(owner))
        shutil.rmtree(root, ignore_errors=True)


def must_run() -> bool:
    """CI as root installs PostgreSQL (make test): there the PostgreSQL tests may not skip."""
    return bool(os.environ.get("CI")) and os.geteuid() == 0


@contextlib.contextmanager
def postgres_or_skip():
    """:func:`postgres_cluster`, or a pytest skip with the reason (a failure under CI as root)."""
    with contextlib.ExitStack() as stack:
        try:
            cluster, why = stack.enter_context(postgres_cluster()), ""
        except Unavailable as err:
            cluster, why = None, str(err)
        if cluster is None:
            if must_run():
                pytest.fail(f"CI must test PostgreSQL, but it cannot start: {why}", pytrace=False)
            pytest.skip(why)
        yield cluster

"""Run a server app in a background thread (tests, notebooks, demos), and a one-task local oracle.

    with background_server(create_app(config)) as url:            # http://127.0.0.1:PORT
        oracle = maestro.remote.connect(url, token, "digits-scores")

    with background_server(app, uds="/run/me/oracle.sock") as url:  # unix:///run/me/oracle.sock
        oracle = maestro.remote.connect(url, token, "digits-scores")

A UNIX socket (``uds=``) is what a sandbox without any network (not even loopback) can still
reach when the socket file is bound into it; :func:`maestro.remote.connect` takes the
``unix:///absolute/path.sock`` URL that :func:`background_server` yields for it.

:class:`LocalOracle` is the same server for ONE task with one student token, its budget and its
own throw-away SQLite store: the stand-in for the course server while a student practises::

    with LocalOracle("lenet-mnist", task="mnist-scores", access="scores", budget=5000,
                     threat={"norm": "linf", "eps": 0.2}) as server:
        oracle = server.connect()          # a maestro.remote.RemoteModel
        oracle.predict_proba(x); server.queries()   # inputs counted by the server
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
import tempfile
import threading
import time
import weakref
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _check_uds_path(uds: str | os.PathLike) -> Path:
    path = Path(uds)
    if not path.is_absolute():
        raise ValueError(f"uds: give an absolute socket path, got {str(uds)!r}")
    if len(os.fsencode(path)) > 107:  # sun_path holds 108 bytes with its NUL
        raise ValueError(f"uds: the socket path {str(path)!r} is longer than the 107 bytes a UNIX "
                         "socket address holds; use a shorter folder")
    if not path.parent.is_dir():
        raise ValueError(f"uds: the folder {str(path.parent)!r} does not exist")
    if path.is_symlink() or (path.exists() and not stat.S_ISSOCK(path.lstat().st_mode)):
        raise ValueError(f"uds: {str(path)!r} exists and is not a socket; refusing to replace it")
    return path


@contextlib.contextmanager
def background_server(app, host: str = "127.0.0.1", port: int | None = None, timeout: float = 30.0,
                      *, uds: str | os.PathLike | None = None, keep_alive: float = 5.0):
    """Serve ``app`` with uvicorn in a daemon thread; yields its base URL, stops on exit.

    ``uds``: listen on this UNIX socket path instead of a loopback port (``host``/``port`` are
    then ignored) and yield ``unix://<path>``; the socket file is removed on exit. Put it in a
    folder only you can enter: uvicorn makes the socket itself world-writable. ``keep_alive``:
    seconds an idle connection stays open (uvicorn's ``timeout_keep_alive``).
    """
    import uvicorn

    if uds is not None:
        path = _check_uds_path(uds)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a stale socket of an earlier run (checked above: a socket)
        config = uvicorn.Config(app, uds=str(path), log_level="warning", access_log=False,
                                timeout_keep_alive=keep_alive)
        where, url = str(path), f"unix://{path}"
    else:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("background_server listens on loopback addresses only")
        port = port or free_port(host)
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                timeout_keep_alive=keep_alive)
        where, url = f"{host}:{port}", f"http://{host}:{port}"
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"maestro-server-{where}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the server on {where} did not start")
        time.sleep(0.02)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout)
        if uds is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(where)


def oracle_config(model: str, *, task: str = "oracle", dataset: str | None = None,
                  access: str = "scores", budget: int | None = None, threat: dict | None = None,
                  database: str | None = None, max_batch: int = 1024, home: str | None = None,
                  course_dir: str | os.PathLike | None = None, rate_limit: float = 0.0):
    """The :class:`~maestro.server.ServerConfig` of a one-task oracle: by default no rate
    limit (the budget bounds the work), ``max_batch`` inputs per request."""
    from .config import ServerConfig, TaskConfig

    spec = TaskConfig(name=task, model=model, dataset=dataset, access=access, budget=budget,
                      threat=dict(threat) if threat is not None else None)
    return ServerConfig(tasks={task: spec}, course_dir=Path(course_dir or Path.cwd()),
                        database=database, rate_limit=rate_limit, max_batch=max_batch, home=home)


class LocalOracle:
    """A one-task model server in this process (a daemon thread) with one student token.

    ``model``: a zoo name (``maestro.models.load``); ``access``: "labels", "scores" or
    "white-box"; ``budget``: inputs the token may send (None: unlimited); ``threat``: the task's
    ThreatModel fields (``{"norm": "linf", "eps": 0.2}``). ``uds``: serve on this UNIX socket
    path instead of a loopback port. The SQLite store lives in a temporary folder that
    :meth:`close` removes. Use it as a context manager, or call :meth:`close` yourself.
    """

    def __init__(self, model: str, *, task: str = "oracle", dataset: str | None = None,
                 access: str = "scores", budget: int | None = None, threat: dict | None = None,
                 uds: str | os.PathLike | None = None, max_batch: int = 1024,
                 home: str | None = None, student: str = "local-student") -> None:
        from .app import create_app
        from .db import Store

        self.task = task
        self._dir = Path(tempfile.mkdtemp(prefix="maestro-oracle-"))
        self._stack = contextlib.ExitStack()
        try:
            self._stack.callback(shutil.rmtree, self._dir, ignore_errors=True)
            db = self._dir / "oracle.db"
            config = oracle_config(model, task=task, dataset=dataset, access=access, budget=budget,
                                   threat=threat, database=f"sqlite:///{db}", max_batch=max_batch,
                                   home=home, course_dir=self._dir)
            self.store = Store(config.database_url)
            self._stack.callback(self.store.close)
            self.token = self.store.create_token(student)
            self._token_id = self.store.authenticate(self.token).token_id
            app = create_app(config, store=self.store)
            self.url = self._stack.enter_context(background_server(app, uds=uds))
        except BaseException:
            self._stack.close()
            raise
        # stopped and its folder removed when closed, collected, or at interpreter exit (a
        # notebook kernel that shuts down without close())
        self._finalizer = weakref.finalize(self, self._stack.close)

    def connect(self, **kw):
        """A :class:`maestro.remote.RemoteModel` for the task, with this oracle's token."""
        from ..remote import connect

        return connect(self.url, self.token, self.task, **kw)

    def queries(self) -> int:
        """Inputs the token has sent so far, as the server counted them."""
        return self.store.used(self._token_id, self.task)

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> LocalOracle:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LocalOracle({self.task!r} at {self.url})"

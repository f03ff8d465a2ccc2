"""The black-box oracle for sandboxed notebook runs: the model outside, a client inside.

For a black-box unit the model never enters the sandbox. It is served by an oracle PROCESS
(the Maestro model server, :mod:`maestro.server`, for one task) that listens on a UNIX socket;
:func:`autograder.sandbox.run_notebook` binds that socket file into the sandbox (``sockets=``),
the notebook connects with ``maestro.remote.connect("unix:///…/oracle.sock", token, task)``, and
every input it sends is charged, atomically, against its token's budget in the oracle's own
SQLite store. The grader reads the count there afterwards: it is the trusted query count.

    with serve_oracle("lenet-mnist", task="02-blackbox-scores", access="scores",
                      budget=1000 * n, threat={"norm": "linf", "eps": 0.2, "query_budget": 1000},
                      home=private_home) as oracle:
        session = oracle.issue("student-id")            # a fresh token per submission
        run_notebook(nb, ..., parameters={"oracle_url": oracle.url,
                                          "oracle_token": session.token,
                                          "oracle_task": oracle.task},
                     sockets=[oracle.socket_path], maestro_home=None)   # no zoo in the sandbox
        session.queries()                               # inputs the notebook sent

Why a private model (:func:`private_model_home`): zoo models are trained deterministically
from public data and public code, so ``maestro.models.build`` rebuilds the very same weights
in ~20 s — inside a sandbox too. An oracle serving the public zoo model is only black-box for
students who do not think of that. The grader's oracle serves the same architecture trained
with a seed derived from the course secret: same task, same accuracy, weights nobody can
reproduce without the secret.

Security notes: the oracle's folder (socket, database, log) is private (0700); only the socket
inode is bound into the sandbox, read-only; tokens are random, stored hashed, one per
submission; the oracle has no rate limit (the budget bounds the work) and the process dies
with the grader (it watches its parent).

For a grader, :class:`OracleJob` bundles a unit's oracle (from grading.toml's ``[oracle]``,
see :class:`OracleSpec`): ``job.serve(cache_dir)`` starts it, ``job.load_model(cache_dir)``
loads the very model it serves, for the trusted scorer.

Command line (started by :func:`serve_oracle`, not by hand): ``python -m autograder.oracle
serve STATE_DIR`` reads ``STATE_DIR/oracle.json`` and serves ``STATE_DIR/oracle.sock``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Oracle", "OracleJob", "OracleSession", "OracleSpec", "oracle_spec", "private_model_home",
           "private_seed", "serve_oracle"]

_SPEC = "oracle.json"
_SOCKET = "oracle.sock"
_DB = "oracle.db"
_LOG = "oracle.log"
_ACCESS = ("labels", "scores", "white-box")


# -- the [oracle] table of grading.toml -----------------------------------------------------
@dataclass(frozen=True)
class OracleSpec:
    """``[oracle]`` of a black-box unit's grading.toml::

        [oracle]
        access = "scores"                # labels | scores | white-box
        queries_per_example = 1000       # the whole run's budget is this × the hidden inputs
        private_model = true             # serve a course-secret-seeded build (default true)

    The task name is the assignment id; model and threat come from [assignment] and [threat].
    """

    access: str = "scores"
    queries_per_example: int = 1000
    private_model: bool = True

    def budget(self, n_inputs: int) -> int:
        """The token budget of one graded run on ``n_inputs`` hidden inputs (everything the
        notebook sends counts: labelling, its own tests, the attack)."""
        return int(self.queries_per_example) * int(n_inputs)


def oracle_spec(grading_toml: str | os.PathLike) -> OracleSpec | None:
    """The ``[oracle]`` table of ``grading_toml`` (None when the unit has none: white-box)."""
    import tomllib

    path = Path(grading_toml)
    raw = tomllib.loads(path.read_text(encoding="utf-8")).get("oracle")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: [oracle] must be a table")
    unknown = set(raw) - {"access", "queries_per_example", "private_model"}
    if unknown:
        raise ValueError(f"{path}: [oracle] unknown key(s) {', '.join(sorted(unknown))} "
                         "(known: access, private_model, queries_per_example)")
    access = raw.get("access", "scores")
    if access not in _ACCESS:
        raise ValueError(f"{path}: [oracle] access: must be one of {', '.join(_ACCESS)}, got {access!r}")
    q = raw.get("queries_per_example", 1000)
    if isinstance(q, bool) or not isinstance(q, int) or q < 1:
        raise ValueError(f"{path}: [oracle] queries_per_example: expected an int ≥ 1, got {q!r}")
    private = raw.get("private_model", True)
    if not isinstance(private, bool):
        raise ValueError(f"{path}: [oracle] private_model: expected true or false, got {private!r}")
    return OracleSpec(access, q, private)


# -- the course's private build of a zoo model ------------------------------------------------
def private_seed(secret: str | bytes, model: str) -> int:
    """A 31-bit training seed from the course secret and the model name."""
    from maestro.datasets.splits import secret_seed

    return secret_seed(secret, model, domain="maestro-oracle-model", bits=31)


def private_model_home(model: str, cache_dir: str | os.PathLike, *, seed: int,
                       progress: bool = False) -> Path:
    """A model home holding ``model`` trained with ``seed`` (:func:`private_seed`; built on first
    use, ~20 s for lenet-mnist on CPU, then reused): pass it as ``serve_oracle(..., home=...)``.

    ``cache_dir``: a folder of the grader's (``COURSE/.maestro/oracle-models``, say); never one
    a sandbox sees — in particular not inside the model zoo that white-box runs get bound. The
    folder name carries a digest of the seed, not the seed.
    """
    import maestro

    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    tag = hashlib.sha256(f"{model}:{seed}".encode()).hexdigest()[:16]
    home = Path(cache_dir).expanduser().resolve() / f"{model}-{tag}"
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    maestro.models.build([model], home=home, seed=seed, progress=progress)
    return home


# -- what a grader needs for one black-box unit -------------------------------------------------
@dataclass(frozen=True)
class OracleJob:
    """Everything needed to start a unit's oracle: plain data (it may travel to Dask workers;
    it holds a training seed derived from the course secret, never the secret)."""

    model: str
    task: str
    dataset: str | None
    access: str
    budget: int
    threat: dict
    seed: int | None = None  # a private build's training seed; None: the public zoo model

    @classmethod
    def for_unit(cls, spec: OracleSpec, *, assignment: str, model: str, dataset: str | None,
                 threat: dict, n_inputs: int, secret: str | bytes | None) -> OracleJob:
        """The oracle of a graded run on ``n_inputs`` hidden inputs: task = the assignment id,
        budget = ``spec.budget(n_inputs)``, threat + ``query_budget = queries_per_example``."""
        if spec.private_model and not secret:
            raise ValueError("[oracle] private_model = true needs the course secret")
        return cls(model, assignment, dataset, spec.access, spec.budget(n_inputs),
                   {**threat, "query_budget": spec.queries_per_example},
                   private_seed(secret, model) if spec.private_model else None)

    def home(self, cache_dir: str | os.PathLike, zoo: str | os.PathLike | None = None) -> Path | None:
        """The model home the oracle (and the scorer) loads from: the private build (made on
        first use in ``cache_dir``), or ``zoo`` for the public model."""
        if self.seed is None:
            return Path(zoo) if zoo is not None else None
        return private_model_home(self.model, cache_dir, seed=self.seed)

    def load_model(self, cache_dir: str | os.PathLike, zoo: str | os.PathLike | None = None):
        """The very model the oracle serves (white-box, for the trusted scorer)."""
        import maestro

        return maestro.models.load(self.model, home=self.home(cache_dir, zoo))

    def serve(self, cache_dir: str | os.PathLike, zoo: str | os.PathLike | None = None, **kw):
        """:func:`serve_oracle` for this job (a context manager yielding an :class:`Oracle`)."""
        return serve_oracle(self.model, task=self.task, dataset=self.dataset, access=self.access,
                            budget=self.budget, threat=self.threat, home=self.home(cache_dir, zoo),
                            **kw)


# -- the oracle process ------------------------------------------------------------------------
@dataclass
class OracleSession:
    """One submission's token on an oracle: give ``token`` to the notebook, read
    :meth:`queries` afterwards."""

    oracle: Oracle
    student: str
    token: str
    token_id: int

    @property
    def url(self) -> str:
        return self.oracle.url

    @property
    def task(self) -> str:
        return self.oracle.task

    @property
    def socket_path(self) -> Path:
        return self.oracle.socket_path

    def queries(self) -> int:
        """Inputs this token sent to the oracle (charged; a failed model call is refunded)."""
        return self.oracle._store.used(self.token_id, self.oracle.task)

    def parameters(self) -> dict:
        """The papermill parameters a notebook needs to reach the oracle with this token."""
        return {"oracle_url": self.url, "oracle_token": self.token, "oracle_task": self.task}


@dataclass
class Oracle:
    """A running oracle process (see :func:`serve_oracle`)."""

    task: str
    socket_path: Path
    budget: int | None
    access: str
    _store: object = field(repr=False)
    _proc: subprocess.Popen = field(repr=False)

    @property
    def url(self) -> str:
        """``unix://<socket path>``: the same inside the sandbox (the socket is bound at its own
        path) and outside."""
        return f"unix://{self.socket_path}"

    def issue(self, student: str) -> OracleSession:
        """A fresh token for one run (one submission) with the task's full budget."""
        token = self._store.create_token(student)
        return OracleSession(self, student, token, self._store.authenticate(token).token_id)

    def usage(self) -> list[dict]:
        """Inputs and requests per token (student), as the oracle counted them."""
        return self._store.usage_table()

    def alive(self) -> bool:
        return self._proc.poll() is None


@contextlib.contextmanager
def serve_oracle(model: str, *, task: str, dataset: str | None = None, access: str = "scores",
                 budget: int | None = None, threat: dict | None = None,
                 home: str | os.PathLike | None = None, socket_dir: str | os.PathLike | None = None,
                 max_batch: int = 1024, threads: int = 1, rate_limit: float = 0.0,
                 timeout: float = 120.0):
    """Start an oracle process serving ``model`` as ``task`` on a UNIX socket; yield an
    :class:`Oracle`; stop it and delete its folder (socket, database, log) on exit.

    ``access``: what the notebook may ask ("labels", "scores" or "white-box"); ``budget``:
    inputs per token (:meth:`Oracle.issue` makes one token per submission; None: unlimited);
    ``threat``: the task's ThreatModel fields, e.g. ``{"norm": "linf", "eps": 0.2,
    "query_budget": 1000}`` (the notebook reads it as ``oracle.threat``); ``home``: the model
    home to load from (a :func:`private_model_home`, or None for the public zoo); ``socket_dir``:
    where the oracle's private folder is made (default: the system temp folder; the socket path
    must stay under 108 bytes); ``threads``: torch threads of the oracle process;
    ``rate_limit``: requests per second per token (0: none; the budget bounds the model work,
    the notebook's wall-clock limit the per-request overhead).
    """
    from maestro.server.config import TaskConfig
    from maestro.server.db import Store

    TaskConfig(name=task, model=model, dataset=dataset, access=access, budget=budget,
               threat=dict(threat) if threat is not None else None)  # fail here, not in the child
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an int ≥ 1, got {threads!r}")
    base = Path(socket_dir).expanduser().resolve() if socket_dir is not None else None
    if base is not None:
        base.mkdir(parents=True, exist_ok=True)
    state = Path(tempfile.mkdtemp(prefix="maestro-oracle-", dir=base))
    os.chmod(state, 0o700)
    sock = state / _SOCKET
    if len(os.fsencode(sock)) > 107:
        shutil.rmtree(state, ignore_errors=True)
        raise ValueError(f"the oracle socket path {str(sock)!r} is longer than a UNIX socket address "
                         "allows (107 bytes): pass a shorter socket_dir")
    proc, store, log = None, None, None
    try:
        spec = {"model": model, "task": task, "dataset": dataset, "access": access, "budget": budget,
                "threat": threat, "home": str(Path(home).expanduser().resolve()) if home else None,
                "max_batch": max_batch, "threads": threads, "rate_limit": float(rate_limit),
                "parent": os.getpid()}
        (state / _SPEC).write_text(json.dumps(spec), encoding="utf-8")
        store = Store(f"sqlite:///{state / _DB}")  # tables exist before the child starts
        log = open(state / _LOG, "wb")
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        proc = subprocess.Popen([sys.executable, "-m", "autograder.oracle", "serve", str(state)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
        _wait_ready(proc, sock, state / _LOG, timeout)
        yield Oracle(task, sock, budget, access, store, proc)
    finally:
        if proc is not None:
            _stop(proc)
        if log is not None:
            log.close()
        if store is not None:
            store.close()
        shutil.rmtree(state, ignore_errors=True)


def _log_tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_bytes()[-n:].decode(errors="replace").strip()
    except OSError:
        return ""


def _wait_ready(proc: subprocess.Popen, sock: Path, log: Path, timeout: float) -> None:
    """Until the oracle answers /v1/health on its socket (the model is loaded by then)."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the oracle process exited with code {proc.returncode} before it "
                               f"was ready:\n{_log_tail(log)}")
        if sock.exists():
            try:
                with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=5) as c:
                    if c.get("http://oracle/v1/health").status_code == 200:
                        return
            except httpx.HTTPError:
                pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the oracle did not start within {timeout:g} s:\n{_log_tail(log)}")
        time.sleep(0.1)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # uvicorn shuts down gracefully
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- the child ---------------------------------------------------------------------------------
def _serve(state: Path) -> int:
    import torch
    import uvicorn

    from maestro.server.app import create_app
    from maestro.server.db import Store
    from maestro.server.local import oracle_config

    spec = json.loads((state / _SPEC).read_text(encoding="utf-8"))
    torch.set_num_threads(int(spec["threads"]))
    parent = int(spec["parent"])
    config = oracle_config(spec["model"], task=spec["task"], dataset=spec["dataset"],
                           access=spec["access"], budget=spec["budget"], threat=spec["threat"],
                           database=f"sqlite:///{state / _DB}", max_batch=int(spec["max_batch"]),
                           home=spec["home"], course_dir=state, rate_limit=spec["rate_limit"])
    store = Store(config.database_url)
    app = create_app(config, store=store)
    server = uvicorn.Server(uvicorn.Config(app, uds=str(state / _SOCKET), log_level="warning",
                                           access_log=False))

    def watch_parent() -> None:  # the grader died (kill -9): do not outlive it
        while not server.should_exit:
            if os.getppid() != parent:
                server.should_exit = True
                return
            time.sleep(1.0)

    threading.Thread(target=watch_parent, daemon=True).start()
    server.run()
    store.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2 or argv[0] != "serve":
        print("usage: python -m autograder.oracle serve STATE_DIR (started by serve_oracle)",
              file=sys.stderr)
        return 2
    return _serve(Path(argv[1]))


if __name__ == "__main__":
    sys.exit(main())

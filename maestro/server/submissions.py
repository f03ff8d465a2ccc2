"""Submissions: artifacts uploaded to the server, graded in the background by the autograder's
trusted scorer (:func:`autograder.scoring.score_submission`), and the live leaderboards.

* :class:`Assignment` — one ``[submissions]`` assignment of a ``maestro course init`` course:
  its grading.toml, model, and hidden data (loaded with the course secret, kept in this
  process; only the INPUTS ever leave it, through ``/v1/assignments/{id}/inputs``, with the
  grader's target classes when an artifact is targeted — the notebook gets those too);
* :func:`check_upload` — an upload (one or several of the assignment's ``.npy`` artifacts) is
  read by the scorer's own safe loader (:func:`autograder.scoring.load_artifact`: header, dtype
  and exact shape checked before any data, never a pickle) from a private temporary folder,
  before it is queued. Threat-model violations are not refused here: they are graded (0 points
  on that artifact's terms, with the reason), as in a notebook run. The database keeps one blob
  per submission: the raw ``.npy`` when the upload is the assignment's first artifact alone (as
  every upload was before assignments had several artifacts), else an uncompressed zip of
  ``<artifact file>`` members (:func:`pack`, read back by :func:`unpack`);
* :class:`Grader` — a fixed number of threads per server process that take queued submissions
  from the database (:class:`maestro.server.db.Submissions`, safe across processes), score
  them and store the result; stopped cleanly, an unfinished submission goes back to the queue;
* :func:`student_view` — what a student may see of a result: before the deadline (or
  ``final``) only the public parts, their reasons and the public metrics — never a private
  part's reason, never labels, never per-example values (the scorer outputs none);
* :class:`Leaderboards` — :func:`autograder.leaderboard.rank` over the graded server
  submissions merged with the notebook grades of ``maestro autograde`` (``read_history``); for
  a :class:`BoardOnly` (``[submissions] boards``: an assignment graded by ``maestro autograde``
  alone) the course's own board (:func:`autograder.leaderboard.from_course`), which for the
  attack-vs-defense war is the tournament of every kept attack against every kept defense,
  played again when the autograder keeps new artifacts.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import hashlib
import io
import json
import logging
import math
import os
import socket
import tempfile
import threading
import zipfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .config import SubmissionsConfig
from .db import Submissions

log = logging.getLogger("maestro.server.submissions")
_HEADER_SLACK = 4096  # what a .npy header may add (autograder.scoring allows the same)
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed: the same arrays give the same blob, the same sha256


class ArtifactRejected(ValueError):
    """An upload that is not a valid artifact for the assignment; the message says why."""


def _grading_config(course, ident: str, listed: str):
    """``course``/source/``ident``/grading.toml, read and checked to be ``ident``'s (``listed``:
    where the server config names it, for the message)."""
    from autograder.config import load_config

    path = Path(course) / "source" / ident / "grading.toml"
    if not path.is_file():
        raise ValueError(f"{listed}: no {path} (a course made by `maestro course init` has "
                         "source/<assignment>/grading.toml)")
    config = load_config(path)
    if config.id != ident:
        raise ValueError(f"{path}: [assignment] id {config.id!r} is not {ident!r}")
    return config


class Assignment:
    """A served assignment: grading.toml, model, hidden data and course secret."""

    def __init__(self, course: Path, ident: str, home=None) -> None:
        import maestro
        from autograder.course import read_secret
        from autograder.scoring import HiddenData

        self.config = _grading_config(course, ident, f"[submissions] assignment {ident!r}")
        if getattr(self.config, "oracle", None) is not None:
            raise ValueError(f"[submissions] assignment {ident!r} is a black-box unit: its score needs "
                             "the oracle's query count of a graded notebook run, which an upload "
                             "cannot give; grade it with `maestro autograde`")
        if getattr(self.config, "kind", "attack") != "attack":
            raise ValueError(f"[submissions] assignment {ident!r} is a {self.config.kind} unit: the "
                             "server takes .npy uploads of attack units only; grade it with "
                             "`maestro autograde`")
        self.id = ident
        self.course = Path(course)
        self.secret = read_secret(course)
        self.hidden = HiddenData.load(self.config, self.secret)
        self.model = maestro.models.load(self.config.model, home=home)
        # targeted artifacts: the grader's target class of each input (None when there are none)
        self.hidden.with_targets(self.config, self.model, self.secret)
        self.specs = tuple(self.config.artifacts)
        self.spec = self.specs[0]  # the artifact a one-artifact upload ({"artifact": ...}) is
        self.shapes = {s.file: s.expected_shape(self.hidden.x.shape) for s in self.specs}
        self.shape = self.shapes[self.spec.file]
        self._inputs_b64: str | None = None
        self._targets_b64: str | None = None
        self._lock = threading.Lock()

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(s.file for s in self.specs)

    def spec_for(self, name: str):
        """The artifact called ``name`` (its file name or its key in grading.toml), or None."""
        return next((s for s in self.specs if name in (s.file, s.key)), None)

    def b64_limit(self, spec) -> int:
        """The longest base64 text an upload of ``spec`` may be: its .npy with room for 8 bytes
        per number, so that a float64 array gets the dtype message, not a size refusal."""
        n = int(np.prod(self.shapes[spec.file], dtype=np.int64))
        return 4 * math.ceil((8 * n + _HEADER_SLACK) / 3)

    @property
    def max_upload_bytes(self) -> int:
        """The largest request body an upload of this assignment may be: every artifact at its
        :meth:`b64_limit`, with room for the JSON around them."""
        return sum(self.b64_limit(s) + 256 for s in self.specs) + 1024

    def inputs_npy_b64(self) -> str:
        """The hidden inputs (never the labels) as base64 ``.npy``, in the scorer's row order."""
        with self._lock:
            if self._inputs_b64 is None:
                from . import arrays

                x = self.hidden.x.numpy().astype(self.spec.dtype)
                self._inputs_b64 = arrays.to_npy_b64(x)
            return self._inputs_b64

    def targets(self, fmt: str):
        """The target class of each input (int64, the inputs' row order) in wire format ``fmt``
        ("npy" or "json"), or None when no artifact is targeted. The notebook gets them too
        (``targets_path``): they are made from the model's readings, never from the labels."""
        if self.hidden.targets is None:
            return None
        from . import arrays

        t = self.hidden.targets.numpy().astype(np.int64)
        if fmt != "npy":
            return arrays.encode(t, "json")
        with self._lock:
            if self._targets_b64 is None:
                self._targets_b64 = arrays.to_npy_b64(t)
            return {"npy_b64": self._targets_b64}

    def _artifact_info(self, spec) -> dict:
        t = self.config.threat_for(spec)
        return {"file": spec.file, "key": spec.key, "dtype": spec.dtype, "shape": list(self.shapes[spec.file]),
                "threat": {"norm": t.norm, "eps": t.eps, "bounds": list(t.bounds), "atol": t.atol},
                "targeted": bool(spec.targeted)}

    def info(self, cfg: SubmissionsConfig) -> dict:
        t = self.config.threat
        share = self.config.split.public_weight
        several = ", ".join(f"\"{s.file}\": {{\"npy_b64\": ...}}" for s in self.specs)
        return {
            "id": self.id,
            "title": self.config.title or self.id,
            "model": self.config.model,
            "dataset": self.config.dataset,
            "threat": {"norm": t.norm, "eps": t.eps, "bounds": list(t.bounds), "atol": t.atol},
            "artifact": {"file": self.spec.file, "dtype": self.spec.dtype, "shape": list(self.shape),
                         "format": "{\"artifact\": {\"npy_b64\": <base64 of np.save(x_adv)>}}",
                         "row_order": "the rows of GET /v1/assignments/{id}/inputs, in that order"},
            "artifacts": [self._artifact_info(s) for s in self.specs],
            "artifacts_format": f"{{\"artifacts\": {{{several}}}}} (each optional: a missing one scores 0 "
                                "on its own terms; {\"artifact\": ...} alone is the first one)",
            "targeted": self.hidden.targets is not None,
            "max_upload_bytes": self.max_upload_bytes,
            "inputs": len(self.hidden.x),
            "max_score": self.config.max_score,
            "pass_score": self.config.pass_score,
            "public_points": round(self.config.max_score * share, 4),
            "private_points": round(self.config.max_score * (1 - share), 4),
            "max_per_day": cfg.max_per_day or None,
            "deadline": cfg.deadline.isoformat() if cfg.deadline else None,
            "final": cfg.is_final(),
        }


def load_assignments(cfg: SubmissionsConfig, course: Path, home=None) -> dict[str, Assignment]:
    return {a: Assignment(course, a, home) for a in cfg.assignments}


def _file_version(path: Path) -> tuple | None:
    """What changes when the file does (None: no file)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class BoardOnly:
    """A ``[submissions] boards`` assignment: shown on a live leaderboard, graded by ``maestro
    autograde`` alone (no uploads)."""

    def __init__(self, course: Path, ident: str, home=None) -> None:
        from autograder.course import read_secret

        self.config = _grading_config(course, ident, f"[submissions] boards: {ident!r}")
        self.id = ident
        self.course = Path(course)
        self.secret = read_secret(course)
        self.home = home
        self.war = self.config.kind == "war"
        self._prepared = None  # the war's hidden images and reference players, made once
        self._memo: dict = {}  # the war's players and played cells (see tournament_matrix)
        self._lock = threading.Lock()  # one computation of this board at a time (the memo's)

    def version(self) -> tuple:
        """Changes when the board may: the grade history, and for the war each kept player's
        folder (the autograder replaces a folder whole, by a rename)."""
        from autograder.driver import kept_artifacts
        from autograder.leaderboard import history_path

        out: tuple = (_file_version(history_path(self.course, self.id)),)
        if self.war:
            from autograder.units.war import kept_stamp

            root = kept_artifacts(self.course, self.id)
            try:
                names = sorted(os.listdir(root))
            except FileNotFoundError:
                names = []
            out += tuple((n, kept_stamp(root / n)) for n in names if not n.startswith("."))
        return out

    def has_players(self) -> bool:
        """The war: has the autograder kept anybody's artifacts yet?"""
        from autograder.driver import kept_artifacts

        try:
            return any(not e.name.startswith(".") for e in os.scandir(kept_artifacts(self.course, self.id)))
        except FileNotFoundError:
            return False

    def board(self, *, final: bool, pseudonyms: bool):
        from autograder import units
        from autograder.leaderboard import from_course

        with self._lock:
            if self.war and self._prepared is None:
                self._prepared = units.get("war").prepare(self.config, self.secret, home=self.home)
            return from_course(self.course, self.id, final=final, pseudonyms=pseudonyms, home=self.home,
                               prepared=self._prepared, memo=self._memo if self.war else None)

    def info(self) -> dict:
        return {"id": self.id, "title": self.config.title or self.id, "uploads": False,
                "leaderboard": f"/leaderboard/{self.id}",
                "graded_by": "maestro autograde (submit the notebook through nbgrader)"}


def load_boards(cfg: SubmissionsConfig, course: Path, home=None) -> dict[str, BoardOnly]:
    return {a: BoardOnly(course, a, home) for a in cfg.boards}


# -- uploads ----------------------------------------------------------------------------------
def uploads_of(assignment: Assignment, artifact=None, artifacts=None) -> dict[str, str]:
    """The request's arrays as {artifact file: base64 .npy}: ``artifact`` (base64) is the
    assignment's first artifact; ``artifacts`` maps file names or keys to base64. Exactly one of
    the two; at least one array; every name one of the assignment's artifacts, each given once."""
    expected = ", ".join(assignment.files)
    if (artifact is None) == (artifacts is None):
        raise ArtifactRejected(f"give either \"artifact\" (the first artifact, {assignment.spec.file}) or "
                               f"\"artifacts\" ({{file name: {{\"npy_b64\": ...}}}} for any of {expected})"
                               + (", not both" if artifact is not None else ""))
    if artifact is not None:
        return {assignment.spec.file: artifact}
    if not artifacts:
        raise ArtifactRejected(f"artifacts: give at least one of {expected}")
    out: dict[str, str] = {}
    for name, b64 in artifacts.items():
        spec = assignment.spec_for(name)
        if spec is None:
            raise ArtifactRejected(f"artifacts: {assignment.id} has no artifact {str(name)[:80]!r}; "
                                   f"expected any of {expected} (file names or their keys: "
                                   f"{', '.join(s.key for s in assignment.specs)})")
        if spec.file in out:
            raise ArtifactRejected(f"artifacts: {spec.file} is given twice (as its file name and its key)")
        out[spec.file] = b64
    return out


def _decode(assignment: Assignment, spec, npy_b64) -> bytes:
    """Base64 -> .npy bytes, validated by the scorer's loader (format, dtype, exact shape)."""
    from autograder.artifacts import ArtifactError
    from autograder.scoring import load_artifact

    shape = assignment.shapes[spec.file]
    if not isinstance(npy_b64, str) or not npy_b64:
        raise ArtifactRejected(f"{spec.file}: expected {{\"npy_b64\": <base64 of the .npy file>}}")
    if len(npy_b64) > assignment.b64_limit(spec):
        raise ArtifactRejected(f"{spec.file}: larger than an array of shape {tuple(shape)} and "
                               f"dtype {spec.dtype} needs")
    try:
        data = base64.b64decode(npy_b64, validate=True)
    except (binascii.Error, ValueError):
        raise ArtifactRejected(f"{spec.file}: npy_b64 is not valid base64") from None
    with tempfile.TemporaryDirectory(prefix="maestro-upload-") as tmp:  # 0700, removed after
        _write_private(Path(tmp), spec.file, data)
        try:
            load_artifact(Path(tmp) / spec.file, dtype=spec.dtype, shape=shape)
        except ArtifactError as err:
            raise ArtifactRejected(str(err)) from None  # it starts with the file name
    return data


def _write_private(folder: Path, name: str, data: bytes) -> None:
    fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def check_upload(assignment: Assignment, uploads: dict[str, str]) -> tuple[bytes, str]:
    """Validate every array of :func:`uploads_of` with the scorer's loader; returns the blob to
    store (see :func:`pack`) and its sha256."""
    files = {spec.file: _decode(assignment, spec, uploads[spec.file])
             for spec in assignment.specs if spec.file in uploads}
    blob = pack(assignment, files)
    return blob, hashlib.sha256(blob).hexdigest()


def pack(assignment: Assignment, files: dict[str, bytes]) -> bytes:
    """The stored blob of validated ``files`` (artifact file -> .npy bytes): the raw .npy when it
    is the first artifact alone, else an uncompressed zip with one member per file (fixed dates
    and order, so the same arrays give the same blob)."""
    if list(files) == [assignment.spec.file]:
        return files[assignment.spec.file]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name in assignment.files:
            if name in files:
                member = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
                member.external_attr = 0o600 << 16
                zf.writestr(member, files[name], compress_type=zipfile.ZIP_STORED)
    return buf.getvalue()


def unpack(assignment: Assignment, blob: bytes) -> dict[str, bytes]:
    """A stored blob back to {artifact file: .npy bytes}. Trusts nothing: only stored (not
    compressed) members named exactly as one of the assignment's artifact files, each once and
    no larger than that artifact may be; anything else is refused with ValueError."""
    if blob.startswith(_NPY_MAGIC):
        return {assignment.spec.file: blob}
    if not blob.startswith(_ZIP_MAGIC):
        raise ValueError("the stored upload is neither a .npy file nor a zip of .npy files")
    out: dict[str, bytes] = {}
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        for member in zf.infolist():
            name = member.filename
            spec = next((s for s in assignment.specs if s.file == name), None)
            if spec is None:
                raise ValueError(f"the stored upload holds {name[:80]!r}, not one of {', '.join(assignment.files)}")
            if name in out:
                raise ValueError(f"the stored upload holds {name} twice")
            if member.compress_type != zipfile.ZIP_STORED or member.file_size > 3 * assignment.b64_limit(spec) // 4:
                raise ValueError(f"the stored upload's {name} is compressed or larger than its artifact may be")
            out[name] = zf.read(member)
    if not out:
        raise ValueError("the stored upload holds no artifact")
    return out


# -- results ----------------------------------------------------------------------------------
def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return _finite(value.item())
    return value


def _numbers(metrics) -> dict:
    return {k: v for k, v in (metrics or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def result_dict(result) -> dict:
    """The whole ScoreResult as JSON-safe data (the instructor's view)."""
    return _finite({
        "score": float(result.score), "max_score": float(result.max_score), "passed": bool(result.passed),
        "parts": [{"name": p.name, "points": float(p.points), "max_points": float(p.max_points),
                   "reason": p.reason, "visibility": p.visibility} for p in result.parts],
        "metrics": dict(result.metrics), "public_metrics": dict(result.public_metrics),
        "private_metrics": dict(result.private_metrics), "problems": list(result.problems),
    })


def entry_for(config, student: str, result, submitted_at: str, sha256: str):
    """The leaderboard Entry of a graded upload (aggregates only, as the driver records them)."""
    from autograder.leaderboard import Entry

    return Entry.from_result(config, student, result, submitted_at=submitted_at, sha256=sha256)


def _iso(when) -> str | None:
    if when is None:
        return None
    return when.replace(tzinfo=_dt.UTC, microsecond=0).isoformat()


def student_view(row: dict, *, final: bool, instructor: bool, pseudonym: str | None = None) -> dict:
    """A submission as its owner (or an instructor) may see it; see the module docstring."""
    out = {"id": row["id"], "assignment": row["assignment"], "status": row["status"],
           "submitted_at": _iso(row["created"]), "graded_at": _iso(row.get("graded_at")),
           "sha256": row["sha256"], "final": final}
    if instructor:
        out["student"] = row["student"]
    if pseudonym:
        out["leaderboard_name"] = pseudonym
    if row["status"] == "failed":
        out["reason"] = row.get("reason") or "the grader failed"
    raw = row.get("result")
    if row["status"] != "graded" or not raw:
        return out
    result = json.loads(raw)
    if final or instructor:
        out.update(result)
        return out
    public = [p for p in result["parts"] if p["visibility"] == "public"]
    hidden = [p for p in result["parts"] if p["visibility"] != "public"]
    out.update({
        "score": round(sum(p["points"] for p in public), 4),
        "max_score": round(sum(p["max_points"] for p in public), 4),
        "parts": public,
        "public_metrics": result.get("public_metrics", {}),
        # a private-part problem names rows of the private part: not before the deadline
        "problems": [p for p in result.get("problems", []) if not p.startswith("private part")],
        "note": (f"the private part ({round(sum(p['max_points'] for p in hidden), 4):g} points) is "
                 "scored after the deadline" if hidden else ""),
    })
    return out


# -- the graders --------------------------------------------------------------------------------
class Grader:
    """``workers`` threads grading queued submissions of ``assignments`` (see the module
    docstring). ``poll_s``: how often an idle thread looks for submissions made through other
    server processes; ``stale_s``: a submission held that long by a grader that stopped
    answering (a killed process) goes back to the queue. ``refund(row)``: called for a
    submission the grader failed on (its own fault: the upload was checked), so that it does
    not count toward the student's uploads of the day."""

    def __init__(self, subs: Submissions, assignments: dict[str, Assignment], workers: int = 1,
                 *, poll_s: float = 2.0, stale_s: float = 600.0, refund=None) -> None:
        self.subs = subs
        self.refund = refund  # refund(row): give back the upload a grader failure cost its student
        self.assignments = assignments
        self.workers = workers
        self.poll_s = poll_s
        self.stale_s = stale_s
        host = socket.gethostname()[:60]
        self.worker_id = f"{host}:{os.getpid()}:{os.urandom(3).hex()}"
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._recover()
        for i in range(self.workers):
            t = threading.Thread(target=self._loop, name=f"maestro-grader-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 120.0) -> None:
        """Finish the submissions being graded (up to ``timeout``), then put back any left."""
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout)
        self._threads.clear()
        n = self.subs.requeue(worker=self.worker_id)
        if n:
            log.warning("grader stopped: %d submission(s) put back in the queue", n)

    def _recover(self) -> None:
        """Requeue submissions of graders that are gone: on this host, a process that no longer
        exists; anywhere, one that has held a submission for more than ``stale_s``."""
        host = socket.gethostname()[:60]
        dead = []
        for w in self.subs.graders():
            h, _, rest = w.partition(":")
            pid = rest.partition(":")[0]
            if h == host and pid.isdigit() and not _alive(int(pid)):
                dead.append(w)
        cutoff = _dt.datetime.now(_dt.UTC).replace(tzinfo=None) - _dt.timedelta(seconds=self.stale_s)
        n = self.subs.requeue(workers=dead, older_than=cutoff)
        if n:
            log.warning("%d submission(s) of a stopped grader put back in the queue", n)

    def _loop(self) -> None:
        idle = 0.0
        while not self._stop.is_set():
            try:
                job = self.subs.claim(self.worker_id, list(self.assignments))
            except Exception:  # e.g. the database is briefly unavailable: retry later
                log.exception("could not take a submission from the queue")
                job = None
            if job is None:
                if self._wake.wait(self.poll_s):
                    self._wake.clear()
                idle += self.poll_s
                if idle >= 60:
                    idle = 0.0
                    try:
                        self._recover()
                    except Exception:
                        log.exception("could not requeue stale submissions")
                continue
            self._grade(*job)

    def _grade(self, row: dict, data: bytes) -> None:
        from autograder.scoring import score_submission

        sid = row["id"]
        a = self.assignments[row["assignment"]]
        try:
            files = unpack(a, data)
            with tempfile.TemporaryDirectory(prefix="maestro-grade-") as tmp:  # 0700, removed after
                for name, content in files.items():
                    _write_private(Path(tmp), name, content)
                result = score_submission(a.config, {name: Path(tmp) / name for name in files},
                                          a.hidden, a.model,
                                          missing="was not uploaded (send it in \"artifacts\" with the others)")
            entry = entry_for(a.config, row["student"], result, _iso(row["created"]), row["sha256"])
            self.subs.finish(sid, self.worker_id, status="graded", score=float(result.score),
                             max_score=float(result.max_score),
                             result=json.dumps(result_dict(result), allow_nan=False),
                             entry=json.dumps(_finite(asdict(entry)), allow_nan=False))
        except Exception as err:  # the grader's fault, never the upload's (it was checked)
            log.exception("grading submission %s failed", sid)
            why = f"the grader failed: {type(err).__name__}: {str(err)[:300]}"
            if self.refund is not None:
                why += " (this upload does not count toward your uploads of the day)"
            if self.subs.finish(sid, self.worker_id, status="failed", reason=why) and self.refund:
                try:
                    self.refund(row)
                except Exception:  # e.g. the database is briefly unavailable
                    log.exception("could not give back the upload of submission %s", sid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- leaderboards ---------------------------------------------------------------------------------
class BoardNotReady(Exception):
    """The board's first computation is under way (a war's first tournament): ask again soon."""


class Leaderboards:
    """Boards per assignment, recomputed only when a grade arrives, the history file changes or
    (the war) the kept artifacts do. One computation per :class:`BoardOnly` board at a time: a
    request that meets one under way gets the board it replaces, or :class:`BoardNotReady` while
    there is none yet — a war's tournament can take a while, and viewers must not pile up in the
    server's threads behind it. :meth:`warm` plays the wars' first tournaments in the background."""

    def __init__(self, subs: Submissions, assignments: dict[str, Assignment],
                 boards: dict[str, BoardOnly] | None = None) -> None:
        self.subs = subs
        self.assignments = assignments
        self.boards = dict(boards or {})
        self._cache: dict[tuple, tuple[tuple, object]] = {}
        self._lock = threading.Lock()
        self._computing: dict[tuple, threading.Lock] = {}

    def board(self, ident: str, *, final: bool, pseudonyms: bool):
        """The :class:`autograder.leaderboard.Board` of ``ident``: the best graded upload or
        autograded notebook per student (a :class:`BoardOnly`: the course's own board)."""
        if ident in self.boards:
            b = self.boards[ident]
            key = (ident, final, pseudonyms)
            with self._lock:
                gate = self._computing.setdefault(key, threading.Lock())
                hit = self._cache.get(key)
            if not gate.acquire(blocking=False):
                if hit is None:
                    raise BoardNotReady(f"the {ident} leaderboard is being computed for the first time "
                                        "(the tournament of every kept attack against every kept defense); "
                                        "this takes a moment — try again in a few seconds")
                return hit[1]  # being played again right now: the last board meanwhile
            try:
                version = b.version()
                with self._lock:
                    hit = self._cache.get(key)
                if hit and hit[0] == version:
                    return hit[1]
                board = b.board(final=final, pseudonyms=pseudonyms)
                with self._lock:
                    self._cache[key] = (version, board)
                return board
            finally:
                gate.release()
        return self._upload_board(ident, final=final, pseudonyms=pseudonyms)

    def warm(self, *, final: bool, pseudonyms: bool) -> threading.Thread | None:
        """Compute the boards of the wars that have players in a thread (the server starts it),
        so the first viewers find them ready; None when there is none."""
        wars = [ident for ident, b in self.boards.items() if b.war and b.has_players()]
        if not wars:
            return None

        def work() -> None:
            for ident in wars:
                try:
                    self.board(ident, final=final, pseudonyms=pseudonyms)
                except BoardNotReady:
                    pass  # a request started it first
                except Exception:  # a broken course must not stop the server; the request says why
                    log.exception("computing the %s leaderboard failed", ident)

        # not a daemon: a server stopped meanwhile exits once it is done, rather than tearing
        # torch down under it (which aborts the process)
        thread = threading.Thread(target=work, name="maestro-boards", daemon=False)
        thread.start()
        return thread

    def _upload_board(self, ident: str, *, final: bool, pseudonyms: bool):
        from autograder.leaderboard import Entry, board_metrics, history_path, rank, read_history

        a = self.assignments[ident]
        version = (self.subs.version(ident), _file_version(history_path(a.course, ident)))
        key = (ident, final, pseudonyms)
        with self._lock:
            hit = self._cache.get(key)
            if hit and hit[0] == version:
                return hit[1]
        entries = [Entry.from_dict(json.loads(e)) for e in self.subs.entries(ident)]
        entries += read_history(a.course, ident)
        board = rank(entries, final=final, pseudonyms=a.secret if pseudonyms else None,
                     assignment=ident, title=a.config.title or ident)
        board.max_score = float(a.config.max_score)
        board.metrics = board_metrics(a.config)
        with self._lock:
            self._cache[key] = (version, board)
        return board

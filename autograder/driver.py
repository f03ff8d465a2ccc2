"""``maestro autograde``: grade every submission of an assignment in an nbgrader course folder.

For each ``submitted/<student>/<assignment>/<notebook>.ipynb`` (nbgrader's layout):

1. the hidden INPUTS (``HiddenData.load(config, course secret).x``) are written as ``.npy`` into
   a fresh work folder (with a targeted artifact, also the target classes,
   ``HiddenData.with_targets``); the labels never leave this process;
2. the notebook runs in the sandbox (:func:`autograder.run_notebook`) with the papermill
   parameters of its ``parameters`` cell: ``inputs_path``, ``labels_path = None``,
   ``output_dir``, ``eps`` (grading.toml [threat] eps; an artifact's own threat model adds its
   ``param``), ``targets_path`` (targeted artifacts only) and ``quick = False``. Test cells
   the grade does not need are not run (grading.toml ``[notebook] test_cells``, see
   :mod:`autograder.testcells`): the grade comes from the artifacts;
3. the artifacts are scored HERE, in the trusted driver (the model is loaded here, never in the
   sandbox), by :func:`autograder.scoring.score_submission`; a run that crashed, timed out,
   was killed or left no valid artifact scores 0 with the reason;
4. the driver writes ``autograded/<student>/<assignment>/results.json`` (Gradescope format,
   plus ``extra_data.maestro``: notebook sha256, run status, reason; never copied to feedback:
   the course's ``CourseDirectory.ignore`` lists it), the executed notebook beside it with its
   outputs removed (whole under ``.maestro/runs/``), ``feedback.html`` (public parts only)
   beside them — ``nbgrader generate_feedback`` copies it into feedback/ — the grade into
   nbgrader's gradebook (one transaction per submission; only the driver's thread touches the
   gradebook) and a line in ``.maestro/history/<assignment>.jsonl`` for the leaderboard.

Gradebook scale: nbgrader's total for an assignment is the sum of its graded cells' points (30
for 01-whitebox), while grading.toml scores out of ``max_score`` (100). The driver records the
Maestro score as the same FRACTION of every graded cell's points (``auto_score = points ·
score / max_score``), so the gradebook total is ``score · (cell points) / max_score`` and an
instructor can still override any cell with a manual grade in formgrader.

Resume: a submission whose results.json records the sha256 of the current notebook is skipped
unless ``force``. A submission the grader itself failed on (a sandbox that could not start, a
lost Dask worker, a scorer bug) gets nothing recorded — no 0 in the gradebook, no results.json —
so the next run grades it again. Runs go in parallel (``workers`` threads, each driving its own
sandboxed process tree); scoring and all writes happen in the calling thread.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import datetime as _dt
import hashlib
import html
import json
import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import GradingConfig, load_config
from .course import gradebook, load_settings, read_secret
from .leaderboard import Entry, append_history
from .oracle import OracleJob
from .sandbox import Limits, RunResult, probe_bwrap, run_notebook
from .testcells import NOTE as SKIP_NOTE
from .testcells import mark_skipped, plan_skips, unmark_skipped

__all__ = ["Outcome", "autograde", "feedback_html", "find_submissions"]


@dataclass
class Outcome:
    """What happened to one submission: ``state`` is "graded", "failed" (scored 0), "skipped"
    (unchanged since its results.json) or "error" (nothing recorded — the grader could not run
    or score it, or could not write the result: see ``reason``; the next run grades it again)."""

    student: str
    state: str
    score: float
    max_score: float
    reason: str = ""
    results: Path | None = None
    problems: tuple = ()      # what the scorer found (threat-model breaks, ...), for the summary
    passed: bool = True


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def find_submissions(course: Path, config: GradingConfig, student: str | None = None) -> dict[str, Path]:
    """student id -> the submitted notebook (nbgrader: submitted/<student>/<assignment>/<nb>)."""
    nb_name = config.notebook.file or f"{config.id}.ipynb"
    found = {}
    root = course / "submitted"
    if root.is_dir():
        for folder in sorted(root.iterdir()):
            if student is not None and folder.name != student:
                continue
            nb = folder / config.id / nb_name
            if folder.is_dir() and not folder.is_symlink() and nb.is_file() and not nb.is_symlink():
                found[folder.name] = nb
    return found


def _previous_sha(path: Path) -> str | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))["extra_data"]["maestro"]["notebook_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _finite(value):
    """JSON has no NaN/inf (Gradescope refuses them): None instead, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# -- scoring a run ---------------------------------------------------------------------------
def _failed_result(config: GradingConfig, reason: str):
    from .scoring import ScoreResult, _zero_parts

    w = config.split.public_weight
    parts = []
    for label, share in (("public", w), ("private", 1.0 - w)):
        if share > 0:
            parts += _zero_parts(config, share, label, label, reason)
    return ScoreResult(0.0, config.max_score, parts, {"valid": False}, {"valid": False},
                       {"valid": False}, passed=config.pass_score <= 0, problems=[reason])


def _score_run(config: GradingConfig, run: RunResult, hidden, model,
               queries: int | None = None):
    """(ScoreResult, failure reason or ""): score the artifact if the run left a valid one.
    Unit kinds (autograder.units): ``hidden`` is the kind's :class:`~autograder.units.Prepared`
    and ``model`` is None; its ``score`` gets every artifact the run left."""
    from .scoring import score_submission

    if _is_unit(config):
        from . import units

        if run.status not in ("ok", "error") or not run.artifacts:
            reason = f"notebook run {run.status}: {run.reason}".strip()
            if run.status == "ok" and run.artifact_errors:
                reason += "; " + "; ".join(f"{k}: {v}" for k, v in run.artifact_errors.items())
            return _failed_result(config, reason), reason
        result = units.get(config.kind).score(config, dict(run.artifacts), hidden, queries=queries)
        missing = [a.file for a in config.artifacts if a.file not in run.artifacts]
        if run.status == "error":
            result.problems.insert(0, f"the notebook stopped with an error after saving "
                                      f"{', '.join(sorted(run.artifacts))}: {run.reason}")
        elif missing and run.artifact_errors:
            result.problems += [f"{k}: {v}" for k, v in run.artifact_errors.items()]
        return result, ""
    got = {a.file: run.artifacts[a.file] for a in config.artifacts if a.file in run.artifacts}
    if run.status not in ("ok", "error") or not got:
        # crashed / timed out / killed, or no valid artifact: 0 points, the sandbox's reason
        reason = f"notebook run {run.status}: {run.reason}".strip()
        if run.status == "ok" and run.artifact_errors:
            reason += "; " + "; ".join(f"{k}: {v}" for k, v in run.artifact_errors.items())
        return _failed_result(config, reason), reason
    # "error": a cell failed AFTER an artifact was saved (e.g. the notebook's own success
    # check); the artifacts are what is graded, the error is reported
    result = score_submission(config, got, hidden, model, queries=queries)
    if run.status == "error":
        result.problems.insert(0, f"the notebook stopped with an error after saving "
                                  f"{', '.join(sorted(got))}: {run.reason}")
    elif run.artifact_errors:
        result.problems += [f"{k}: {v}" for k, v in run.artifact_errors.items()]
    return result, ""


def kept_artifacts(course: Path, assignment: str) -> Path:
    """Where units scored across submissions keep each student's latest artifacts."""
    return Path(course) / ".maestro" / "artifacts" / assignment


def _keep_artifacts(course: Path, assignment: str, who: str, artifacts: dict) -> None:
    """Replace the student's kept artifacts with this run's (already validated by the sandbox)."""
    root = kept_artifacts(course, assignment)
    dest = root / who
    fresh = root / f".{who}.new"
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir(parents=True)
    for name, path in artifacts.items():
        shutil.copyfile(path, fresh / name)
    shutil.rmtree(dest, ignore_errors=True)
    fresh.rename(dest)


def _is_unit(config: GradingConfig) -> bool:
    from . import units

    return units.is_unit_kind(config.kind)


def submitted_at(nb: Path) -> str:
    """When the student handed the notebook in: nbgrader's ``timestamp.txt`` beside the
    assignment folder's notebook if it parses, else the notebook's modification time (UTC)."""
    stamp = nb.parent / "timestamp.txt"
    try:
        from dateutil.parser import parse

        when = parse(stamp.read_text(encoding="utf-8").strip())
        if when.tzinfo is None:
            when = when.replace(tzinfo=_dt.timezone.utc)
    except (OSError, ValueError, OverflowError):
        when = _dt.datetime.fromtimestamp(nb.stat().st_mtime, _dt.timezone.utc)
    return when.astimezone(_dt.timezone.utc).replace(microsecond=0).isoformat()


def history_entry(config: GradingConfig, student: str, result, nb: Path, digest: str,
                  run: RunResult, status: str) -> Entry:
    """The leaderboard's record of one graded submission (aggregates only)."""
    return Entry.from_result(config, student, result, submitted_at=submitted_at(nb), sha256=digest,
                             duration_s=round(run.duration, 2), status=status)


def _keep_executed(course: Path, assignment: str, who: str, executed: Path, dest: Path,
                   not_run=()) -> None:
    """The executed notebook, twice: whole (outputs included) for the instructor under
    ``.maestro/runs/<assignment>/<student>.ipynb``, and with every output removed in
    ``autograded/`` — the copy ``nbgrader generate_feedback`` turns into the student's feedback.
    The outputs were made on the hidden inputs (a student's code could print them), so they
    never go back to students; what went wrong is in feedback.html. The test cells ``not_run``
    lose the grader's skip tag and, in both copies, say that they were not run."""
    import nbformat

    runs = course / ".maestro" / "runs" / assignment
    runs.mkdir(parents=True, exist_ok=True)
    try:
        nb = nbformat.read(executed, as_version=4)
    except Exception:  # a notebook the kernel left unreadable: the instructor gets the bytes
        shutil.copyfile(executed, runs / f"{who}.ipynb")
        return
    unmark_skipped(nb, not_run)
    _write_atomic(runs / f"{who}.ipynb", nbformat.writes(nb))
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if o.get("text") == SKIP_NOTE]
            cell.execution_count = None
    nb.metadata.pop("papermill", None)
    _write_atomic(dest, nbformat.writes(nb))


# -- feedback -------------------------------------------------------------------------------
def _pct(v) -> str:
    return f"{100 * v:.1f}%" if isinstance(v, (int, float)) and math.isfinite(v) else "n/a"


def _num(v) -> str:
    return f"{v:.3f}" if isinstance(v, (int, float)) and math.isfinite(v) else "n/a"


def feedback_html(config: GradingConfig, student: str, gradescope: dict, result, *,
                  status: str, reason: str, graded_at: str, not_run=()) -> str:
    """A small self-contained HTML page: score, the visible parts with their reasons and the
    public metrics. Only what results.json shows as visible: aggregate numbers, never hidden
    labels, predictions or images. Everything is HTML-escaped. ``not_run``: the test cells the
    grader left unrun (:mod:`autograder.testcells`)."""
    e = html.escape
    rows = []
    hidden_pts = 0.0
    for t in gradescope["tests"]:
        if t["visibility"] != "visible":
            hidden_pts += t["max_score"]
            continue
        rows.append(f"<tr><td>{e(t['name'])}</td><td>{round(t['score'], 2):g} / {t['max_score']:g}</td>"
                    f"<td>{e(t['output'])}</td></tr>")
    visible = sum(t["score"] for t in gradescope["tests"] if t["visibility"] == "visible")
    visible_max = sum(t["max_score"] for t in gradescope["tests"] if t["visibility"] == "visible")
    pub = result.public_metrics or {}
    metrics = ""
    if pub.get("valid"):
        metrics = ("<h2>Public part: metrics</h2><ul>"
                   f"<li>examples: {int(pub.get('n', 0))}</li>"
                   f"<li>clean accuracy of the model: {_pct(pub.get('clean_accuracy'))}</li>"
                   f"<li>attack success rate: {_pct(pub.get('success_rate'))}</li>"
                   f"<li>robust accuracy: {_pct(pub.get('robust_accuracy'))}</li>"
                   + (f"<li>oracle queries per example (the whole run): {pub['queries_per_example']:.1f}</li>"
                      if pub.get("queries_per_example") is not None else "")
                   + f"<li>median L∞ / L2 of successful examples: {_num(pub.get('median_linf'))} / "
                   f"{_num(pub.get('median_l2'))}</li></ul>")
    # private-part problems name rows of the private part: not before the deadline
    problems = "".join(f"<li>{e(p)}</li>" for p in result.problems if not p.startswith("private part"))
    problems = f"<h2>Problems</h2><ul>{problems}</ul>" if problems else ""
    later = (f"<p>The private part ({hidden_pts:g} points) is scored after the deadline.</p>"
             if hidden_pts else "")
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>{e(config.id)} — feedback for {e(student)}</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "td,th{border:1px solid #ccc;padding:.3em;vertical-align:top}table{border-collapse:collapse}"
        "</style></head><body>\n"
        f"<h1>{e(config.title or config.id)}</h1>\n"
        f"<p>Student: <b>{e(student)}</b> · graded {e(graded_at)} · run: {e(status)}</p>\n"
        f"<p>Score so far: <b>{round(visible, 2):g} / {visible_max:g}</b> (public part)</p>\n{later}\n"
        f"<pre>{e(gradescope['output'])}</pre>\n"
        + (f"<p>Run: {e(reason)}</p>\n" if reason else "")
        + (f"<p>Test cells the grader did not run (unchanged from the release, and no other "
           f"cell uses what they define; your grade comes from the files your notebook "
           f"saves): {e(', '.join(not_run))}</p>\n" if not_run else "")
        + "<table><tr><th>part</th><th>points</th><th>why</th></tr>\n" + "\n".join(rows)
        + "</table>\n" + problems + metrics + "\n</body></html>\n"
    )


# -- gradebook ------------------------------------------------------------------------------
def _record(gb, assignment: str, student: str, score: float, max_score: float, when) -> float:
    """Student (if new), submission (if new) and the grades, in ONE transaction; returns the
    gradebook total for the submission."""
    from nbgrader.api import (
        Comment,
        Grade,
        MissingEntry,
        Student,
        SubmittedAssignment,
        SubmittedNotebook,
    )

    db = gb.db
    try:
        try:
            st = gb.find_student(student)
        except MissingEntry:
            st = Student(id=student)
            db.add(st)
        try:
            sub = gb.find_submission(assignment, student)
            sub.timestamp = when
        except MissingEntry:
            target = gb.find_assignment(assignment)
            with db.no_autoflush:  # what Gradebook.add_submission mirrors, without its commit
                sub = SubmittedAssignment(assignment=target, student=st, timestamp=when)
                for notebook in target.notebooks:
                    nb = SubmittedNotebook(notebook=notebook, assignment=sub)
                    for cell in notebook.grade_cells:
                        Grade(cell_id=cell.id, notebook=nb)
                    for cell in notebook.solution_cells:
                        Comment(cell_id=cell.id, notebook=nb)
                    for cell in notebook.task_cells:
                        Comment(cell_id=cell.id, notebook=nb)
                        Grade(cell_id=cell.id, notebook=nb)
                db.add(sub)
        db.flush()
        frac = min(max(score / max_score, 0.0), 1.0) if max_score > 0 else 0.0
        total = 0.0
        for nb in sub.notebooks:
            for grade in nb.grades:
                pts = float(grade.cell.max_score or 0.0)
                grade.auto_score = round(pts * frac, 4)
                grade.manual_score = None
                grade.needs_manual_grade = False
                total += grade.auto_score
        db.commit()
        return total
    except BaseException:
        db.rollback()
        raise


def _graded_cells(gb, assignment: str) -> int:
    from nbgrader.api import MissingEntry

    try:
        a = gb.find_assignment(assignment)
    except MissingEntry:
        raise ValueError(f"the gradebook has no assignment {assignment!r}") from None
    return sum(len(nb.grade_cells) for nb in a.notebooks)


def _scratch_root(course: Path) -> Path:
    """``.maestro/tmp`` in the course: the grader's work folders (hidden inputs, sandbox work
    dirs). Folders left by a grader that was killed (its pid no longer runs) are removed."""
    root = course / ".maestro" / "tmp"
    root.mkdir(parents=True, exist_ok=True)
    for old in root.glob("run-*-*"):
        try:
            pid = int(old.name.split("-")[1])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(old, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            continue
    return root


# -- running the notebooks: local threads or Dask tasks -----------------------------------------
@dataclass(frozen=True)
class _Job:
    """What every run of one assignment shares (plain data: it travels to Dask workers)."""

    params: dict
    outputs: list
    limits: Limits
    sandbox: str  # "bwrap", "fallback" or "auto" (the worker decides)
    zoo: bool = True  # bind the model zoo (read-only) into the sandbox
    oracle: OracleJob | None = None  # black-box units: the model behind an oracle process
    gpu: bool = False  # give the sandbox the host's NVIDIA GPU(s)
    #: (papermill parameter, input file name): each parameter gets its file's path in the sandbox
    input_params: tuple = (("inputs_path", "inputs.npy"),)


#: where a Dask worker keeps the private oracle models (never inside the zoo a sandbox may see)
_WORKER_ORACLE_MODELS = Path.home() / ".cache" / "maestro-oracle-models"


def _run_in(workdir: Path, job: _Job, nb: Path, inputs: dict, zoo, session=None) -> RunResult:
    """One sandboxed run; ``session``: its token on the unit's oracle (black-box units), whose
    socket is bound into the sandbox (the same path inside) and whose URL and token become
    papermill parameters."""
    sandbox = job.sandbox
    if sandbox == "auto":
        sandbox = "bwrap" if probe_bwrap()[0] else "fallback"
    where = "/sandbox/inputs" if sandbox == "bwrap" else str(workdir / "inputs")
    params = {**job.params, **{name: f"{where}/{file}" for name, file in job.input_params}}
    if session is not None:
        params.update(session.parameters())
    return run_notebook(nb, workdir=workdir, parameters=params, inputs=inputs,
                        outputs=list(job.outputs), limits=job.limits, sandbox=sandbox,
                        maestro_home=zoo if job.zoo else None, gpu=job.gpu,
                        sockets=[session.socket_path] if session is not None else None)


def _tick(bar, failed: int, total: int) -> None:
    """One more submission done: the progress bar's counts (done, failed, left)."""
    bar.set_postfix(done=bar.n + 1 - failed, failed=failed, left=total - bar.n - 1)
    bar.update(1)


def _workdir(tmp: Path, who: str) -> Path:
    workdir = (tmp / f"run-{len(who)}-{hashlib.sha256(who.encode()).hexdigest()[:16]}").resolve()
    workdir.mkdir()
    return workdir


def _local_runs(workers: int, job: _Job, todo: dict, inputs: dict, tmp: Path, zoo, oracle=None):
    """Yield (student, RunResult | None, grader error, workdir, oracle queries | None) as the
    runs finish. ``oracle``: the unit's running oracle; each run gets a fresh token on it."""
    def one(who: str, nb: Path):
        workdir = _workdir(tmp, who)
        session = oracle.issue(who) if oracle is not None else None
        try:
            run = _run_in(workdir, job, nb, inputs, zoo, session)
            return run, "", workdir, session.queries() if session is not None else None
        except Exception as err:  # the grader's problem, not the student's: still recorded
            return None, f"{type(err).__name__}: {err}", workdir, None

    with cf.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(one, who, nb): who for who, (nb, _) in todo.items()}
        for fut in cf.as_completed(futures):
            yield (futures[fut], *fut.result())


def run_task(job: _Job, notebook: bytes, notebook_name: str, inputs: dict) -> dict:
    """One submission on a Dask worker: the notebook and the hidden inputs arrive as bytes, the
    run happens in the worker's own sandbox (its own model zoo, ``$MAESTRO_HOME``), and what comes
    back is data: status, reason and the validated artifacts' bytes (never the labels, which
    stay with the driver)."""
    with tempfile.TemporaryDirectory(prefix="maestro-task-") as tmp:
        tmp = Path(tmp)
        (tmp / "in").mkdir()
        nb = tmp / "in" / notebook_name
        nb.write_bytes(notebook)
        staged = {}
        for name, data in inputs.items():  # input file name -> bytes
            staged[name] = tmp / "in" / name
            staged[name].write_bytes(data)
        workdir = tmp / "run"
        workdir.mkdir()
        from maestro._home import maestro_home

        zoo = maestro_home() if job.zoo else None  # the worker's own zoo
        queries = None
        if job.oracle is not None:  # the worker's own oracle (its private build made once)
            with job.oracle.serve(_WORKER_ORACLE_MODELS, zoo=maestro_home()) as oracle:
                session = oracle.issue("dask-task")
                run = _run_in(workdir, job, nb, staged, zoo, session)
                queries = session.queries()
        else:
            run = _run_in(workdir, job, nb, staged, zoo)
        return {
            "queries": queries,
            "status": run.status, "reason": run.reason, "duration": run.duration,
            "sandbox": run.sandbox, "log_tail": run.log_tail, "stage": run.stage,
            "artifact_errors": dict(run.artifact_errors),
            "artifacts": {name: path.read_bytes() for name, path in run.artifacts.items()},
            "executed": run.executed_notebook.read_bytes() if run.executed_notebook else None,
        }


def _from_task(d: dict, workdir: Path) -> RunResult:
    """The RunResult of :func:`run_task`'s answer, its files written under ``workdir``."""
    from .artifacts import check_name

    (workdir / "artifacts").mkdir()
    artifacts = {}
    for name, data in d["artifacts"].items():
        check_name(name)
        artifacts[name] = workdir / "artifacts" / name
        artifacts[name].write_bytes(data)
    executed = None
    if d.get("executed") is not None:
        executed = workdir / "executed.ipynb"
        executed.write_bytes(d["executed"])
    return RunResult(d["status"], d["reason"], float(d["duration"]), artifacts,
                     dict(d["artifact_errors"]), executed, d.get("log_tail", ""), d["sandbox"],
                     d["stage"])


def _dask_runs(scheduler: str, job: _Job, todo: dict, inputs: dict, tmp: Path, assignment: str, log):
    """Like :func:`_local_runs`, with one Dask task per submission on the cluster at ``scheduler``."""
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise RuntimeError("--scheduler needs Dask: pip install distributed") from None
    try:
        client = Client(scheduler, timeout="20s")
    except OSError as err:
        raise RuntimeError(f"cannot reach the Dask scheduler at {scheduler}: {err}") from None
    with client:
        n = len(client.scheduler_info().get("workers", {}))
        log(f"maestro autograde: {len(todo)} submission(s) to the Dask scheduler at {scheduler} "
            f"({n} worker(s))")
        data = client.scatter({name: path.read_bytes() for name, path in inputs.items()}, broadcast=True)
        futures = {}
        for who, (nb, digest) in todo.items():
            fut = client.submit(run_task, job, nb.read_bytes(), nb.name, data, pure=False,
                                key=f"maestro-{assignment}-{digest[:12]}-{len(futures)}")
            futures[fut] = who
        for fut in as_completed(list(futures)):
            who = futures[fut]
            workdir = _workdir(tmp, who)
            try:
                answer = fut.result()
                yield who, _from_task(answer, workdir), "", workdir, answer.get("queries")
            except Exception as err:  # a worker that died, a lost connection, ...
                yield who, None, f"the Dask task failed: {type(err).__name__}: {err}", workdir, None
            finally:
                fut.release()


# -- the driver -------------------------------------------------------------------------------
def _write_inputs(folder: Path, hidden, unit, spec) -> tuple[dict, tuple]:
    """Write the files the sandbox may read; ({file name: path}, ((parameter, file name), ...))."""
    folder.mkdir()
    if unit is None:  # attack / defense: the hidden inputs (and a targeted unit's target classes)
        np.save(folder / "inputs.npy", hidden.x.numpy().astype(spec.dtype))
        files, params = {"inputs.npy": folder / "inputs.npy"}, [("inputs_path", "inputs.npy")]
        if hidden.targets is not None:
            np.save(folder / "targets.npy", hidden.targets.numpy().astype(np.int64))
            files["targets.npy"] = folder / "targets.npy"
            params.append(("targets_path", "targets.npy"))
        return files, tuple(params)
    paths = {}
    for name, content in hidden.inputs.items():
        paths[name] = folder / name
        if isinstance(content, bytes):
            paths[name].write_bytes(content)
        else:
            np.save(paths[name], np.asarray(content), allow_pickle=False)
    return paths, tuple(sorted(hidden.input_params().items()))


def _released(course: Path, assignment: str, name: str):
    """The notebook the students got (``release/<assignment>/<name>``), or None."""
    import nbformat

    try:
        return nbformat.read(course / "release" / assignment / name, as_version=4)
    except Exception:
        return None


def _prepare(nb: Path, released, folder: Path, log=None) -> tuple[Path, list[str]]:
    """(the notebook to run, the test cells tagged to be skipped in it): a copy of ``nb`` in
    ``folder`` when :func:`autograder.testcells.plan_skips` finds cells, else ``nb`` itself.

    An unreadable notebook runs as it is (the runner reports what is wrong with it). Should the
    analysis itself fail on a readable one, every test cell runs (grades are the same, the run
    slower) and ``log`` says why."""
    import nbformat

    try:
        node = nbformat.read(nb, as_version=4)
    except Exception:
        return nb, []
    try:
        ids = plan_skips(node, released)
    except Exception as err:
        if log is not None:
            log(f"maestro autograde: {nb}: the test-cell analysis failed ({type(err).__name__}: "
                f"{err}); all its test cells run")
        return nb, []
    if not ids:
        return nb, []
    mark_skipped(node, ids)
    folder.mkdir(parents=True)
    (folder / nb.name).write_text(nbformat.writes(node), encoding="utf-8")
    return folder / nb.name, ids


def autograde(course, assignment: str, *, student: str | None = None, workers: int | None = None,
              timeout: float | None = None, force: bool = False, progress: bool | None = None,
              scheduler: str | None = None, home=None, log=None,
              params: dict | None = None) -> list[Outcome]:
    """Grade the submissions of ``assignment`` in the course folder ``course``; see the module
    docstring. Returns one :class:`Outcome` per submission found (skipped ones included).

    ``params``: papermill parameters given to every notebook after the grader's own (``maestro
    demo --quick`` passes ``quick = True``); a course's grading leaves it out.

    ``scheduler``: the address of a Dask distributed scheduler (``tcp://host:port``); each
    submission then runs as one task on a Dask worker (see :func:`run_task`), and only this
    process scores and writes. Without it, ``workers`` threads run the sandboxes here."""
    import maestro
    from maestro._home import maestro_home
    from tqdm import tqdm

    from .scoring import HiddenData, to_gradescope

    log = log or (lambda msg: print(msg, file=sys.stderr))
    course = Path(course).expanduser().resolve()
    settings = load_settings(course)
    if settings.gpu and not scheduler:  # on Dask each worker's host decides
        from .sandbox import gpu_sandbox_nodes

        try:
            gpu_sandbox_nodes()
        except RuntimeError as e:
            raise ValueError(f"{course / 'maestro.toml'}: [grading] gpu = true, but {e}. To grade "
                             "on the CPU instead, set gpu = false") from None
    if not assignment or "/" in assignment or "\\" in assignment or assignment.startswith("."):
        raise ValueError(f"assignment {assignment!r}: give the name of a folder under source/")
    src = course / "source" / assignment
    config = load_config(src / "grading.toml")
    if config.id != assignment:
        raise ValueError(f"{src / 'grading.toml'}: id {config.id!r} is not {assignment!r}")
    workers = int(workers or settings.workers)
    if workers < 1:
        raise ValueError("--workers must be ≥ 1")
    wall = float(timeout or settings.timeout_s or config.notebook.timeout_s)
    limits = Limits(cpu_seconds=max(int(settings.cpu_seconds), int(wall) + 5),
                    memory_bytes=int(settings.memory_bytes), processes=int(settings.processes),
                    wall_seconds=wall)
    with gradebook(course) as gb:
        if _graded_cells(gb, assignment) == 0:  # also raises if the assignment is unknown
            raise ValueError(f"the gradebook has no graded cells for {assignment}: run "
                             f"`nbgrader generate_assignment {assignment}` in {course} first")

    subs = find_submissions(course, config, student)
    if student is not None and not subs:
        raise ValueError(f"no submission of {assignment} by {student!r} under {course / 'submitted'}")

    outcomes: dict[str, Outcome] = {}
    todo: dict[str, tuple[Path, str]] = {}
    for who, nb in subs.items():
        digest = sha256_file(nb)
        results = course / "autograded" / who / assignment / "results.json"
        if not force and _previous_sha(results) == digest:
            prev = json.loads(results.read_text(encoding="utf-8"))
            outcomes[who] = Outcome(who, "skipped", float(prev.get("score", 0.0)), config.max_score,
                                    "already graded (same notebook sha256); --force regrades", results)
        else:
            todo[who] = (nb, digest)
    if not todo:
        return [outcomes[w] for w in subs]

    sandbox = settings.sandbox
    if sandbox != "fallback" and not scheduler:
        works, why = probe_bwrap()
        if not works and sandbox == "bwrap":
            raise ValueError(f"{course / 'maestro.toml'}: [grading] sandbox = \"bwrap\", but {why}")
        sandbox = "bwrap" if works else "fallback"
        if not works:
            log(f"maestro autograde: WARNING: {why}; running WITHOUT the bubblewrap sandbox")
    elif sandbox == "fallback":
        log("maestro autograde: WARNING: sandbox = fallback (maestro.toml [grading] or "
            "$MAESTRO_SANDBOX): running WITHOUT the bubblewrap sandbox")
    zoo = maestro_home(home)
    oracle_job = None
    unit = None
    if _is_unit(config):  # the other kinds: the unit makes its inputs and keeps its hidden state
        from . import units

        unit = units.get(config.kind)
        hidden = unit.prepare(config, read_secret(course), home=home)
        model = None
    elif config.oracle is not None:  # black-box: no zoo in the sandbox, the model behind an oracle
        hidden = HiddenData.load(config, read_secret(course))
        t = config.threat
        oracle_job = OracleJob.for_unit(
            config.oracle, assignment=config.id, model=config.model, dataset=config.dataset,
            threat={"norm": t.norm, "eps": t.eps, "bounds": list(t.bounds)}, n_inputs=len(hidden.x),
            secret=read_secret(course))
        oracle_models = course / ".maestro" / "oracle-models"
        model = oracle_job.load_model(oracle_models, zoo=home)  # scored on the oracle's model
    else:
        hidden = HiddenData.load(config, read_secret(course))
        model = maestro.models.load(config.model, home=home)
    if unit is None:
        hidden.with_targets(config, model, read_secret(course))
    spec = config.artifact()
    params_base = {"labels_path": None, **config.notebook_params(), "quick": False}

    scratch = _scratch_root(course)
    with tempfile.TemporaryDirectory(prefix=f"run-{os.getpid()}-", dir=scratch) as tmp:
        tmp = Path(tmp)
        inputs, input_params = _write_inputs(tmp / "inputs", hidden, unit, spec)
        not_run: dict[str, list[str]] = {}
        to_run = todo
        if config.notebook.test_cells == "skip":
            released = _released(course, assignment, config.notebook.file or next(iter(todo.values()))[0].name)
            to_run = {}
            for who, (nb, digest) in todo.items():
                folder = tmp / "notebooks" / hashlib.sha256(who.encode()).hexdigest()
                path, not_run[who] = _prepare(nb, released, folder, log)
                to_run[who] = (path, digest)
        if unit is not None:
            params_base.update(hidden.plain_params())
        params_base.update(params or {})
        # on Dask each worker probes bubblewrap itself (its machine may differ from this one)
        job = _Job(params_base, [a.file for a in config.artifacts], limits,
                   settings.sandbox if scheduler else sandbox, zoo=oracle_job is None,
                   oracle=oracle_job, gpu=bool(settings.gpu), input_params=input_params)
        stack = contextlib.ExitStack()
        if scheduler:
            runs = _dask_runs(scheduler, job, to_run, inputs, tmp, assignment, log)
        else:
            oracle = (stack.enter_context(oracle_job.serve(oracle_models, zoo=home))
                      if oracle_job is not None else None)
            runs = _local_runs(workers, job, to_run, inputs, tmp, zoo, oracle)

        show = sys.stderr.isatty() if progress is None else progress
        bar = tqdm(total=len(todo), desc=f"autograde {assignment}", unit="nb", disable=not show)
        failed = 0
        with stack, gradebook(course) as gb:
            for who, run, error, workdir, queries in runs:
                nb, digest = todo[who]
                if run is None:
                    fault = f"the grader could not run the notebook: {error}"
                else:  # it failed before the submission's own code ran: not the student's doing
                    fault = run.grader_fault and f"the grader could not run the notebook: {run.grader_fault}"
                if not fault:
                    try:
                        result, why = _score_run(config, run, hidden, model, queries)
                    except Exception as err:  # a scorer bug must not stop the other submissions
                        fault = f"the grader failed while scoring: {type(err).__name__}: {err}"
                if fault:  # the grader's fault, not the student's: no 0 in the gradebook, no
                    # results.json (so the next `maestro autograde` grades it again, without --force)
                    outcomes[who] = Outcome(who, "error", 0.0, config.max_score,
                                            f"{fault} (nothing recorded: fix it and run maestro "
                                            "autograde again, which grades this submission again)")
                    log(f"maestro autograde: {who}: {fault}")
                    shutil.rmtree(workdir, ignore_errors=True)
                    failed += 1
                    _tick(bar, failed, len(todo))
                    continue
                now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
                status = run.status
                gs = to_gradescope(result)
                gs["extra_data"] = {"maestro": {
                    "assignment": assignment, "student": who, "notebook_sha256": digest,
                    "status": status, "reason": why or run.reason,
                    "duration_s": round(run.duration, 2),
                    "sandbox": run.sandbox, "graded_at": now.isoformat(),
                    "runner": f"dask {scheduler}" if scheduler else f"local, {workers} worker(s)",
                    "max_score": config.max_score, "passed": bool(result.passed),
                    "oracle_queries": queries,
                    "problems": list(result.problems),
                    "test_cells_not_run": not_run.get(who, []),
                }}
                try:
                    out = course / "autograded" / who / assignment
                    out.mkdir(parents=True, exist_ok=True)
                    nb_name = config.notebook.file or nb.name
                    if run.executed_notebook is not None:
                        _keep_executed(course, assignment, who, run.executed_notebook, out / nb_name,
                                       not_run.get(who, ()))
                    page = feedback_html(config, who, gs, result, status=status, reason=why,
                                         graded_at=now.isoformat(), not_run=not_run.get(who, ()))
                    # in autograded/ only: `nbgrader generate_feedback` copies the non-notebook files
                    # of autograded/ beside its own page into feedback/ (and skips a student whose
                    # feedback/ folder already exists unless --force, so nothing is written there)
                    _write_atomic(out / "feedback.html", page)
                    _record(gb, assignment, who, result.score, config.max_score, now.replace(tzinfo=None))
                    _write_atomic(out / "results.json", json.dumps(_finite(gs), indent=2, allow_nan=False) + "\n")
                    append_history(course, history_entry(config, who, result, nb, digest, run, status))
                    if unit is not None and unit.keep_artifacts and not why:
                        _keep_artifacts(course, assignment, who, run.artifacts)
                    state = "failed" if why else "graded"
                    outcomes[who] = Outcome(who, state, result.score, config.max_score, why,
                                            out / "results.json", tuple(result.problems),
                                            bool(result.passed))
                except Exception as err:  # e.g. a locked gradebook: report it, grade the others
                    state = "error"
                    outcomes[who] = Outcome(who, state, result.score, config.max_score,
                                            f"could not record the result: {type(err).__name__}: {err}")
                    log(f"maestro autograde: {who}: {outcomes[who].reason}")
                finally:
                    shutil.rmtree(workdir, ignore_errors=True)
                failed += state != "graded"
                _tick(bar, failed, len(todo))
        bar.close()
    return [outcomes[w] for w in subs]

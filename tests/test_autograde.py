"""``maestro course init`` + ``nbgrader generate_assignment`` + ``maestro autograde``, end to end:
a real course folder, the real bubblewrap sandbox and papermill, the real nbgrader gradebook and
the real lenet-mnist on the hidden set. Six submissions of 01-whitebox — the reference
solution, the stub nbgrader releases, the release solved (its unchanged test cells are not run),
the release solved with a final cell that reuses a test cell's result (that test cell runs), one
that kills its kernel, one whose x_adv breaks the threat model — are graded with two workers;
then resuming skips them and --force regrades."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import numpy as np
import pytest

from autograder.cli import add_commands
from autograder.course import gradebook, read_secret
from autograder.demo import _solutions
from autograder.sandbox import probe_bwrap

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
A = "01-whitebox"
NB = f"{A}.ipynb"


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="maestro")
    parser.add_argument("--home", default=None)
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    return args.func(args)


def _zoo_ready() -> bool:
    from maestro._home import maestro_home

    return (Path(maestro_home()) / "models" / "lenet-mnist").exists()


def _variant(src: Path, dest: Path, grade_id: str | dict, code: str = "") -> None:
    """``src`` with the cell ``grade_id`` replaced by ``code`` (or each cell of a
    {grade_id: code} dict), written to ``dest``."""
    nb = nbformat.read(src, as_version=4)
    for gid, text in (grade_id if isinstance(grade_id, dict) else {grade_id: code}).items():
        cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == gid)
        cell.source = text
    dest.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, dest)


#: one-step attacks in all three parts (FGSM, one L2 step, one targeted step): ~41-46 points, below pass
ONE_STEP = {
    "final_attack": "x_adv = fgsm(model, x, y, threat)",
    "final_l2": "x_adv_l2 = pgd_l2(model, x, y, threat_l2, steps=1, step_size=threat_l2.eps, random_start=False)",
    "final_targeted": "x_adv_targeted = pgd_targeted(model, x, target, threat, steps=1, step_size=threat.eps, "
                      "random_start=False)",
}
LINF_TERMS = ("attack success rate", "perturbation size")  # x_adv.npy's terms (the others: L2, targeted)


def _linf_tests(results: dict) -> list:
    return [t for t in results["tests"] if t["name"].split(": ", 1)[1] in LINF_TERMS]


def _results(course: Path, who: str) -> dict:
    return json.loads((course / "autograded" / who / A / "results.json").read_text())


def _gradebook(course: Path) -> dict:
    with gradebook(course) as gb:
        return {s.student_id: (s.score, s.max_score) for s in gb.assignment_submissions(A)}


def test_course_init_refuses_bad_input_and_never_prints_the_secret(tmp_path, capsys):
    with pytest.raises(ValueError, match="no assignments"):
        _cli("course", "init", str(tmp_path / "c"), "--assignments", str(tmp_path))
    assert _cli("course", "init", str(tmp_path / "c")) == 0
    printed = capsys.readouterr()
    assert read_secret(tmp_path / "c") not in printed.out + printed.err
    with pytest.raises(ValueError, match="generate_assignment"):  # no cells known yet
        _cli("autograde", A, "--course", str(tmp_path / "c"))
    with pytest.raises(ValueError, match="no assignment 'nope'|no such grading config"):
        _cli("autograde", "nope", "--course", str(tmp_path / "c"))
    with pytest.raises(ValueError, match="already holds a course"):
        _cli("course", "init", str(tmp_path / "c"))
    from autograder.sandbox import gpu_device_nodes

    if not gpu_device_nodes():  # gpu = true on a host without one: said before anything runs
        toml = tmp_path / "c" / "maestro.toml"
        assert "gpu = false" in toml.read_text()
        toml.write_text(toml.read_text().replace("gpu = false", "gpu = true"))
        with pytest.raises(ValueError, match=r"gpu = true, but this host has no NVIDIA GPU.*gpu = false"):
            _cli("autograde", A, "--course", str(tmp_path / "c"))


def test_feedback_escapes_html():
    from autograder.config import load_config
    from autograder.driver import _failed_result, feedback_html
    from autograder.scoring import to_gradescope

    cfg = load_config(ROOT / "assignments" / A / "grading.toml")
    result = _failed_result(cfg, "crashed: <script>alert(1)</script> & more")
    page = feedback_html(cfg, "<b>eve</b>", to_gradescope(result), result, status="crashed",
                         reason="<script>x</script>", graded_at="now")
    assert "<script>" not in page and "<b>eve</b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in page
    assert "0 / 50" in page and "scored after the deadline" in page


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    if not probe_bwrap()[0]:
        pytest.skip("bubblewrap cannot run here")
    if not _zoo_ready():
        pytest.skip("lenet-mnist is not built (maestro models build lenet-mnist)")
    course = tmp_path_factory.mktemp("course") / "maestro-test"
    assert _cli("course", "init", str(course), "--workers", "2") == 0
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run([str(BIN / "nbgrader"), "generate_assignment", A], cwd=course, env=env,
                          capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    source, released = course / "source" / A / NB, course / "release" / A / NB
    sub = course / "submitted"
    (sub / "ref" / A).mkdir(parents=True)
    shutil.copy(source, sub / "ref" / A / NB)
    (sub / "stub" / A).mkdir(parents=True)
    shutil.copy(released, sub / "stub" / A / NB)
    _variant(source, sub / "crash" / A / NB, "fgsm", "import os\nos._exit(3)")
    solved = _solutions(source)  # what real students send: the release, solution cells filled in
    _variant(released, sub / "solved" / A / NB, solved)
    _variant(released, sub / "reuser" / A / NB, {  # reuses the x_pgd of the test cell test_pgd
        **solved, "final_attack": "x_adv = x_pgd.clone()  # the PGD of the test above is good enough"})
    _variant(source, sub / "cheat" / A / NB, "final_attack",
             "x_adv = (x + 0.5).clamp(0, 1)  # far outside eps\n"
             "x_adv[0, 0, 0, 0] = float('nan')\n"
             "np.save(out / 'x_adv.npy', x_adv.numpy())  # saved before the save cell's check")
    assert _cli("autograde", A, "--course", str(course), "--timeout", "150") == 0  # workers: 2
    return course


@pytest.mark.slow
def test_course_folder_is_plain_nbgrader(course):
    assert sorted(p.name for p in (course / "release" / A).iterdir()) == [NB]  # no grading.toml
    assert (course / "source" / A / "grading.toml").is_file()
    secret = course / ".maestro" / "secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and len(read_secret(course)) >= 40
    assert "[grading]" in (course / "maestro.toml").read_text()


@pytest.mark.slow
def test_scores_and_reasons(course):
    ref = _results(course, "ref")
    assert ref["score"] >= 70  # grading.toml pass_score
    assert ref["extra_data"]["maestro"]["status"] == "ok"
    assert ref["extra_data"]["maestro"]["sandbox"] == "bwrap"
    assert ref["leaderboard"] and (course / "autograded" / "ref" / A / NB).is_file()
    stub, crash, cheat = (_results(course, w) for w in ("stub", "crash", "cheat"))
    for r in (stub, crash):
        assert r["score"] == 0.0 and all(t["score"] == 0.0 for t in r["tests"])
    # the cheat's x_adv breaks the threat model: its terms earn 0; its L2 and targeted files count
    assert all(t["score"] == 0.0 for t in _linf_tests(cheat)) and 0 < cheat["score"] <= 30
    assert "NotImplementedError" in stub["tests"][0]["output"]
    assert "not implemented yet" in stub["tests"][0]["output"]  # the first error, not a later one
    assert crash["extra_data"]["maestro"]["status"] == "crashed"
    assert "kernel" in crash["tests"][0]["output"].lower() or "crash" in crash["tests"][0]["output"]
    assert "threat model" in cheat["tests"][0]["output"]
    every = " ".join(t["output"] for t in cheat["tests"])  # row 0 (the NaN) is public or private
    assert "NaN" in every or "finite" in every
    page = (course / "autograded" / "cheat" / A / "feedback.html").read_text()
    assert "private part" not in page.split("<h2>Problems</h2>")[-1]  # private rows stay hidden


@pytest.mark.slow
def test_unchanged_test_cells_are_not_run_unless_something_uses_them(course):
    every = ["test_fgsm", "test_pgd", "test_pgd_l2", "test_pgd_targeted", "test_artifact"]
    not_run = {w: _results(course, w)["extra_data"]["maestro"]["test_cells_not_run"]
               for w in ("solved", "reuser", "stub", "ref")}
    assert not_run["solved"] == every and not_run["stub"] == every
    # the instructor's source: its test cells hold the hidden tests, except test_artifact's
    assert not_run["ref"] == ["test_artifact"]
    assert not_run["reuser"] == [c for c in every if c != "test_pgd"]  # its final cell reads x_pgd
    solved, reuser = _results(course, "solved"), _results(course, "reuser")
    assert solved["extra_data"]["maestro"]["status"] == "ok" and solved["score"] >= 90
    assert reuser["extra_data"]["maestro"]["status"] == "ok"
    assert all(t["score"] > 0 for t in _linf_tests(reuser))  # x_pgd existed: x_adv was saved
    # the kept copies say which cells did not run and carry no grader tag
    runs = nbformat.read(course / ".maestro" / "runs" / A / "reuser.ipynb", as_version=4)
    fed = nbformat.read(course / "autograded" / "reuser" / A / NB, as_version=4)
    for nb in (runs, fed):
        cells = {c.metadata.get("nbgrader", {}).get("grade_id"): c for c in nb.cells}
        assert all("maestro-skip" not in c.metadata.get("tags", []) for c in nb.cells)
        assert "did not run this test cell" in cells["test_fgsm"].outputs[0]["text"]
        assert not any("did not run" in o.get("text", "") for o in cells["test_pgd"].outputs)
    pgd_out = "".join(o.get("text", "") for o in
                      next(c for c in runs.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "test_pgd").outputs)
    assert "PGD-40" in pgd_out  # it ran, on the hidden inputs (the instructor's copy only)
    assert not any(c.get("outputs") and "PGD-40" in str(c.outputs) for c in fed.cells)
    page = (course / "autograded" / "solved" / A / "feedback.html").read_text()
    assert "did not run" in page and "test_pgd_targeted" in page


@pytest.mark.slow
def test_gradebook_holds_every_score(course):
    book = _gradebook(course)
    assert set(book) == {"ref", "stub", "crash", "cheat", "solved", "reuser"}
    ref = _results(course, "ref")["score"]
    total, max_score = book["ref"]
    assert max_score == 50  # the nbgrader points of the notebook's graded cells
    assert total == pytest.approx(ref / 100 * max_score, abs=1e-3)
    assert [book[w][0] for w in ("stub", "crash")] == [0.0, 0.0]
    assert book["cheat"][0] == pytest.approx(_results(course, "cheat")["score"] / 100 * max_score, abs=1e-3)


@pytest.mark.slow
def test_feedback_shows_no_hidden_data(course):
    from autograder.config import load_config
    from autograder.scoring import HiddenData

    hidden = HiddenData.load(load_config(course / "source" / A / "grading.toml"), read_secret(course))
    labels = hidden.y.numpy()
    secret = read_secret(course)
    for who in ("ref", "stub", "crash", "cheat"):
        page = (course / "autograded" / who / A / "feedback.html").read_text()
        results = (course / "autograded" / who / A / "results.json").read_text()
        assert "Score so far" in page
        for text in (page, results):
            assert secret not in text
            for sep in ("", " ", ", ", ","):
                assert sep.join(map(str, labels[:12])) not in text
    assert "30 / 30" in (course / "autograded" / "ref" / A / "feedback.html").read_text()  # public L∞ success
    assert isinstance(labels, np.ndarray)


@pytest.mark.slow
def test_resume_skips_and_force_regrades(course, capsys):
    before = {w: _results(course, w)["extra_data"]["maestro"]["graded_at"]
              for w in ("ref", "stub", "crash", "cheat")}
    from autograder.driver import autograde

    again = autograde(course, A, progress=False)
    assert [o.state for o in again] == ["skipped"] * 6
    assert {o.student: o.score for o in again}["ref"] == _results(course, "ref")["score"]
    assert _cli("autograde", A, "--course", str(course), "--student", "crash", "--force") == 0
    assert "crash" in capsys.readouterr().out
    after = {w: _results(course, w)["extra_data"]["maestro"]["graded_at"] for w in before}
    assert after["ref"] == before["ref"] and after["stub"] == before["stub"]
    assert _results(course, "crash")["extra_data"]["maestro"]["status"] == "crashed"
    assert len(_gradebook(course)) == 6  # the regrade updated the same submission row
    # a changed notebook is regraded without --force
    nb = course / "submitted" / "stub" / A / NB
    text = nb.read_text()
    assert "raise NotImplementedError(" in text  # the released stub
    nb.write_text(text.replace("raise NotImplementedError(", "raise RuntimeError(", 1))
    states = {o.student: o.state for o in autograde(course, A, progress=False)}
    assert states == {"cheat": "skipped", "crash": "skipped", "ref": "skipped", "stub": "failed",
                      "solved": "skipped", "reuser": "skipped"}


@pytest.mark.slow
def test_timeout_scores_zero_and_an_error_after_saving_still_counts(course):
    source = course / "source" / A / NB
    _variant(source, course / "submitted" / "slow" / A / NB, "fgsm", "import time\ntime.sleep(600)")
    # one-step attacks: the arrays are saved, then the notebook's own check (success > 90%) fails;
    # the student edited that test cell (a comment), so the grader runs it
    test_artifact = next(c.source for c in nbformat.read(source, as_version=4).cells
                         if c.metadata.get("nbgrader", {}).get("grade_id") == "test_artifact")
    _variant(source, course / "submitted" / "fgsm" / A / NB,
             {**ONE_STEP, "test_artifact": test_artifact + "\n# my notes: aim higher"})
    # monkeypatching maestro inside the kernel: its own checks pass, the grader's do not
    # (its L2 and targeted parts are one step each: with predict patched, the reference's restarts
    # would run on every image, too slow for this test's time limit on a busy machine)
    _variant(source, course / "submitted" / "patch" / A / NB, {
        **ONE_STEP,
        "final_attack": "maestro.ThreatModel.check = lambda self, *a, **k: None\n"
                        "model.predict = lambda inputs: torch.full((len(inputs),), -1)\n"
                        "x_adv = (x + 0.5).clamp(0, 1)"})
    outcomes = {}
    from autograder.driver import autograde

    for o in autograde(course, A, timeout=45, progress=False):  # the other four: unchanged
        outcomes[o.student] = o.state
    assert outcomes == {"cheat": "skipped", "crash": "skipped", "ref": "skipped", "stub": "skipped",
                        "solved": "skipped", "reuser": "skipped",
                        "slow": "failed", "fgsm": "graded", "patch": "graded"}
    patch = _results(course, "patch")
    # the patched ThreatModel.check let the notebook save an over-eps x_adv; the grader's did not
    assert patch["extra_data"]["maestro"]["status"] in ("ok", "error")
    assert all(t["score"] == 0.0 for t in _linf_tests(patch)) and "threat model" in patch["tests"][0]["output"]
    slow = _results(course, "slow")
    assert slow["score"] == 0.0 and slow["extra_data"]["maestro"]["status"] == "timeout"
    assert "45" in slow["tests"][0]["output"]
    fgsm = _results(course, "fgsm")
    assert 30 < fgsm["score"] < 60  # one-step attacks: ~41-46, below pass_score
    meta = fgsm["extra_data"]["maestro"]
    assert meta["status"] == "error" and not meta["passed"]
    assert ("stopped with an error after saving x_adv.npy, x_adv_l2.npy, x_adv_targeted.npy"
            in meta["problems"][0])
    book = _gradebook(course)
    assert book["slow"][0] == 0.0 and book["fgsm"][0] == pytest.approx(fgsm["score"] * 0.5, abs=1e-3)


@pytest.mark.slow
def test_dask_scheduler_runs_the_sandboxes_on_workers(course):
    distributed = pytest.importorskip("distributed")
    from autograder.driver import autograde

    before = _results(course, "ref")["score"]
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        out = autograde(course, A, student="ref", force=True, scheduler=cluster.scheduler_address,
                        progress=False)
    assert [(o.student, o.state) for o in out] == [("ref", "graded")]
    ref = _results(course, "ref")
    meta = ref["extra_data"]["maestro"]
    assert meta["runner"].startswith("dask tcp://") and meta["sandbox"] == "bwrap"
    assert ref["score"] >= 70 and abs(ref["score"] - before) < 5  # same notebook, same hidden set
    with pytest.raises(RuntimeError, match="cannot reach the Dask scheduler"):
        autograde(course, A, student="stub", force=True, scheduler="tcp://127.0.0.1:9", progress=False)


@pytest.mark.slow
def test_leaderboard_from_the_course(course, capsys):
    from autograder.leaderboard import read_history

    assert _cli("leaderboard", A, "--course", str(course)) == 0
    printed = capsys.readouterr().out
    folder = course / "leaderboard" / A
    rows = list(csv.DictReader((folder / "leaderboard.csv").open()))
    by_name = {r["name"]: r for r in rows}
    assert set(by_name) == {"ref", "stub", "crash", "cheat", "slow", "fgsm", "patch", "solved", "reuser"}
    # the three full solutions (the same attacks: ranks may tie), then FGSM-only
    assert {r["name"] for r in rows[:3]} == {"ref", "solved", "reuser"} and by_name["ref"]["rank"] == "1"
    assert rows[3]["name"] == "fgsm" and rows[3]["rank"] == "4"
    # cheat and patch: their x_adv breaks the threat model, their L2 and targeted files count
    assert {r["name"] for r in rows[4:6]} == {"cheat", "patch"}
    assert {r["rank"] for r in rows[6:]} == {"7"} and {float(r["score"]) for r in rows[6:]} == {0.0}
    assert by_name["stub"]["submissions"] == "2"  # the released stub, then its edited version
    assert by_name["crash"]["submissions"] == "1"  # --force on the same notebook: one submission
    assert float(by_name["ref"]["success_rate"]) > 0.9
    assert "  1. " in printed and "  4. fgsm" in printed
    page = (folder / "leaderboard.html").read_text()
    assert page.count("<tr>") == 10 and (folder / "leaderboard.png").read_bytes()[:4] == b"\x89PNG"
    history = read_history(course, A)
    assert {e.student for e in history} == set(by_name)
    # after the deadline, with pseudonyms: ranked on the private part, no student id shown
    assert _cli("leaderboard", A, "--course", str(course), "--final", "--pseudonyms") == 0
    final = (folder / "leaderboard-final.csv").read_text()
    names = [r["name"] for r in csv.DictReader(io.StringIO(final))]
    assert len(names) == 9 and not set(names) & set(by_name)
    assert "public_score" in final.splitlines()[0]


@pytest.mark.slow
def test_killed_autograde_resumes_and_the_gradebook_stays_consistent(course):
    from autograder.driver import autograde

    source = course / "source" / A / NB
    new = ["k1", "k2", "k3"]
    for i, who in enumerate(new):
        _variant(source, course / "submitted" / who / A / NB,
                 {**ONE_STEP, "final_attack": f"x_adv = fgsm(model, x, y, threat)  # variant {i}"})
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.Popen([str(BIN / "maestro"), "autograde", A, "--course", str(course), "--workers", "1"],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    done = []
    try:
        deadline = time.monotonic() + 240
        while not done and time.monotonic() < deadline and proc.poll() is None:
            done = [w for w in new if (course / "autograded" / w / A / "results.json").exists()]
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # like a lost terminal or an OOM kill
        proc.wait()
    assert len(done) == 1, "the grader should have been killed after its first new result"
    first = _results(course, done[0])["extra_data"]["maestro"]["graded_at"]
    states = {o.student: o.state for o in autograde(course, A, progress=False)}
    assert states[done[0]] == "skipped" and _results(course, done[0])["extra_data"]["maestro"]["graded_at"] == first
    assert all(states[w] == "graded" for w in new if w != done[0])
    book = _gradebook(course)
    for who in new:
        score = _results(course, who)["score"]
        assert 30 < score < 60 and book[who][0] == pytest.approx(score * 0.5, abs=1e-3)
    assert not list((course / "autograded").glob("*/*/.results.json.tmp"))
    # the killed grader's work folder (hidden inputs) was removed by the next run
    assert [p.name for p in (course / ".maestro" / "tmp").iterdir()] == []


@pytest.mark.slow
def test_a_grader_failure_records_nothing_and_the_next_run_grades_it(course, monkeypatch, tmp_path):
    """The grader's own failure (here: prlimit, which sets the sandbox's limits, is not on its
    PATH) is no 0 for the student: nothing is written, the run says so, and the next run (the
    grader fixed) grades the submission without --force."""
    from autograder.driver import autograde

    shutil.copy(course / "release" / A / NB, (course / "submitted" / "late" / A).mkdir(parents=True)
                or course / "submitted" / "late" / A / NB)
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no prlimit, no bwrap
    broken = {o.student: o for o in autograde(course, A, student="late", progress=False,
                                              log=lambda msg: None)}
    assert broken["late"].state == "error"
    assert "prlimit" in broken["late"].reason and "nothing recorded" in broken["late"].reason
    assert not (course / "autograded" / "late").exists() and "late" not in _gradebook(course)
    monkeypatch.undo()
    fixed = {o.student: o for o in autograde(course, A, student="late", progress=False)}
    assert fixed["late"].state == "failed" and "not implemented" in fixed["late"].reason.lower()
    assert _gradebook(course)["late"][0] == 0.0 and _results(course, "late")["score"] == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("breakage", ["kernel-exits", "socket-path-too-long"])
def test_a_kernel_that_cannot_start_records_nothing(course, monkeypatch, tmp_path, capsys, breakage):
    """Kernel start-up broken on purpose — a kernel that exits at once, or (what a course a few
    folders deep met) the fallback's kernel sockets on a path over 107 bytes: none of the
    submission ran, so nothing is recorded anywhere (gradebook, results.json, history, the
    leaderboard), the command exits 1 saying why, and the next run grades it."""
    import autograder.sandbox
    from autograder.leaderboard import from_course, read_history

    who = f"unlucky{len(breakage)}"
    shutil.copy(course / "release" / A / NB, (course / "submitted" / who / A).mkdir(parents=True)
                or course / "submitted" / who / A / NB)
    if breakage == "kernel-exits":
        script = tmp_path / "kernel.py"
        script.write_text("import sys\nsys.exit('this kernel cannot start')\n")
        monkeypatch.setattr(autograder.sandbox, "_KERNEL", script)
    else:
        monkeypatch.setenv("MAESTRO_SANDBOX", "fallback")
        deep = tmp_path.joinpath(*[f"folder-{i}-of-a-course-kept-deep-below-the-root" for i in range(4)])
        deep.mkdir(parents=True)
        monkeypatch.setattr(autograder.sandbox, "_short_private_dir", lambda: deep)
    capsys.readouterr()
    assert _cli("autograde", A, "--course", str(course), "--student", who) == 1
    said = capsys.readouterr()
    assert "NOT RECORDED" in said.out + said.err and "kernel did not start" in said.out + said.err
    assert not (course / "autograded" / who).exists() and who not in _gradebook(course)
    assert who not in {e.student for e in read_history(course, A)}
    assert who not in {row.entry.student for row in from_course(course, A).rows}
    monkeypatch.undo()
    assert _cli("autograde", A, "--course", str(course), "--student", who) == 0
    assert _gradebook(course)[who][0] == 0.0 and _results(course, who)["score"] == 0.0

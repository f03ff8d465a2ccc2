"""`maestro demo` end to end as a real process: a course, seven simulated students through
nbgrader's exchange, sandboxed autograding, nbgrader's feedback and the leaderboard; and the
zoo demo (`--zoo`) that attacks every zoo model."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from autograder.sandbox import probe_bwrap
from autograder.testcells import NOTE

A = "01-whitebox"
ROOT = Path(__file__).resolve().parents[1]


#: a course folder as deep as an instructor's may be: its kernels' sockets must not live in it
DEEP = "/".join(f"teaching-{i}-adversarial-machine-learning-course-folder" for i in range(3))

STUDENTS = ("ada", "ben", "cy", "dan", "eve", "fay", "gus")
#: who hands in, per sandbox. With bubblewrap: all seven. The fallback run leaves out fay (the
#: endless loop), who only waits out the 45 s wall-clock limit while burning a core: the
#: fallback's wall-clock limit and its reason are tested in tests/test_sandbox.py
#: (test_infinite_loop_times_out[fallback], test_fallback_enforces_the_wall_clock_and_process_limits).
#: Every other outcome (full, pass, below, the stub's error, a crash, the threat model) and the
#: whole course (exchange, feedback, leaderboard) still runs in both sandboxes.
HANDING_IN = {"bwrap": STUDENTS, "fallback": tuple(s for s in STUDENTS if s != "fay")}


@pytest.fixture(scope="module", params=["bwrap", "fallback"])
def demo(request, tmp_path_factory):
    """`maestro demo --quick` from a deep folder, once in each sandbox: with bubblewrap (all seven
    students), and with the fallback forced ($MAESTRO_SANDBOX), the path of every machine
    without it (all but fay: see HANDING_IN)."""
    sandbox = request.param
    if sandbox == "bwrap" and not probe_bwrap()[0]:
        pytest.skip(f"bubblewrap cannot start: {probe_bwrap()[1]} (make test installs it as root; "
                    "tests/test_sandbox.py fails in CI without it)")
    where = tmp_path_factory.mktemp(f"demo-{sandbox}") / DEEP
    where.mkdir(parents=True)
    env = {**os.environ, "MAESTRO_SANDBOX": sandbox}
    who = ",".join(HANDING_IN[sandbox])
    out = subprocess.run([sys.executable, "-m", "maestro.cli", "demo", "--quick", "--students", who], cwd=where,
                         capture_output=True, text=True, timeout=600, check=False, env=env)
    course = where / "maestro-demo-course"
    assert len(str(course / ".maestro" / "tmp")) > 200
    return course, out, sandbox


@pytest.mark.slow
def test_demo_grades_every_kind_of_submission_as_expected(demo):
    course, out, sandbox = demo
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "every outcome as expected" in out.stdout
    results = json.loads((course / "autograded" / "ada" / A / "results.json").read_text())
    assert results["extra_data"]["maestro"]["sandbox"] == sandbox
    students = HANDING_IN[sandbox]
    for who in students:
        assert re.search(rf"^{who}\s+\w+\s+[\d.]+\s+ok ", out.stdout, re.M), who
    graded = re.findall(r"^(\w+)\s+(?:full|pass|below|zero)\s+[\d.]+\s+", out.stdout, re.M)
    assert graded == list(students), graded
    rows = list(csv.DictReader((course / "leaderboard" / A / "leaderboard.csv").open()))
    assert [r["name"] for r in rows[:3]] == ["ada", "cy", "ben"] and len(rows) == len(students)
    assert (course / "leaderboard" / A / "leaderboard.png").stat().st_size > 5000
    # nbgrader's own submit/collect happened: timestamps and the exchange
    assert (course / "submitted" / "ada" / A / "timestamp.txt").is_file()
    assert list((course / "exchange").rglob("inbound/*"))


@pytest.mark.slow
def test_feedback_from_nbgrader_and_maestro_leaks_nothing_hidden(demo):
    from autograder.config import load_config
    from autograder.course import read_secret
    from autograder.scoring import HiddenData

    course, out, sandbox = demo
    assert out.returncode == 0
    hidden = HiddenData.load(load_config(course / "source" / A / "grading.toml"), read_secret(course))
    labels = "".join(map(str, hidden.y.numpy()[:16]))
    pixels = [f"{v:.6f}" for v in hidden.x.flatten().numpy()[300:340] if 0 < v < 1][:3]
    source = nbformat.read(course / "source" / A / f"{A}.ipynb", as_version=4)
    hidden_code = [ln.strip() for c in source.cells if "BEGIN HIDDEN TESTS" in c.source
                   for ln in c.source.split("### BEGIN HIDDEN TESTS")[1].split("### END HIDDEN TESTS")[0].splitlines()
                   if len(ln.strip()) > 12]
    assert hidden_code, "01-whitebox has hidden tests"
    for who in HANDING_IN[sandbox]:
        folder = course / "feedback" / who / A
        names = sorted(p.name for p in folder.iterdir())
        assert names == [f"{A}.html", "feedback.html"], names  # results.json is never copied here
        for page in folder.iterdir():
            text = page.read_text()
            assert labels not in text.replace(" ", "").replace(",", "")
            assert read_secret(course) not in text
            for line in hidden_code:
                assert line not in text, (who, page.name, line)
            for px in pixels:
                assert px not in text
        nb = nbformat.read(course / "autograded" / who / A / f"{A}.ipynb", as_version=4)
        # no output of the run; the test cells the grader skipped say so
        assert all(o.get("text") == NOTE for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
        assert (course / ".maestro" / "runs" / A / f"{who}.ipynb").is_file()  # the instructor's copy
    ada = (course / "feedback" / "ada" / A / "feedback.html").read_text()
    assert "30 / 30" in ada and "scored after the deadline" in ada  # public L∞ success
    results = json.loads((course / "autograded" / "gus" / A / "results.json").read_text())
    assert "threat model" in results["tests"][0]["output"]


@pytest.mark.slow
def test_zoo_demo_attacks_every_zoo_model():
    out = subprocess.run([sys.executable, "-m", "maestro.cli", "demo", "--zoo", "--quick"],
                         capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    for name in ("mlp-digits", "cnn-digits", "lenet-mnist", "lstm-tweets", "minilm-tweets"):
        row = next(ln for ln in out.stdout.splitlines() if ln.startswith(name + " "))
        clean, attacked = (float(p) for p in re.findall(r"([\d.]+)%", row))
        assert clean > 80 and attacked < clean - 20, row


def test_demo_refuses_a_folder_that_is_not_a_demo_course(tmp_path):
    (tmp_path / "keep.txt").write_text("precious")
    out = subprocess.run([sys.executable, "-m", "maestro.cli", "demo", "--dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode != 0 and "not a demo course" in out.stderr + out.stdout
    assert (tmp_path / "keep.txt").read_text() == "precious"


def test_demo_refuses_unknown_students_before_touching_anything(tmp_path):
    out = subprocess.run([sys.executable, "-m", "maestro.cli", "demo", "--students", "ada,zed"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode != 0 and "--students: zed; the students of 01-whitebox are ada, ben" in out.stderr + out.stdout
    out = subprocess.run([sys.executable, "-m", "maestro.cli", "demo", "--llm", "--students", "ada"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode != 0 and "the students of 11-llm-suffix are ida, jon, kai, lea" in out.stderr + out.stdout
    assert list(tmp_path.iterdir()) == []

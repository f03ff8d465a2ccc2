"""Assignment 03 (decision-based, label-only black-box attack through an oracle): the source
notebook runs with its solutions against a real oracle process (the grader's kind, on a UNIX
socket, ``labels`` access) and passes its own tests, every query counted by the oracle; the
version nbgrader releases to students has no solutions or hidden tests and stops at the first
stub, in practice mode (a local oracle)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import nbformat
import numpy as np
import pytest

from _notebooks import by_grade_id, cell_errors, execute, printed_text, release

from autograder.config import load_config
from autograder.oracle import oracle_spec, serve_oracle

ROOT = Path(__file__).resolve().parents[1]
A = "03-blackbox-labels"
ASSIGNMENT = ROOT / "assignments" / A
NOTEBOOK = ASSIGNMENT / f"{A}.ipynb"
GRADING = ASSIGNMENT / "grading.toml"
BIN = Path(sys.executable).parent
EPS = 4.0










def test_source_notebook_is_valid_nbgrader_format():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    cells = by_grade_id(nb)
    params = cells["parameters"]
    assert "parameters" in params.metadata.get("tags", [])
    for name in ("inputs_path", "labels_path", "output_dir", "eps", "quick", "oracle_url",
                 "oracle_token", "oracle_task"):
        assert re.search(rf"^{name} = ", params.source, re.M), f"parameter {name} missing"
    tests = {k: c for k, c in cells.items() if c.metadata.get("nbgrader", {}).get("grade")}
    assert set(tests) == {"test_boundary_search", "test_nearest_other", "test_artifact"}
    for c in tests.values():
        meta = c.metadata["nbgrader"]
        assert meta["locked"] and not meta["solution"] and meta["points"] > 0
    for key in ("boundary_search", "nearest_other", "final_attack"):
        assert cells[key].metadata["nbgrader"]["solution"]
        assert "### BEGIN SOLUTION" in cells[key].source and "### END SOLUTION" in cells[key].source
    assert all("### BEGIN HIDDEN TESTS" in cells[k].source
               for k in ("test_boundary_search", "test_nearest_other"))
    ids = [c.metadata["nbgrader"]["grade_id"] for c in nb.cells if "nbgrader" in c.metadata]
    assert len(ids) == len(set(ids))
    # the only model the notebook touches is the oracle, and only through labels
    source = "".join(c.source for c in nb.cells)
    assert "maestro.remote.connect(oracle_url, oracle_token, oracle_task)" in cells["setup"].source
    assert "models.load" not in source
    assert ".logits(" not in source and ".predict_proba(" not in source


def test_grading_config_matches_the_notebook():
    raw = tomllib.loads(GRADING.read_text(encoding="utf-8"))
    spec = oracle_spec(GRADING)
    assert spec is not None and spec.access == "labels" and spec.private_model
    assert spec.queries_per_example == 1000 and spec.budget(500) == 500_000
    assert raw["threat"]["norm"] == "l2" and raw["threat"]["eps"] == EPS
    params = by_grade_id(nbformat.read(NOTEBOOK, as_version=4))["parameters"].source
    assert f"eps = {raw['threat']['eps']}" in params
    assert f'oracle_task = "{raw["assignment"]["id"]}"' in params
    terms = {t["metric"]: t for t in raw["score"]["terms"]}
    assert set(terms) == {"success_rate", "queries_per_example", "median_l2"}
    assert terms["queries_per_example"]["zero_at"] == spec.queries_per_example  # all the budget: 0
    assert terms["median_l2"]["zero_at"] == EPS  # a perturbation as large as allowed: 0
    assert sum(t["points"] for t in terms.values()) == raw["assignment"]["max_score"]


def test_grading_config_loads():
    cfg = load_config(GRADING)
    assert cfg.id == A and cfg.model == "lenet-mnist" and cfg.oracle.access == "labels"


@pytest.mark.slow
def test_source_notebook_passes_its_tests_against_a_real_oracle(tmp_path):
    n = 64  # quick=True attacks the first 64 dev images
    with serve_oracle("lenet-mnist", task=A, dataset="mnist", access="labels", budget=1000 * n,
                      threat={"norm": "l2", "eps": EPS, "query_budget": 1000}) as oracle:
        session = oracle.issue("reference")
        nb, error = execute(NOTEBOOK, tmp_path, quick=True, **session.parameters())
        counted = session.queries()
    assert error is None, f"{error.ename}: {error.evalue}"
    assert cell_errors(nb) == []
    cells = by_grade_id(nb)
    for key in ("test_boundary_search", "test_nearest_other", "test_artifact"):
        assert cells[key].execution_count is not None
    x_adv = np.load(tmp_path / "output" / "x_adv.npy", allow_pickle=False)
    inputs = np.load(tmp_path / "output" / "dev-data" / "inputs.npy", allow_pickle=False)
    assert x_adv.dtype == np.float32 and x_adv.shape == (n, *inputs.shape[1:])
    l2 = np.sqrt(((x_adv - inputs[:n]).reshape(n, -1).astype(np.float64) ** 2).sum(1))
    assert l2.max() <= EPS + 1e-4 and x_adv.min() >= 0 and x_adv.max() <= 1
    printed = printed_text(nb)
    # what the notebook saw as spent before its last check is what the oracle counted, minus
    # that check (one query per image)
    spent = int(re.search(r"the oracle has counted (\d+) queries so far", printed).group(1))
    assert counted == spent + n
    assert 10 * n < counted <= 1000 * n
    success = float(re.search(r"read correctly: ([\d.]+)%", printed).group(1))
    assert success > 50


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """``nbgrader generate_assignment`` in a throw-away course folder."""
    return release(NOTEBOOK, A, tmp_path_factory.mktemp("course"))


@pytest.mark.slow
def test_release_strips_solutions_and_hidden_tests(released):
    text = released.read_text()
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "torch.where(misread",
                   "torch.cdist(flat", "HopSkipJump(threat, max_queries=per", "_x8", "steps=0"):
        assert marker not in text, marker
    cells = by_grade_id(nbformat.read(released, as_version=4))
    for key in ("boundary_search", "nearest_other", "final_attack"):
        assert "raise NotImplementedError" in cells[key].source
    assert "def boundary_search(oracle, x, x_start, y, steps=10):" in cells["boundary_search"].source
    assert "def nearest_other(x, y):" in cells["nearest_other"].source  # the signatures stay
    assert "the returned points must be misread" in cells["test_boundary_search"].source
    assert json.loads(released.read_text())["cells"][2]["metadata"]["tags"] == ["parameters"]


@pytest.mark.slow
def test_released_notebook_stops_at_the_stub_in_practice_mode(released, tmp_path):
    nb, error = execute(released, tmp_path, quick=True)  # oracle_url=None: a practice oracle
    assert error is not None and error.ename == "NotImplementedError"
    # the visible tests report the missing functions and execution goes on (raises-exception
    # tag), then the empty final attack stops the run before anything is saved
    assert cell_errors(nb) == [("test_boundary_search", "NotImplementedError"),
                           ("test_nearest_other", "NotImplementedError"),
                           ("final_attack", "NotImplementedError")]
    assert "RemoteModel(03-blackbox-labels at http://127.0.0.1:" in printed_text(nb)
    assert by_grade_id(nb)["save"].execution_count is None
    assert not (tmp_path / "output" / "x_adv.npy").exists()


@pytest.mark.slow
def test_autograde_scores_the_reference_above_pass_and_the_stub_zero(tmp_path):
    """The real grading path: a course with this unit, its private oracle process, the sandbox
    without the zoo, scoring on hidden data with the oracle's query count."""
    from autograder.course import init_course
    from autograder.driver import autograde
    from autograder.sandbox import probe_bwrap

    if not probe_bwrap()[0]:
        pytest.skip("bubblewrap cannot run here")
    units = tmp_path / "units" / A
    units.mkdir(parents=True)
    shutil.copy(NOTEBOOK, units / NOTEBOOK.name)
    shutil.copy(GRADING, units / "grading.toml")
    course = tmp_path / "course"
    init_course(course, tmp_path / "units")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run([str(BIN / "nbgrader"), "generate_assignment", A], cwd=course, env=env,
                          capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for who, src in (("ref", course / "source" / A / NOTEBOOK.name),
                     ("stub", course / "release" / A / NOTEBOOK.name)):
        (course / "submitted" / who / A).mkdir(parents=True)
        shutil.copy(src, course / "submitted" / who / A / NOTEBOOK.name)
    outcomes = {o.student: o for o in autograde(course, A, workers=2, progress=False)}
    cfg = load_config(units / "grading.toml")
    ref, stub = outcomes["ref"], outcomes["stub"]
    assert ref.state == "graded" and ref.passed and ref.score >= cfg.pass_score, ref
    assert stub.score == 0 and not stub.passed and "not implemented yet" in stub.reason
    results = json.loads((course / "autograded" / "ref" / A / "results.json").read_text())
    queries = results["extra_data"]["maestro"]["oracle_queries"]
    assert 500 < queries <= 1000 * 500  # the hidden set: 500 images, the whole budget at most

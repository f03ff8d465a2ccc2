"""Assignment 02 (score-based black-box attack through an oracle): the source notebook runs with
its solutions against a real oracle process (the grader's kind, on a UNIX socket) and passes its
own tests, every query counted by the oracle; the version nbgrader releases to students has no
solutions or hidden tests and stops at the first stub, in practice mode (a local oracle)."""

from __future__ import annotations

import json
import re
import sys
import tomllib
from pathlib import Path

import nbformat
import numpy as np
import pytest

from _notebooks import by_grade_id, cell_errors, execute, printed_text, release

from autograder.config import METRICS, load_config
from autograder.oracle import oracle_spec, serve_oracle

ROOT = Path(__file__).resolve().parents[1]
ASSIGNMENT = ROOT / "assignments" / "02-blackbox-scores"
NOTEBOOK = ASSIGNMENT / "02-blackbox-scores.ipynb"
GRADING = ASSIGNMENT / "grading.toml"
BIN = Path(sys.executable).parent










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
    assert set(tests) == {"test_margin", "test_square", "test_artifact"}
    for c in tests.values():
        meta = c.metadata["nbgrader"]
        assert meta["locked"] and not meta["solution"] and meta["points"] > 0
    for key in ("margin", "square", "final_attack"):
        assert cells[key].metadata["nbgrader"]["solution"]
        assert "### BEGIN SOLUTION" in cells[key].source and "### END SOLUTION" in cells[key].source
    assert all("### BEGIN HIDDEN TESTS" in cells[k].source for k in ("test_margin", "test_square"))
    ids = [c.metadata["nbgrader"]["grade_id"] for c in nb.cells if "nbgrader" in c.metadata]
    assert len(ids) == len(set(ids))
    # the only model the notebook touches is the oracle; the zoo model only in practice mode
    setup = cells["setup"].source
    assert "maestro.remote.connect(oracle_url, oracle_token, oracle_task)" in setup
    assert "models.load" not in "".join(c.source for c in nb.cells)


def test_grading_config_matches_the_notebook():
    raw = tomllib.loads(GRADING.read_text(encoding="utf-8"))
    spec = oracle_spec(GRADING)
    assert spec is not None and spec.access == "scores" and spec.private_model
    assert spec.queries_per_example == 1000 and spec.budget(500) == 500_000
    params = by_grade_id(nbformat.read(NOTEBOOK, as_version=4))["parameters"].source
    assert f"eps = {raw['threat']['eps']}" in params
    assert f'oracle_task = "{raw["assignment"]["id"]}"' in params
    terms = {t["metric"]: t for t in raw["score"]["terms"]}
    assert set(terms) == {"success_rate", "queries_per_example", "median_l2"}
    assert terms["queries_per_example"]["zero_at"] == spec.queries_per_example  # all the budget: 0
    assert sum(t["points"] for t in terms.values()) == raw["assignment"]["max_score"]


@pytest.mark.skipif("queries_per_example" not in METRICS,
                    reason="autograder/config.py does not know [oracle] and queries_per_example yet")
def test_grading_config_loads():
    cfg = load_config(GRADING)
    assert cfg.id == "02-blackbox-scores" and cfg.model == "lenet-mnist"


@pytest.mark.slow
def test_source_notebook_passes_its_tests_against_a_real_oracle(tmp_path):
    n = 64  # quick=True attacks the first 64 dev images
    with serve_oracle("lenet-mnist", task="02-blackbox-scores", dataset="mnist", access="scores",
                      budget=1000 * n, threat={"norm": "linf", "eps": 0.2, "query_budget": 1000}) as oracle:
        session = oracle.issue("reference")
        nb, error = execute(NOTEBOOK, tmp_path, quick=True, **session.parameters())
        counted = session.queries()
    assert error is None, f"{error.ename}: {error.evalue}"
    assert cell_errors(nb) == []
    cells = by_grade_id(nb)
    for key in ("test_margin", "test_square", "test_artifact"):
        assert cells[key].execution_count is not None
    x_adv = np.load(tmp_path / "output" / "x_adv.npy", allow_pickle=False)
    inputs = np.load(tmp_path / "output" / "dev-data" / "inputs.npy", allow_pickle=False)
    assert x_adv.dtype == np.float32 and x_adv.shape == (n, *inputs.shape[1:])
    assert np.abs(x_adv - inputs[:n]).max() <= 0.2 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    printed = printed_text(nb)
    # what the notebook saw as spent before its last check is what the oracle counted, minus
    # that check (one query per image)
    spent = int(re.search(r"the oracle has counted (\d+) queries so far", printed).group(1))
    assert counted == spent + n
    assert 2 * n < counted <= 1000 * n
    success = float(re.search(r"read correctly: ([\d.]+)%", printed).group(1))
    assert success > 80


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """``nbgrader generate_assignment`` in a throw-away course folder."""
    return release(NOTEBOOK, "02-blackbox-scores", tmp_path_factory.mktemp("course"))


@pytest.mark.slow
def test_release_strips_solutions_and_hidden_tests(released):
    text = released.read_text()
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "logits.gather",
                   "def affordable", "others.amax(1)", "_flip", "must be deterministic"):
        assert marker not in text, marker
    cells = by_grade_id(nbformat.read(released, as_version=4))
    for key in ("margin", "square", "final_attack"):
        assert "raise NotImplementedError" in cells[key].source
    assert "def square_attack(oracle, x, y, threat, max_queries=1000, p_init=0.3, seed=0):" \
        in cells["square"].source  # the signature stays
    assert "threat.check(_x, _adv)" in cells["test_square"].source  # visible tests stay
    assert json.loads(released.read_text())["cells"][2]["metadata"]["tags"] == ["parameters"]


@pytest.mark.slow
def test_released_notebook_stops_at_the_stub_in_practice_mode(released, tmp_path):
    nb, error = execute(released, tmp_path, quick=True)  # oracle_url=None: a practice oracle
    assert error is not None and error.ename == "NotImplementedError"
    # the visible tests report the missing functions and execution goes on (raises-exception
    # tag), then the empty final attack stops the run before anything is saved
    assert cell_errors(nb) == [("test_margin", "NotImplementedError"), ("test_square", "NotImplementedError"),
                           ("final_attack", "NotImplementedError")]
    assert "RemoteModel(02-blackbox-scores at http://127.0.0.1:" in printed_text(nb)
    assert by_grade_id(nb)["save"].execution_count is None
    assert not (tmp_path / "output" / "x_adv.npy").exists()

"""Assignment 01 (white-box FGSM/PGD): the source notebook runs and passes its own tests; the
version nbgrader releases to students has no solutions or hidden tests, stops at the first
stub with NotImplementedError and writes no artifact."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest

from _notebooks import by_grade_id, cell_errors, execute, printed_text, release

ROOT = Path(__file__).resolve().parents[1]
ASSIGNMENT = ROOT / "assignments" / "01-whitebox"
NOTEBOOK = ASSIGNMENT / "01-whitebox.ipynb"
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow








def test_source_notebook_is_valid_nbgrader_format():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    cells = by_grade_id(nb)
    assert "parameters" in cells["parameters"].metadata.get("tags", [])
    tests = {k: c for k, c in cells.items() if c.metadata.get("nbgrader", {}).get("grade")}
    assert set(tests) == {"test_fgsm", "test_pgd", "test_artifact"}
    for c in tests.values():
        meta = c.metadata["nbgrader"]
        assert meta["locked"] and not meta["solution"] and meta["points"] > 0
    for key in ("fgsm", "pgd", "final_attack"):
        assert cells[key].metadata["nbgrader"]["solution"]
        assert "### BEGIN SOLUTION" in cells[key].source and "### END SOLUTION" in cells[key].source
    assert all("### BEGIN HIDDEN TESTS" in cells[k].source for k in ("test_fgsm", "test_pgd"))
    ids = [c.metadata["nbgrader"]["grade_id"] for c in nb.cells if "nbgrader" in c.metadata]
    assert len(ids) == len(set(ids))


def test_source_notebook_passes_its_tests_and_writes_x_adv(tmp_path):
    nb, error = execute(NOTEBOOK, tmp_path, quick=True)
    assert error is None, f"{error.ename}: {error.evalue}"
    assert cell_errors(nb) == []
    cells = by_grade_id(nb)
    for key in ("test_fgsm", "test_pgd", "test_artifact"):
        assert cells[key].execution_count is not None
    x_adv = np.load(tmp_path / "output" / "x_adv.npy", allow_pickle=False)
    inputs = np.load(tmp_path / "output" / "dev-data" / "inputs.npy", allow_pickle=False)
    assert x_adv.dtype == np.float32 and x_adv.shape == (128, *inputs.shape[1:])
    assert np.abs(x_adv - inputs[:128]).max() <= 0.2 + 1e-6
    printed = printed_text(nb)
    assert "-> PGD-20 " in printed and "success rate" in printed


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """``nbgrader generate_assignment`` in a throw-away course folder."""
    return release(NOTEBOOK, "01-whitebox", tmp_path_factory.mktemp("course"))


def test_release_strips_solutions_and_hidden_tests(released):
    text = released.read_text()
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "_small.project",
                   "grad.sign()", "random restarts for the images"):
        assert marker not in text
    cells = by_grade_id(nbformat.read(released, as_version=4))
    for key in ("fgsm", "pgd", "final_attack"):
        assert "raise NotImplementedError" in cells[key].source
    assert "def fgsm(model, x, y, threat):" in cells["fgsm"].source  # the signature stays
    assert "threat.check(x, x_fgsm)" in cells["test_fgsm"].source  # visible tests stay


def test_released_notebook_stops_at_the_stub_and_writes_no_artifact(released, tmp_path):
    nb, error = execute(released, tmp_path, quick=True)
    assert error is not None and error.ename == "NotImplementedError"
    errors = cell_errors(nb)
    # the visible tests report the missing functions and execution goes on (raises-exception
    # tag), then the empty final attack stops the run before anything is saved
    assert errors == [("test_fgsm", "NotImplementedError"), ("test_pgd", "NotImplementedError"),
                      ("final_attack", "NotImplementedError")]
    assert by_grade_id(nb)["save"].execution_count is None
    assert not (tmp_path / "output" / "x_adv.npy").exists()

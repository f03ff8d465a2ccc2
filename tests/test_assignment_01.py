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
SOLUTIONS = ("fgsm", "pgd", "pgd_l2", "pgd_targeted", "final_attack", "final_l2", "final_targeted")
ARTIFACTS = {"x_adv.npy": ("linf", 0.2), "x_adv_l2.npy": ("l2", 2.5), "x_adv_targeted.npy": ("linf", 0.2)}








def test_source_notebook_is_valid_nbgrader_format():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    cells = by_grade_id(nb)
    assert "parameters" in cells["parameters"].metadata.get("tags", [])
    tests = {k: c for k, c in cells.items() if c.metadata.get("nbgrader", {}).get("grade")}
    assert set(tests) == {"test_fgsm", "test_pgd", "test_pgd_l2", "test_pgd_targeted", "test_artifact"}
    for c in tests.values():
        meta = c.metadata["nbgrader"]
        assert meta["locked"] and not meta["solution"] and meta["points"] > 0
    for key in SOLUTIONS:
        assert cells[key].metadata["nbgrader"]["solution"]
        assert "### BEGIN SOLUTION" in cells[key].source and "### END SOLUTION" in cells[key].source
    assert all("### BEGIN HIDDEN TESTS" in cells[k].source
               for k in ("test_fgsm", "test_pgd", "test_pgd_l2", "test_pgd_targeted"))
    # the three final attacks and their saves go on after an error: one part's mistake costs only it
    for key in ("final_attack", "save", "final_l2", "save_l2", "final_targeted", "save_targeted"):
        assert "raises-exception" in cells[key].metadata.get("tags", []), key
    ids = [c.metadata["nbgrader"]["grade_id"] for c in nb.cells if "nbgrader" in c.metadata]
    assert len(ids) == len(set(ids))


def test_source_notebook_passes_its_tests_and_writes_three_artifacts(tmp_path):
    nb, error = execute(NOTEBOOK, tmp_path, quick=True)
    assert error is None, f"{error.ename}: {error.evalue}"
    assert cell_errors(nb) == []
    cells = by_grade_id(nb)
    for key in ("test_fgsm", "test_pgd", "test_pgd_l2", "test_pgd_targeted", "test_artifact"):
        assert cells[key].execution_count is not None
    inputs = np.load(tmp_path / "output" / "dev-data" / "inputs.npy", allow_pickle=False)[:128]
    for name, (norm, eps) in ARTIFACTS.items():
        x_adv = np.load(tmp_path / "output" / name, allow_pickle=False)
        assert x_adv.dtype == np.float32 and x_adv.shape == inputs.shape, name
        delta = (x_adv - inputs).reshape(len(inputs), -1).astype(np.float64)
        size = np.abs(delta).max(1) if norm == "linf" else np.linalg.norm(delta, axis=1)
        assert size.max() <= eps + 1e-5 and x_adv.min() >= 0 and x_adv.max() <= 1, name
    printed = printed_text(nb)
    for words in ("-> PGD-20 ", "-> L2 PGD-20 (eps 2.5)", "-> targeted PGD-20",
                  "x_adv_l2.npy: success", "x_adv_targeted.npy: success"):
        assert words in printed, words


def test_grader_parameters_reach_the_notebook(tmp_path):
    """The grader's eps, eps_l2 and targets_path are what the notebook uses (papermill names)."""
    import torch

    import maestro
    from autograder.config import load_config

    cfg = load_config(ASSIGNMENT / "grading.toml")
    dev = maestro.datasets.load("mnist", split="dev")[:64]
    data = tmp_path / "given"
    data.mkdir()
    np.save(data / "inputs.npy", dev.x.numpy())
    model = maestro.models.load("lenet-mnist")
    targets = ((model.predict(dev.x) + 3) % 10).numpy().astype(np.int64)  # not the notebook's own draw
    np.save(data / "targets.npy", targets)
    params = {**cfg.notebook_params(), "eps_l2": 2.0, "inputs_path": str(data / "inputs.npy"),
              "targets_path": str(data / "targets.npy"), "quick": True}
    nb, error = execute(NOTEBOOK, tmp_path, **params)
    # at L2 eps 2.0 the notebook's own goals (set for 2.5) may fail; nothing else may
    assert all(gid.startswith("test_") and name == "AssertionError" for gid, name in cell_errors(nb)), cell_errors(nb)
    adv = np.load(tmp_path / "output" / "x_adv_targeted.npy", allow_pickle=False)
    hit = (model.predict(torch.from_numpy(adv)).numpy() == targets).mean()
    assert hit > 0.4  # it went for the GIVEN targets
    assert "eps=2 in L2" in printed_text(nb)  # the grader's eps_l2, not the notebook's default
    l2 = np.load(tmp_path / "output" / "x_adv_l2.npy", allow_pickle=False)
    assert np.linalg.norm((l2 - dev.x.numpy()).reshape(64, -1), axis=1).max() <= 2.0 + 1e-5


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """``nbgrader generate_assignment`` in a throw-away course folder."""
    return release(NOTEBOOK, "01-whitebox", tmp_path_factory.mktemp("course"))


def test_release_strips_solutions_and_hidden_tests(released):
    text = released.read_text()
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "_small.project",
                   "grad.sign()", "# random restarts for the images", "clamp_min(1e-12)"):
        assert marker not in text
    cells = by_grade_id(nbformat.read(released, as_version=4))
    for key in SOLUTIONS:
        assert "raise NotImplementedError" in cells[key].source
    assert "def fgsm(model, x, y, threat):" in cells["fgsm"].source  # the signature stays
    assert "threat.check(x, x_fgsm)" in cells["test_fgsm"].source  # visible tests stay


def test_released_notebook_stops_at_the_stub_and_writes_no_artifact(released, tmp_path):
    nb, error = execute(released, tmp_path, quick=True)
    assert error is not None  # (papermill names the last failed cell; the grader's runner the first)
    errors = cell_errors(nb)
    # the visible tests report the missing functions and execution goes on (raises-exception
    # tag), each empty final attack and its save say what is missing, and so does the last check
    # (papermill then reports the FIRST error: the run's reason is the stub's message)
    stub = "NotImplementedError"
    assert errors == [("test_fgsm", stub), ("test_pgd", stub), ("test_pgd_l2", stub), ("test_pgd_targeted", stub),
                      ("final_attack", stub), ("save", "NameError"), ("final_l2", stub), ("save_l2", "NameError"),
                      ("final_targeted", stub), ("save_targeted", "NameError"), ("test_artifact", "FileNotFoundError")]
    for name in ARTIFACTS:
        assert not (tmp_path / "output" / name).exists()
    said = [o.evalue for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert any("x_adv_l2 is not defined: the cell above did not finish" in e for e in said)

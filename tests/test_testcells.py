"""Which test cells the grader leaves unrun (autograder/testcells.py): the analysis on small
notebooks, the real 01-whitebox release, and the grading.toml switch. The sandboxed runs that
skip them are in test_autograde.py (test_unchanged_test_cells_are_not_run_unless_something_uses_them)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from autograder.config import ConfigError, load_config
from autograder.testcells import SKIP_TAG, mark_skipped, plan_skips, unmark_skipped

ROOT = Path(__file__).resolve().parents[1]


def _cell(gid, source, test=False):
    return new_code_cell(source, metadata={"nbgrader": {
        "grade_id": gid, "grade": test, "solution": not test, "locked": test, "points": 5 if test else 0}})


TESTS = {"t_sq": "y_sq = square(x)\nassert y_sq == 9", "t_cube": "y_cube = x ** 3\nassert y_cube == 27"}


def _notebook(final: str, *, t_sq: str | None = None, extra=()):
    return new_notebook(cells=[
        _cell("setup", "x = 3"),
        _cell("square", "def square(v):\n    return v * v"),
        _cell("t_sq", TESTS["t_sq"] if t_sq is None else t_sq, test=True),
        _cell("t_cube", TESTS["t_cube"], test=True),
        _cell("final", final),
        *extra,
    ])


RELEASE = _notebook("raise NotImplementedError()")


@pytest.mark.parametrize("final, skipped", [
    ("result = square(x)", ["t_sq", "t_cube"]),
    ("result = y_sq", ["t_cube"]),                                   # reads what t_sq made
    ("def later():\n    return y_cube\nresult = later()", ["t_sq"]),  # ... inside a function
    ("result = [y_sq for y_sq in range(3)]", ["t_sq", "t_cube"]),     # a comprehension's own name
    ("def f(y_sq):\n    return y_sq\nresult = f(1)", ["t_sq", "t_cube"]),  # a parameter
    ("%time result = y_cube", ["t_sq"]),                              # a magic's code is followed
    ("%%time\nresult = y_sq", ["t_cube"]),
    ("%matplotlib inline\nresult = square(x)", ["t_sq", "t_cube"]),
    ("def save(name):\n    return globals()[name]\nresult = save('y_sq')", ["t_cube"]),
    ("globals()['result'] = 1", []),                                  # writes the namespace
    ("exec('result = y_sq')", []),
    ("from math import *", []),
    ("!ls", []),
    ("result = (", []),                                               # does not parse
    ("result = 1" + " + 1" * 100_000, []),                            # too deep for the parser
    ("result = " + "-" * 100_000 + "1", []),                          # (its MemoryError)
    ("result = 1\0", []),                                             # a NUL byte
])
def test_a_test_cell_runs_when_anything_may_use_it(final, skipped):
    assert plan_skips(_notebook(final), RELEASE) == skipped


def test_only_unchanged_release_test_cells_are_skipped():
    assert plan_skips(_notebook("r = 1", t_sq="y_sq = square(x)  # edited"), RELEASE) == ["t_cube"]
    assert plan_skips(_notebook("r = 1"), None) == []  # no release to compare with
    twice = _notebook("r = 1", extra=[_cell("t_cube", TESTS["t_cube"], test=True)])
    assert plan_skips(twice, RELEASE) == ["t_sq"]  # a grade_id used twice: both run
    # a solution cell the student marked as a test is not in the release as one: it runs
    fake = _notebook("r = 1")
    fake.cells[4].metadata["nbgrader"].update(grade=True, solution=False)
    assert plan_skips(fake, RELEASE) == ["t_sq", "t_cube"]
    # a skipped test cell that another skipped one reads: both may go; a running cell after
    # the second one that reads it keeps both (the chain of names is followed)
    chain = _notebook("r = 1", extra=[_cell("t_more", "z = y_cube + 1", test=True)])
    release = _notebook("raise NotImplementedError()", extra=[_cell("t_more", "z = y_cube + 1", test=True)])
    assert plan_skips(chain, release) == ["t_sq", "t_cube", "t_more"]
    chain.cells[4].source = "r = z"
    assert plan_skips(chain, release) == ["t_sq"]


def test_mark_and_unmark():
    nb = _notebook("r = 1")
    mark_skipped(nb, ["t_cube"])
    assert nb.cells[3].metadata["tags"] == [SKIP_TAG] and "tags" not in nb.cells[2].metadata
    unmark_skipped(nb, ["t_cube"])
    assert "tags" not in nb.cells[3].metadata
    assert "did not run" in nb.cells[3].outputs[0]["text"]


def test_the_real_release_of_01():
    """01's released notebook, its solution cells filled in: every test cell may be skipped
    (its save helper looks names up in globals(): followed through the names it is given)."""
    from autograder.demo import _solutions

    source = ROOT / "assignments" / "01-whitebox" / "01-whitebox.ipynb"
    release = nbformat.read(source, as_version=4)
    for cell in release.cells:  # what nbgrader releases: no solutions, no hidden tests
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution"):
            cell.source = "raise NotImplementedError()"
        elif "### BEGIN HIDDEN TESTS" in cell.source:
            cell.source = cell.source.split("### BEGIN HIDDEN TESTS")[0].rstrip()
    solutions = _solutions(source)
    solved = nbformat.v4.new_notebook(cells=[
        nbformat.from_dict({**c, "source": solutions.get(c.metadata.get("nbgrader", {}).get("grade_id"), c.source)})
        for c in release.cells])
    every = ["test_fgsm", "test_pgd", "test_pgd_l2", "test_pgd_targeted", "test_artifact"]
    assert plan_skips(solved, release) == every
    final = next(c for c in solved.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "final_targeted")
    final.source += "\nprint(hit_rate)"  # test_pgd_targeted's number
    assert plan_skips(solved, release) == [c for c in every if c != "test_pgd_targeted"]


def test_grading_toml_switch(tmp_path):
    text = (ROOT / "assignments" / "01-whitebox" / "grading.toml").read_text()
    assert load_config(ROOT / "assignments" / "01-whitebox" / "grading.toml").notebook.test_cells == "skip"
    path = tmp_path / "grading.toml"
    path.write_text(text.replace("[notebook]\n", '[notebook]\ntest_cells = "run"\n'))
    assert load_config(path).notebook.test_cells == "run"
    path.write_text(text.replace("[notebook]\n", '[notebook]\ntest_cells = "never"\n'))
    with pytest.raises(ConfigError, match="test_cells"):
        load_config(path)

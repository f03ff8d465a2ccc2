"""Every unit under assignments/, the same checks (the course-content must-holds):
``nbgrader generate_assignment`` succeeds and releases no solution or hidden test; the released
stub, handed in unchanged, is autograded to 0 with a clear "not implemented yet" reason and
without crashing the grader; and the feedback nbgrader and Maestro produce holds no hidden test
code, no hidden labels and no results.json. (Each unit's own tests/test_assignment_NN.py runs
its reference solution.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import numpy as np
import pytest

from autograder.course import REPO_ASSIGNMENTS, init_course, read_secret
from autograder.sandbox import probe_bwrap

UNITS = sorted(p.parent.name for p in REPO_ASSIGNMENTS.glob("*/grading.toml"))


def _zoo_ready() -> bool:
    from maestro._home import maestro_home

    return (Path(maestro_home()) / "models" / "lenet-mnist").exists()


def _hidden_test_lines(nb) -> list[str]:
    out = []
    for cell in nb.cells:
        if "### BEGIN HIDDEN TESTS" in cell.source:
            body = cell.source.split("### BEGIN HIDDEN TESTS", 1)[1].split("### END HIDDEN TESTS")[0]
            out += [ln.strip() for ln in body.splitlines() if len(ln.strip()) > 15]
    return out


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    if not probe_bwrap()[0]:
        pytest.skip("bubblewrap cannot run here (CI installs it; tests/test_sandbox.py fails in CI)")
    if not _zoo_ready():
        pytest.skip("the model zoo is not built (maestro models build)")
    from traitlets.config import Config
    from traitlets.config.loader import PyFileConfigLoader

    root = tmp_path_factory.mktemp("units") / "course"
    init_course(root)
    cfg = Config(PyFileConfigLoader("nbgrader_config.py", path=str(root)).load_config())
    from nbgrader.apps.api import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory

    api = NbGraderAPI(coursedir=CourseDirectory(config=cfg), config=cfg)
    generated = {u: api.generate_assignment(u) for u in UNITS}
    for unit in UNITS:
        if generated[unit]["success"]:
            nb = root / "release" / unit / f"{unit}.ipynb"
            dest = root / "submitted" / "stub" / unit
            dest.mkdir(parents=True)
            shutil.copy(nb, dest / nb.name)
    return root, api, generated


def test_there_are_units():
    assert "01-whitebox" in UNITS and len(UNITS) >= 3


@pytest.mark.slow
@pytest.mark.parametrize("unit", UNITS)
def test_unit_releases_cleanly_and_its_stub_scores_zero_without_leaks(course, unit):
    from autograder import units
    from autograder.config import load_config
    from autograder.driver import autograde
    from autograder.scoring import HiddenData

    root, api, generated = course
    assert generated[unit]["success"], generated[unit].get("log", "") + generated[unit].get("error", "")
    released = (root / "release" / unit / f"{unit}.ipynb").read_text()
    for marker in ("BEGIN SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"):
        assert marker not in released
    assert not (root / "release" / unit / "grading.toml").exists()
    assert "not implemented yet" in released

    [out] = autograde(root, unit, workers=1, timeout=120, progress=False)
    assert out.student == "stub" and out.state in ("failed", "graded") and out.score == 0.0, out
    results = (root / "autograded" / "stub" / unit / "results.json").read_text()
    assert "not implemented yet" in results

    res = api.generate_feedback(unit, "stub")
    assert res["success"], res.get("log", "")
    folder = root / "feedback" / "stub" / unit
    assert sorted(p.name for p in folder.iterdir()) == [f"{unit}.html", "feedback.html"]
    source = nbformat.read(root / "source" / unit / f"{unit}.ipynb", as_version=4)
    hidden_code = _hidden_test_lines(source)
    config = load_config(root / "source" / unit / "grading.toml")
    texts: list[str] = []
    if units.is_unit_kind(config.kind):  # the kind's own hidden answers (labels, member mask, ...)
        kind = units.get(config.kind)
        prepared = kind.prepare(config, read_secret(root))
        answers, texts = kind.hidden_labels(prepared), kind.hidden_texts(prepared)
        assert (answers is not None and len(answers) >= 16) or len(texts) >= 16, \
            f"{config.kind}: neither hidden_labels() nor hidden_texts() gives what the pages must not show"
    else:
        answers = HiddenData.load(config, read_secret(root)).y.numpy()
    labels = "".join(map(str, np.asarray(answers)[:16].astype(int))) if answers is not None else None
    for page in folder.iterdir():
        text = page.read_text()
        for line in hidden_code:
            assert line not in text, (page.name, line)
        assert labels is None or labels not in text.replace(" ", "").replace(",", "")
        assert not any(t in text for t in texts), page.name
        assert read_secret(root) not in text


# -- plug-in kinds: the grading.toml loader ------------------------------------------------------
def _privacy_raw() -> dict:
    import tomllib

    return tomllib.loads((REPO_ASSIGNMENTS / "08-privacy" / "grading.toml").read_text(encoding="utf-8"))


def test_every_registered_kind_loads_and_is_used_by_a_unit():
    from autograder import units
    from autograder.config import load_config

    used = {load_config(REPO_ASSIGNMENTS / u / "grading.toml").kind for u in UNITS}
    for name in units.KINDS:
        kind = units.get(name)
        assert kind.name == name and kind.metrics, name
        assert name in used, f"no unit under assignments/ uses kind {name!r}"


def test_a_unit_kinds_grading_toml_mistakes_are_named():
    from autograder.config import ConfigError, parse_config

    raw = _privacy_raw()
    assert parse_config(raw).unit.members == raw["privacy"]["members"]
    bad = _privacy_raw()
    bad["assignment"]["kind"] = "membersihp"
    with pytest.raises(ConfigError, match=r"kind: must be one of .*'membership'"):
        parse_config(bad)
    bad = _privacy_raw()
    bad["score"]["terms"][0]["metric"] = "success_rate"  # an attack unit's metric, not this kind's
    with pytest.raises(ConfigError, match=r"metric: must be one of .*'auc'"):
        parse_config(bad)
    bad = _privacy_raw()
    bad["secrets"] = {"x": 1}  # a table no one reads
    with pytest.raises(ConfigError, match=r"unknown key\(s\) secrets"):
        parse_config(bad)
    bad = _privacy_raw()
    bad["threat"] = {"norm": "linf"}  # optional for this kind, but checked when given
    with pytest.raises(ConfigError, match=r"\[threat\] eps: missing"):
        parse_config(bad)


def test_only_unit_kinds_may_use_the_tokens_norm():
    import tomllib

    from autograder.config import ConfigError, parse_config

    raw = tomllib.loads((REPO_ASSIGNMENTS / "01-whitebox" / "grading.toml").read_text(encoding="utf-8"))
    raw["threat"]["norm"] = "tokens"
    with pytest.raises(ConfigError, match=r"\[threat\] norm: must be one of"):
        parse_config(raw)

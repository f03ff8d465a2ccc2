"""Assignment 08 (membership inference, kind ``membership``): grading.toml's [privacy] table, the
kind's ``prepare`` (candidates, auxiliary data and a target trained from the course secret, the
member mask kept back), the source notebook run as the grader runs it (quick) and scored, the
released stub (stops at "not implemented yet", writes no scores), and the trusted scorer on
crafted scores: refused files with their reasons, guessing, the loss attack, ties, a perfect and an
inverted answer, and no member mask in anything a student sees."""

from __future__ import annotations

import ast
import hashlib
import json
import re
import tomllib
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _notebooks import by_grade_id, cell_errors, execute, printed_text, run_unit
from safetensors.torch import load as load_safetensors

import maestro
from autograder import units
from autograder.config import ConfigError, load_config, parse_config
from autograder.scoring import to_gradescope
from autograder.units.privacy import build_target, membership_metrics, train_target

ROOT = Path(__file__).resolve().parents[1]
A = "08-privacy"
ASSIGNMENT = ROOT / "assignments" / A
NOTEBOOK = ASSIGNMENT / f"{A}.ipynb"
SECRET = "maestro-test-course-secret"

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]  # tiny models: one thread



def _raw() -> dict:
    return tomllib.loads((ASSIGNMENT / "grading.toml").read_text(encoding="utf-8"))


def _tiny(raw: dict | None = None) -> dict:
    """The unit's grading.toml with a target small enough to prepare in a moment."""
    raw = raw or _raw()
    raw["privacy"].update(members=60, aux=100, epochs=2)
    raw["artifacts"]["scores"]["shape"] = [120]
    return raw


# -- grading.toml ---------------------------------------------------------------------------
def test_grading_toml_is_a_membership_unit_on_mnist():
    cfg = load_config(ASSIGNMENT / "grading.toml")
    kind = units.get(cfg.kind)
    assert cfg.kind == "membership" and kind.name == "membership" and cfg.id == A
    assert (ASSIGNMENT / cfg.notebook.file).is_file() and cfg.threat is None
    spec = cfg.unit
    assert (spec.members, spec.candidates, spec.arch, cfg.dataset) == (1000, 2000, "mlp", "mnist")
    assert spec.config == {"hidden": [256, 256], "input_shape": [1, 28, 28], "num_classes": 10}
    art = cfg.artifact()
    assert (art.file, art.format, art.dtype, art.shape) == ("scores.npy", "npy", "float64", (2000,))
    assert {t.metric for t in cfg.terms} <= set(kind.metrics) and not kind.needs_threat
    assert sum(t.points for t in cfg.terms) == cfg.max_score and 0 < cfg.pass_score < cfg.max_score


@pytest.mark.parametrize("edit, words", [
    (lambda r: r.pop("privacy"), "[privacy] missing"),
    (lambda r: r["privacy"].update(members=3000), "[privacy] members: must lie in [10, 2125]"),
    (lambda r: r["privacy"].update(aux=3000), "[privacy] aux: must lie in [1, 2250]"),
    (lambda r: r["privacy"].update(epochs=0), "[privacy] epochs: must be ≥ 1"),
    (lambda r: r["privacy"].update(lr=-1.0), "[privacy] lr: must be > 0"),
    (lambda r: r["privacy"].update(colour="red"), "[privacy] unknown key(s) colour"),
    (lambda r: r["privacy"].update(config={"hidden": [8], "input_shape": [3]}), "input_shape come from the data"),
    (lambda r: r["privacy"].update(config={"widths": [8]}), "does not build a 'mlp'"),
    (lambda r: r["assignment"].update(model="lenet-mnist"), "[assignment] model: the target's architecture"),
    (lambda r: r["assignment"].update(dataset="tweets"), "built-in image data set"),
    (lambda r: r["artifacts"]["scores"].update(shape=[1000]), "one score per candidate, [2000]"),
    (lambda r: r["artifacts"]["scores"].pop("shape"), "one score per candidate, [2000]"),
    (lambda r: r["artifacts"]["scores"].update(dtype="int64"), "float32 or float64 .npy"),
    (lambda r: r["artifacts"].update(extra={"file": "more.npy", "shape": "any"}), "grades one file"),
    (lambda r: r["score"]["terms"][0].update(metric="success_rate"), "metric: must be one of 'auc'"),
])
def test_bad_privacy_configs_fail_with_a_clear_message(edit, words):
    raw = _raw()
    edit(raw)
    with pytest.raises(ConfigError) as info:
        parse_config(raw, where="grading.toml")
    assert words in str(info.value) and "grading.toml" in str(info.value), str(info.value)


# -- prepare ---------------------------------------------------------------------------------
def _digest(a) -> str:
    return hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()


def test_prepare_draws_from_the_public_pool_and_keeps_the_member_mask_back():
    cfg = parse_config(_tiny())
    kind = units.get(cfg.kind)
    one, again, other = (kind.prepare(cfg, s) for s in (SECRET, SECRET, "another-secret"))
    assert set(one.inputs) == {"target.safetensors", "candidates.npy", "candidate_labels.npy", "aux.npy",
                               "aux_labels.npy"}
    assert one.input_params() == {"target_path": "target.safetensors", "candidates_path": "candidates.npy",
                                  "candidate_labels_path": "candidate_labels.npy", "aux_path": "aux.npy",
                                  "aux_labels_path": "aux_labels.npy"}
    assert one.plain_params() == {"target_spec": cfg.unit.target_spec()}
    assert "seed" not in json.dumps(one.plain_params())
    x, y = one.inputs["candidates.npy"], one.inputs["candidate_labels.npy"]
    assert x.shape == (120, 1, 28, 28) and x.dtype == np.float32 and y.dtype == np.int64
    assert one.inputs["aux.npy"].shape == (100, 1, 28, 28)
    # deterministic for a secret, different for another one
    for name, content in one.inputs.items():
        same = content == again.inputs[name] if isinstance(content, bytes) else np.array_equal(content, again.inputs[name])
        assert same, name
    assert np.array_equal(one.state.member, again.state.member)
    assert not np.array_equal(one.inputs["candidates.npy"], other.inputs["candidates.npy"])
    # half the candidates are members, in a secret order; the public part is half of them
    member = kind.hidden_labels(one)
    assert member.dtype == np.int64 and member.sum() == 60 and one.state.public.sum() == 60
    assert 0.3 < member[:60].mean() < 0.7
    assert repr(one.state) == "_Hidden(candidates=120, public=60)"  # never the mask
    # candidates and auxiliary images: public-split images (never the reserve), disjoint
    public = {_digest(img) for s in ("train", "dev", "test") for img in maestro.datasets.load("mnist", s).x.numpy()}
    cand = [_digest(img) for img in x]
    aux = [_digest(img) for img in one.inputs["aux.npy"]]
    assert set(cand) <= public and set(aux) <= public and not set(cand) & set(aux)
    # the target fits its members (and only them) with the weights the notebook is given
    target = build_target(cfg.unit.target_spec())
    target.load_state_dict(load_safetensors(one.inputs["target.safetensors"]))
    with torch.no_grad():
        loss = F.cross_entropy(target(torch.from_numpy(x)), torch.from_numpy(y), reduction="none").numpy()
    assert loss[member == 1].mean() < loss[member == 0].mean()


def test_the_notebooks_recipe_is_the_graders():
    """train_like_target (the notebook's setup cell) trains exactly like the grader's target."""
    setup = by_grade_id(nbformat.read(NOTEBOOK, as_version=4))["setup"].source
    fn = next(n for n in ast.parse(setup).body if isinstance(n, ast.FunctionDef) and n.name == "train_like_target")
    spec = {**load_config(ASSIGNMENT / "grading.toml").unit.target_spec(), "epochs": 2}
    from maestro.models.archs import build_arch

    ns = {"torch": torch, "F": F, "build_arch": build_arch, "target_spec": spec}
    exec(compile(ast.Module([fn], []), "<setup>", "exec"), ns)
    data = maestro.datasets.load("mnist", "dev").take(150)
    theirs = ns["train_like_target"](data.x, data.y, seed=5).state_dict()
    ours = train_target(data.x, data.y, spec, 5).state_dict()
    assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in ours)


# -- the source notebook, run as the grader runs it -------------------------------------------
@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """The source notebook (quick) on the grader's inputs for SECRET, and its score."""
    out = tmp_path_factory.mktemp("run")
    nb, error, artifacts, prepared, cfg = run_unit(ASSIGNMENT, out, SECRET)
    result = units.get(cfg.kind).score(cfg, artifacts, prepared)
    return {"nb": nb, "error": error, "artifacts": artifacts, "prepared": prepared, "cfg": cfg,
            "result": result, "dir": out}


def test_source_notebook_is_valid_nbgrader_format():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    cells = by_grade_id(nb)
    assert "parameters" in cells["parameters"].metadata.get("tags", [])
    params = cells["parameters"].source
    prepared_params = ("target_path", "target_spec", "candidates_path", "candidate_labels_path", "aux_path",
                       "aux_labels_path")
    for name in (*prepared_params, "labels_path", "eps", "inputs", "output_dir", "quick"):
        assert f"{name} = " in params
    defaults = {}
    exec(params, defaults)
    assert defaults["target_spec"] == load_config(ASSIGNMENT / "grading.toml").unit.target_spec()
    tests = {k for k, c in cells.items() if c.metadata.get("nbgrader", {}).get("grade")}
    assert tests == {"test_loss_attack", "test_scaled_confidence", "test_shadow_attack", "test_scores"}
    for key in tests:
        meta = cells[key].metadata["nbgrader"]
        assert meta["locked"] and not meta["solution"] and meta["points"] > 0
    for key in ("loss_attack", "scaled_confidence", "shadow_attack", "final_attack"):
        assert cells[key].metadata["nbgrader"]["solution"]
        assert "### BEGIN SOLUTION" in cells[key].source and "### END SOLUTION" in cells[key].source
    for key in ("test_loss_attack", "test_scaled_confidence", "test_shadow_attack"):
        assert "### BEGIN HIDDEN TESTS" in cells[key].source
    ids = [c.metadata["nbgrader"]["grade_id"] for c in nb.cells if "nbgrader" in c.metadata]
    assert len(ids) == len(set(ids))


def test_reference_notebook_passes_its_tests_and_the_grader(graded):
    assert graded["error"] is None, f"{graded['error'].ename}: {graded['error'].evalue}"
    assert cell_errors(graded["nb"]) == []
    text = printed_text(graded["nb"])
    assert "the grader's task: 2000 candidates, 2250 auxiliary images" in text
    assert "LiRA with 4 shadow models on 2000 candidates" in text
    res, cfg = graded["result"], graded["cfg"]
    assert set(graded["artifacts"]) == {"scores.npy"}
    assert res.problems == [] and res.kind == "membership" and res.passed and res.score >= cfg.pass_score
    assert res.max_score == sum(p.max_points for p in res.parts) == cfg.max_score
    for m in (res.public_metrics, res.private_metrics, res.metrics):
        assert m["valid"] and m["auc"] > 0.62 and m["tpr_at_1pct_fpr"] > 0.04
    assert res.public_metrics["n"] == res.private_metrics["n"] == 1000


def _release_in_a_course(tmp_path: Path) -> Path:
    """``nbgrader generate_assignment`` in a course made by ``maestro course init`` with this unit
    only: its stubs carry the course's "not implemented yet" (tests/_notebooks.release's bare
    course gives nbgrader's default stub)."""
    import os
    import shutil
    import subprocess

    from _notebooks import BIN

    from autograder.course import init_course

    shutil.copytree(ASSIGNMENT, tmp_path / "assignments" / A)
    course = tmp_path / "course"
    init_course(course, tmp_path / "assignments")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run([str(BIN / "nbgrader"), "generate_assignment", A], cwd=course, env=env,
                          capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return course / "release" / A / NOTEBOOK.name


def test_released_notebook_stops_at_the_stub_and_writes_no_scores(tmp_path):
    released = _release_in_a_course(tmp_path)
    text = released.read_text(encoding="utf-8")
    for marker in ("BEGIN SOLUTION", "BEGIN HIDDEN TESTS", "ties stay out", "lira_scores(phi_task"):
        assert marker not in text
    cells = by_grade_id(nbformat.read(released, as_version=4))
    for key in ("loss_attack", "scaled_confidence", "shadow_attack", "final_attack"):
        assert 'raise NotImplementedError("not implemented yet' in cells[key].source
    assert "k = 4 if quick else 16" in cells["final_attack"].source
    (tmp_path / "run").mkdir()
    nb, error = execute(released, tmp_path / "run", quick=True)
    assert error is not None and error.ename == "NotImplementedError" and "not implemented yet" in error.evalue
    assert cell_errors(nb) == [("test_loss_attack", "NotImplementedError"),
                               ("test_scaled_confidence", "NotImplementedError"),
                               ("test_shadow_attack", "NotImplementedError"),
                               ("final_attack", "NotImplementedError")]
    assert by_grade_id(nb)["save"].execution_count is None
    assert not (tmp_path / "run" / "output" / "scores.npy").exists()


# -- the trusted scorer on crafted scores ------------------------------------------------------
def _score(graded, scores=None, *, path=None, name="scores.npy"):
    if path is None and scores is not None:
        folder = graded["dir"] / f"case-{len(list(graded['dir'].glob('case-*')))}"
        folder.mkdir()
        path = folder / name
        np.save(path, scores, allow_pickle=True)
    artifacts = {} if path is None else {name: path}
    return units.get("membership").score(graded["cfg"], artifacts, graded["prepared"])


def _member(graded) -> np.ndarray:
    return graded["prepared"].state.member


@pytest.mark.parametrize("case, words", [
    ("missing", "scores.npy was not produced"),
    ("short", "has shape (1999,); expected (2000,), one score per candidate"),
    ("column", "has shape (2000, 1); expected (2000,)"),
    ("float32", "has dtype float32; expected float64 (save np.asarray(scores, dtype=np.float64))"),
    ("int", "has dtype int64; expected float64"),
    ("nan", "holds NaN or infinite values (1 of 2000, e.g. at position 7)"),
    ("inf", "holds NaN or infinite values (2 of 2000, e.g. at position 3, 9)"),
    ("constant", "every candidate has the same score (0.5)"),
    ("pickle", "Python objects (a pickle)"),
])
def test_bad_scores_are_refused_with_the_reason(graded, case, words):
    good = np.linspace(0, 1, 2000)
    scores = {
        "missing": None, "short": good[:-1], "column": good[:, None], "float32": good.astype(np.float32),
        "int": np.arange(2000), "nan": np.where(np.arange(2000) == 7, np.nan, good),
        "inf": np.where(np.isin(np.arange(2000), [3, 9]), -np.inf, good), "constant": np.full(2000, 0.5),
        "pickle": np.array([{"score": v} for v in good[:2000]], dtype=object),
    }[case]
    res = _score(graded, scores)
    assert res.score == 0 and not res.passed and res.public_metrics == res.private_metrics == {"valid": False}
    assert all(words in p.reason for p in res.parts), res.parts[0].reason


def test_guessing_and_the_loss_attack_score_low_a_perfect_answer_full(graded):
    member = _member(graded)
    rng = np.random.default_rng(0)
    guess = _score(graded, rng.random(2000))
    assert 0.45 < guess.metrics["auc"] < 0.55 and guess.score <= 10 and not guess.passed
    # the loss-threshold attack (Part 1) on the grader's target: some AUC, nothing at 1% FPR
    prepared = graded["prepared"]
    target = build_target(prepared.params["target_spec"])
    target.load_state_dict(load_safetensors(prepared.inputs["target.safetensors"]))
    with torch.no_grad():
        logits = target(torch.from_numpy(prepared.inputs["candidates.npy"])).double()
    loss = -F.cross_entropy(logits, torch.from_numpy(prepared.inputs["candidate_labels.npy"]), reduction="none")
    weak = _score(graded, loss.numpy())
    assert 0.55 < weak.metrics["auc"] < 0.65 and weak.metrics["tpr_at_1pct_fpr"] < 0.03
    assert guess.score < weak.score <= 35 < graded["cfg"].pass_score <= graded["result"].score
    perfect = _score(graded, member.astype(np.float64))
    inverted = _score(graded, -member.astype(np.float64))
    assert perfect.score == 100 and perfect.metrics["auc"] == 1.0 and perfect.metrics["tpr_at_1pct_fpr"] == 1.0
    assert inverted.score == 0 and inverted.metrics["auc"] == 0.0


def test_tied_scores_move_together(graded):
    member = _member(graded)
    scores = member.astype(np.float64)
    outsiders = np.flatnonzero(~member)[:100]  # 10% of the non-members tie with every member
    scores[outsiders] = 1.0
    m = membership_metrics(scores, member)
    assert m["tpr_at_1pct_fpr"] == m["tpr_at_5pct_fpr"] == 0.0  # the tie cannot be split
    assert m["auc"] == pytest.approx(1 - 0.5 * 0.1)
    res = _score(graded, scores)
    assert res.score == pytest.approx(40.0)  # full AUC points, none at 1% FPR


def test_gradescope_feedback_and_no_member_mask_in_anything_a_student_sees(graded):
    from autograder.driver import feedback_html

    res = graded["result"]
    before, after = to_gradescope(res), to_gradescope(res, deadline_passed=True)
    assert before["output"].startswith("public part: AUC 0.") and "TPR at 1% FPR" in before["output"]
    assert "private part: scored after the deadline" in before["output"] and "private part: AUC" in after["output"]
    assert [r["name"] for r in before["leaderboard"]] == ["AUC (public)", "TPR at 1% FPR (public)",
                                                          "TPR at 5% FPR (public)"]
    assert all(0 <= t["score"] <= t["max_score"] for t in before["tests"])
    page = feedback_html(graded["cfg"], "ana", before, res, status="ok", reason="", graded_at="now")
    assert "TPR at 1% FPR" in page
    texts = [page, json.dumps(before), json.dumps(after)]
    for scores in (None, np.full(2000, 1.0), np.random.default_rng(1).random(2000)):
        other = _score(graded, scores)
        texts += [p.reason for p in other.parts] + other.problems + [json.dumps(to_gradescope(other, deadline_passed=True))]
    mask = "".join(map(str, units.get("membership").hidden_labels(graded["prepared"]).tolist()))
    for text in texts:
        digits = re.sub(r"\D", "", text)
        for start in range(0, 200, 7):
            assert mask[start:start + 16] not in digits

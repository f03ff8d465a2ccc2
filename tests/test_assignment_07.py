"""Assignment 07 (backdoors, kind ``backdoor``): grading.toml's tables, the source notebook run
the way the grader runs it (its inputs made by the kind's ``prepare`` from a course secret, quick
mode) and scored by the trusted scorer, the released stub (stops at the first "not implemented"
cell, writes nothing), the detection metrics, and the scorer on crafted artifacts: every refusal
with its reason, each half scored without the other, a weak answer scoring low, no hidden label
in what a student sees."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

from _notebooks import by_grade_id, cell_errors, execute, printed_text, release, run_unit
from autograder import units
from autograder.config import ConfigError, load_config, parse_config
from autograder.scoring import to_gradescope
from maestro.attacks.backdoor import suspect_set, triggered
from maestro.defenses.backdoor_detection import detection_metrics

ROOT = Path(__file__).resolve().parents[1]
A = "07-backdoors"
UNIT = ROOT / "assignments" / A
NOTEBOOK = UNIT / f"{A}.ipynb"
SECRET = "maestro-test-course-secret"
FILES = ("trigger.npy", "trigger_mask.npy", "poison_x.npy", "poison_y.npy", "suspicion.npy")

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]  # tiny models: one thread



# -- grading.toml ---------------------------------------------------------------------------
def _raw():
    return tomllib.loads((UNIT / "grading.toml").read_text(encoding="utf-8"))


def test_grading_toml_is_a_backdoor_unit():
    cfg = load_config(UNIT / "grading.toml")
    assert cfg.kind == "backdoor" and cfg.id == A and (UNIT / cfg.notebook.file).is_file()
    spec = cfg.unit
    assert (spec.target_class, spec.poison_budget, spec.victims) == (7, 8, 3)
    assert (cfg.threat.norm, cfg.threat.eps) == ("l0", 4)
    assert tuple(a.file for a in cfg.artifacts) == FILES
    assert {t.metric for t in cfg.terms} == set(units.get("backdoor").metrics)
    success = next(t for t in cfg.terms if t.metric == "attack_success_rate")
    assert success.requires == "attack: clean accuracy"
    assert sum(t.points for t in cfg.terms) == cfg.max_score and 0 < cfg.pass_score < cfg.max_score


@pytest.mark.parametrize("edit, words", [
    (lambda r: r.pop("backdoor"), "[backdoor] missing"),
    (lambda r: r["backdoor"].update(target_class=12), "target_class: must lie in [0, 9]"),
    (lambda r: r["backdoor"].update(poison_budget=0), "poison_budget: must be ≥ 1"),
    (lambda r: r["backdoor"].update(suspect_poison=[40, 24]), "suspect_poison: expected [lowest, highest]"),
    (lambda r: r["backdoor"].update(colour="red"), "[backdoor] unknown key(s) colour"),
    (lambda r: r["threat"].update(norm="linf", eps=0.1), "limited in l0"),
    (lambda r: r.pop("threat"), "[threat] missing"),
    (lambda r: r["artifacts"]["poison_y"].update(dtype="float32"), "[artifacts.poison_y] must be a .npy file of dtype int64"),
    (lambda r: r["threat"].update(eps=0), "[threat] eps: the number of pixels"),
    (lambda r: r["threat"].update(eps=2.5), "[threat] eps:"),
    (lambda r: r["artifacts"].pop("suspicion"), "[artifacts.suspicion] missing"),
    (lambda r: r["artifacts"].update(extra={"file": "extra.npy"}), "[artifacts.extra] is not read"),
    (lambda r: r["assignment"].update(model="lstm-tweets"), "must be an image model"),
    (lambda r: r["assignment"].update(model="lenet-mnist"), "trains on 'mnist'"),
    (lambda r: r["score"]["terms"][0].update(metric="success_rate"), "metric: must be one of"),
])
def test_bad_configs_fail_with_a_clear_message(edit, words):
    raw = _raw()
    edit(raw)
    with pytest.raises(ConfigError) as info:
        parse_config(raw, where="grading.toml")
    assert words in str(info.value) and "grading.toml" in str(info.value), str(info.value)


# -- detection metrics ----------------------------------------------------------------------
def test_detection_metrics_count_ties_together():
    truth = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0], dtype=bool)
    perfect = detection_metrics(truth.astype(float), truth)
    assert perfect == {"detection_ap": 1.0, "detection_auc": 1.0}
    worst = detection_metrics(-truth.astype(float), truth)
    assert worst["detection_auc"] == 0.0 and worst["detection_ap"] == pytest.approx(0.2)
    constant = detection_metrics(np.zeros(10), truth)  # no lucky row order: ties flag together
    assert constant == {"detection_ap": pytest.approx(0.2), "detection_auc": 0.5}
    one_first = detection_metrics(np.array([9, 0, 1, 1, 1, 1, 1, 1, 1, 1.0]), truth)
    assert one_first["detection_ap"] == pytest.approx(0.5 + 0.5 * 2 / 10)
    assert np.isnan(detection_metrics(np.zeros(3), np.zeros(3, dtype=bool))["detection_ap"])


# -- the source notebook, run as the grader runs it ---------------------------------------------
@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """The source notebook (reference solution) run with quick=True on the inputs the kind
    prepares from SECRET; its artifacts, the prepared run and the config."""
    import dataclasses

    out = tmp_path_factory.mktemp("a07")
    nb, error, artifacts, prepared, config = run_unit(UNIT, out, SECRET)
    # the crafted cases that are not about the victims' numbers train one victim, not three
    one = dataclasses.replace(prepared, state=dataclasses.replace(
        prepared.state, victim_seeds=prepared.state.victim_seeds[:1]))
    return {"nb": nb, "error": error, "artifacts": artifacts, "prepared": prepared, "one_victim": one,
            "config": config, "kind": units.get(config.kind), "dir": out}


def score(graded, *, fast=False, **replace):
    """Score the reference artifacts with some replaced (name -> array, or None: left out);
    ``fast``: with one victim instead of the configured three."""
    arts = dict(graded["artifacts"])
    folder = graded["dir"] / f"crafted-{len(list(graded['dir'].glob('crafted-*')))}"
    folder.mkdir()
    for name, value in replace.items():
        name = name.replace("__", ".")
        if value is None:
            arts.pop(name)
        elif isinstance(value, Path):
            arts[name] = value
        else:
            np.save(folder / name, value, allow_pickle=True)
            arts[name] = folder / name
    return graded["kind"].score(graded["config"], arts, graded["one_victim" if fast else "prepared"])


def test_source_notebook_is_valid_nbgrader_format():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    cells = by_grade_id(nb)
    assert "parameters" in cells["parameters"].metadata.get("tags", [])
    for name in ("suspect_x_path", "suspect_y_path", "suspect_model_path", "target_class", "poison_budget",
                 "eps", "victim_model", "victim_epochs", "labels_path", "inputs", "output_dir", "quick"):
        assert f"\n{name} = " in "\n" + cells["parameters"].source, name
    tests = {k for k, c in cells.items() if c.metadata.get("nbgrader", {}).get("grade")}
    assert tests == {"test_make_trigger", "test_poison_candidate", "test_attack", "test_suspicion_scores",
                     "test_defense_artifact"}
    for key in tests:
        meta = cells[key].metadata["nbgrader"]
        assert meta["locked"] and not meta["solution"] and meta["points"] > 0
    for key in ("make_trigger", "poison_candidate", "final_poison", "suspicion_scores"):
        assert cells[key].metadata["nbgrader"]["solution"]
        assert "### BEGIN SOLUTION" in cells[key].source and "### END SOLUTION" in cells[key].source
    for key in ("test_make_trigger", "test_poison_candidate", "test_suspicion_scores"):
        assert "### BEGIN HIDDEN TESTS" in cells[key].source
    ids = [c.metadata["nbgrader"]["grade_id"] for c in nb.cells if "nbgrader" in c.metadata]
    assert len(ids) == len(set(ids))


def test_the_notebook_and_the_grader_share_one_recipe():
    """The grader trains, stamps, poisons and measures with maestro's functions; the notebook's
    locked recipe cell imports the same ones, and nothing from the grader (the sandbox cannot)."""
    import maestro.attacks.backdoor as attack_side
    import maestro.defenses.backdoor_detection as defense_side
    from autograder.units import backdoor

    assert backdoor.train_victim is attack_side.train_victim and backdoor.triggered is attack_side.triggered
    assert backdoor.suspect_set is attack_side.suspect_set
    assert backdoor.detection_metrics is defense_side.detection_metrics
    recipe = by_grade_id(nbformat.read(NOTEBOOK, as_version=4))["recipe"].source
    assert "from maestro.attacks.backdoor import suspect_set, train_victim, triggered" in recipe
    assert "from maestro.defenses.backdoor_detection import detection_metrics" in recipe
    code = "".join(c.source for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.cell_type == "code")
    assert not re.search(r"^\s*(import|from) autograder\b", code, re.MULTILINE)
    assert not re.search(r"^def (train_victim|triggered|suspect_set|detection_metrics)\b", code, re.MULTILINE)


def test_reference_notebook_passes_its_tests_and_the_grader(graded):
    assert graded["error"] is None, f"{graded['error'].ename}: {graded['error'].evalue}"
    assert cell_errors(graded["nb"]) == []
    assert sorted(graded["artifacts"]) == sorted(FILES)
    printed = printed_text(graded["nb"])
    assert "graded suspect set: 1168 rows" in printed and "the trigger alone does nothing" in printed
    res = score(graded)
    assert res.problems == [] and res.passed and res.score >= graded["config"].pass_score, res.parts
    for part in (res.public_metrics, res.private_metrics):
        assert part["valid"] and part["clean_accuracy"] > 0.93 and part["attack_success_rate"] > 0.5
        assert part["detection_ap"] > 0.9 and part["detection_auc"] > 0.98
    one, again = score(graded, fast=True), score(graded, fast=True)
    assert again.score == one.score and again.metrics == one.metrics  # secret seeds: deterministic
    lines = [p.reason for p in res.parts if p.name.endswith("the trigger alone")]
    assert len(lines) == 2 and all("WITHOUT your poison send" in r for r in lines)


def test_prepare_hands_out_no_answers_and_depends_on_the_secret(graded):
    kind, config, prepared = graded["kind"], graded["config"], graded["prepared"]
    assert sorted(prepared.inputs) == ["suspect_model.safetensors", "suspect_x.npy", "suspect_y.npy"]
    assert prepared.params["target_class"] == 7 and prepared.params["poison_budget"] == 8
    x = prepared.inputs["suspect_x.npy"]
    assert x.shape == (1168, 1, 8, 8) and x.dtype == np.float32
    assert 0.02 < prepared.state.poisoned.mean() < 0.04  # 24-40 of 1,168 rows carry the trigger
    hidden = prepared.state.hidden_x.numpy().reshape(len(prepared.state.hidden_x), -1)
    assert not (np.abs(x.reshape(len(x), -1)[:, None, :] - hidden[None]).max(-1) < 1e-6).any()
    assert repr(prepared.state) == "BackdoorState(hidden=179, train=1168, suspect=1168, victims=3)"
    assert np.array_equal(kind.hidden_labels(prepared), prepared.state.hidden_y.numpy())
    other = kind.prepare(config, "another-course-secret")
    assert not np.array_equal(other.inputs["suspect_x.npy"], x)
    assert other.state.victim_seeds != prepared.state.victim_seeds


def test_a_practice_suspect_set_plants_a_working_backdoor():
    import maestro
    from autograder.units.backdoor import train_victim

    train = maestro.datasets.load("digits", split="train")
    dev = maestro.datasets.load("digits", split="dev")
    x, y, poisoned, attack = suspect_set(train, 11)
    assert 24 <= poisoned.sum() <= 40 and bool((y[torch.from_numpy(poisoned)] == attack.target_class).all())
    assert len(y) == len(train) and float(x.min()) >= 0 and float(x.max()) <= 1
    assert sorted(y.tolist()) != sorted(train.y.tolist())  # relabelled rows: planted and decoys
    model = train_victim(x, y, 3)
    keep = dev.y != attack.target_class
    with torch.no_grad():
        hit = (model(attack.apply(dev.x[keep])).argmax(1) == attack.target_class).float().mean()
    assert float(hit) > 0.8


# -- the released notebook ----------------------------------------------------------------------
def test_released_notebook_stops_at_the_first_stub(tmp_path):
    (tmp_path / "course").mkdir()
    released = release(NOTEBOOK, A, tmp_path / "course")
    text = released.read_text(encoding="utf-8")
    for marker in ("BEGIN SOLUTION", "BEGIN HIDDEN TESTS", "contrast.topk", "every poisoned image must carry"):
        assert marker not in text
    (tmp_path / "run").mkdir()
    nb, error = execute(released, tmp_path / "run", quick=True)
    assert error is not None and error.ename == "NotImplementedError"
    cells = by_grade_id(nb)
    # the test cells may raise (nbgrader's "raises-exception": a failed visible test does not stop
    # the artifacts from being saved); the first stub outside them stops the run
    errors = cell_errors(nb)
    assert errors[0] == ("test_make_trigger", "NotImplementedError")
    assert errors[-1] == ("final_poison", "NotImplementedError") and len(errors) == 3
    assert "not implemented yet" in str(error.evalue)
    assert "def make_trigger(train, k):" in cells["make_trigger"].source
    assert "def suspicion_scores(x, y, model, trusted_x, trusted_y):" in cells["suspicion_scores"].source
    assert not any((tmp_path / "run" / "output" / f).exists() for f in FILES)


# -- the scorer on crafted artifacts ------------------------------------------------------------
def _attack_terms(res):
    return [p for p in res.parts if ": attack: " in p.name]


def _defense_terms(res):
    return [p for p in res.parts if ": defense: " in p.name]


@pytest.mark.parametrize("case, words", [
    ("mask too large", "covers 5 pixels; the trigger may change at most 4"),
    ("mask empty", "is 0 everywhere"),
    ("pattern outside [0, 1]", "trigger.npy: values must lie in [0, 1]"),
    ("NaN mask", "trigger_mask.npy holds NaN"),
    ("trigger float64", "trigger.npy has dtype float64; expected float32"),
    ("trigger wrong shape", "trigger.npy has shape (8, 8); expected (1, 8, 8), one C×H×W image"),
    ("over budget", "poison_x.npy has 9 rows: the budget is 8 poisoned training points"),
    ("far over budget", "poison_x.npy is far larger than 8 rows"),
    ("labels float", "poison_y.npy has dtype float64; expected int64 (y.astype(np.int64))"),
    ("labels out of range", "poison_y.npy: labels must be classes 0..9; rows 3 are not"),
    ("rows differ", "poison_x.npy has 8 rows but poison_y.npy has 6 labels"),
    ("NaN poison", "poison_x.npy: NaN or infinite values in rows 2"),
    ("pixels outside", "poison_x.npy: pixels outside [0, 1] in rows 0, 5"),
    ("poison wrong shape", "poison_x.npy has shape (8, 64); expected (n, 1, 8, 8) with n ≤ 8"),
    ("object array", "holds Python objects (a pickle)"),
    ("missing", "poison_y.npy was not produced"),
])
def test_refused_attack_artifacts_zero_the_attack_only(graded, case, words):
    px = np.load(graded["artifacts"]["poison_x.npy"])
    py = np.load(graded["artifacts"]["poison_y.npy"])
    mask = np.load(graded["artifacts"]["trigger_mask.npy"])
    replace = {}
    if case == "mask too large":
        mask = mask.copy()
        mask.flat[np.flatnonzero(mask.ravel() == 0)[0]] = 0.5
        replace["trigger_mask.npy"] = mask
    elif case == "mask empty":
        replace["trigger_mask.npy"] = np.zeros_like(mask)
    elif case == "pattern outside [0, 1]":
        replace["trigger.npy"] = np.full((1, 8, 8), 2.0, dtype=np.float32)
    elif case == "NaN mask":
        bad = mask.copy()
        bad[0, 3, 3] = np.nan
        replace["trigger_mask.npy"] = bad
    elif case == "trigger float64":
        replace["trigger.npy"] = np.zeros((1, 8, 8))
    elif case == "trigger wrong shape":
        replace["trigger.npy"] = np.zeros((8, 8), dtype=np.float32)
    elif case == "over budget":
        replace.update({"poison_x.npy": np.concatenate([px, px[:1]]), "poison_y.npy": np.concatenate([py, py[:1]])})
    elif case == "far over budget":
        replace["poison_x.npy"] = np.zeros((5000, 1, 8, 8), dtype=np.float32)
    elif case == "labels float":
        replace["poison_y.npy"] = py.astype(np.float64)
    elif case == "labels out of range":
        bad = py.copy()
        bad[3] = 10
        replace["poison_y.npy"] = bad
    elif case == "rows differ":
        replace["poison_y.npy"] = py[:6]
    elif case == "NaN poison":
        bad = px.copy()
        bad[2, 0, 1, 1] = np.nan
        replace["poison_x.npy"] = bad
    elif case == "pixels outside":
        bad = px.copy()
        bad[[0, 5], 0, 2, 2] = 1.5
        replace["poison_x.npy"] = bad
    elif case == "poison wrong shape":
        replace["poison_x.npy"] = px.reshape(len(px), -1)
    elif case == "object array":
        replace["poison_y.npy"] = np.array([1, "x"], dtype=object)
    elif case == "missing":
        replace["poison_y.npy"] = None
    res = score(graded, **replace)
    attack, defense = _attack_terms(res), _defense_terms(res)
    assert attack and all(p.points == 0 and words in p.reason for p in attack), (case, attack[0].reason)
    assert all(p.points == p.max_points for p in defense)  # the defense half is scored as before
    assert res.problems and res.problems[0].startswith("attack: ") and words in res.problems[0]
    assert res.public_metrics["valid"] and "attack_success_rate" not in res.public_metrics


@pytest.mark.parametrize("case, words", [
    ("wrong length", "suspicion.npy has shape (1000,); expected (1168,), one score per row of suspect_x"),
    ("float64", "suspicion.npy has dtype float64; expected float32 (a.astype(np.float32))"),
    ("NaN", "suspicion.npy: NaN or infinite scores in rows 4, 7"),
    ("missing", "suspicion.npy was not produced"),
])
def test_refused_scores_zero_the_defense_only(graded, case, words):
    s = np.load(graded["artifacts"]["suspicion.npy"])
    if case == "wrong length":
        value = s[:1000]
    elif case == "float64":
        value = s.astype(np.float64)
    elif case == "NaN":
        value = s.copy()
        value[[4, 7]] = [np.nan, np.inf]
    else:
        value = None
    # the attack half is still scored (one victim trained) in one case; the others leave it out
    keep_attack = case == "NaN"
    res = score(graded, fast=True, suspicion__npy=value, **({} if keep_attack else {"poison_x__npy": None}))
    defense = _defense_terms(res)
    assert defense and all(p.points == 0 and words in p.reason for p in defense), defense[0].reason
    assert res.problems[-1] == f"defense: {defense[0].reason.removeprefix('defense: ')}"
    if keep_attack:
        assert sum(p.points for p in _attack_terms(res)) > 0 and len(res.problems) == 1
        assert res.public_metrics["attack_success_rate"] > 0.5 and "detection_ap" not in res.public_metrics


def test_nothing_produced_scores_zero(graded):
    res = score(graded, **{f.replace(".", "__"): None for f in FILES})
    assert res.score == 0 and not res.passed
    assert res.public_metrics == res.private_metrics == {"valid": False}
    assert {p.reason.split(": ", 1)[0] for p in res.parts} == {"attack", "defense"}


def test_weak_answers_score_low(graded):
    gen = np.random.default_rng(0)
    mask = np.zeros((1, 8, 8), dtype=np.float32)
    mask.flat[gen.choice(64, 4, replace=False)] = 1.0
    res = score(graded, fast=True, trigger__npy=gen.random((1, 8, 8)).astype(np.float32), trigger_mask__npy=mask,
                poison_x__npy=gen.random((8, 1, 8, 8)).astype(np.float32),
                poison_y__npy=gen.integers(0, 10, 8).astype(np.int64),
                suspicion__npy=gen.random(1168).astype(np.float32))
    assert res.problems == []
    assert res.metrics["attack_success_rate"] < 0.1 and res.metrics["detection_ap"] < 0.1
    assert res.score <= 10  # the clean-accuracy points only


def test_constant_scores_earn_the_poisoned_share(graded):
    res = score(graded, suspicion__npy=np.zeros(1168, dtype=np.float32), poison_y__npy=None)
    assert res.metrics["detection_auc"] == 0.5
    assert res.metrics["detection_ap"] == pytest.approx(graded["prepared"].state.poisoned.mean())
    assert sum(p.points for p in _defense_terms(res)) == 0


def test_the_trigger_is_checked_against_every_hidden_image(graded):
    st = graded["prepared"].state
    pattern = torch.from_numpy(np.load(graded["artifacts"]["trigger.npy"]))
    mask = torch.from_numpy(np.load(graded["artifacts"]["trigger_mask.npy"]))
    graded["config"].threat.threat_model().check(st.hidden_x, triggered(st.hidden_x, pattern, mask))


def test_no_hidden_label_or_poisoned_row_in_anything_a_student_sees(graded):
    results = [score(graded, fast=True), score(graded, poison_x__npy=None, suspicion__npy=None),
               score(graded, poison_x__npy=None)]
    st = graded["prepared"].state
    texts = []
    for res in results:
        texts += [p.reason for p in res.parts] + res.problems
        for deadline in (False, True):
            doc = to_gradescope(res, deadline_passed=deadline)
            json.loads(json.dumps(doc, allow_nan=False))
            texts.append(json.dumps(doc))
        for m in (res.metrics, res.public_metrics, res.private_metrics):
            assert all(v is None or isinstance(v, (bool, int, float)) for v in m.values())
    labels = "".join(map(str, st.hidden_y.tolist()))
    rows = ", ".join(map(str, np.flatnonzero(st.poisoned)[:3]))
    for text in texts:
        digits = re.sub(r"\D", "", text)
        for start in range(0, len(labels) - 10):
            assert labels[start:start + 10] not in digits
        assert rows not in text
    doc = to_gradescope(results[0])
    assert [r["name"] for r in doc["leaderboard"]] == ["attack success rate (public)",
                                                       "detection average precision (public)"]
    assert doc["output"].startswith("public part: clean accuracy ")

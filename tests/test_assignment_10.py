"""Assignment 10 (the war, a WAR unit: every submission is a defense AND an attack): grading.toml's
war tables, the source notebook run the way the grader runs it (quick) and scored against the
reference opponents, the version nbgrader releases (stops at the first "not implemented yet"
stub), the trusted scorer on crafted artifacts (wrong shapes and dtypes, NaN, over budget, pickles,
undefended and gradient-masked weights), and the tournament matrix built from kept submissions —
the reference, an undefended model with a weak attack, refused artifacts — ranked by
``autograder.leaderboard.tournament``."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import tomllib
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from _notebooks import by_grade_id, cell_errors, execute, printed_text, release, run_unit

import maestro
from autograder import units
from autograder.config import ConfigError, load_config, parse_config
from autograder.driver import _keep_artifacts, feedback_html, kept_artifacts
from autograder.leaderboard import render_html, tournament
from autograder.scoring import to_gradescope
from autograder.units.war import KIND, REFERENCE, RobustRecipe, _course_of, _robust_module, tournament_matrix

ROOT = Path(__file__).resolve().parents[1]
A = "10-war"
ASSIGNMENT = ROOT / "assignments" / A
NOTEBOOK = ASSIGNMENT / f"{A}.ipynb"
SECRET = "maestro-test-course-secret"
W, X = "model.safetensors", "x_adv.npy"

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


# -- helpers ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ref(tmp_path_factory, one_torch_thread):
    """The source notebook run once with quick=True as the grader runs it (prepare -> inputs ->
    papermill -> artifacts), and its artifacts copied aside."""
    tmp = tmp_path_factory.mktemp("a10")
    nb, error, artifacts, prepared, config = run_unit(ASSIGNMENT, tmp, SECRET)
    return {"nb": nb, "error": error, "artifacts": artifacts, "prepared": prepared, "cfg": config,
            "x": prepared.state.x, "dir": tmp}


def write(folder: Path, weights: dict | None = None, x_adv=None) -> dict[str, Path]:
    """The artifacts of a crafted submission in ``folder``: {file name: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    if weights is not None:
        save_file({k: v.contiguous() for k, v in weights.items()}, str(folder / W))
        out[W] = folder / W
    if x_adv is not None:
        np.save(folder / X, np.asarray(x_adv.numpy() if isinstance(x_adv, torch.Tensor) else x_adv))
        out[X] = folder / X
    return out


def score(ref, artifacts):
    return KIND.score(ref["cfg"], artifacts, ref["prepared"])


def points(res, half: str) -> float:
    """Points of the defense or attack half."""
    return sum(p.points for p in res.parts if f": {half}:" in p.name)


def zoo_state() -> dict:
    return {k: v.clone() for k, v in maestro.models.load("mlp-digits").model.state_dict().items()}


# -- grading.toml -------------------------------------------------------------------------------
def _raw():
    return tomllib.loads((ASSIGNMENT / "grading.toml").read_text(encoding="utf-8"))


def test_grading_toml_is_a_war_of_a_defense_and_an_attack():
    cfg = load_config(ASSIGNMENT / "grading.toml")
    assert cfg.kind == "war" and cfg.id == A and (ASSIGNMENT / cfg.notebook.file).is_file()
    assert units.get("war") is KIND and KIND.keep_artifacts and KIND.needs_threat
    spec = cfg.unit
    assert (spec.defense_file, spec.attack_file, spec.architecture, spec.undefended) == (
        W, X, "mlp-digits", "mlp-digits")
    assert spec.robust == RobustRecipe(epochs=30, steps=10, lr=0.002, batch_size=64) and spec.attack_steps == 40
    assert (cfg.threat.norm, cfg.threat.eps) == ("linf", 0.2)
    assert [a.label for a in cfg.defense.attacks] == [
        "FGSM", "PGD-20", "APGD-50", "PGD-20 (margin)", "APGD-50 (margin)", "Square-1000"]
    assert {t.metric for t in cfg.terms} == set(KIND.metrics)
    assert sum(t.points for t in cfg.terms) == cfg.max_score and 0 < cfg.pass_score < cfg.max_score


@pytest.mark.parametrize("edit, words", [
    (lambda r: r.pop("war"), "[war] missing"),
    (lambda r: r["war"].update(colour="red"), "[war] unknown key(s) colour"),
    (lambda r: r["war"].update(undefended="lstm-tweets"), "not an image model"),
    (lambda r: r["war"].update(undefended="lenet-mnist"), "reads 'mnist', not the assignment's 'digits'"),
    (lambda r: r["war"].update(undefended="resnet-9000"), "must name a model of the zoo"),
    (lambda r: r["war"].update(attack_steps=0), "[war] attack_steps: must be ≥ 1"),
    (lambda r: r["war"]["robust"].update(epochs=0), "[war.robust] epochs: must lie in [1, 500]"),
    (lambda r: r["war"]["robust"].update(lr="fast"), "[war.robust] lr: expected float"),
    (lambda r: r["war"]["robust"].update(speed=1), "[war.robust] unknown key(s) speed"),
    (lambda r: r["war"].update(robust=3), "[war] robust: expected a table [war.robust]"),
    (lambda r: r.pop("defense"), "[defense] missing: the white-box suite"),
    (lambda r: r["artifacts"].pop("x_adv"), "exactly two artifacts"),
    (lambda r: r["artifacts"].pop("weights"), "exactly two artifacts"),
    (lambda r: r["artifacts"].update(notes={"file": "notes.json"}), "exactly two artifacts"),
    (lambda r: r["artifacts"]["x_adv"].update(shape=[3]), 'shape = "inputs"'),
    (lambda r: r["artifacts"]["x_adv"].update(dtype="int64"), "float32 or float64"),
    (lambda r: r["threat"].update(norm="l0"), "linf or l2"),
    (lambda r: r.pop("threat"), "[threat] missing"),
    (lambda r: r["score"]["terms"][0].update(metric="success_rate"), "metric: must be one of"),
])
def test_bad_war_configs_fail_with_a_clear_message(edit, words):
    raw = _raw()
    edit(raw)
    with pytest.raises(ConfigError) as info:
        parse_config(raw, where="grading.toml")
    assert words in str(info.value) and "grading.toml" in str(info.value), str(info.value)


def test_the_robust_reference_is_seeded_by_the_secret_and_cached(tmp_path):
    cfg = load_config(ASSIGNMENT / "grading.toml")
    tiny = dataclasses.replace(cfg, unit=dataclasses.replace(cfg.unit, robust=RobustRecipe(epochs=1, steps=1)))
    cache = tmp_path / "cache"
    first = _robust_module(tiny, SECRET, cache)
    [cached] = list(cache.iterdir())
    assert cached.suffix == ".safetensors" and (cache.stat().st_mode & 0o777) == 0o700
    again = _robust_module(tiny, SECRET, cache)  # read back from the cache (safely: load_weights)
    other = _robust_module(tiny, "another course", cache)
    assert len(list(cache.iterdir())) == 2
    s1, s2, s3 = first.state_dict(), again.state_dict(), other.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1) and not all(torch.equal(s1[k], s3[k]) for k in s1)
    # a grading.toml read from a course folder caches there; the repository's caches nowhere
    course = tmp_path / "course"
    (course / "source" / A).mkdir(parents=True)
    (course / ".maestro").mkdir()
    (course / ".maestro" / "secret").write_text("s\n")
    shutil.copy(ASSIGNMENT / "grading.toml", course / "source" / A / "grading.toml")
    assert _course_of(load_config(course / "source" / A / "grading.toml")) == course
    assert _course_of(cfg) is None


# -- the source notebook ----------------------------------------------------------------------------
def test_source_notebook_is_valid_nbgrader_format():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    cells = by_grade_id(nb)
    assert "parameters" in cells["parameters"].metadata.get("tags", [])
    for name in ("inputs_path", "labels_path", "output_dir", "eps", "quick"):
        assert f"{name} = " in cells["parameters"].source
    tests = {k for k, c in cells.items() if c.metadata.get("nbgrader", {}).get("grade")}
    assert tests == {"test_defense", "test_ensemble_gradient", "test_ensemble_pgd", "test_transfer", "test_artifacts"}
    for key in tests:
        meta = cells[key].metadata["nbgrader"]
        assert meta["locked"] and not meta["solution"] and meta["points"] > 0
    for key in ("train_defense", "ensemble_gradient", "ensemble_pgd", "surrogates", "final_attack"):
        assert cells[key].metadata["nbgrader"]["solution"]
        assert "### BEGIN SOLUTION" in cells[key].source and "### END SOLUTION" in cells[key].source
    hidden = [k for k in tests if "### BEGIN HIDDEN TESTS" in cells[k].source]
    assert sorted(hidden) == ["test_defense", "test_ensemble_gradient", "test_ensemble_pgd"]
    ids = [c.metadata["nbgrader"]["grade_id"] for c in nb.cells if "nbgrader" in c.metadata]
    assert len(ids) == len(set(ids))
    order = [c.metadata.get("nbgrader", {}).get("grade_id") for c in nb.cells]
    assert order.index("save_defense") < order.index("ensemble_gradient")  # the defense is saved first


def test_prepare_hands_out_inputs_never_labels(ref):
    prepared = ref["prepared"]
    assert set(prepared.inputs) == {"inputs.npy"} and prepared.params == {"inputs_path": "inputs.npy"}
    x = prepared.inputs["inputs.npy"]
    assert x.dtype == np.float32 and x.shape == (179, 1, 8, 8)
    y = KIND.hidden_labels(prepared)
    assert y.shape == (179,) and "".join(map(str, y[:12])) not in repr(prepared.state)
    assert [r.name for r in prepared.state.references] == ["undefended", "robust"]
    threat = ref["cfg"].threat.threat_model()
    for r in prepared.state.references:
        threat.check(prepared.state.x, r.x_adv)


def test_reference_notebook_passes_its_tests_and_scores_above_the_pass_mark(ref):
    assert ref["error"] is None, f"{ref['error'].ename}: {ref['error'].evalue}"
    assert cell_errors(ref["nb"]) == []
    assert set(ref["artifacts"]) == {W, X}
    printed = printed_text(ref["nb"])
    assert "share of the 180 dev digits each defender misreads" in printed and "sparring (held out)" in printed
    assert "10 epochs" in printed and "179 images to attack" in printed
    res = score(ref, ref["artifacts"])
    m = res.metrics
    assert res.problems == [] and res.passed and res.score >= ref["cfg"].pass_score, res.parts
    assert m["clean_accuracy"] > 0.9 and m["robust_accuracy"] > 0.25
    assert m["undefended_fool_rate"] > 0.85 and m["robust_fool_rate"] > 0.2
    lines = {p.name: p.reason for p in res.parts if p.max_points == 0}
    assert "Square-1000" in lines["public: robustness under the attack suite"]
    assert "PGD-40 on the grader's PGD-trained mlp-digits" in lines["private: your defense against the reference attacks"]
    again = score(ref, ref["artifacts"])
    assert again.score == res.score and again.metrics == res.metrics  # deterministic


# -- the released notebook ----------------------------------------------------------------------
def test_release_strips_solutions_and_the_stub_stops_before_saving(ref, tmp_path_factory):
    released = release(NOTEBOOK, A, tmp_path_factory.mktemp("course"))
    text = released.read_text(encoding="utf-8")
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "clamp_min(1e-12)",
                   "_far = ensemble_pgd", "y = vote(surrogates, x)", "second = new_model()"):
        assert marker not in text
    cells = by_grade_id(nbformat.read(released, as_version=4))
    for key in ("train_defense", "ensemble_gradient", "ensemble_pgd", "surrogates", "final_attack"):
        assert "raise NotImplementedError" in cells[key].source
    assert "def ensemble_gradient(surrogates, x, y):" in cells["ensemble_gradient"].source
    assert "def ensemble_pgd(surrogates, x, y, threat, steps=50, step_size=None):" in cells["ensemble_pgd"].source
    assert "epochs = 10 if quick else 100" in cells["train_defense"].source
    assert "threat.check(xb, x_ens)" in cells["test_ensemble_pgd"].source  # visible tests stay
    tmp = tmp_path_factory.mktemp("stub")
    nb, error = execute(released, tmp, quick=True)
    assert error is not None and error.ename == "NotImplementedError"
    assert cell_errors(nb) == [("train_defense", "NotImplementedError")]
    assert by_grade_id(nb)["save_defense"].execution_count is None
    assert not (tmp / "output" / W).exists() and not (tmp / "output" / X).exists()
    res = score(ref, {})
    assert res.score == 0 and not res.passed
    assert all("was not produced" in p.reason for p in res.parts if p.max_points > 0)


# -- the scorer on crafted artifacts ---------------------------------------------------------------
@pytest.mark.parametrize("case, words", [
    ("float64", "has dtype float64; expected float32"),
    ("short", "has shape (10, 1, 8, 8); expected (179, 1, 8, 8)"),
    ("pickle", "holds Python objects"),
    ("missing", "x_adv.npy was not produced"),
])
def test_attacks_that_do_not_fit_score_zero_with_the_reason(ref, tmp_path, case, words):
    x = ref["x"].numpy()
    folder = tmp_path / "sub"
    folder.mkdir()
    arts = {}
    if case != "missing":
        arr = {"float64": x.astype(np.float64), "short": x[:10],
               "pickle": np.array([{"x": 1}] * 3, dtype=object)}[case]
        np.save(folder / X, arr, allow_pickle=True)
        arts[X] = folder / X
    res = score(ref, arts)
    assert res.score == 0 and res.public_metrics["valid"] and "robust_fool_rate" not in res.public_metrics
    for p in res.parts:
        if ": attack:" in p.name:
            assert words in p.reason, p.reason
        elif ": defense:" in p.name:
            assert "model.safetensors was not produced" in p.reason
    assert any(words in q for q in res.problems)


def test_an_attack_over_budget_on_private_rows_voids_only_the_private_part(ref):
    x = ref["x"]
    public = ref["prepared"].state.public
    rows = np.flatnonzero(~public)[:2]
    x_adv = torch.from_numpy(np.load(ref["artifacts"][X])).clone()
    x_adv[rows] = (x[rows] + 0.3).clamp(0, 1)  # beyond eps = 0.2 wherever a pixel was below 0.7
    x_adv[rows[1], 0, 0, 0] = float("nan")
    folder = ref["dir"] / "over"
    res = score(ref, write(folder, x_adv=x_adv))
    parts = {p.name: p for p in res.parts}
    assert parts["public: attack: undefended reference fooled"].points > 0
    assert parts["private: attack: undefended reference fooled"].points == 0
    assert parts["private: attack: robust reference fooled"].points == 0
    why = parts["private: attack: robust reference fooled"].reason
    assert f"rows {rows[0]}, {rows[1]}" in why and "breaks the threat model" in why and "finite" in why
    assert [q for q in res.problems if q.startswith("private part: x_adv.npy breaks")]
    assert not res.metrics["valid"]  # no overall numbers while a part is void
    # before the deadline the student sees neither the private reason nor its row numbers
    doc = to_gradescope(res)
    page = feedback_html(ref["cfg"], "ann", doc, res, status="ok", reason="", graded_at="now")
    assert f"rows {rows[0]}" not in page
    assert all(t["visibility"] == "hidden" for t in doc["tests"] if t["name"].startswith("private"))


def test_a_weak_attack_scores_low_and_a_transfer_attack_high(ref):
    x = ref["x"]
    threat = ref["cfg"].threat.threat_model()
    zoo = maestro.models.load("mlp-digits")
    unchanged = score(ref, write(ref["dir"] / "unchanged", x_adv=x))
    early = maestro.attacks.PGD(threat, steps=40)(zoo, x, zoo.predict(x)).x_adv  # stops when fooled
    naive = score(ref, write(ref["dir"] / "early", x_adv=early))
    best = score(ref, {X: ref["artifacts"][X]})
    assert points(unchanged, "attack") == 0
    assert unchanged.metrics["undefended_fool_rate"] < 0.1 and unchanged.metrics["robust_fool_rate"] < 0.1
    # the early-stopping PGD fools the model it was made on, and barely transfers
    assert naive.metrics["undefended_fool_rate"] > 0.85 and naive.metrics["robust_fool_rate"] < 0.15
    assert 0 < points(naive, "attack") < 30 < points(best, "attack")
    assert best.metrics["robust_fool_rate"] > naive.metrics["robust_fool_rate"] + 0.1


def test_defenses_score_in_order_and_masked_gradients_do_not_help(ref):
    x = ref["x"]
    zoo = zoo_state()
    masked = dict(zoo)
    for key in ("net.6.weight", "net.6.bias"):  # the last layer ×1e4: same answers, CE gradients underflow
        masked[key] = zoo[key] * 1e4
    const = {k: torch.zeros_like(v) for k, v in zoo.items()}
    const["net.6.bias"][7] = 1.0  # "7" for everything: unbreakable, and useless
    res = {name: score(ref, write(ref["dir"] / name, weights=w, x_adv=x)) for name, w in (
        ("ref", load_file(str(ref["artifacts"][W]))), ("zoo", zoo), ("masked", masked), ("const", const))}
    assert points(res["ref"], "defense") > 35
    assert points(res["zoo"], "defense") == pytest.approx(10, abs=0.5)
    assert res["zoo"].metrics["robust_accuracy"] < 0.05 and res["zoo"].metrics["clean_accuracy"] > 0.9
    assert points(res["masked"], "defense") <= points(res["zoo"], "defense") + 1
    assert res["const"].score == 0 and res["const"].metrics["robust_accuracy"] > 0.05
    assert all("counts only once" in p.reason for p in res["const"].parts if p.name.endswith("robust accuracy"))
    assert all(r.problems == [] for r in res.values())


@pytest.mark.parametrize("case, words", [
    ("pickle", "PyTorch/pickle file"),
    ("narrow", "wrong shapes: net.2.weight is [128, 64], expected [256, 64]"),
    ("nan", "NaN or infinite values in net.4.weight"),
])
def test_defenses_that_do_not_fit_lose_the_defense_half_only(ref, tmp_path, case, words):
    weights = load_file(str(ref["artifacts"][W]))
    folder = tmp_path / "sub"
    folder.mkdir()
    if case == "pickle":
        torch.save(weights, folder / W)
    else:
        if case == "narrow":
            from maestro.models.archs import build_arch

            info = maestro.models.info("mlp-digits")
            weights = build_arch(info["arch"], {**info["config"], "hidden": [128, 128]}).state_dict()
        else:
            weights["net.4.weight"][0, 0] = float("nan")
        write(folder, weights=weights)
    res = score(ref, {W: folder / W, X: ref["artifacts"][X]})
    assert points(res, "defense") == 0 and points(res, "attack") > 40
    assert all(words in p.reason for p in res.parts if ": defense:" in p.name), res.parts[0].reason
    assert res.problems[0].startswith("defense: ") and words in res.problems[0]


def test_gradescope_feedback_and_no_hidden_label_anywhere(ref):
    res = score(ref, ref["artifacts"])
    before, after = to_gradescope(res), to_gradescope(res, deadline_passed=True)
    for doc in (before, after):
        json.loads(json.dumps(doc, allow_nan=False))
        assert doc["score"] == pytest.approx(sum(t["score"] for t in doc["tests"]), abs=1e-3)
    assert before["output"].startswith("public part: clean accuracy ") and "robust fool rate" in before["output"]
    assert [r["name"] for r in before["leaderboard"]] == [
        "clean accuracy (public)", "robust accuracy (public)", "undefended fool rate (public)",
        "robust fool rate (public)"]
    page = feedback_html(ref["cfg"], "ann", before, res, status="ok", reason="", graded_at="now")
    assert "attack: robust reference fooled" in page and "Square-1000" in page
    texts = [page]
    for arts in (ref["artifacts"], {}, {X: ref["artifacts"][X]}):
        r = score(ref, arts)
        texts += [p.reason for p in r.parts] + r.problems
        texts += [json.dumps(to_gradescope(r, deadline_passed=d)) for d in (False, True)]
    labels = "".join(map(str, KIND.hidden_labels(ref["prepared"]).tolist()))
    for text in texts:
        digits = re.sub(r"\D", "", text)
        for start in range(0, len(labels) - 10, 5):
            assert labels[start:start + 10] not in digits


# -- the tournament ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def war(ref, tmp_path_factory):
    """A course folder with four kept submissions: ann (the reference, kept by the driver's own
    keep logic), bob (the undefended zoo weights, an early-stopping PGD on the zoo model), cy (a
    pickled defense, an attack over budget on public rows), dee (an attack only: the images
    unchanged); plus a leftover temp folder and a symlinked one, which do not play."""
    course = tmp_path_factory.mktemp("war-course")
    x = ref["x"]
    threat = ref["cfg"].threat.threat_model()
    zoo = maestro.models.load("mlp-digits")
    root = kept_artifacts(course, A)
    _keep_artifacts(course, A, "ann", ref["artifacts"])
    write(root / "bob", weights=zoo_state(),
          x_adv=maestro.attacks.PGD(threat, steps=40)(zoo, x, zoo.predict(x)).x_adv)
    over = x.clone()
    over[np.flatnonzero(ref["prepared"].state.public)[:3]] += 0.5
    write(root / "cy", x_adv=over)
    torch.save(zoo_state(), root / "cy" / W)
    write(root / "dee", x_adv=x)
    write(root / ".eve.new", weights=zoo_state(), x_adv=x)
    (root / "mallory").symlink_to(root / "bob")
    matrix = tournament_matrix(course, ref["cfg"], SECRET, prepared=ref["prepared"])
    return {"course": course, "matrix": matrix}


def test_tournament_matrix_plays_every_kept_attack_against_every_kept_defense(ref, war):
    m = war["matrix"]
    players = ["ann", "bob", "cy", "dee"]
    assert m["attackers"] == m["defenders"] == players and m["part"] == "public"
    assert m["n"] == int(ref["prepared"].state.public.sum())
    cell = {(a, d): m["cells"][i][j] for i, a in enumerate(players) for j, d in enumerate(players)}
    assert all(cell["cy", d] is None for d in players) and all(cell[a, "cy"] is None for a in players)
    assert all(cell[a, "dee"] is None for a in players)  # no defense kept
    assert cell["ann", "bob"] > 0.85 and cell["bob", "ann"] < 0.2 and cell["dee", "bob"] < 0.1
    assert cell["ann", "ann"] is not None  # self-play is measured (and not scored)
    assert set(m["problems"]) == {"cy", "dee"}
    assert "PyTorch/pickle file" in m["problems"]["cy"][0] and "breaks the threat model" in m["problems"]["cy"][1]
    assert m["problems"]["dee"] == ["defense: model.safetensors was not produced: the notebook must save your "
                                    "defense's weights in output_dir (did every cell run without an error?)"]
    board = tournament(m, assignment=A, title="The war", max_score=100)
    order = [r.name for r in board.rows]
    assert order[0] == "ann" and order[-1] == "cy" and board.rows[-1].score == 0
    scores = {r.name: r.score for r in board.rows}
    # ann: attacks bob and dee's (missing) defense -> bob only; defends against bob and dee
    assert scores["ann"] == pytest.approx(50 * (cell["ann", "bob"] + 1 - (cell["bob", "ann"] + cell["dee", "ann"]) / 2))
    page = render_html(board)
    assert 'id="matrix"' in page and "ann" in page and "no graded submissions" not in page
    json.dumps(board.as_dict(), allow_nan=False)


def test_tournament_references_agree_with_the_per_submission_score(ref, war):
    m = tournament_matrix(war["course"], ref["cfg"], SECRET, references=True, prepared=ref["prepared"])
    assert m["attackers"][-2:] == [REFERENCE + "undefended", REFERENCE + "robust"]
    ann = m["cells"][m["attackers"].index("ann")]
    res = score(ref, ref["artifacts"])
    for name in ("undefended", "robust"):  # the same number, the same hidden images
        assert ann[m["defenders"].index(REFERENCE + name)] == pytest.approx(res.public_metrics[f"{name}_fool_rate"])
    private = tournament_matrix(war["course"], ref["cfg"], SECRET, part="private", prepared=ref["prepared"])
    assert private["n"] == int((~ref["prepared"].state.public).sum())
    assert private["problems"].keys() == {"cy", "dee"}  # cy's attack breaks the budget on public rows only
    assert "breaks the threat model" not in " ".join(private["problems"]["cy"])
    assert all(row[2] is None for row in private["cells"])  # cy's pickle still cannot defend
    assert private["cells"][2][1] is not None  # but its attack plays on the private part
    with pytest.raises(ValueError, match="part must be"):
        tournament_matrix(war["course"], ref["cfg"], SECRET, part="hidden", prepared=ref["prepared"])


def test_the_tournament_memo_plays_again_only_what_changed(ref, war, tmp_path):
    """A live board's memo: cells of players whose artifacts stayed are not played again; a
    player the driver keeps anew (a new folder) is, row and column; what is gone leaves it."""
    course = war["course"]
    memo: dict = {}
    assert tournament_matrix(course, ref["cfg"], SECRET, prepared=ref["prepared"], memo=memo) == war["matrix"]
    assert sum(k[0] == "cell" for k in memo) == 6  # attacks of ann, bob, dee × defenses of ann, bob
    ann_bob = next(k for k in memo if k[:3] == ("cell", "public", "ann") and k[4] == "bob")
    ann_ann = next(k for k in memo if k[:3] == ("cell", "public", "ann") and k[4] == "ann")
    memo[ann_bob] = memo[ann_ann] = 0.123  # marks: read back only where nothing was played again
    cells = tournament_matrix(course, ref["cfg"], SECRET, prepared=ref["prepared"], memo=memo)["cells"]
    assert cells[0][0] == cells[0][1] == 0.123
    # bob's next run is kept (the same files, a new folder): his row and column are played again
    shutil.copytree(kept_artifacts(course, A) / "bob", tmp_path / "bob")
    _keep_artifacts(course, A, "bob", {f.name: f for f in (tmp_path / "bob").iterdir()})
    again = tournament_matrix(course, ref["cfg"], SECRET, prepared=ref["prepared"], memo=memo)
    assert again["cells"][0][1] == war["matrix"]["cells"][0][1] != 0.123
    assert again["cells"][0][0] == 0.123  # ann against ann: untouched
    assert sum(k[0] == "player" and k[2] == "bob" for k in memo) == 1  # the old bob is forgotten
    assert sum(k[0] == "cell" for k in memo) == 6  # and his cells with him
    assert again["problems"] == war["matrix"]["problems"]


def test_an_empty_course_has_an_empty_matrix(ref, tmp_path):
    m = tournament_matrix(tmp_path, ref["cfg"], SECRET, prepared=ref["prepared"])
    assert m["attackers"] == m["defenders"] == [] and m["cells"] == [] and m["problems"] == {}
    assert tournament(m, assignment=A).rows == []


@pytest.fixture(scope="module")
def war_course(war):
    """The war fixture's folder made a course: grading.toml, the secret, three graded notebook
    submissions in the history (ann twice, bob once)."""
    from autograder.leaderboard import Entry, append_history

    course = war["course"]
    (course / "source" / A).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ASSIGNMENT / "grading.toml", course / "source" / A / "grading.toml")
    (course / ".maestro" / "secret").write_text(SECRET)
    for who, when in [("ann", "2026-11-20T09:00:00+00:00"), ("ann", "2026-11-21T09:00:00+00:00"),
                      ("bob", "2026-11-20T12:00:00+00:00")]:
        append_history(course, Entry(who, A, when, 50.0, 100.0, 50.0, 100.0, 50.0, 100.0, {}, {},
                                     sha256=when))
    return course


def test_the_course_leaderboard_plays_the_matrix_with_submission_counts_and_times(war, war_course):
    """`maestro leaderboard 10-war` (autograder.leaderboard.from_course) on a course folder."""
    from autograder.leaderboard import from_course

    course = war_course
    board = from_course(course, A)
    assert board.matrix["attackers"] == ["ann", "bob", "cy", "dee"]
    assert board.matrix["cells"] == [[None if v is None else round(v, 4) for v in row] for row in war["matrix"]["cells"]]
    rows = {r.name: (r.submissions, r.entry.submitted_at) for r in board.rows}
    assert rows["ann"] == (2, "2026-11-21T09:00:00+00:00") and rows["bob"] == (1, "2026-11-20T12:00:00+00:00")
    assert rows["dee"] == (0, "")
    assert from_course(course, A, pseudonyms=True).rows[0].name not in ("ann", "bob", "cy", "dee")


def _ready(http, path: str):
    """GET ``path`` until the board is computed: the server warms the war's board as it starts,
    and answers 503 with Retry-After (a page that reloads itself) until it is."""
    import time

    deadline = time.monotonic() + 120  # bounds a hung computation; not a timing assertion
    while True:
        r = http.get(path)
        if r.status_code != 503:
            assert r.status_code == 200, r.text
            return r
        assert r.headers["Retry-After"] == "5" and "being computed" in r.text
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_the_live_server_board_plays_the_war_again_when_the_autograder_keeps_new_artifacts(ref, war_course, tmp_path):
    """`maestro serve` with ``[submissions] boards = ["10-war"]`` (a real uvicorn on loopback):
    the live page and its JSON hold the tournament matrix of the kept artifacts, recomputed when
    the autograder keeps a new player's; uploads are refused with where to submit instead."""
    import httpx

    from autograder.leaderboard import from_course
    from maestro.server import ServerConfig, background_server, create_app

    course = war_course
    cfg = ServerConfig.from_dict({"submissions": {"boards": [A], "course": str(course)}}, course_dir=tmp_path)
    app = create_app(cfg)
    token = app.state.store.create_token("ann")
    try:
        with background_server(app) as url, httpx.Client(base_url=url, timeout=120) as http:
            listed = http.get("/v1/assignments", headers={"Authorization": f"Bearer {token}"}).json()
            assert listed["assignments"] == [] and listed["boards"][0]["leaderboard"] == f"/leaderboard/{A}"
            live = _ready(http, f"/leaderboard/{A}.json").json()  # public, no token
            expected = from_course(course, A, pseudonyms=True)  # pseudonyms: the server's default
            assert live["tournament"] == expected.as_dict()["tournament"]
            assert len(live["tournament"]["attackers"]) == 4 and "ann" not in live["tournament"]["attackers"]
            assert [r["name"] for r in live["rows"]] == [r.name for r in expected.rows]
            page = _ready(http, f"/leaderboard/{A}")
            assert page.status_code == 200 and 'id="matrix"' in page.text
            up = http.post(f"/v1/assignments/{A}/submissions", json={"artifacts": {}},
                           headers={"Authorization": f"Bearer {token}"})
            assert up.status_code == 404 and "maestro autograde" in up.json()["detail"]
            # the autograder keeps a fifth player's artifacts: the next request plays them too
            _keep_artifacts(course, A, "fay", ref["artifacts"])
            try:
                again = http.get(f"/leaderboard/{A}.json").json()
                assert len(again["tournament"]["attackers"]) == 5
                assert again["tournament"] == from_course(course, A, pseudonyms=True).as_dict()["tournament"]
            finally:
                shutil.rmtree(kept_artifacts(course, A) / "fay")
            assert len(http.get(f"/leaderboard/{A}.json").json()["tournament"]["attackers"]) == 4
    finally:
        app.state.store.close()


def test_a_board_being_played_again_answers_with_the_last_one_meanwhile(ref, war_course):
    """Viewers of a war board whose tournament is being played (the server's warm-up at start, or
    again for new artifacts) never wait in the server's threads: "not ready" before the first
    board, the last board meanwhile after it; the next request after it gets the new board."""
    import threading

    from maestro.server.submissions import BoardNotReady, BoardOnly, Leaderboards

    class Held(BoardOnly):  # the real board, held back until the test lets it go
        started, go = threading.Event(), threading.Event()

        def board(self, **kw):
            self.started.set()
            assert self.go.wait(120)
            return super().board(**kw)

    board = Held(war_course, A)
    boards = Leaderboards(None, {}, {A: board})
    # the first computation: nothing to show meanwhile, so "not ready" (the server's 503)
    warm = boards.warm(final=False, pseudonyms=False)
    assert board.started.wait(120)
    with pytest.raises(BoardNotReady, match="being computed for the first time"):
        boards.board(A, final=False, pseudonyms=False)
    board.go.set()
    warm.join(120)
    first = boards.board(A, final=False, pseudonyms=False)
    assert first.matrix["attackers"] == ["ann", "bob", "cy", "dee"]
    assert boards.board(A, final=False, pseudonyms=False) is first  # nothing changed: cached
    board.go.clear()
    board.started.clear()
    _keep_artifacts(war_course, A, "gus", ref["artifacts"])
    try:
        new = {}
        worker = threading.Thread(target=lambda: new.setdefault("board", boards.board(A, final=False, pseudonyms=False)))
        worker.start()
        assert board.started.wait(120)
        assert boards.board(A, final=False, pseudonyms=False) is first  # at once, while gus is played in
        board.go.set()
        worker.join(120)
        assert new["board"].matrix["attackers"] == ["ann", "bob", "cy", "dee", "gus"]
        assert boards.board(A, final=False, pseudonyms=False) is new["board"]
    finally:
        board.go.set()
        shutil.rmtree(kept_artifacts(war_course, A) / "gus")

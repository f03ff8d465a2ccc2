"""Assignment 06 (adaptive attacks on masked defenses, kind ``adaptive-attack``): grading.toml's
[adaptive] table, the source notebook run as the grader runs it (quick) and scored by the kind —
it breaks all four defenses —, the notebook's defenses equal to the ones the grader builds, the
released stub (stops at "not implemented yet", writes nothing), and the scorer on crafted
artifacts: clean and plain-PGD images score low, and every refused file (missing, wrong dtype or
shape, a pickle, NaN, over budget, shuffled rows) voids only its own defense, with a reason that
names the file, rule and rows — never a hidden label."""

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

import maestro
from autograder import units
from autograder.config import ConfigError, load_config, parse_config
from autograder.scoring import to_gradescope
from autograder.units.adaptive import CATALOG, metric

ROOT = Path(__file__).resolve().parents[1]
A = "06-adaptive-attacks"
UNIT = ROOT / "assignments" / A
NOTEBOOK = UNIT / f"{A}.ipynb"
SECRET = "maestro-test-course-secret"
NAMES = ("squeeze", "saturate", "noise", "noisy_squeeze")

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]  # tiny models: one thread



@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The source notebook (reference solution), quick, on the hidden inputs of SECRET."""
    tmp = tmp_path_factory.mktemp("a06")
    nb, error, produced, prepared, config = run_unit(UNIT, tmp, SECRET)
    return {"nb": nb, "error": error, "produced": produced, "prepared": prepared, "cfg": config,
            "kind": units.get(config.kind), "dir": tmp}


def _score(run, artifacts):
    return run["kind"].score(run["cfg"], artifacts, run["prepared"])


def _write(folder: Path, arrays: dict) -> dict:
    """Save {defense name: array} as x_adv_<name>.npy in ``folder``; {file name: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, array in arrays.items():
        path = folder / f"x_adv_{name}.npy"
        np.save(path, np.asarray(array), allow_pickle=False)
        out[path.name] = path
    return out


def _reference(run) -> dict:
    return {n: np.load(run["produced"][f"x_adv_{n}.npy"]) for n in NAMES}


def _terms(res, name):
    return [p for p in res.parts if p.name.endswith(f": {name} broken")]


# -- grading.toml -------------------------------------------------------------------------
def _raw():
    return tomllib.loads((UNIT / "grading.toml").read_text(encoding="utf-8"))


def test_grading_toml_configures_four_masked_defenses_of_mlp_digits():
    cfg = load_config(UNIT / "grading.toml")
    assert cfg.kind == "adaptive-attack" and cfg.id == A and (UNIT / cfg.notebook.file).is_file()
    assert (cfg.model, cfg.dataset, cfg.threat.norm, cfg.threat.eps) == ("mlp-digits", "digits", "linf", 0.2)
    spec = cfg.unit
    assert spec.names() == NAMES and spec.draws == 32
    assert spec.notebook_param() == {"squeeze": {"bits": 2}, "saturate": {"scale": 1e4}, "noise": {"sigma": 0.2},
                                     "noisy_squeeze": {"sigma": 0.2, "bits": 2}}
    assert [d.randomized for d in spec.defenses] == [False, False, True, True]
    assert {a.key: a.file for a in cfg.artifacts} == {n: f"x_adv_{n}.npy" for n in NAMES}
    assert [t.metric for t in cfg.terms] == [metric(n) for n in NAMES]
    assert all(t.points == 25 and t.zero_at > t.full_at for t in cfg.terms)  # lower is better
    assert sum(t.points for t in cfg.terms) == cfg.max_score and 0 < cfg.pass_score < cfg.max_score
    kind = units.get(cfg.kind)
    assert set(kind.metrics) == {"mean_robust_accuracy"} | {metric(n) for n in CATALOG}
    assert kind.needs_threat and set(kind.lower_is_better) == set(kind.metrics)


def _drop_artifact(raw, name):
    raw["artifacts"].pop(name)


@pytest.mark.parametrize("edit, words", [
    (lambda r: r.pop("adaptive"), "[adaptive] missing"),
    (lambda r: r["adaptive"].update(defenses=[]), "defenses is empty"),
    (lambda r: r["adaptive"].update(colour="red"), "[adaptive] unknown key(s) colour"),
    (lambda r: r["adaptive"].update(draws=0), "[adaptive] draws: must lie in 1..1000"),
    (lambda r: r["adaptive"]["defenses"].append({"name": "fog"}), "name: must be one of squeeze"),
    (lambda r: r["adaptive"]["defenses"].append({"name": "squeeze", "bits": 3}), "each defense may appear once"),
    (lambda r: r["adaptive"]["defenses"][0].update(bits=0), "bits: must lie in [1, 8]"),
    (lambda r: r["adaptive"]["defenses"][0].update(bits=2.5), "bits: expected int"),
    (lambda r: r["adaptive"]["defenses"][0].update(sigma=0.1), "[adaptive.defenses #1] unknown key(s) sigma"),
    (lambda r: r["adaptive"]["defenses"][2].pop("sigma"), "[adaptive.defenses #3] sigma: missing"),
    (lambda r: _drop_artifact(r, "noise"), "one artifact per defense"),
    (lambda r: r["artifacts"]["noise"].update(file="noise.npy"), "[artifacts.noise] must be file = 'x_adv_noise.npy'"),
    (lambda r: r["artifacts"]["noise"].update(dtype="float64"), "dtype = \"float32\""),
    (lambda r: r["artifacts"]["noise"].update(shape=[3]), "shape = \"inputs\""),
    (lambda r: r["adaptive"].update(defenses=r["adaptive"]["defenses"][:3]), "one artifact per defense"),
    (lambda r: r["assignment"].update(model="lenet-mnist"), "[assignment] model"),
    (lambda r: r["threat"].update(norm="l0"), "linf or l2"),
    (lambda r: r.pop("threat"), "[threat] missing"),
    (lambda r: r["score"]["terms"][0].update(metric="success_rate"), "metric: must be one of"),
])
def test_bad_adaptive_configs_fail_with_a_clear_message(edit, words):
    raw = _raw()
    edit(raw)
    with pytest.raises(ConfigError) as info:
        parse_config(raw, where="grading.toml")
    assert words in str(info.value) and "grading.toml" in str(info.value), str(info.value)


def test_a_term_must_name_a_configured_defense():
    raw = _raw()
    raw["adaptive"]["defenses"] = raw["adaptive"]["defenses"][:3]
    raw["artifacts"].pop("noisy_squeeze")
    with pytest.raises(ConfigError, match="its defense is not in"):
        parse_config(raw)
    raw["score"]["terms"][3]["metric"] = "mean_robust_accuracy"  # the mean is always allowed
    assert parse_config(raw).unit.names() == NAMES[:3]


# -- the source notebook, run as the grader runs it -----------------------------------------
def test_prepare_gives_the_inputs_and_the_defenses_never_the_labels(run):
    prepared, cfg = run["prepared"], run["cfg"]
    assert set(prepared.inputs) == {"inputs.npy"}
    assert prepared.input_params() == {"inputs_path": "inputs.npy"}
    assert prepared.plain_params() == {"defenses": cfg.unit.notebook_param()}
    hidden = maestro.datasets.load("digits", split="hidden", secret=SECRET)
    assert np.array_equal(prepared.inputs["inputs.npy"], hidden.x.numpy())
    assert np.array_equal(run["kind"].hidden_labels(prepared), hidden.y.numpy())
    assert repr(prepared.state).startswith("_Hidden(n=179")  # never the labels
    again = run["kind"].prepare(cfg, SECRET)
    assert again.state.seed == prepared.state.seed != run["kind"].prepare(cfg, "another secret").state.seed


def test_the_reference_notebook_breaks_every_defense(run):
    assert run["error"] is None and cell_errors(run["nb"]) == [], cell_errors(run["nb"])
    assert set(run["produced"]) == {f"x_adv_{n}.npy" for n in NAMES}
    text = printed_text(run["nb"])
    claims = dict(re.findall(r"^(\w+)\s+\d+\.\d% +(\d+\.\d)% +\d+\.\d%$", text, re.M))
    assert float(claims["squeeze"]) > 85 and float(claims["saturate"]) > 85  # PGD-20 "fails"
    res = _score(run, run["produced"])
    assert res.score >= run["cfg"].pass_score and res.passed and res.problems == [], res.parts
    for label in ("public", "private"):
        m = res.public_metrics if label == "public" else res.private_metrics
        assert m["valid"] and m[metric("squeeze")] < 0.06 and m[metric("noisy_squeeze")] < 0.2, m
        assert all(m[f"{n}_clean_accuracy"] > 0.85 for n in NAMES)
    glance = next(p for p in res.parts if p.name == "public: the defenses at a glance")
    assert glance.points == glance.max_points == 0 and "noisy_squeeze" in glance.reason and "32 noise draws" in glance.reason
    again = _score(run, run["produced"])  # randomized defenses are scored with seeded draws
    assert again.score == res.score and again.metrics == res.metrics


def test_the_notebooks_defenses_are_the_graders(run):
    """The vendors' cell of the notebook builds the same models as the scorer (same seed, same noise)."""
    cell = by_grade_id(nbformat.read(NOTEBOOK, as_version=4))["vendors"].source
    base = maestro.models.load("mlp-digits")
    ns = {"base": base, "defenses": run["cfg"].unit.notebook_param(), "torch": torch}
    exec("from maestro.defenses import BitDepthSqueeze, TransformedModel\n"
         "from maestro.defenses.smoothing import GaussianNoise\n"
         "x = y = None\n" + cell.split("\nfor name, params in defenses.items():")[0], ns)
    x = maestro.datasets.load("digits", split="dev").x[:64]
    for d in run["cfg"].unit.defenses:
        ours, theirs = d.build(base, seed=5), ns["make_defense"](d.name, dict(d.params), seed=5)
        for _ in range(2 if d.randomized else 1):
            assert torch.equal(ours.logits(x), theirs.logits(x)), d.name


def test_the_released_stub_stops_at_not_implemented_and_writes_nothing(tmp_path):
    (tmp_path / "course").mkdir()
    released = release(NOTEBOOK, A, tmp_path / "course")
    text = released.read_text(encoding="utf-8")
    for marker in ("BEGIN SOLUTION", "BEGIN HIDDEN TESTS", "masked_fill", "eot_gradient(nz, _xb"):
        assert marker not in text
    (tmp_path / "run").mkdir()
    nb, error = execute(released, tmp_path / "run", quick=True)
    assert error is not None and "not implemented yet" in str(error)
    errors = dict(cell_errors(nb))
    assert errors["final_attack"] == "NotImplementedError" and errors["test_margin_loss"] == "NotImplementedError"
    assert not list((tmp_path / "run" / "output").glob("x_adv_*.npy"))
    stub = units.get("adaptive-attack").score(load_config(UNIT / "grading.toml"), {},
                                              units.get("adaptive-attack").prepare(load_config(UNIT / "grading.toml"), SECRET))
    assert stub.score == 0 and all("was not produced" in p.reason for p in stub.parts if p.max_points)


# -- the scorer on crafted artifacts --------------------------------------------------------
def test_clean_images_and_plain_pgd_score_nothing(run):
    x = run["prepared"].state.x
    clean = _score(run, _write(run["dir"] / "clean", {n: x.numpy() for n in NAMES}))
    assert clean.score == 0 and clean.problems == []
    for n in NAMES:
        assert clean.metrics[metric(n)] == pytest.approx(clean.metrics[f"{n}_clean_accuracy"])
    threat = run["cfg"].threat.threat_model()
    base, y = run["prepared"].state.model, run["prepared"].state.model.predict(x)
    pgd = {d.name: maestro.attacks.PGD(threat, steps=20)(d.build(base, seed=1), x, y).x_adv.numpy()
           for d in run["cfg"].unit.defenses}
    res = _score(run, _write(run["dir"] / "pgd", pgd))
    assert res.score == 0, res.parts  # the vendors' own evaluation earns nothing
    assert res.metrics[metric("noise")] > 0.5 and res.metrics[metric("squeeze")] > 0.85


def test_a_missing_or_refused_file_voids_only_its_defense(run, tmp_path):
    ref = _reference(run)
    full = _score(run, run["produced"])
    cases = {
        "missing": ({n: ref[n] for n in NAMES if n != "noise"}, "noise", "x_adv_noise.npy was not produced"),
        "float64": ({**ref, "saturate": ref["saturate"].astype(np.float64)}, "saturate",
                    "has dtype float64; expected float32"),
        "shape": ({**ref, "squeeze": ref["squeeze"][:10]}, "squeeze", "has shape (10, 1, 8, 8)"),
        "pickle": ({**ref, "noisy_squeeze": np.array([{"x": 1}], dtype=object)}, "noisy_squeeze",
                   "Python objects"),
    }
    for case, (arrays, bad, words) in cases.items():
        folder = tmp_path / case
        folder.mkdir()
        arts = {}
        for n, a in arrays.items():
            path = folder / f"x_adv_{n}.npy"
            np.save(path, a, allow_pickle=a.dtype == object)
            arts[path.name] = path
        res = _score(run, arts)
        assert all(p.points == 0 and words in p.reason for p in _terms(res, bad)), (case, _terms(res, bad))
        assert res.metrics[metric(bad)] is None and any(words in p for p in res.problems)
        others = [p for n in NAMES if n != bad for p in _terms(res, n)]
        assert sum(p.points for p in others) == pytest.approx(
            sum(p.points for n in NAMES if n != bad for p in _terms(full, n))), case
        assert res.score == pytest.approx(full.score - sum(p.points for p in _terms(full, bad)))
        glance = next(p for p in res.parts if p.name == "private: the defenses at a glance")
        assert f"not scored (x_adv_{bad}.npy missing or refused)" in glance.reason


def test_threat_model_violations_void_the_part_they_are_in_and_name_the_rows(run, tmp_path):
    ref, x = _reference(run), run["prepared"].inputs["inputs.npy"]
    public = run["prepared"].state.public
    priv = np.flatnonzero(~public)
    bad = ref["noise"].copy()
    bad[priv[:3]] = np.nan
    bad[priv[3]] = np.clip(x[priv[3]] + 0.3, 0, 1)
    res = _score(run, _write(tmp_path / "nan", {**ref, "noise": bad}))
    pub_term, priv_term = _terms(res, "noise")
    assert pub_term.points > 0 and priv_term.points == 0
    assert f"finite: rows {', '.join(map(str, priv[:3]))} of x_adv_noise.npy (NaN or infinite values)" in priv_term.reason
    assert f"norm: rows {priv[3]} of x_adv_noise.npy (linf distance > eps 0.2)" in priv_term.reason
    assert res.private_metrics[metric("noise")] is None and res.public_metrics[metric("noise")] is not None
    assert res.metrics[metric("noise")] is None  # the whole set is not scored when a part is void

    out = ref["squeeze"].copy()
    out[np.flatnonzero(public)[0]] = -0.5  # outside [0, 1]
    shuffled = ref["saturate"][::-1].copy()  # rows in another order: far from their inputs
    res = _score(run, _write(tmp_path / "order", {**ref, "squeeze": out, "saturate": shuffled}))
    assert "bounds: rows" in _terms(res, "squeeze")[0].reason and _terms(res, "squeeze")[1].points > 0
    assert all(p.points == 0 and "keep the row order" in p.reason for p in _terms(res, "saturate"))
    assert all(p.points > 0 for p in _terms(res, "noise"))


def test_gradescope_feedback_and_no_hidden_label_anywhere(run, tmp_path):
    ref = _reference(run)
    results = [_score(run, run["produced"]), _score(run, {}),
               _score(run, _write(tmp_path / "half", {n: ref[n] for n in NAMES[:2]}))]
    doc = to_gradescope(results[0])
    json.loads(json.dumps(doc, allow_nan=False))
    assert doc["score"] == pytest.approx(sum(t["score"] for t in doc["tests"]), abs=1e-3)
    assert doc["output"].startswith("public part: robust accuracy: mean ")
    assert [r["name"] for r in doc["leaderboard"]] == [
        "mean robust accuracy (public)", *(f"{n.replace('_', ' ')} robust accuracy (public)" for n in NAMES)]
    assert all(r["order"] == "asc" for r in doc["leaderboard"])
    assert results[1].score == 0 and results[2].score == pytest.approx(
        sum(p.points for n in NAMES[:2] for p in _terms(results[0], n)))
    labels = "".join(map(str, run["kind"].hidden_labels(run["prepared"]).tolist()))
    for res in results:
        texts = [p.reason for p in res.parts] + res.problems
        texts += [json.dumps(to_gradescope(res, deadline_passed=d)) for d in (False, True)]
        for m in (res.metrics, res.public_metrics, res.private_metrics):
            assert all(v is None or isinstance(v, (bool, int, float)) for v in m.values())
        for text in texts:
            digits = re.sub(r"\D", "", text)
            for start in range(0, len(labels) - 10):
                assert labels[start:start + 10] not in digits

"""Assignment 09 (randomized smoothing, a CERTIFIED unit): grading.toml's [certified] table, the
source notebook run as the grader runs it (quick) and scored by the kind, the version nbgrader
releases (stops at the "not implemented yet" stubs, writes nothing), and the trusted scorer on
crafted artifacts: inflated, timid and absent certificates, the normally trained zoo model, refused
files — and that no hidden label reaches anything a student sees. The soundness checks themselves
are tested on a half-plane, whose smoothed classifier and exact certified radii are known."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from scipy.stats import norm

from _notebooks import by_grade_id, cell_errors, execute, printed_text, release, run_unit
from autograder.config import ConfigError, load_config, parse_config
from autograder.scoring import to_gradescope
from autograder.units import get
from autograder.units.certified import KIND, CertifiedSpec, _check_claims, _Grader, _Hidden

ROOT = Path(__file__).resolve().parents[1]
A = "09-certified"
ASSIGNMENT = ROOT / "assignments" / A
NOTEBOOK = ASSIGNMENT / f"{A}.ipynb"
SECRET = "maestro-test-course-secret"
FILES = ("base_model.safetensors", "predictions.npy", "radii.npy")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """These models are tiny: one torch thread is the fastest (and reproducible) setting."""
    yield


# -- grading.toml ---------------------------------------------------------------------------
def _raw():
    return tomllib.loads((ASSIGNMENT / "grading.toml").read_text(encoding="utf-8"))


def test_grading_toml_is_a_certified_unit():
    cfg = load_config(ASSIGNMENT / "grading.toml")
    assert cfg.kind == "certified" and cfg.id == A and cfg.threat is None
    assert (ASSIGNMENT / cfg.notebook.file).is_file() and get(cfg.kind) is KIND
    spec = cfg.unit
    assert isinstance(spec, CertifiedSpec)
    assert (spec.sigma, spec.n0, spec.n, spec.alpha) == (0.5, 100, 1000, 0.001)
    assert (spec.weights, spec.predictions, spec.radius, spec.architecture) == (*FILES, "mlp-digits")
    assert spec.max_radius() == pytest.approx(0.5 * norm.ppf(0.001 ** (1 / 1000)))
    assert {t.metric for t in cfg.terms} == {"certified_accuracy_r0", "certified_accuracy_r0_25",
                                             "certified_accuracy_r0_5", "tightness", "soundness"}
    assert sum(t.points for t in cfg.terms) == cfg.max_score and 0 < cfg.pass_score < cfg.max_score


@pytest.mark.parametrize("edit, words", [
    (lambda r: r.pop("certified"), "[certified] missing"),
    (lambda r: r["certified"].pop("sigma"), "[certified] sigma: missing"),
    (lambda r: r["certified"].update(sigma=0), "[certified] sigma: must be > 0"),
    (lambda r: r["certified"].update(n=0), "[certified] n: must be ≥ 1"),
    (lambda r: r["certified"].update(alpha=1.5), "[certified] alpha: must lie strictly between"),
    (lambda r: r["certified"].update(radii=[0.5, 0.25]), "[certified] radii: expected an increasing list"),
    (lambda r: r["certified"].update(radii=[0.3]), "[certified] radii: expected an increasing list"),
    (lambda r: r["certified"].update(colour="red"), "[certified] unknown key(s) colour"),
    (lambda r: r["certified"].update(radii=[0.0, 0.25]), "its radius is not in [certified] radii"),
    (lambda r: r["artifacts"].pop("radii"), "exactly the artifacts"),
    (lambda r: r["artifacts"]["predictions"].update(dtype="float32"), "[artifacts.predictions] must be a .npy"),
    (lambda r: r["artifacts"]["radii"].update(shape="inputs"), "[artifacts.radii] must be a .npy"),
    (lambda r: r["artifacts"]["weights"].update(architecture="lenet-mnist"), "another data set"),
    (lambda r: r["score"]["terms"][0].update(metric="robust_accuracy"), "metric: must be one of"),
])
def test_bad_configs_fail_with_a_clear_message(edit, words):
    raw = _raw()
    edit(raw)
    with pytest.raises(ConfigError) as info:
        parse_config(raw, where="grading.toml")
    assert words in str(info.value) and "grading.toml" in str(info.value), str(info.value)


# -- the source notebook, run as the grader runs it ---------------------------------------------
def test_source_notebook_is_valid_nbgrader_format():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    cells = by_grade_id(nb)
    params = cells["parameters"]
    assert "parameters" in params.metadata.get("tags", [])
    spec = load_config(ASSIGNMENT / "grading.toml").unit
    for name, value in (("sigma", spec.sigma), ("n0", spec.n0), ("n", spec.n), ("alpha", spec.alpha)):
        assert f"\n{name} = {value!r}  #" in params.source  # the defaults are the grader's settings
    for name in ("inputs_path", "labels_path", "output_dir", "inputs", "eps", "quick"):
        assert f"{name} = " in params.source
    tests = {k for k, c in cells.items() if c.metadata.get("nbgrader", {}).get("grade")}
    assert tests == {"test_noise_train", "test_counts", "test_certify", "test_artifact"}
    for key in tests:
        meta = cells[key].metadata["nbgrader"]
        assert meta["locked"] and not meta["solution"] and meta["points"] > 0
    for key in ("noise_train", "sample_counts", "certify", "final_training"):
        assert cells[key].metadata["nbgrader"]["solution"]
        assert "### BEGIN SOLUTION" in cells[key].source and "### END SOLUTION" in cells[key].source
    assert all("### BEGIN HIDDEN TESTS" in cells[k].source for k in tests - {"test_artifact"})
    ids = [c.metadata["nbgrader"]["grade_id"] for c in nb.cells if "nbgrader" in c.metadata]
    assert len(ids) == len(set(ids))


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """The source notebook (quick) on the hidden inputs the kind prepares, scored by the kind."""
    out = tmp_path_factory.mktemp("a09-run")
    nb, error, produced, prepared, config = run_unit(ASSIGNMENT, out, SECRET)
    result = KIND.score(config, produced, prepared) if error is None else None
    return {"nb": nb, "error": error, "produced": produced, "prepared": prepared, "config": config,
            "result": result, "dir": out}


def test_source_notebook_passes_its_tests_and_scores_above_the_pass_mark(ran):
    assert ran["error"] is None, f"{ran['error'].ename}: {ran['error'].evalue}"
    assert cell_errors(ran["nb"]) == []
    assert sorted(ran["produced"]) == sorted(FILES)
    prepared, res = ran["prepared"], ran["result"]
    assert sorted(prepared.inputs) == ["inputs.npy"] and prepared.input_params() == {"inputs_path": "inputs.npy"}
    assert prepared.plain_params() == {"sigma": 0.5, "n0": 100, "n": 1000, "alpha": 0.001}
    n = len(prepared.inputs["inputs.npy"])
    assert np.load(ran["produced"]["predictions.npy"]).shape == (n,)
    text = printed_text(ran["nb"])
    assert "15 epochs" in text and "certified accuracy on dev" in text and "half-plane" in text
    assert res.problems == [] and res.passed and res.score >= ran["config"].pass_score, res.parts
    m = res.metrics
    assert m["certified_accuracy_r0"] > m["certified_accuracy_r0_25"] > m["certified_accuracy_r0_5"] > 0.2
    assert m["unsound_claims"] == 0 and m["soundness"] == 1.0 and 0.9 < m["tightness"] < 1.1
    assert m["claims"] > 0.7 * n
    line = next(p.reason for p in res.parts if p.name == "public: your certificates")
    assert "0 unsound" in line and "inputs certified" in line


def test_scoring_is_deterministic(ran):
    again = KIND.score(ran["config"], ran["produced"], ran["prepared"])
    assert again.score == ran["result"].score and again.metrics == ran["result"].metrics


# -- the released notebook ------------------------------------------------------------------------
def test_released_notebook_stops_at_the_stubs_and_writes_nothing(tmp_path):
    (tmp_path / "course").mkdir()
    released = release(NOTEBOOK, A, tmp_path / "course")
    text = released.read_text(encoding="utf-8")
    for marker in ("BEGIN SOLUTION", "BEGIN HIDDEN TESTS", "beta.ppf(alpha, k.numpy()", "_Counting(plane)",
                   "repeat_interleave(num)"):
        assert marker not in text
    cells = by_grade_id(nbformat.read(released, as_version=4))
    for key in ("noise_train", "sample_counts", "certify", "final_training"):
        assert "raise NotImplementedError" in cells[key].source
    assert "def certify(module, x, sigma, n0, n, alpha, gen, batch_size=10000):" in cells["certify"].source
    assert "epochs = 15 if quick else 60" in cells["final_training"].source
    assert "HalfPlane" in cells["test_certify"].source  # the visible tests stay
    nb, error = execute(released, tmp_path, quick=True)
    assert error is not None and error.ename == "NotImplementedError"
    # the visible tests report the missing functions and execution goes on (raises-exception tag),
    # then the empty final training stops the run before anything is saved
    assert cell_errors(nb) == [("test_noise_train", "NotImplementedError"), ("test_counts", "NotImplementedError"),
                               ("test_certify", "NotImplementedError"), ("final_training", "NotImplementedError")]
    assert by_grade_id(nb)["save_model"].execution_count is None
    assert not any((tmp_path / "output").iterdir())


# -- the scorer on crafted artifacts ---------------------------------------------------------------
@pytest.fixture(scope="module")
def crafted(ran, tmp_path_factory):
    """Certificates written here (maestro's RandomizedSmoothing, its own seed) for the reference
    weights and for the normally trained zoo mlp-digits."""
    import maestro
    from maestro.defenses import RandomizedSmoothing

    root = tmp_path_factory.mktemp("a09-crafted")
    x = ran["prepared"].state.x
    zoo = {k: torch.where(v.abs() < torch.finfo(torch.float32).tiny, torch.zeros_like(v), v)
           for k, v in maestro.models.load("mlp-digits").model.state_dict().items()}  # subnormals: slow
    certs = {}
    for name, weights in (("ref", load_file(str(ran["produced"]["base_model.safetensors"]))), ("zoo", zoo)):
        module = maestro.models.load("mlp-digits").model
        module.load_state_dict(weights)
        wrapped = maestro.models.wrap(module.eval(), num_classes=10, input_shape=(1, 8, 8))
        pred, radius = RandomizedSmoothing(wrapped, 0.5, n0=100, n=1000, alpha=0.001, seed=11).certify(x)
        save_file({k: v.contiguous() for k, v in weights.items()}, str(root / f"{name}.safetensors"))
        certs[name] = (pred.numpy().astype(np.int64), radius.numpy().astype(np.float32))
    return {"root": root, "certs": certs, "n": len(x)}


def score(ran, crafted, tmp_path, *, weights="ref", pred=None, radius=None, files=FILES, raw=None):
    """Score the weights ``weights`` with the certificates (pred, radius) — by default the honest
    ones for those weights; ``raw``: {file: bytes} written as they are instead."""
    d = tmp_path / "art"
    d.mkdir(exist_ok=True)
    honest = crafted["certs"][weights]
    arrays = {"base_model.safetensors": None, "predictions.npy": honest[0] if pred is None else pred,
              "radii.npy": honest[1] if radius is None else radius}
    for name in files:
        if raw and name in raw:
            (d / name).write_bytes(raw[name])
        elif name == "base_model.safetensors":
            (d / name).write_bytes((crafted["root"] / f"{weights}.safetensors").read_bytes())
        else:
            np.save(d / name, arrays[name])
    return KIND.score(ran["config"], {f: d / f for f in files}, ran["prepared"])


def _terms(res, *names):
    return [p for p in res.parts if p.name.split(": ", 1)[-1] in names]


CERT_TERMS = ("tightness of your certificates", "soundness of your certificates")


def test_honest_certificates_from_maestro_agree_with_the_grader(ran, crafted, tmp_path):
    res = score(ran, crafted, tmp_path)
    assert res.score == pytest.approx(ran["result"].score, abs=2) and res.passed
    assert res.metrics["unsound_claims"] == 0 and 0.9 < res.metrics["tightness"] < 1.1


def test_inflated_certificates_are_refuted_and_cost_points(ran, crafted, tmp_path):
    pred, radius = crafted["certs"]["ref"]
    doubled = score(ran, crafted, tmp_path, radius=radius * 2)  # sigma forgotten (sigma = 0.5)
    m = doubled.metrics
    assert m["claims"] > 0.7 * crafted["n"] and m["unsound_claims"] > 0.7 * m["claims"]
    assert m["tightness"] < 0.2 and all(p.points == 0 for p in _terms(doubled, *CERT_TERMS))
    assert doubled.score < ran["config"].pass_score
    line = next(p.reason for p in doubled.parts if p.name == "public: your certificates")
    assert re.search(r"\d+ unsound: \d+ larger than n samples can ever certify, \d+ refuted by the grader's "
                     r"samples at the input, \d+ refuted at an attack point", line), line
    timid = score(ran, crafted, tmp_path, radius=radius * 0.5)  # sound, but half the radius
    assert timid.metrics["unsound_claims"] == 0 and 0.4 < timid.metrics["tightness"] < 0.6
    assert doubled.score < timid.score < ran["result"].score


def test_abstaining_everywhere_is_sound_but_earns_no_certificate_points(ran, crafted, tmp_path):
    n = crafted["n"]
    res = score(ran, crafted, tmp_path, pred=np.full(n, -1, np.int64), radius=np.zeros(n, np.float32))
    assert res.metrics["claims"] == 0 and res.metrics["soundness"] == 1.0 and res.metrics["tightness"] == 0
    assert all(p.points == 0 for p in _terms(res, *CERT_TERMS))
    assert res.score == pytest.approx(60, abs=3) and not res.passed  # the model's points only


def test_the_normally_trained_model_scores_below_the_pass_mark(ran, crafted, tmp_path):
    res = score(ran, crafted, tmp_path, weights="zoo")
    m = res.metrics
    assert m["certified_accuracy_r0_25"] < 0.5 and m["certified_accuracy_r0_5"] < 0.15
    assert m["certified_accuracy_r0_5"] < ran["result"].metrics["certified_accuracy_r0_5"] - 0.2
    assert m["unsound_claims"] == 0  # honest certificates of a weak model: sound, just small
    assert 35 < res.score < ran["config"].pass_score


@pytest.mark.parametrize("case, words", [
    ("int32", "predictions.npy has dtype int32; expected int64"),
    ("float classes", "predictions.npy has dtype float32; expected int64"),
    ("short", "predictions.npy has shape (10,)"),
    ("float64 radii", "radii.npy has dtype float64; expected float32"),
    ("class 10", "classes must be -1 (abstain) or 0..9; rows 3 are not"),
    ("nan", "radii must be finite and ≥ 0; rows 0, 1 are not"),
    ("negative", "radii must be finite and ≥ 0; rows 5 are not"),
    ("abstain with a radius", "its radius must be 0; rows 2 abstain"),
    ("pickle", "predictions.npy"),
])
def test_bad_certificates_are_refused_with_the_reason(ran, crafted, case, words, tmp_path):
    pred, radius = (a.copy() for a in crafted["certs"]["ref"])
    d = tmp_path / "art"
    d.mkdir()
    if case == "int32":
        pred = pred.astype(np.int32)
    elif case == "float classes":
        pred = pred.astype(np.float32)
    elif case == "short":
        pred = pred[:10]
    elif case == "float64 radii":
        radius = radius.astype(np.float64)
    elif case == "class 10":
        pred[3] = 10
    elif case == "nan":
        radius[:2] = np.nan
    elif case == "negative":
        radius[5] = -0.1
    elif case == "abstain with a radius":
        pred[2], radius[2] = -1, 0.3
    if case == "pickle":
        np.save(d / "predictions.npy", np.array([{"class": 1}], dtype=object), allow_pickle=True)
    else:
        np.save(d / "predictions.npy", pred)
    np.save(d / "radii.npy", radius)
    with pytest.raises(ValueError) as info:
        KIND._certificates(ran["config"].unit, {f: d / f for f in FILES[1:]}, ran["prepared"].state)
    assert words in str(info.value), str(info.value)


def test_refused_certificates_still_grade_the_model(ran, crafted, tmp_path):
    pred, radius = crafted["certs"]["ref"]
    bad = radius.copy()
    bad[0] = np.inf
    for res, words in ((score(ran, crafted, tmp_path, radius=bad), "radii must be finite"),
                       (score(ran, crafted, tmp_path, files=FILES[:1]), "predictions.npy was not produced")):
        assert all(words in p.reason for p in _terms(res, *CERT_TERMS)) and words in res.problems[0]
        assert all(p.points == 0 for p in _terms(res, *CERT_TERMS))
        model = [p for p in res.parts if p.max_points > 0 and p not in _terms(res, *CERT_TERMS)]
        assert sum(p.points for p in model) == pytest.approx(60, abs=3)
        line = next(p.reason for p in res.parts if p.name == "public: your certificates")
        assert line.startswith("not checked: ") and words in line


def test_missing_or_refused_weights_score_zero(ran, crafted, tmp_path):
    ref = load_file(str(crafted["root"] / "ref.safetensors"))
    pickled = tmp_path / "pickled.pt"
    torch.save(ref, pickled)
    nan = {k: v.clone() for k, v in ref.items()}
    nan["net.4.weight"][0, 0] = float("nan")
    save_file(nan, str(tmp_path / "nan.safetensors"))
    cases = (
        (score(ran, crafted, tmp_path, files=FILES[1:]), "base_model.safetensors was not produced"),
        (score(ran, crafted, tmp_path, raw={"base_model.safetensors": pickled.read_bytes()}), "pickle"),
        (score(ran, crafted, tmp_path, raw={"base_model.safetensors": (tmp_path / "nan.safetensors").read_bytes()}),
         "NaN or infinite values in net.4.weight"),
    )
    for res, words in cases:
        assert res.score == 0 and not res.passed and res.public_metrics == {"valid": False}
        assert all(words in p.reason for p in res.parts), res.parts[0].reason


def test_gradescope_and_no_hidden_label_in_anything_a_student_sees(ran, crafted, tmp_path):
    labels = "".join(map(str, KIND.hidden_labels(ran["prepared"]).tolist()))
    assert len(labels) == crafted["n"]
    pred, radius = crafted["certs"]["ref"]
    results = [ran["result"], score(ran, crafted, tmp_path, radius=radius * 2),
               score(ran, crafted, tmp_path, files=FILES[:1])]
    before = to_gradescope(ran["result"])
    assert before["output"].startswith("public part: certified accuracy at r = 0 ")
    assert "private part: scored after the deadline" in before["output"]
    assert [r["name"] for r in before["leaderboard"]][:2] == ["certified accuracy r=0 (public)",
                                                              "certified accuracy r=0.25 (public)"]
    assert all(t["visibility"] == "hidden" for t in before["tests"] if t["name"].startswith("private"))
    texts = []
    for res in results:
        texts += [p.reason for p in res.parts] + res.problems
        for deadline in (False, True):
            doc = to_gradescope(res, deadline_passed=deadline)
            json.loads(json.dumps(doc, allow_nan=False))
            texts.append(json.dumps(doc))
        for m in (res.metrics, res.public_metrics, res.private_metrics):
            assert all(v is None or isinstance(v, (bool, int, float)) for v in m.values())
    assert "unsound" in " ".join(texts)
    for text in texts:
        digits = re.sub(r"\D", "", text)
        for start in range(0, len(labels) - 12):
            assert labels[start:start + 12] not in digits


# -- the soundness checks, on a classifier whose certificates are known exactly ----------------------
class HalfPlane(torch.nn.Module):
    """Class 1 where w·x > b: the smoothed classifier is the same half-plane, and the exact
    certified radius of x is its distance to the boundary."""

    def __init__(self, w: torch.Tensor, b: float):
        super().__init__()
        self.w, self.b = w, b

    def forward(self, x):
        z = x.flatten(1) @ self.w - self.b
        return torch.stack([-z, z], 1)


def test_claims_beyond_the_exact_radius_are_refuted_by_the_attack_alone():
    spec = load_config(ASSIGNMENT / "grading.toml").unit
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(64, generator=gen)
    unit = w / w.norm()
    dist = torch.linspace(0.2, 0.7, 12)
    x = (0.5 + dist[:, None] * unit).view(-1, 1, 8, 8)  # inside [0, 1]: the box never blocks the attack
    plane = HalfPlane(w, float(0.5 * w.sum()))  # distance of x to the boundary: dist
    hidden = _Hidden(x, torch.ones(12, dtype=torch.long), np.ones(12, bool), seed=5, num_classes=2)
    # grader's counts that cannot refute anything at x (all n votes for class 1): only the attack can
    grader = _Grader(torch.ones(12, dtype=torch.long), torch.zeros(12, dtype=torch.float64),
                     torch.tensor([[0, spec.n]] * 12))
    pred = torch.ones(12, dtype=torch.long)
    claimed = torch.cat([dist[:6] * 0.9, dist[6:] + 0.3]).double()  # sound, then 0.3 too large
    checks = _check_claims(plane, hidden, spec, grader, pred, claimed)
    assert not checks.over_max.any() and not checks.at_input.any()
    assert checks.by_attack.tolist() == [False] * 6 + [True] * 6
    # with the true counts at x, the same over-claims are already refuted there
    with torch.no_grad():
        from autograder.units.certified import _certify

        real = _certify(plane, hidden, spec)
    assert bool((real.radius <= dist.double() + 0.02).all())  # the grader's own certificates are sound
    checks = _check_claims(plane, hidden, spec, real, pred, claimed)
    assert checks.unsound.tolist() == [False] * 6 + [True] * 6 and checks.at_input[6:].all()
    too_big = torch.full((12,), spec.max_radius() + 0.05, dtype=torch.float64)
    assert _check_claims(plane, hidden, spec, grader, pred, too_big).over_max.all()

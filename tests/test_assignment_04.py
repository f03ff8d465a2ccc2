"""Assignment 04 (PGD adversarial training, a DEFENSE unit): grading.toml's defense tables, the
source notebook (runs, passes its own tests, writes model.safetensors), the version nbgrader
releases (stops at the "not implemented yet" stubs, writes nothing), the trusted scorer on real
weights — the reference solution's (trained here by the notebook's own solution cells), the
undefended zoo model's, gradient-masked, weakly trained and broken ones — and one real sandboxed
``autograde`` run of the reference, the released stub and a pickle submission."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import nbformat
import numpy as np
import pytest

from _notebooks import by_grade_id, cell_errors, execute
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import maestro
from autograder.config import ConfigError, load_config, parse_config
from autograder.scoring import HiddenData, load_weights, score_submission, to_gradescope

ROOT = Path(__file__).resolve().parents[1]
A = "04-adversarial-training"
ASSIGNMENT = ROOT / "assignments" / A
NOTEBOOK = ASSIGNMENT / f"{A}.ipynb"
BIN = Path(sys.executable).parent
SECRET = "maestro-test-course-secret"

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]  # tiny models: one thread









# -- grading.toml -------------------------------------------------------------------------
def _raw():
    return tomllib.loads((ASSIGNMENT / "grading.toml").read_text(encoding="utf-8"))


def test_grading_toml_is_a_defense_of_the_mlp_digits_architecture():
    cfg = load_config(ASSIGNMENT / "grading.toml")
    assert cfg.kind == "defense" and cfg.id == A and (ASSIGNMENT / cfg.notebook.file).is_file()
    spec = cfg.artifact()
    assert (spec.file, spec.format, spec.dtype, spec.architecture) == (
        "model.safetensors", "safetensors", "float32", "mlp-digits")
    assert (cfg.threat.norm, cfg.threat.eps) == ("linf", 0.2)
    labels = [a.label for a in cfg.defense.attacks]
    assert labels == ["FGSM", "PGD-20", "APGD-50", "PGD-20 (margin)", "APGD-50 (margin)", "Square-1000"]
    suite = cfg.defense.suite(cfg.threat.threat_model())
    assert [type(a).__name__ for _, a in suite] == ["FGSM", "PGD", "APGD", "PGD", "APGD", "SquareAttack"]
    assert {t.metric for t in cfg.terms} == {"clean_accuracy", "robust_accuracy"}
    robust = next(t for t in cfg.terms if t.metric == "robust_accuracy")
    assert robust.requires == "clean accuracy"
    assert sum(t.points for t in cfg.terms) == cfg.max_score and 0 < cfg.pass_score < cfg.max_score
    with pytest.raises(ValueError, match="model weights"):
        spec.expected_shape((3, 1, 8, 8))


@pytest.mark.parametrize("edit, words", [
    (lambda r: r["defense"]["attacks"].append({"attack": "Fireball"}), "attack: must be one of"),
    (lambda r: r["defense"]["attacks"].append({"attack": "PGD", "steps": 0}), "PGD: steps must be"),
    (lambda r: r["defense"]["attacks"].append({"attack": "PGD", "stepz": 3}), "PGD:"),
    (lambda r: r["defense"]["attacks"].append({"attack": "PGD", "steps": 20}), "labels must be unique"),
    (lambda r: r["defense"]["attacks"].append({"attack": "PGD", "targeted": True}), "untargeted"),
    (lambda r: r["defense"].update(attacks=[]), "attacks is empty"),
    (lambda r: r["defense"].update(colour="red"), "[defense] unknown key(s) colour"),
    (lambda r: r.pop("defense"), "[defense] missing"),
    (lambda r: r["assignment"].update(kind="attack"), "[artifacts.weights] file"),
    (lambda r: r["assignment"].update(kind="offense"), "[assignment] kind"),
    (lambda r: r.update(artifacts={"x_adv": {"file": "x_adv.npy"}}), "grades a .safetensors file first"),
    (lambda r: r["artifacts"]["weights"].update(file="model.pt"), "[artifacts.weights] file"),
    (lambda r: r["artifacts"]["weights"].update(format="npy"), "format must be 'safetensors'"),
    (lambda r: r["artifacts"]["weights"].update(architecture="lstm-tweets"), "not an image model"),
    (lambda r: r["artifacts"]["weights"].update(architecture="resnet-9000"), "must name a model of the zoo"),
    (lambda r: r["threat"].update(norm="l0"), "a defense is attacked under linf or l2"),
])
def test_bad_defense_configs_fail_with_a_clear_message(edit, words):
    raw = _raw()
    edit(raw)
    with pytest.raises(ConfigError) as info:
        parse_config(raw, where="grading.toml")
    assert words in str(info.value) and "grading.toml" in str(info.value), str(info.value)


def test_an_attack_config_may_not_have_a_defense_table():
    raw = tomllib.loads((ROOT / "assignments" / "01-whitebox" / "grading.toml").read_text(encoding="utf-8"))
    raw["defense"] = {"attacks": [{"attack": "FGSM"}]}
    with pytest.raises(ConfigError, match=r"\[defense\] is only for"):
        parse_config(raw)


# -- the source notebook ------------------------------------------------------------------
def test_source_notebook_is_valid_nbgrader_format():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    cells = by_grade_id(nb)
    assert "parameters" in cells["parameters"].metadata.get("tags", [])
    for name in ("inputs_path", "labels_path", "output_dir", "eps", "quick"):
        assert f"{name} = " in cells["parameters"].source
    tests = {k for k, c in cells.items() if c.metadata.get("nbgrader", {}).get("grade")}
    assert tests == {"test_pgd_perturb", "test_training", "test_artifact"}
    for key in tests:
        meta = cells[key].metadata["nbgrader"]
        assert meta["locked"] and not meta["solution"] and meta["points"] > 0
    for key in ("pgd_perturb", "adversarial_train", "final_training"):
        assert cells[key].metadata["nbgrader"]["solution"]
        assert "### BEGIN SOLUTION" in cells[key].source and "### END SOLUTION" in cells[key].source
    assert all("### BEGIN HIDDEN TESTS" in cells[k].source for k in ("test_pgd_perturb", "test_training"))
    ids = [c.metadata["nbgrader"]["grade_id"] for c in nb.cells if "nbgrader" in c.metadata]
    assert len(ids) == len(set(ids))


def test_source_notebook_passes_its_tests_and_writes_weights(tmp_path):
    nb, error = execute(NOTEBOOK, tmp_path, quick=True)
    assert error is None, f"{error.ename}: {error.evalue}"
    assert cell_errors(nb) == []
    cells = by_grade_id(nb)
    for key in ("test_pgd_perturb", "test_training", "test_artifact"):
        assert cells[key].execution_count is not None
    weights = load_file(str(tmp_path / "output" / "model.safetensors"))
    expected = maestro.models.load("mlp-digits").model.state_dict()
    assert {k: tuple(v.shape) for k, v in weights.items()} == {k: tuple(v.shape) for k, v in expected.items()}
    printed = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "10 epochs" in printed and "worst case over the suite" in printed


# -- the released notebook -------------------------------------------------------------------
@pytest.fixture(scope="module")
def course(tmp_path_factory):
    """A course made by ``maestro course init`` with this assignment only, and nbgrader's
    ``generate_assignment`` run in it (the stubs carry the course's "not implemented yet")."""
    from autograder.course import init_course

    tmp = tmp_path_factory.mktemp("a04")
    shutil.copytree(ASSIGNMENT, tmp / "assignments" / A)
    course = tmp / "course"
    init_course(course, tmp / "assignments")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run([str(BIN / "nbgrader"), "generate_assignment", A], cwd=course, env=env,
                          capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (course / "release" / A / NOTEBOOK.name).is_file()
    return course


def test_release_strips_solutions_and_hidden_tests(course):
    assert sorted(p.name for p in (course / "release" / A).iterdir()) == [NOTEBOOK.name]  # no grading.toml
    released = course / "release" / A / NOTEBOOK.name
    text = released.read_text(encoding="utf-8")
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "(grad,) = torch.autograd.grad",
                   "sched = torch.optim.lr_scheduler", "_n1 = new_model()", "must be reproducible"):
        assert marker not in text
    cells = by_grade_id(nbformat.read(released, as_version=4))
    for key in ("pgd_perturb", "adversarial_train", "final_training"):
        assert 'raise NotImplementedError("not implemented yet' in cells[key].source
    assert "def pgd_perturb(module, x, y, eps, steps=10, step_size=None, gen=None):" in cells["pgd_perturb"].source
    assert "epochs = 10 if quick else 60" in cells["final_training"].source
    assert "threat.check(xb, x_pgd)" in cells["test_pgd_perturb"].source  # visible tests stay


def test_released_notebook_stops_at_the_stub_and_writes_no_weights(course, tmp_path):
    nb, error = execute(course / "release" / A / NOTEBOOK.name, tmp_path, quick=True)
    assert error is not None and error.ename == "NotImplementedError"
    assert "not implemented yet" in error.evalue
    assert cell_errors(nb) == [("test_pgd_perturb", "NotImplementedError"),
                           ("test_training", "NotImplementedError"),
                           ("final_training", "NotImplementedError")]
    assert by_grade_id(nb)["save"].execution_count is None
    assert not (tmp_path / "output" / "model.safetensors").exists()


# -- the trusted scorer on real weights ------------------------------------------------------
def _solution(**env) -> dict:
    """Run the notebook's solution cells (pgd_perturb, adversarial_train, final_training)."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    cells = by_grade_id(nb)
    ns = {"torch": torch, "F": F, "np": np, "maestro": maestro, **env}
    for key in ("pgd_perturb", "adversarial_train", "final_training"):
        exec(compile(cells[key].source, f"<{A}:{key}>", "exec"), ns)
    return ns


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    cfg = load_config(ASSIGNMENT / "grading.toml")
    model = maestro.models.load(cfg.model)
    hidden = HiddenData.load(cfg, SECRET)
    info = maestro.models.info(cfg.model)
    from maestro.models.archs import build_arch

    def new_model():
        return build_arch(info["arch"], info["config"])

    folder = tmp_path_factory.mktemp("weights")
    train = maestro.datasets.load("digits", split="train")
    with torch.random.fork_rng():
        # the reference: the notebook's solution cells as graded (quick = False: 60 epochs)
        ns = _solution(new_model=new_model, train=train, eps=cfg.threat.eps, quick=False)
        torch.manual_seed(0)  # a weak defense: 3 epochs of the same training
        weak = new_model()
        ns["adversarial_train"](weak, train, cfg.threat.eps, epochs=3, steps=5)
    ref = {k: v.detach().contiguous() for k, v in ns["robust_model"].state_dict().items()}
    zoo = {k: v.detach().contiguous() for k, v in model.model.state_dict().items()}
    save_file(ref, str(folder / "ref.safetensors"))
    save_file(zoo, str(folder / "zoo.safetensors"))
    save_file({k: v.detach().contiguous() for k, v in weak.state_dict().items()}, str(folder / "weak.safetensors"))
    return {"cfg": cfg, "model": model, "hidden": hidden, "ref": ref, "zoo": zoo, "dir": folder,
            "new_model": new_model}


def score(setup, tensors=None, *, path=None, name="model.safetensors"):
    if path is None and tensors is not None:
        path = setup["dir"] / f"case-{len(list(setup['dir'].iterdir()))}" / name
        path.parent.mkdir()
        save_file(tensors, str(path))
    artifacts = {} if path is None else {name: path}
    return score_submission(setup["cfg"], artifacts, setup["hidden"], setup["model"])


def _robust_terms(res):
    return [p for p in res.parts if p.name.endswith(": robust accuracy")]


def test_reference_weights_pass(setup):
    res = score(setup, path=setup["dir"] / "ref.safetensors")
    cfg = setup["cfg"]
    assert res.passed and res.score >= max(cfg.pass_score, 90) and res.problems == []
    assert res.kind == "defense" and res.max_score == sum(p.max_points for p in res.parts) == cfg.max_score
    for m in (res.public_metrics, res.private_metrics):
        assert m["valid"] and m["clean_accuracy"] >= 0.95 and m["robust_accuracy"] >= 0.40
        assert m["n"] > 80 and m["queries"] is None
    assert res.metrics["robust_accuracy"] <= res.metrics["clean_accuracy"]
    assert 0 < res.metrics["median_linf"] <= cfg.threat.eps + 1e-6
    suite = [p for p in res.parts if "attack suite" in p.name]
    assert [p.name for p in suite] == ["public: robustness under the attack suite",
                                       "private: robustness under the attack suite"]
    assert all(p.max_points == 0 and "Square-1000" in p.reason and "PGD-20 (margin)" in p.reason for p in suite)
    again = score(setup, path=setup["dir"] / "ref.safetensors")
    assert again.score == res.score and again.metrics == res.metrics  # the suite is deterministic


def test_undefended_and_weakly_trained_weights_score_in_order(setup):
    ref = score(setup, path=setup["dir"] / "ref.safetensors")
    zoo = score(setup, path=setup["dir"] / "zoo.safetensors")
    weak = score(setup, path=setup["dir"] / "weak.safetensors")
    assert zoo.metrics["clean_accuracy"] > 0.9 and zoo.metrics["robust_accuracy"] < 0.05
    assert all(p.points == 0 for p in _robust_terms(zoo))  # only the clean-accuracy points
    assert 0 < zoo.score <= 25 < weak.score < setup["cfg"].pass_score <= ref.score
    assert zoo.problems == weak.problems == []


def test_gradient_masking_by_scaled_logits_does_not_hide_the_undefended_model(setup):
    masked = dict(setup["zoo"])
    for key in ("net.6.weight", "net.6.bias"):  # the last layer ×1e4: same predictions, CE gradients underflow
        masked[key] = setup["zoo"][key] * 1e4
    module = setup["new_model"]()
    module.load_state_dict(masked)
    x, y = setup["hidden"].x.clone().requires_grad_(True), setup["hidden"].y
    logits = module(x)
    (grad,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), x)
    right = logits.argmax(1) == y
    flat = grad.flatten(1).abs().amax(1) == 0  # the cross-entropy attacks are blind here
    assert bool(flat[right].all())
    res = score(setup, masked)
    zoo = score(setup, path=setup["dir"] / "zoo.safetensors")
    assert res.metrics["clean_accuracy"] == zoo.metrics["clean_accuracy"]
    assert res.metrics["robust_accuracy"] < 0.05 and res.score <= zoo.score + 1
    line = next(p.reason for p in res.parts if p.name == "public: robustness under the attack suite")
    after = dict(re.findall(r"(PGD-20|APGD-50|PGD-20 \(margin\)) (\d+\.\d)%", line))
    assert float(after["APGD-50"]) > 80 > 10 > float(after["PGD-20 (margin)"])  # the margin loss breaks it


def test_a_constant_classifier_scores_zero(setup):
    const = {k: torch.zeros_like(v) for k, v in setup["ref"].items()}
    const["net.6.bias"][7] = 1.0  # "7" for everything: unbreakable, and useless
    res = score(setup, const)
    assert res.metrics["clean_accuracy"] < 0.3 and res.metrics["robust_accuracy"] > 0.05
    assert res.score == 0
    assert all("counts only once 'clean accuracy'" in p.reason for p in _robust_terms(res))


@pytest.mark.parametrize("case, words", [
    ("narrow", "wrong shapes: net.2.weight is [128, 64], expected [256, 64]"),
    ("missing", "missing tensors: net.6.bias"),
    ("extra", "unexpected tensors: net.8.weight"),
    ("prefixed", "missing tensors: net.2.weight"),
    ("float64", "must be float32 (F32); net.2.bias is F64"),
    ("nan", "NaN or infinite values in net.4.weight"),
    ("inf", "NaN or infinite values in net.6.bias"),
])
def test_weights_that_do_not_fit_score_zero_with_the_reason(setup, case, words):
    ref = setup["ref"]
    if case == "narrow":
        from maestro.models.archs import build_arch

        info = maestro.models.info("mlp-digits")
        tensors = build_arch(info["arch"], {**info["config"], "hidden": [128, 128]}).state_dict()
    elif case == "missing":
        tensors = {k: v for k, v in ref.items() if k != "net.6.bias"}
    elif case == "extra":
        tensors = {**ref, "net.8.weight": torch.zeros(3, 3)}
    elif case == "prefixed":
        tensors = {f"module.{k}": v for k, v in ref.items()}
    elif case == "float64":
        tensors = {k: v.double() for k, v in ref.items()}
    else:
        tensors = {k: v.clone() for k, v in ref.items()}
        key = "net.4.weight" if case == "nan" else "net.6.bias"
        tensors[key][0] = float("nan") if case == "nan" else float("inf")
    res = score(setup, {k: v.contiguous() for k, v in tensors.items()})
    assert res.score == 0 and not res.passed
    assert res.public_metrics == res.private_metrics == {"valid": False}
    assert all(words in p.reason and "model.safetensors" in p.reason for p in res.parts), res.parts[0].reason


def test_pickles_garbage_and_oversized_files_are_refused(setup, tmp_path):
    ref = setup["ref"]
    cases = {}
    for i, (kind, write) in enumerate([
        ("zip pickle", lambda p: torch.save(ref, p)),
        ("legacy pickle", lambda p: torch.save(ref, p, _use_new_zipfile_serialization=False)),
        ("garbage", lambda p: p.write_bytes(b"\x07" * 64)),
        ("oversized", lambda p: save_file({**ref, "junk": torch.zeros(2_000_000)}, str(p))),
    ]):
        path = tmp_path / str(i) / "model.safetensors"
        path.parent.mkdir()
        write(path)
        cases[kind] = score(setup, path=path)
    for kind, words in (("zip pickle", "PyTorch/pickle file"), ("legacy pickle", "PyTorch/pickle file"),
                        ("garbage", "not a valid .safetensors file"), ("oversized", "much larger")):
        res = cases[kind]
        assert res.score == 0 and all(words in p.reason for p in res.parts), (kind, res.parts[0].reason)


def test_missing_file_and_symlink_score_zero(setup, tmp_path):
    link = tmp_path / "model.safetensors"
    link.symlink_to(setup["dir"] / "ref.safetensors")
    for res, word in ((score(setup), "not produced"), (score(setup, path=tmp_path / "x" / "model.safetensors"),
                      "missing"), (score(setup, path=link), "symlink")):
        assert res.score == 0 and all(word in p.reason for p in res.parts), res.parts[0].reason
    with pytest.raises(ValueError, match="symlink"):
        info = maestro.models.info("mlp-digits")
        load_weights(link, arch=info["arch"], config=info["config"])


def test_gradescope_and_feedback_of_a_defense(setup):
    from autograder.driver import feedback_html

    res = score(setup, path=setup["dir"] / "ref.safetensors")
    before, after = to_gradescope(res), to_gradescope(res, deadline_passed=True)
    for doc in (before, after):
        json.loads(json.dumps(doc, allow_nan=False))
        assert doc["score"] == pytest.approx(sum(t["score"] for t in doc["tests"]), abs=1e-3)
        assert all(0 <= t["score"] <= t["max_score"] for t in doc["tests"])
    assert before["output"].startswith("public part: clean accuracy ") and "robust accuracy" in before["output"]
    assert "private part: scored after the deadline" in before["output"]
    assert "private part: clean accuracy" in after["output"]
    assert [r["name"] for r in before["leaderboard"]] == ["robust accuracy (public)", "clean accuracy (public)"]
    hidden_tests = [t for t in before["tests"] if t["visibility"] == "hidden"]
    assert hidden_tests and all(t["name"].startswith("private") for t in hidden_tests)
    page = feedback_html(setup["cfg"], "ana", before, res, status="ok", reason="", graded_at="now")
    assert "robust accuracy" in page and "50 / 50" in page and "Square-1000" in page


def test_no_hidden_label_in_anything_a_student_sees(setup):
    hidden = setup["hidden"]
    results = [score(setup, path=setup["dir"] / f) for f in ("ref.safetensors", "zoo.safetensors",
                                                             "weak.safetensors")]
    results.append(score(setup))
    texts = []
    for res in results:
        texts += [p.reason for p in res.parts] + res.problems
        for deadline in (False, True):
            texts.append(json.dumps(to_gradescope(res, deadline_passed=deadline)))
        for m in (res.metrics, res.public_metrics, res.private_metrics):
            assert all(v is None or isinstance(v, (bool, int, float)) for v in m.values())
    labels = "".join(map(str, hidden.y.tolist()))
    for text in texts:
        digits = re.sub(r"\D", "", text)
        for start in range(0, len(labels) - 10):
            assert labels[start:start + 10] not in digits


# -- one real, sandboxed autograde run ---------------------------------------------------------
def test_autograde_the_reference_the_stub_and_a_pickle(course):
    from autograder.course import gradebook
    from autograder.driver import autograde
    from autograder.sandbox import probe_bwrap

    if not probe_bwrap()[0]:
        pytest.skip("bubblewrap cannot run here")
    name = NOTEBOOK.name
    sub = course / "submitted"
    for who, src in (("ref", course / "source" / A / name), ("stub", course / "release" / A / name)):
        (sub / who / A).mkdir(parents=True)
        shutil.copy(src, sub / who / A / name)
    nb = nbformat.read(course / "source" / A / name, as_version=4)
    cells = by_grade_id(nb)
    cells["final_training"].source = "robust_model = new_model()  # untrained"
    cells["save"].source = "torch.save(robust_model.state_dict(), out / 'model.safetensors')  # a pickle"
    (sub / "pickle" / A).mkdir(parents=True)
    nbformat.write(nb, sub / "pickle" / A / name)

    out = {o.student: o for o in autograde(course, A, workers=2, progress=False)}
    assert {w: o.state for w, o in out.items()} == {"pickle": "failed", "ref": "graded", "stub": "failed"}

    def results(who):
        return json.loads((course / "autograded" / who / A / "results.json").read_text(encoding="utf-8"))

    ref, stub, pickle = results("ref"), results("stub"), results("pickle")
    meta = ref["extra_data"]["maestro"]
    assert meta["status"] == "ok" and meta["sandbox"] == "bwrap" and meta["passed"]
    assert ref["score"] >= 70 and ref["leaderboard"][0]["name"] == "robust accuracy (public)"
    assert stub["score"] == pickle["score"] == 0.0
    assert "not implemented yet" in stub["tests"][0]["output"] and "model.safetensors" in stub["tests"][0]["output"]
    assert "not a valid .safetensors file" in pickle["tests"][0]["output"]
    page = (course / "autograded" / "ref" / A / "feedback.html").read_text(encoding="utf-8")
    assert "robust accuracy" in page and "PGD-20 (margin)" in page
    with gradebook(course) as gb:
        book = {s.student_id: s.score for s in gb.assignment_submissions(A)}
    assert book["ref"] == pytest.approx(ref["score"] / 100 * 25, abs=1e-3)  # 25 notebook points
    assert book["stub"] == book["pickle"] == 0.0
    from autograder.course import read_secret

    labels = HiddenData.load(load_config(course / "source" / A / "grading.toml"), read_secret(course)).y
    for who in ("ref", "stub", "pickle"):
        for text in ((course / "autograded" / who / A / "feedback.html").read_text(encoding="utf-8"),
                     json.dumps(results(who))):
            assert "".join(map(str, labels[:12].tolist())) not in re.sub(r"\D", "", text)

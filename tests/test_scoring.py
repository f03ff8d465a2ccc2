"""The trusted scorer (autograder/scoring.py) and grading.toml loader (autograder/config.py),
on the real lenet-mnist model and the real hidden MNIST split (a test course secret).

The reference solution is taken from the assignment's source notebook itself (its solution
cells), so the thresholds in grading.toml are checked against the code students are compared to.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

import maestro
from autograder.config import ConfigError, load_config, parse_config
from autograder.scoring import (
    HiddenData,
    load_artifact,
    public_mask,
    score_submission,
    to_gradescope,
)

ROOT = Path(__file__).resolve().parents[1]
ASSIGNMENT = ROOT / "assignments" / "01-whitebox"
SECRET = "maestro-test-course-secret"
pytestmark = pytest.mark.slow  # the module fixture runs the reference attack (~5-10 s)


LINF_TERMS = ("attack success rate", "perturbation size")  # the terms of x_adv.npy (the others: x_adv_l2, x_adv_targeted)


def solution_namespace(**env) -> dict:
    """Run the notebook's solution cells (the attacks, then the final attacks when ``env`` has
    the images) in a namespace with ``env``."""
    nb = json.loads((ASSIGNMENT / "01-whitebox.ipynb").read_text(encoding="utf-8"))
    cells = {c["metadata"].get("nbgrader", {}).get("grade_id"):
             "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
             for c in nb["cells"]}
    ns = {"torch": torch, "np": np, "maestro": maestro, **env}
    for grade_id in ("fgsm", "pgd", "pgd_l2", "pgd_targeted", "final_attack", "final_l2", "final_targeted"):
        if grade_id.startswith("final") and "x" not in env:
            continue
        exec(compile(cells[grade_id], f"<01-whitebox:{grade_id}>", "exec"), ns)
    return ns


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    cfg = load_config(ASSIGNMENT / "grading.toml")
    model = maestro.models.load(cfg.model)
    hidden = HiddenData.load(cfg, SECRET).with_targets(cfg, model, SECRET)
    threat = cfg.threat.threat_model()
    threat_l2 = cfg.threat_for(cfg.artifact("x_adv_l2")).threat_model()
    x = hidden.x
    y_pred = model.predict(x)  # what the notebook attacks: never the hidden labels
    ns = solution_namespace(model=model, threat=threat, threat_l2=threat_l2, x=x, y=y_pred,
                            target=hidden.targets, steps=40)
    folder = tmp_path_factory.mktemp("artifacts")
    ref = ns["x_adv"].detach().float().numpy()
    fgsm = ns["fgsm"](model, x, y_pred, threat).numpy()
    np.save(folder / "ref.npy", ref)
    np.save(folder / "fgsm.npy", fgsm)
    np.save(folder / "ref_l2.npy", ns["x_adv_l2"].detach().float().numpy())
    np.save(folder / "ref_targeted.npy", ns["x_adv_targeted"].detach().float().numpy())
    return {"cfg": cfg, "model": model, "hidden": hidden, "ref": ref, "fgsm": fgsm,
            "dir": folder, "threat": threat, "threat_l2": threat_l2, "y_pred": y_pred, "ns": ns}


def score(setup, array=None, *, path=None, name="x_adv.npy", full=False):
    """Score ``array`` (or the file ``path``) as the artifact ``name``; ``full``: with the
    reference solution's other artifacts beside it (else they are missing)."""
    if path is None and array is not None:
        path = setup["dir"] / f"case-{abs(hash(array.tobytes())) % 10**8}.npy"
        np.save(path, array)
    artifacts = {}
    if full:
        artifacts = {"x_adv.npy": setup["dir"] / "ref.npy", "x_adv_l2.npy": setup["dir"] / "ref_l2.npy",
                     "x_adv_targeted.npy": setup["dir"] / "ref_targeted.npy"}
    if path is not None:
        artifacts[name] = path
    return score_submission(setup["cfg"], artifacts, setup["hidden"], setup["model"])


def parts_of(result, label, terms=LINF_TERMS):
    """The parts of one half (public / private) for the score terms ``terms`` (default: x_adv's)."""
    return [p for p in result.parts if p.name.startswith(label + ":") and p.name.split(": ", 1)[1] in terms]


def linf(result):
    """The parts (both halves) of x_adv.npy's terms."""
    return [p for p in result.parts if p.name.split(": ", 1)[1] in LINF_TERMS]


# -- the formula on real attacks -----------------------------------------------------------
def test_reference_solution_passes(setup):
    res = score(setup, full=True)
    cfg = setup["cfg"]
    assert res.score >= cfg.pass_score and res.passed
    assert res.max_score == cfg.max_score == sum(p.max_points for p in res.parts)
    assert res.metrics["valid"] and res.metrics["success_rate"] >= 0.94
    assert res.metrics["median_linf"] <= cfg.threat.eps + 1e-6
    assert res.metrics["x_adv_l2.success_rate"] >= 0.9
    assert res.metrics["x_adv_l2.median_l2"] <= 2.5 + 1e-5
    assert res.metrics["x_adv_targeted.targeted_success_rate"] >= 0.5
    assert res.metrics["queries"] is None
    assert res.problems == []


def test_each_artifact_earns_its_own_terms(setup):
    alone = score(setup, path=setup["dir"] / "ref.npy")  # x_adv only: the L2 and targeted terms earn 0
    full = score(setup, full=True)
    assert alone.score == pytest.approx(sum(p.points for p in linf(full)))
    for p in alone.parts:
        if p.name.split(": ", 1)[1] in LINF_TERMS:
            assert p.points > 0
        else:
            assert p.points == 0 and "was not produced" in p.reason
            assert ("x_adv_l2.npy" if "L2" in p.name else "x_adv_targeted.npy") in p.reason
    assert alone.metrics["valid"] and "x_adv_l2.success_rate" not in alone.metrics
    only_l2 = score(setup, path=setup["dir"] / "ref_l2.npy", name="x_adv_l2.npy")
    assert only_l2.score > 0 and not only_l2.metrics["valid"]  # x_adv (the main one) is missing
    # the whole-set metrics still describe what was handed in
    assert only_l2.metrics["x_adv_l2.success_rate"] >= 0.9 and "success_rate" not in only_l2.metrics
    assert [p.name for p in only_l2.parts if p.points > 0] == ["public: L2 attack success rate",
                                                                "private: L2 attack success rate"]
    assert "x_adv_l2: success_rate = " in only_l2.parts[2].reason


def test_whole_set_metrics_leave_out_an_artifact_that_breaks_the_threat_model(setup):
    """An L2 file over its eps in one row is not scored in the part holding that row, and not on
    the whole set either; x_adv's metrics are unaffected."""
    l2 = np.load(setup["dir"] / "ref_l2.npy")
    x = setup["hidden"].x.numpy()
    row = int(np.flatnonzero(~setup["hidden"].public)[0])  # a private row
    l2[row] = np.clip(x[row] + 0.5 * np.sign(np.random.default_rng(0).standard_normal(x[row].shape)), 0, 1)
    path = setup["dir"] / "l2_over_eps.npy"
    np.save(path, l2)
    artifacts = {"x_adv.npy": setup["dir"] / "ref.npy", "x_adv_l2.npy": path}
    res = score_submission(setup["cfg"], artifacts, setup["hidden"], setup["model"])
    assert res.metrics["valid"] and res.metrics["success_rate"] >= 0.94
    assert not any(k.startswith("x_adv_l2.") for k in res.metrics)
    assert "x_adv_l2.success_rate" in res.public_metrics
    assert not any(k.startswith("x_adv_l2.") for k in res.private_metrics)
    assert any(f"rows {row} of x_adv_l2.npy" in p for p in res.problems)


def test_fgsm_gets_partial_credit_below_pgd(setup):
    ref = score(setup, full=True)
    weak = score(setup, path=setup["dir"] / "fgsm.npy")
    assert 0 < weak.score < setup["cfg"].pass_score < ref.score
    assert weak.metrics["success_rate"] < ref.metrics["success_rate"]
    assert weak.metrics["median_l2"] > ref.metrics["median_l2"]
    assert all(p.points > 0 for p in linf(weak))  # every term earns a little


def test_unmodified_images_score_zero(setup):
    res = score(setup, setup["hidden"].x.numpy().copy())
    assert res.score == 0
    assert res.metrics["success_rate"] == 0
    size = [p for p in res.parts if "perturbation size" in p.name]
    assert size and all("counts only once" in p.reason for p in size)


def test_missing_artifact_scores_zero_with_reason(setup, tmp_path):
    for res in (score(setup), score(setup, path=tmp_path / "x_adv.npy")):
        assert res.score == 0 and not res.passed
        assert all(p.points == 0 for p in res.parts)
        assert all("x_adv.npy" in p.reason and ("not produced" in p.reason or "missing" in p.reason)
                   for p in linf(res))
    res = score(setup, full=True, path=tmp_path / "x_adv.npy")  # the others still count
    assert all(p.points == 0 for p in linf(res)) and res.score > 0


# -- validation: whole-artifact problems -------------------------------------------------
@pytest.mark.parametrize("case", ["short", "extra-axis", "float64", "int"])
def test_wrong_shape_or_dtype_scores_zero(setup, case):
    ref = setup["ref"]
    array = {"short": ref[:-1], "extra-axis": ref[:, None], "float64": ref.astype(np.float64),
             "int": (ref * 255).astype(np.int32)}[case]
    res = score(setup, array)
    assert res.score == 0
    word = "shape" if case in ("short", "extra-axis") else "dtype"
    assert all(word in p.reason for p in linf(res)), res.parts[0].reason


def test_pickles_and_object_arrays_are_refused(setup, tmp_path):
    obj = np.empty(3, dtype=object)
    obj[:] = [1, "a", None]
    np.save(tmp_path / "object.npy", obj, allow_pickle=True)
    # the bytes of a Python pickle (protocol 4 of the int 1), never unpickled here
    (tmp_path / "raw.npy").write_bytes(b"\x80\x04K\x01.")
    for name, word in (("object.npy", "objects"), ("raw.npy", "not a valid .npy")):
        res = score(setup, path=tmp_path / name)
        assert res.score == 0
        assert all(word in p.reason for p in linf(res)), res.parts[0].reason


def test_symlinks_are_refused(setup, tmp_path):
    link = tmp_path / "x_adv.npy"
    link.symlink_to(setup["dir"] / "ref.npy")
    res = score(setup, path=link)
    assert res.score == 0 and all("symlink" in p.reason for p in linf(res))
    with pytest.raises(ValueError, match="symlink"):
        load_artifact(link, dtype="float32", shape=setup["ref"].shape)


def test_oversized_file_is_refused_before_reading(setup, tmp_path):
    path = tmp_path / "big.npy"
    np.save(path, setup["ref"])
    with open(path, "ab") as fh:
        fh.write(b"\0" * 10_000)
    res = score(setup, path=path)
    assert res.score == 0 and all("bytes" in p.reason for p in linf(res))


# -- validation: per-example violations void the part they are in ------------------------
def _rows(setup):
    pub = setup["hidden"].public
    return int(np.flatnonzero(pub)[3]), int(np.flatnonzero(~pub)[5])


@pytest.mark.parametrize("rule", ["finite", "bounds", "norm"])
def test_violations_zero_their_part_and_name_the_rows(setup, rule):
    p_row, q_row = _rows(setup)
    x = setup["hidden"].x.numpy()
    bad = setup["ref"].copy()
    rows = [p_row] if rule != "norm" else [p_row, q_row]
    for r in rows:
        if rule == "finite":
            bad[r, 0, 5, 5] = np.nan
        elif rule == "bounds":
            bad[r, 0, 5, 5] = 1.5
        else:
            bad[r] = np.clip(x[r] + 0.25, 0, 1)
    res = score(setup, bad)
    for label, row in (("public", p_row), ("private", q_row)):
        ps = parts_of(res, label)
        if row in rows:
            assert all(p.points == 0 for p in ps)
            assert all(f"{rule}: rows {row}" in p.reason and "x_adv.npy" in p.reason for p in ps), ps[0].reason
        else:  # the other part is scored as usual
            assert sum(p.points for p in ps) > 0
            assert all("breaks" not in p.reason for p in ps)
    assert res.score < score(setup, path=setup["dir"] / "ref.npy").score


# -- public / private --------------------------------------------------------------------
def test_public_and_private_parts_follow_the_split(setup):
    cfg, hidden = setup["cfg"], setup["hidden"]
    n = len(hidden.y)
    assert hidden.public.sum() == round(cfg.split.public_fraction * n)
    assert np.array_equal(public_mask(n, cfg, SECRET), hidden.public)  # deterministic
    assert not np.array_equal(public_mask(n, cfg, SECRET + "x"), hidden.public)  # secret-dependent
    res = score(setup, path=setup["dir"] / "fgsm.npy")
    assert res.public_metrics["n"] + res.private_metrics["n"] == res.metrics["n"] == n
    assert res.public_metrics["success_rate"] != res.private_metrics["success_rate"]
    # each part's success rate is recomputed by hand on its rows
    model, y = setup["model"], hidden.y
    adv = torch.from_numpy(setup["fgsm"])
    for label, mask in (("public", hidden.public), ("private", ~hidden.public)):
        idx = torch.from_numpy(np.flatnonzero(mask))
        ok = model.predict(hidden.x[idx]) == y[idx]
        hit = ok & (model.predict(adv[idx]) != y[idx])
        m = res.public_metrics if label == "public" else res.private_metrics
        assert m["success_rate"] == pytest.approx(hit.sum().item() / ok.sum().item())
    shares = {lab: sum(p.max_points for p in res.parts if p.name.startswith(lab)) for lab in ("public", "private")}
    assert shares["public"] == pytest.approx(cfg.split.public_weight * cfg.max_score)


# -- Gradescope --------------------------------------------------------------------------
VISIBILITY = {"hidden", "after_due_date", "after_published", "visible"}


def _check_gradescope(doc):
    assert set(doc) >= {"score", "tests"}
    assert isinstance(doc["score"], float)
    for key in ("output", "visibility", "stdout_visibility"):
        assert isinstance(doc.get(key, ""), str)
    assert doc.get("visibility", "visible") in VISIBILITY
    for test in doc["tests"]:
        assert set(test) <= {"score", "max_score", "name", "number", "output", "tags", "visibility",
                             "status", "name_format", "output_format"}
        assert isinstance(test["name"], str) and isinstance(test["output"], str)
        assert isinstance(test["score"], float) and isinstance(test["max_score"], float)
        assert 0 <= test["score"] <= test["max_score"]
        assert test["visibility"] in VISIBILITY
    for row in doc.get("leaderboard", []):
        assert set(row) <= {"name", "value", "order"} and row.get("order", "desc") in ("asc", "desc")
    json.loads(json.dumps(doc, allow_nan=False))  # strict JSON: no NaN
    assert doc["score"] == pytest.approx(sum(t["score"] for t in doc["tests"]), abs=1e-3)


def test_gradescope_results_schema_and_visibility(setup):
    res = score(setup, path=setup["dir"] / "fgsm.npy")
    before, after = to_gradescope(res), to_gradescope(res, deadline_passed=True)
    for doc in (before, after):
        _check_gradescope(doc)
    for t in before["tests"]:
        assert t["visibility"] == ("hidden" if t["name"].startswith("private") else "visible")
    assert all(t["visibility"] == "visible" for t in after["tests"])
    assert "private part: scored after the deadline" in before["output"]
    assert "private part: success" in after["output"]
    _check_gradescope(to_gradescope(score(setup)))  # a missing artifact too


# -- no hidden labels in anything a student can see -----------------------------------------
def test_no_hidden_label_or_data_in_outputs(setup, tmp_path):
    hidden = setup["hidden"]
    bad = setup["ref"].copy()
    bad[np.flatnonzero(hidden.public)[:15], 0, 0, 0] = np.nan
    results = [score(setup, path=setup["dir"] / p) for p in ("ref.npy", "fgsm.npy")]
    results += [score(setup, bad), score(setup)]
    texts = [repr(hidden)]
    for res in results:
        texts += [p.reason for p in res.parts] + res.problems
        for deadline in (False, True):
            texts.append(json.dumps(to_gradescope(res, deadline_passed=deadline)))
        for m in (res.metrics, res.public_metrics, res.private_metrics):
            assert all(v is None or isinstance(v, (bool, int, float)) for v in m.values())
    labels = "".join(map(str, hidden.y.tolist()))
    pixels = {f"{v:.4f}" for v in hidden.x.flatten()[hidden.x.flatten() > 0][:200].tolist()}
    for text in texts:
        digits = re.sub(r"\D", "", text)
        for start in range(0, len(labels) - 8):
            assert labels[start:start + 8] not in digits
        assert not any(p in text for p in pixels if p not in ("1.0000", "0.0000"))
    assert "y=" not in repr(hidden) and str(hidden.y.tolist()[:5])[1:-1] not in repr(hidden)


# -- grading.toml ------------------------------------------------------------------------
def _raw():
    return tomllib.loads((ASSIGNMENT / "grading.toml").read_text())


def test_grading_toml_matches_the_assignment():
    cfg = load_config(ASSIGNMENT / "grading.toml")
    assert (cfg.threat.norm, cfg.threat.eps, cfg.threat.bounds) == ("linf", 0.2, (0.0, 1.0))
    assert cfg.artifact().file == "x_adv.npy" and cfg.artifact().dtype == "float32"
    l2, targeted = cfg.artifact("x_adv_l2"), cfg.artifact("x_adv_targeted")
    assert (cfg.threat_for(l2).norm, cfg.threat_for(l2).eps, cfg.threat_for(l2).bounds) == ("l2", 2.5, (0.0, 1.0))
    assert targeted.targeted and cfg.threat_for(targeted) == cfg.threat
    assert cfg.notebook_params() == {"eps": 0.2, "eps_l2": 2.5}
    assert (ASSIGNMENT / cfg.notebook.file).is_file()
    assert cfg.notebook.labels == "model-predictions"
    assert sum(t.points for t in cfg.terms) == cfg.max_score
    assert 0 < cfg.pass_score < cfg.max_score


@pytest.mark.parametrize("edit, words", [
    (lambda r: r["threat"].pop("eps"), "[threat] eps: missing"),
    (lambda r: r["threat"].update(norm="l3"), "[threat] norm"),
    (lambda r: r["threat"].update(eps="0.2"), "[threat] eps: expected float"),
    (lambda r: r["threat"].update(bounds=[1, 0]), "[threat] bounds"),
    (lambda r: r["assignment"].update(pass_score=150), "[assignment] pass_score"),
    (lambda r: r["assignment"].update(colour="red"), "unknown key(s) colour"),
    (lambda r: r["artifacts"]["x_adv"].update(file="../x.npy"), "[artifacts.x_adv] file"),
    (lambda r: r["artifacts"]["x_adv"].update(shape=[1, -2]), "[artifacts.x_adv] shape"),
    (lambda r: r.pop("artifacts"), "[artifacts.NAME] missing"),
    (lambda r: r["split"].update(public_fraction=1.0), "[split] public_fraction"),
    (lambda r: r["score"]["terms"][0].update(metric="accuracy"), "metric"),
    (lambda r: r["score"]["terms"][0].update(points=50), "add up to 90"),
    (lambda r: r["artifacts"]["x_adv_l2"]["threat"].update(norm="l0"), "[artifacts.x_adv_l2.threat] norm"),
    (lambda r: r["artifacts"]["x_adv_l2"]["threat"].update(param="eps"), "[artifacts.x_adv_l2.threat] param"),
    (lambda r: r["artifacts"]["x_adv_l2"]["threat"].update(colour=1), "unknown key(s) colour"),
    (lambda r: r["artifacts"]["x_adv_targeted"].update(threat={"norm": "l2", "eps": 1, "param": "eps_l2"}),
     "each artifact needs its own parameter name"),
    (lambda r: r["artifacts"]["x_adv_targeted"].update(targeted="yes"), "targeted: expected bool"),
    (lambda r: r["score"]["terms"][2].update(artifact="x_adv_l3"), "artifact: 'x_adv_l3' is not one of"),
    (lambda r: r["score"]["terms"][3].update(artifact="x_adv_l2"), "artifact 'x_adv_l2' is not targeted"),
    (lambda r: r["artifacts"].update({"x-adv": {"file": "x2.npy"}}), "[artifacts.x-adv] the name must be"),
    (lambda r: r["score"]["terms"][0].update(full_at=0.4), "must differ"),
    (lambda r: r["score"]["terms"][1].update(requires="nothing"), "requires 'nothing'"),
    (lambda r: r.update(extra={}), "unknown key(s) extra"),
])
def test_bad_configs_fail_with_a_clear_message(edit, words):
    raw = _raw()
    edit(raw)
    with pytest.raises(ConfigError) as info:
        parse_config(raw, where="grading.toml")
    assert words in str(info.value) and "grading.toml" in str(info.value)


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such grading config"):
        load_config(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("[threat\nnorm = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "bad.toml")


def test_secret_is_required_for_hidden_data(monkeypatch):
    monkeypatch.delenv("MAESTRO_COURSE_SECRET", raising=False)
    with pytest.raises(PermissionError):
        HiddenData.load(load_config(ASSIGNMENT / "grading.toml"), None)
    assert os.environ.get("MAESTRO_COURSE_SECRET") is None


def test_rows_in_the_wrong_order_score_zero_with_a_hint(setup):
    res = score(setup, setup["ref"][::-1].copy())
    assert res.score == 0
    assert all("row order" in p.reason for p in linf(res))


# -- several artifacts: an L2 one with its own threat model, a targeted one -----------------------
def test_an_artifact_is_checked_against_its_own_threat_model(setup):
    x = setup["hidden"].x.numpy()
    p_row = _rows(setup)[0]
    l2 = np.load(setup["dir"] / "ref_l2.npy")
    # within L∞ 0.2 ([threat]) but 3.0 away in L2: breaks x_adv_l2's ball, not [threat]'s
    bad = l2.copy()
    delta = np.zeros_like(x[p_row])
    delta.flat[:225] = 0.2
    bad[p_row] = np.clip(x[p_row] + delta, 0, 1)
    assert np.linalg.norm(bad[p_row] - x[p_row]) > 2.5
    res = score(setup, bad, name="x_adv_l2.npy", full=True)
    public_l2 = parts_of(res, "public", ("L2 attack success rate",))
    assert public_l2[0].points == 0
    assert f"norm: rows {p_row} of x_adv_l2.npy (l2 distance > eps 2.5)" in public_l2[0].reason
    assert parts_of(res, "private", ("L2 attack success rate",))[0].points > 0
    assert all(p.points > 0 for p in linf(res))  # x_adv is not touched by x_adv_l2's problem
    assert any(p.startswith("public part: x_adv_l2.npy breaks") for p in res.problems)
    # the L∞ x_adv, fine under L∞ 0.2, is far outside the L2 ball of 2.5
    far = score(setup, path=setup["dir"] / "fgsm.npy", name="x_adv_l2.npy")
    assert far.score == 0 and "l2 distance > eps 2.5" in far.parts[2].reason


def test_targets_are_secret_and_never_the_models_reading(setup):
    cfg, model = setup["cfg"], setup["model"]
    hidden = setup["hidden"]
    t = hidden.targets
    assert t.dtype == torch.int64 and t.shape == hidden.y.shape
    assert bool((t != setup["y_pred"]).all()) and int(t.min()) >= 0 and int(t.max()) <= 9
    assert len(set(((t - setup["y_pred"]) % 10).tolist())) == 9  # every shift 1..9 occurs
    again = HiddenData.load(cfg, SECRET).with_targets(cfg, model, SECRET)
    assert torch.equal(again.targets, t)
    other = HiddenData.load(cfg, SECRET).with_targets(cfg, model, SECRET + "x")
    assert not torch.equal(other.targets, t)
    with pytest.raises(ValueError, match="targets"):
        score_submission(cfg, {}, HiddenData.load(cfg, SECRET), model)


def test_targeted_success_counts_the_target_class_only(setup):
    hidden, model = setup["hidden"], setup["model"]
    ref = score(setup, path=setup["dir"] / "ref_targeted.npy", name="x_adv_targeted.npy")
    adv = torch.from_numpy(np.load(setup["dir"] / "ref_targeted.npy"))
    for label, mask in (("public", hidden.public), ("private", ~hidden.public)):
        idx = torch.from_numpy(np.flatnonzero(mask))
        ok = model.predict(hidden.x[idx]) == hidden.y[idx]
        on = ok & (model.predict(adv[idx]) == hidden.targets[idx])
        m = ref.public_metrics if label == "public" else ref.private_metrics
        assert m["x_adv_targeted.targeted_success_rate"] == pytest.approx(on.sum().item() / ok.sum().item())
        assert m["x_adv_targeted.success_rate"] >= m["x_adv_targeted.targeted_success_rate"]
    # an untargeted attack misleads almost every digit but rarely into its target
    untargeted = score(setup, path=setup["dir"] / "ref.npy", name="x_adv_targeted.npy")
    m = untargeted.public_metrics  # (no whole-set metrics without x_adv.npy, the main artifact)
    assert m["x_adv_targeted.success_rate"] > 0.9 and m["x_adv_targeted.targeted_success_rate"] < 0.2
    assert untargeted.score < ref.score / 3

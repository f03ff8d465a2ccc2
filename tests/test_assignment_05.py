"""Assignment 05 (HotFlip and a universal trigger against lstm-tweets, a TEXT-ATTACK unit): its
grading.toml, the source notebook run as the grader runs it (inputs from the kind's ``prepare``,
quick=True) and scored by the kind, the released stub, and the trusted scorer on crafted
artifacts — wrong dtype/shape, ids outside the vocabulary, changed padding, too many edits,
[UNK] brought in, over-long or banned triggers, pickles, links, missing files, weak answers —
with reasons a student can act on and no hidden label in anything a student sees."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from _notebooks import by_grade_id, cell_errors, execute, printed_text, release, run_unit
from autograder import units
from autograder.config import ConfigError, load_config, parse_config
from autograder.scoring import to_gradescope
from autograder.units.text import apply_trigger

ROOT = Path(__file__).resolve().parents[1]
A = "05-text-attacks"
UNIT = ROOT / "assignments" / A
NOTEBOOK = UNIT / f"{A}.ipynb"
SECRET = "maestro-test-course-secret"

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]  # tiny models: one thread



def _raw():
    return tomllib.loads((UNIT / "grading.toml").read_text(encoding="utf-8"))


# -- grading.toml --------------------------------------------------------------------------------
def test_grading_toml_is_a_text_attack_on_lstm_tweets():
    cfg = load_config(UNIT / "grading.toml")
    assert cfg.kind == "text-attack" and cfg.id == A and (UNIT / cfg.notebook.file).is_file()
    assert (cfg.model, cfg.dataset, cfg.threat.norm, cfg.threat.eps) == ("lstm-tweets", "tweets", "tokens", 2)
    spec = cfg.unit
    assert (spec.examples, spec.trigger_length, spec.target) == (1000, 3, "positive")
    assert (spec.adv_file, spec.trigger_file) == ("adv_ids.npy", "trigger.npy")
    assert [(a.key, a.dtype, a.shape) for a in cfg.artifacts] == [("adv_ids", "int64", "inputs"),
                                                                  ("trigger", "int64", "any")]
    assert {t.metric for t in cfg.terms} == {"success_rate", "mean_tokens_changed", "trigger_success_rate"}
    assert sum(t.points for t in cfg.terms) == cfg.max_score and 0 < cfg.pass_score < cfg.max_score
    tokens = next(t for t in cfg.terms if t.metric == "mean_tokens_changed")
    assert tokens.full_at < tokens.zero_at <= cfg.threat.eps and tokens.requires == "per-tweet attack success"


@pytest.mark.parametrize("edit, words", [
    (lambda r: r.pop("text"), "[text] missing"),
    (lambda r: r["text"].update(examples=5), "[text] examples: must be ≥ 10"),
    (lambda r: r["text"].update(trigger_length=0), "[text] trigger_length: must lie in [1, 16]"),
    (lambda r: r["text"].update(target=""), "[text] target: must name a class"),
    (lambda r: r["text"].update(colour="red"), "[text] unknown key(s) colour"),
    (lambda r: r["threat"].update(norm="linf", eps=0.1), "norm = \"tokens\""),
    (lambda r: r["threat"].update(eps=1.5), "a whole number ≥ 1"),
    (lambda r: r.pop("threat"), "[threat] missing"),
    (lambda r: r["assignment"].update(model="lenet-mnist"), "attacks a text model of the zoo"),
    (lambda r: r["assignment"].update(dataset="mnist"), "was trained on 'tweets'"),
    (lambda r: r["artifacts"].pop("trigger"), "exactly two artifacts"),
    (lambda r: r["artifacts"]["adv_ids"].update(dtype="float32"), "[artifacts.adv_ids] must be an int64 .npy"),
    (lambda r: r["artifacts"]["trigger"].update(shape="inputs"), "[artifacts.trigger] must be an int64 .npy"),
    (lambda r: r["score"]["terms"][0].update(metric="median_l2"), "metric: must be one of"),
])
def test_bad_text_configs_fail_with_a_clear_message(edit, words):
    raw = _raw()
    edit(raw)
    with pytest.raises(ConfigError) as info:
        parse_config(raw, where="grading.toml")
    assert words in str(info.value) and "grading.toml" in str(info.value), str(info.value)


# -- prepare: what the sandbox gets ----------------------------------------------------------------
@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    """The source notebook run as the grader runs it (quick=True), once for the module."""
    tmp = tmp_path_factory.mktemp("a05-ref")
    nb, error, produced, prepared, config = run_unit(UNIT, tmp, SECRET, quick=True)
    return {"nb": nb, "error": error, "produced": produced, "prepared": prepared, "cfg": config,
            "kind": units.get(config.kind), "dir": tmp}


def test_prepare_gives_token_ids_and_masks_never_labels(ref):
    import maestro

    prepared, cfg = ref["prepared"], ref["cfg"]
    assert set(prepared.inputs) == {"token_ids.npy", "attention_mask.npy"}
    assert prepared.input_params() == {"ids_path": "token_ids.npy", "mask_path": "attention_mask.npy"}
    assert prepared.plain_params() == {"trigger_length": 3, "target": "positive"}
    ids, mask = prepared.inputs["token_ids.npy"], prepared.inputs["attention_mask.npy"]
    assert ids.dtype == mask.dtype == np.int64 and ids.shape == mask.shape and ids.shape[0] == 1000
    assert set(np.unique(mask)) == {0, 1} and (ids[mask == 0] == 0).all() and (mask[:, 0] == 1).all()
    hidden = maestro.datasets.load("tweets", "hidden", secret=SECRET).take(1000)
    model = maestro.models.load("lstm-tweets")
    assert model.detokenize(torch.from_numpy(ids[:5])) == model.detokenize(model.tokenize(hidden.x[:5]))
    labels = ref["kind"].hidden_labels(prepared)
    assert np.array_equal(labels, hidden.y.numpy()) and "labels" not in repr(prepared.state).lower()
    again = ref["kind"].prepare(cfg, SECRET)
    assert np.array_equal(again.inputs["token_ids.npy"], ids)  # deterministic for one secret
    other = ref["kind"].prepare(cfg, "another-course-secret")
    assert not np.array_equal(other.inputs["token_ids.npy"][:50], ids[:50])


# -- the source notebook -------------------------------------------------------------------------
def test_reference_notebook_runs_and_its_artifacts_pass(ref):
    assert ref["error"] is None, ref["error"]
    assert cell_errors(ref["nb"]) == []
    assert set(ref["produced"]) == {"adv_ids.npy", "trigger.npy"}
    cells = by_grade_id(ref["nb"])
    for key in ("test_flip_scores", "test_hotflip", "test_adv_artifact", "test_universal_trigger",
                "test_trigger_artifact"):
        assert cells[key].execution_count is not None
    printed = printed_text(ref["nb"])
    assert "estimated" in printed and "real" in printed and "great great great" in printed
    # part 3 (not graded): the other tweet classifier, MiniLM, reads the same edited tweets and trigger
    assert "with the same edited tweets (transferred)" in printed and "minilm-tweets: your trigger" in printed
    assert cells["transfer"].execution_count is not None
    res = ref["kind"].score(ref["cfg"], ref["produced"], ref["prepared"])
    cfg = ref["cfg"]
    assert res.passed and res.score >= 90 and res.problems == [] and res.kind == "text-attack"
    assert res.max_score == sum(p.max_points for p in res.parts) == cfg.max_score
    for m in (res.public_metrics, res.private_metrics):
        assert m["valid"] and m["success_rate"] > 0.85 and m["trigger_success_rate"] > 0.6
        assert 1.0 <= m["mean_tokens_changed"] <= 2.0 and 0.8 < m["clean_accuracy"] < 0.95
        assert m["n"] == 500
    again = ref["kind"].score(cfg, ref["produced"], ref["prepared"])
    assert again.score == res.score and again.public_metrics == res.public_metrics  # deterministic
    gs = to_gradescope(res)
    assert [r["name"] for r in gs["leaderboard"]] == ["success rate (public)", "trigger success rate (public)",
                                                      "tokens changed (public)"]
    assert gs["output"].startswith("public part: success rate ")


def test_the_released_stub_stops_before_writing_anything(tmp_path):
    course = tmp_path / "course"
    course.mkdir()
    released = release(NOTEBOOK, A, course)
    text = released.read_text(encoding="utf-8")
    for marker in ("BEGIN SOLUTION", "BEGIN HIDDEN TESTS", "grad @ emb.T", "score.topk(candidates",
                   "must be deterministic"):
        assert marker not in text
    cells = by_grade_id(__import__("nbformat").read(released, as_version=4))
    for key in ("flip_scores", "hotflip", "final_hotflip", "universal_trigger", "final_trigger"):
        assert 'raise NotImplementedError("not implemented yet' in cells[key].source
    assert "def hotflip(model, ids, mask, y, eps, allowed, candidates=10):" in cells["hotflip"].source
    assert "threat.check(clean, TokenBatch(saved, mask))" in cells["test_adv_artifact"].source
    nb, error = execute(released, tmp_path, quick=True)
    assert error is not None and error.ename == "NotImplementedError" and "not implemented yet" in error.evalue
    assert [gid for gid, _ in cell_errors(nb)][:3] == ["test_flip_scores", "test_hotflip", "final_hotflip"]
    assert by_grade_id(nb)["save_adv"].execution_count is None
    assert not (tmp_path / "output" / "adv_ids.npy").exists() and not (tmp_path / "output" / "trigger.npy").exists()


# -- the trusted scorer on crafted artifacts -------------------------------------------------------
def _write(folder: Path, **arrays) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, array in arrays.items():
        path = folder / f"{name}.npy"
        np.save(path, array, allow_pickle=True)
        out[path.name] = path
    return out


def _score(ref, tmp_path, **arrays):
    files = {k: v for k, v in arrays.items() if v is not None}
    return ref["kind"].score(ref["cfg"], _write(tmp_path / "case", **files), ref["prepared"])


def _good(ref):
    adv = np.load(ref["produced"]["adv_ids.npy"])
    trig = np.load(ref["produced"]["trigger.npy"])
    return adv, trig


def _reasons(res, term):
    return [p.reason for p in res.parts if p.name.endswith(term)]


@pytest.mark.parametrize("case, words", [
    ("int32", "has dtype int32; expected int64"),
    ("float", "has dtype float32; expected int64"),
    ("shape", "has shape (1000, 5); expected (1000,"),
    ("object", "holds Python objects (a pickle)"),
    ("huge", "is larger than an array of shape (1000,"),
])
def test_unreadable_adversarial_ids_void_the_per_tweet_terms_only(ref, tmp_path, case, words):
    adv, trig = _good(ref)
    bad = {"int32": adv.astype(np.int32), "float": adv.astype(np.float32), "shape": adv[:, :5],
           "object": np.array([[1, "a"]], dtype=object), "huge": np.zeros((10 * adv.size,), np.int64)}[case]
    res = _score(ref, tmp_path, adv_ids=bad, trigger=trig)
    assert all(words in r and "adv_ids.npy" in r for t in ("per-tweet attack success", "tokens changed")
               for r in _reasons(res, t)), res.parts
    assert all(p.points == 0 for p in res.parts if "trigger" not in p.name)
    assert sum(p.points for p in res.parts if "trigger" in p.name) == 40  # the trigger still counts
    assert res.public_metrics["valid"] and res.public_metrics["success_rate"] is None


@pytest.mark.parametrize("case, rule, what", [
    ("vocab", "ids", "ids outside [0, 7505], the model's vocabulary"),
    ("negative", "ids", "ids outside [0, 7505]"),
    ("padding", "padding", "padding positions (mask 0) changed"),
    ("edits", "norm", "more than eps = 2 token edits"),
    ("unk", "vocab", "tokens brought in from outside the allowed vocabulary"),
])
def test_rows_that_break_the_threat_model_void_their_part_with_row_numbers(ref, tmp_path, case, rule, what):
    adv, trig = _good(ref)
    ids = ref["prepared"].inputs["token_ids.npy"]
    mask = ref["prepared"].inputs["attention_mask.npy"]
    public = ref["prepared"].state.public
    lengths = mask.sum(1)
    bad = adv.copy()
    if case == "vocab":
        rows = [3, 10]
        bad[3, 0], bad[10, 0] = 7506, 99999
    elif case == "negative":
        rows = [7]
        bad[7, 0] = -1
    elif case == "padding":
        rows = [int(np.flatnonzero(lengths < mask.shape[1])[0])]
        bad[rows[0], lengths[rows[0]]] = 5
    elif case == "edits":  # three swaps in every tweet of at least three tokens
        rows = np.flatnonzero(lengths >= 3).tolist()
        bad[:, :3] = np.where(mask[:, :3] == 1, 2 + (ids[:, :3] + 1) % 7000, 0)
    else:
        rows = [int(np.flatnonzero(ids[:, 0] != 1)[5])]
        bad[rows[0]] = ids[rows[0]]
        bad[rows[0], 0] = 1  # [UNK]
    res = _score(ref, tmp_path, adv_ids=bad, trigger=trig)
    assert sum(p.points for p in res.parts if "trigger" in p.name) == 40  # the trigger is scored anyway
    for label, in_part in (("public", public), ("private", ~public)):
        mine = [r for r in rows if in_part[r]]
        reasons = _reasons(res, f"{label}: per-tweet attack success")
        if not mine:
            assert reasons[0].startswith("success_rate = "), reasons
            continue
        assert all(p.points == 0 for p in res.parts if p.name.startswith(label) and "trigger" not in p.name)
        listed = ", ".join(map(str, mine[:10])) + (f" (+{len(mine) - 10} more)" if len(mine) > 10 else "")
        expected = f"{rule}: row{'s' if len(mine) > 1 else ''} {listed} of adv_ids.npy ({what}"
        assert "breaks the token threat model" in reasons[0] and expected in reasons[0], (expected, reasons[0])
        assert any(p.startswith(f"{label} part:") and expected in p for p in res.problems)


@pytest.mark.parametrize("case, words", [
    ("long", "trigger.npy holds 4 tokens; the trigger budget is 3"),
    ("empty", "expected a 1-d array of 1 to 3 token ids"),
    ("2d", "has shape (1, 3); expected a 1-d array"),
    ("pad", "trigger.npy: entry 1 is not an allowed token id"),
    ("unk", "trigger.npy: entries 0, 2 are not allowed token ids"),
    ("out", "trigger.npy: entry 0 is not an allowed token id (ids lie in [0, 7505]"),
    ("float", "has dtype float64; expected int64"),
    ("huge", "trigger.npy is much larger than the token ids it should hold"),
])
def test_bad_triggers_void_the_trigger_term_only(ref, tmp_path, case, words):
    adv, trig = _good(ref)
    bad = {"long": np.array([5, 6, 7, 8]), "empty": np.zeros(0, np.int64), "2d": trig[None],
           "pad": np.array([5, 0]), "unk": np.array([1, 5, 1]), "out": np.array([7506]),
           "float": trig.astype(np.float64), "huge": np.full(1000, 5)}[case]
    res = _score(ref, tmp_path, adv_ids=adv, trigger=bad.astype(np.int64) if case != "float" else bad)
    reasons = _reasons(res, "universal trigger success")
    assert len(reasons) == 2 and all(words in r for r in reasons), reasons
    assert all(p.points == 0 for p in res.parts if "trigger" in p.name)
    assert sum(p.points for p in res.parts if "trigger" not in p.name) > 50  # the attack still counts


def test_missing_links_and_pickles_are_refused(ref, tmp_path):
    adv, trig = _good(ref)
    kind, cfg, prepared = ref["kind"], ref["cfg"], ref["prepared"]
    only_adv = kind.score(cfg, _write(tmp_path / "a", adv_ids=adv), prepared)
    assert all("trigger.npy was not produced" in r for r in _reasons(only_adv, "universal trigger success"))
    assert only_adv.score > 50 and only_adv.public_metrics["valid"]
    nothing = kind.score(cfg, {}, prepared)
    assert nothing.score == 0 and nothing.public_metrics == nothing.private_metrics == {"valid": False}
    assert "adv_ids.npy was not produced" in nothing.problems[0]
    (tmp_path / "l").mkdir()
    link = tmp_path / "l" / "adv_ids.npy"
    link.symlink_to(ref["produced"]["adv_ids.npy"])
    pickle = tmp_path / "l" / "trigger.npy"
    pickle.write_bytes(__import__("pickle").dumps([5, 6, 7]))
    res = kind.score(cfg, {"adv_ids.npy": link, "trigger.npy": pickle}, prepared)
    assert res.score == 0
    assert "symlink" in res.problems[0] and "pickle" in res.problems[1], res.problems


def test_weak_answers_score_low_and_in_order(ref, tmp_path):
    import maestro
    from maestro.text import TokenBatch

    adv, trig = _good(ref)
    ids = ref["prepared"].inputs["token_ids.npy"]
    model = maestro.models.load("lstm-tweets")
    tok = model.tokenizer
    the = np.array([tok.token_to_id("the")] * 3)
    unchanged = _score(ref, tmp_path / "u", adv_ids=ids.copy(), trigger=the)
    assert unchanged.score == 0 and unchanged.public_metrics["success_rate"] == 0
    assert unchanged.public_metrics["trigger_success_rate"] < 0.15
    # plain HotFlip: one first-order swap per tweet, no re-scoring, and a hand-made trigger
    tb = TokenBatch(torch.from_numpy(ids), torch.from_numpy(ref["prepared"].inputs["attention_mask.npy"]))
    y = model.predict(tb)
    emb = model.embedding_matrix()
    grad = model.gradient(tb, y)
    one = ids.copy()
    for s in range(0, len(ids), 100):
        g, cur = grad[s:s + 100], tb.input_ids[s:s + 100]
        score = g @ emb.T - (g * emb[cur]).sum(-1, keepdim=True)
        score[~tb.attention_mask[s:s + 100].bool()] = float("-inf")
        score[:, :, :2] = float("-inf")  # no [PAD] / [UNK]
        score.scatter_(2, cur[:, :, None], float("-inf"))  # no swap for itself
        best = score.flatten(1).argmax(1)
        one[np.arange(s, s + len(cur)), (best // emb.shape[0]).numpy()] = (best % emb.shape[0]).numpy()
    great = np.array([tok.token_to_id("great")] * 3)
    weak = _score(ref, tmp_path / "w", adv_ids=one, trigger=great)
    full = ref["kind"].score(ref["cfg"], ref["produced"], ref["prepared"])
    assert weak.public_metrics["mean_tokens_changed"] == weak.private_metrics["mean_tokens_changed"] == 1.0
    assert 0.3 < weak.public_metrics["success_rate"] < 0.6 < 0.85 < full.public_metrics["success_rate"]
    assert 0.3 < weak.public_metrics["trigger_success_rate"] < 0.6 < full.public_metrics["trigger_success_rate"]
    assert unchanged.score < weak.score < 30 < ref["cfg"].pass_score <= full.score


def test_no_hidden_label_in_anything_a_student_sees(ref, tmp_path):
    from autograder.driver import feedback_html

    adv, trig = _good(ref)
    bad = adv.copy()
    bad[::3, 0] = 1  # [UNK] in a third of the rows: long row lists in the reasons
    results = [ref["kind"].score(ref["cfg"], ref["produced"], ref["prepared"]),
               _score(ref, tmp_path, adv_ids=bad, trigger=trig[:1])]
    labels = "".join(map(str, ref["kind"].hidden_labels(ref["prepared"]).tolist()))
    for res in results:
        texts = [p.reason for p in res.parts] + res.problems
        for deadline in (False, True):
            doc = to_gradescope(res, deadline_passed=deadline)
            json.loads(json.dumps(doc, allow_nan=False))
            texts.append(json.dumps(doc))
        texts.append(feedback_html(ref["cfg"], "ana", to_gradescope(res), res, status="ok", reason="",
                                   graded_at="now"))
        for m in (res.metrics, res.public_metrics, res.private_metrics):
            assert all(v is None or isinstance(v, (bool, int, float)) for v in m.values())
        for text in texts:
            digits = re.sub(r"\D", "", text)
            for start in range(0, len(labels) - 12):
                assert labels[start:start + 12] not in digits


def test_apply_trigger_matches_the_notebook_helper():
    ids = torch.tensor([[5, 6, 0], [7, 0, 0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    new_ids, new_mask = apply_trigger(ids, mask, [9, 8])
    assert new_ids.tolist() == [[9, 8, 5, 6, 0], [9, 8, 7, 0, 0]]
    assert new_mask.tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]]
    source = by_grade_id(__import__("nbformat").read(NOTEBOOK, as_version=4))["setup"].source
    ns: dict = {"torch": torch}
    exec(compile(source[source.index("def apply_trigger"):source.index("def margin")], "<setup>", "exec"), ns)
    a, b = ns["apply_trigger"](ids, mask, [9, 8])
    assert torch.equal(a, new_ids) and torch.equal(b, new_mask)

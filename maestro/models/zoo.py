"""The zoo: what each named model is and how it is trained (deterministically, on CPU).

Every entry trains on the public ``train`` split of a built-in data set (split seed 0) and is
scored on its ``test`` split (for ``minilm-tweets``, a fixed prefix of it, recorded in the
metadata). :func:`evaluation_data` returns exactly the examples a model was scored on.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field

import torch

from .. import __version__
from .archs import build_arch, encoder_identity
from .train import accuracy, by_length, fingerprint, fit, majority_accuracy, num_threads, shuffled

SPLIT_SEED = 0
# One torch thread for the whole build: the zoo's models are small, so a second thread buys
# little and costs a lot on a shared CPU (measured 2-15x slower under load), and one thread
# makes the weights, hence their sha256, the same on every machine.
TRAIN_THREADS = 1


@dataclass(frozen=True)
class ZooEntry:
    description: str
    dataset: str
    arch: str
    config: dict
    training: dict
    target: float  # the test accuracy the model must reach
    recipe: str  # "image", "word-lstm" or "frozen-encoder"
    eval_size: int | None = None  # score on the first eval_size test examples (None: all)
    tokenizer: dict = field(default_factory=dict)


ZOO: dict[str, ZooEntry] = {
    "mlp-digits": ZooEntry(
        "MLP (64-256-128-10) on sklearn's 8×8 digits",
        "digits",
        "mlp",
        {"hidden": [256, 128]},
        {"epochs": 60, "batch_size": 32, "lr": 2e-3, "weight_decay": 1e-4},
        0.97,
        "image",
    ),
    "cnn-digits": ZooEntry(
        "small CNN (2 conv + 2 linear) on sklearn's 8×8 digits",
        "digits",
        "small-cnn",
        {"channels": [32, 64], "hidden": 128},
        {"epochs": 30, "batch_size": 32, "lr": 2e-3, "weight_decay": 1e-4},
        0.97,
        "image",
    ),
    "lenet-mnist": ZooEntry(
        "LeNet-5 style CNN on the 5k real 28×28 MNIST digits",
        "mnist",
        "lenet",
        {"channels": [6, 16], "hidden": [120, 84]},
        {"epochs": 12, "batch_size": 64, "lr": 2e-3, "weight_decay": 0.0},
        0.95,
        "image",
    ),
    "lstm-tweets": ZooEntry(
        "word-level bidirectional LSTM on tweet sentiment (negative/positive)",
        "tweets",
        "lstm",
        {"embed_dim": 64, "hidden": 64, "bidirectional": True, "dropout": 0.2},
        {"epochs": 3, "batch_size": 64, "lr": 3e-3, "weight_decay": 0.0},
        0.75,
        "word-lstm",
        tokenizer={"min_freq": 2, "max_size": 20000, "max_length": 64},
    ),
    "minilm-tweets": ZooEntry(
        "pretrained all-MiniLM-L6-v2 encoder (frozen) + MLP head on tweet sentiment",
        "tweets",
        "encoder-classifier",
        {"hidden": 256, "dropout": 0.1},
        {"epochs": 20, "batch_size": 128, "lr": 1e-3, "weight_decay": 1e-4, "train_examples": 4000},
        0.75,
        "frozen-encoder",
        eval_size=1500,
        tokenizer={"max_length": 64},
    ),
}


def evaluation_data(name: str, home=None):
    """The examples model ``name`` is scored on (the test split, or its recorded prefix)."""
    from .. import datasets

    entry = ZOO[name]
    test = datasets.load(entry.dataset, "test", seed=SPLIT_SEED, home=home)
    return test.take(entry.eval_size) if entry.eval_size else test


def train_entry(name: str, *, seed: int = 0, home=None, progress: bool = True):
    """Train zoo model ``name``; returns ``(module, tokenizer or None, meta)`` (meta without sha256)."""
    from .. import datasets
    from .wrap import wrap

    entry = ZOO[name]
    start, cpu_start = time.perf_counter(), time.process_time()
    train = datasets.load(entry.dataset, "train", seed=SPLIT_SEED, home=home)
    test = evaluation_data(name, home)
    recipe = {"image": _train_image, "word-lstm": _train_lstm, "frozen-encoder": _train_encoder}[entry.recipe]
    with num_threads(TRAIN_THREADS):
        torch.manual_seed(seed)
        module, tokenizer, extra = recipe(entry, train, seed, progress, name)
        module.eval()
        wrapper = wrap(
            module, tokenizer, num_classes=train.num_classes, input_shape=train.input_shape, classes=train.classes
        )
        test_accuracy = accuracy(wrapper, test)
    meta = {
        "name": name,
        "description": entry.description,
        "modality": train.modality,
        "num_classes": train.num_classes,
        "classes": list(train.classes),
        "input_shape": list(train.input_shape) if train.input_shape else None,
        "input_bounds": [0.0, 1.0],
        "dataset": {
            "name": entry.dataset,
            "split_seed": SPLIT_SEED,
            "train_split": "train",
            "train_size": len(train),
            "test_split": "test",
            "test_size": len(test),
            "test_subset": f"first {entry.eval_size} of the test split" if entry.eval_size else "all",
            "test_sha256": fingerprint(test),
        },
        "seed": seed,
        "training": {
            "optimizer": "adam",
            "loss": "cross-entropy",
            "schedule": "cosine",
            "torch_threads": TRAIN_THREADS,
            **entry.training,
            **extra,
        },
        "test_accuracy": test_accuracy,
        "majority_accuracy": majority_accuracy(train.y, test.y),
        "target_accuracy": entry.target,
        "maestro_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
    }
    meta["build_seconds"] = round(time.perf_counter() - start, 2)
    meta["build_cpu_seconds"] = round(time.process_time() - cpu_start, 2)
    return module, tokenizer, meta


def _train_image(entry: ZooEntry, train, seed: int, progress: bool, name: str):
    t = entry.training
    module = build_arch(entry.arch, {**entry.config, "input_shape": list(train.input_shape), "num_classes": train.num_classes})
    fit(
        module,
        module,
        lambda epoch: ((train.x[i], train.y[i]) for i in shuffled(len(train), t["batch_size"], seed * 1000 + epoch)),
        epochs=t["epochs"],
        lr=t["lr"],
        weight_decay=t["weight_decay"],
        progress=progress,
        desc=name,
    )
    return module, None, {}


def _train_lstm(entry: ZooEntry, train, seed: int, progress: bool, name: str):
    from ..text import WordTokenizer

    t = entry.training
    tokenizer = WordTokenizer.fit(train.x, **entry.tokenizer)
    module = build_arch(
        entry.arch,
        {**entry.config, "vocab_size": tokenizer.vocab_size, "num_classes": train.num_classes, "pad_id": tokenizer.pad_id},
    )

    def batches(epoch: int):
        for idx in shuffled(len(train), t["batch_size"], seed * 1000 + epoch):
            yield tokenizer.encode([train.x[i] for i in idx.tolist()]), train.y[idx]

    fit(
        module,
        lambda tb: module(tb.input_ids, tb.attention_mask),
        batches,
        epochs=t["epochs"],
        lr=t["lr"],
        weight_decay=t["weight_decay"],
        progress=progress,
        desc=name,
    )
    return module, tokenizer, {"vocab_size": tokenizer.vocab_size, "tokenizer": dict(entry.tokenizer)}


def _train_encoder(entry: ZooEntry, train, seed: int, progress: bool, name: str):
    """Freeze the encoder, embed a fixed subset of the training tweets once (kept in memory),
    and train only the head on those sentence embeddings."""
    from tqdm.auto import tqdm

    from ..text import HFTokenizer

    t = entry.training
    identity = encoder_identity()
    module = build_arch(entry.arch, {**entry.config, "encoder": identity, "num_classes": train.num_classes})
    from transformers import AutoTokenizer

    tokenizer = HFTokenizer(AutoTokenizer.from_pretrained(identity["path"]), **entry.tokenizer)
    for p in module.encoder.parameters():
        p.requires_grad_(False)
    subset = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[: t["train_examples"]]]
    order = by_length(subset.x)
    feats = torch.empty(len(subset), module.encoder.config.hidden_size)
    with torch.no_grad():
        for start in tqdm(range(0, len(order), 64), desc=f"{name} (embed)", disable=not progress, leave=False):
            idx = order[start : start + 64]
            tb = tokenizer.encode([subset.x[i] for i in idx])
            feats[idx] = module.pooled(tb.attention_mask, input_ids=tb.input_ids)
    head = module.head
    fit(
        head,
        head,
        lambda epoch: ((feats[i], subset.y[i]) for i in shuffled(len(subset), t["batch_size"], seed * 1000 + epoch)),
        epochs=t["epochs"],
        lr=t["lr"],
        weight_decay=t["weight_decay"],
        progress=progress,
        desc=f"{name} (head)",
    )
    for p in module.encoder.parameters():
        p.requires_grad_(True)
    extra = {
        "encoder": "frozen",
        "pooling": "mean over attention mask",
        "train_examples": len(subset),
        "encoder_package": identity["package"],
        "encoder_version": identity["version"],
        "encoder_sha256": identity["sha256"],
    }
    return module, tokenizer, extra

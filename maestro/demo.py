"""The end-to-end demo behind ``make demo`` / ``maestro demo``.

Builds the model zoo if needed, loads every zoo model, runs a first attack on each (FGSM on
the image models, HotFlip on the text models) on its test split and prints a table of clean
and attacked accuracy, perturbation size, queries and time.
"""

from __future__ import annotations

import time

from .attacks import FGSM, HotFlip
from .datasets import load as load_dataset
from .models import build
from .models import load as load_model
from .threat import ThreatModel

# model -> (dataset, attack factory, eps, examples in the full run, examples in --quick)
PLAN = {
    "mlp-digits": ("digits", "FGSM", 0.2, 180, 180),
    "cnn-digits": ("digits", "FGSM", 0.2, 180, 180),
    "lenet-mnist": ("mnist", "FGSM", 0.2, 500, 200),
    "lstm-tweets": ("tweets", "HotFlip", 2, 500, 100),
    "minilm-tweets": ("tweets", "HotFlip", 2, 200, 32),
}


def _attack(kind: str, eps: float):
    if kind == "FGSM":
        return FGSM(ThreatModel("linf", eps)), f"FGSM L∞ eps={eps:g}"
    return HotFlip(ThreatModel("tokens", int(eps))), f"HotFlip ≤{int(eps)} tokens"


def _first_flip(data, result) -> int | None:
    """The first example whose text the attack changed and whose prediction it flipped."""
    for i, (before, after) in enumerate(zip(data.x, result.x_adv)):
        if bool(result.success[i]) and before != after:
            return i
    return None


def run_demo(quick: bool = False, home=None) -> int:
    """Run the demo; returns a process exit code (0 when every model was attacked)."""
    names = list(PLAN)  # the classifiers (a chat model is attacked with suffixes, not here)
    print("Maestro demo: building the model zoo (skipped where already built) ...", flush=True)
    build(names, home=home, progress=not quick)
    rows = []
    for name in names:
        dataset, kind, eps, n_full, n_quick = PLAN[name]
        data = load_dataset(dataset, "test")[: n_quick if quick else n_full]
        model = load_model(name, home=home)
        clean = float((model.predict(data.x) == data.y).float().mean())
        attack, label = _attack(kind, eps)
        model.reset()
        start = time.perf_counter()
        result = attack(model, data.x, data.y)
        seconds = time.perf_counter() - start
        adv = float((model.predict(result.x_adv) == data.y).float().mean())
        rows.append((name, f"{dataset} test", len(data), clean, label, adv, float(result.norms.max()), result.queries, seconds))
        i = _first_flip(data, result) if kind == "HotFlip" else None
        if i is not None:
            print(f"  {name}: {data.x[i]!r} ({data.classes[int(data.y[i])]})\n"
                  f"  {'':{len(name)}}  -> {result.x_adv[i]!r}", flush=True)

    header = ("model", "data", "n", "clean acc", "attack", "attacked acc", "max norm", "queries", "seconds")
    table = [header] + [
        (r[0], r[1], str(r[2]), f"{r[3]:.1%}", r[4], f"{r[5]:.1%}", f"{r[6]:.3g}", str(r[7]), f"{r[8]:.1f}")
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    print()
    for j, row in enumerate(table):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
        if j == 0:
            print("  ".join("-" * w for w in widths))
    return 0

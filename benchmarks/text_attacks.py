"""Text attacks: time per example and accuracy before/after, on the zoo's text models.

    python benchmarks/text_attacks.py [--quick]

HotFlip (eps 1 and 3 swaps), the universal trigger (3 tokens: search time per example the
search processed, then applying it) and black-box word substitution, on the first test tweets
of ``lstm-tweets``; ``minilm-tweets`` too when it is built (HotFlip and a short trigger search on
fewer examples: the MiniLM encoder runs ~110 sentences/s on 2 CPU cores). ``benchmarks/attacks.py`` prints these
rows with the image attacks.
"""

from __future__ import annotations

import argparse
import time

import torch

import maestro
from maestro.attacks import HotFlip, UniversalTrigger, WordSubstitution
from maestro.errors import AssetUnavailable
from maestro.threat import ThreatModel


def _accuracy(model, x, y) -> float:
    return float((model.predict(x).cpu() == y).float().mean())


def _row(attack: str, model, x, y, result, seconds: float, processed: int | None = None, **extra) -> dict:
    n = processed or len(x)
    return dict(
        attack=attack,
        model=model.name,
        n=len(x),
        clean_acc=_accuracy(model, x, y),
        adv_acc=_accuracy(model, result.x_adv, y),
        seconds=seconds,
        ms_per_example=seconds / n * 1e3,
        queries_per_example=result.queries / len(x),
        **extra,
    )


def _lstm_rows(quick: bool) -> list[dict]:
    maestro.models.build(["lstm-tweets"], progress=False)  # a no-op once built
    model = maestro.models.load("lstm-tweets")
    test = maestro.datasets.load("tweets", "test")
    train = maestro.datasets.load("tweets", "train")
    n = 200 if quick else 1000
    x, y = test.x[:n], test.y[:n]
    rows = []
    for eps in (1, 3):
        result = HotFlip(ThreatModel("tokens", eps))(model, x, y)
        rows.append(_row(f"HotFlip eps={eps}", model, x, y, result, result.time))
    steps, batch = (4, 64) if quick else (8, 128)
    attack = UniversalTrigger(ThreatModel("tokens", 3), steps=steps, batch_size=batch, candidates=8)
    start = time.perf_counter()
    attack.fit(model, train.x[:2000], train.y[:2000])
    search = time.perf_counter() - start
    result = attack(model, x, y)
    rows.append(_row("trigger search (3 tokens)", model, x, y, result, search, processed=steps * batch,
                     note=f"trigger {attack.trigger!r}; {steps}×{batch} examples searched"))
    rows.append(_row("trigger apply", model, x, y, result, result.time))
    blackbox = model.restrict("scores")
    m = n // 2
    result = WordSubstitution(ThreatModel("tokens", 3, access="scores", query_budget=200))(blackbox, x[:m], y[:m])
    rows.append(_row("WordSubstitution eps=3", model, x[:m], y[:m], result, result.time))
    return rows


def _minilm_rows(quick: bool) -> list[dict]:
    try:
        model = maestro.models.load("minilm-tweets")
    except AssetUnavailable:
        return []
    n = 20 if quick else 100
    test = maestro.datasets.load("tweets", "test")
    train = maestro.datasets.load("tweets", "train")
    x, y = test.x[:n], test.y[:n]
    result = HotFlip(ThreatModel("tokens", 3), candidates=4)(model, x, y)
    rows = [_row("HotFlip eps=3", model, x, y, result, result.time)]
    steps, batch = (2, 32) if quick else (4, 64)
    attack = UniversalTrigger(ThreatModel("tokens", 3), steps=steps, batch_size=batch, candidates=5)
    start = time.perf_counter()
    attack.fit(model, train.x[:1000], train.y[:1000])
    search = time.perf_counter() - start
    result = attack(model, x, y)
    rows.append(_row("trigger search (3 tokens)", model, x, y, result, search, processed=steps * batch,
                     note=f"trigger {attack.trigger!r}; {steps}×{batch} examples searched"))
    return rows


def text_attack_rows(quick: bool) -> list[dict]:
    """One row per (attack, model): clean and attacked accuracy, seconds, ms and queries per
    example (for the trigger search: per example the search processed)."""
    return _lstm_rows(quick) + _minilm_rows(quick)


def print_rows(rows: list[dict]) -> None:
    print(f"{'attack':<27} {'model':<14} {'n':>5} {'clean':>6} {'adv':>6} {'ms/ex':>8} {'queries/ex':>10}")
    for r in rows:
        print(
            f"{r['attack']:<27} {r['model']:<14} {r['n']:>5} {r['clean_acc']:>6.1%} {r['adv_acc']:>6.1%} "
            f"{r['ms_per_example']:>8.2f} {r['queries_per_example']:>10.1f}"
            + (f"   {r['note']}" if "note" in r else "")
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer examples")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: the small LSTM runs fastest on one, above all on busy cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print_rows(text_attack_rows(args.quick))


if __name__ == "__main__":
    main()

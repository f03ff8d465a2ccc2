"""Wrapper overhead and import time, measured side by side in one run.

    python benchmarks/wrapper.py [--quick]

1. ``ModelWrapper.gradient`` ÷ raw torch forward + backward (``torch.autograd.grad`` of the
   summed cross-entropy with respect to the same input batch), on zoo models. Target ≤ 1.03.
2. ``import torch, maestro`` minus ``import torch`` in fresh interpreters. Target ≤ 0.3 s.

Timings interleave the two sides and report medians, so background load hits both alike.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

import maestro


def _raw_gradient(module, x, y):
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(module(x), y, reduction="sum")
    return torch.autograd.grad(loss, x)[0]


def _raw_text_gradient(module, tb, y):
    embeds = module.get_input_embeddings()(tb.input_ids).detach().requires_grad_(True)
    loss = F.cross_entropy(module.forward_embeds(embeds, tb.attention_mask), y, reduction="sum")
    return torch.autograd.grad(loss, embeds)[0]


def _interleaved(a, b, repeats: int) -> tuple[float, float]:
    ta, tb = [], []
    for _ in range(repeats):
        for fn, out in ((a, ta), (b, tb)):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return statistics.median(ta), statistics.median(tb)


def gradient_rows(quick: bool) -> list[dict]:
    rows = []
    repeats = 15 if quick else 60
    for name, dataset, batch in (("cnn-digits", "digits", 256), ("lenet-mnist", "mnist", 256)):
        model = maestro.models.load(name)
        data = maestro.datasets.load(dataset, "test")[:batch]
        module = model.model
        assert torch.allclose(model.gradient(data.x, data.y), _raw_gradient(module, data.x, data.y), atol=1e-6)
        for _ in range(3):  # warm-up
            model.gradient(data.x, data.y)
            _raw_gradient(module, data.x, data.y)
        wrapped, raw = _interleaved(
            lambda m=model, d=data: m.gradient(d.x, d.y),
            lambda f=module, d=data: _raw_gradient(f, d.x, d.y),
            repeats,
        )
        rows.append(dict(model=name, batch=len(data), wrapper_ms=wrapped * 1e3, raw_ms=raw * 1e3, ratio=wrapped / raw))
    model = maestro.models.load("lstm-tweets")
    data = maestro.datasets.load("tweets", "test")[:64]
    tb, module = model.tokenize(data.x), model.model
    wrapped, raw = _interleaved(
        lambda: model.gradient(tb, data.y), lambda: _raw_text_gradient(module, tb, data.y), max(5, repeats // 3)
    )
    rows.append(dict(model="lstm-tweets", batch=len(data), wrapper_ms=wrapped * 1e3, raw_ms=raw * 1e3, ratio=wrapped / raw))
    return rows


def import_seconds(quick: bool) -> tuple[float, float]:
    def run(code: str) -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        return time.perf_counter() - start

    repeats = 5 if quick else 11
    torch_only, with_maestro = _interleaved(
        lambda: run("import torch"), lambda: run("import torch, maestro, maestro.wrapper"), repeats
    )
    return torch_only, with_maestro


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    maestro.models.build(["cnn-digits", "lenet-mnist", "lstm-tweets"], progress=False)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("gradient through ModelWrapper vs raw torch forward+backward (target ratio ≤ 1.03)")
    print(f"{'model':<13} {'batch':>5} {'wrapper ms':>11} {'raw ms':>9} {'ratio':>7}")
    for r in gradient_rows(args.quick):
        print(f"{r['model']:<13} {r['batch']:>5} {r['wrapper_ms']:>11.2f} {r['raw_ms']:>9.2f} {r['ratio']:>7.3f}")
    torch_s, maestro_s = import_seconds(args.quick)
    print("\nimport time (fresh interpreter, median; target: maestro adds ≤ 0.3 s)")
    print(f"import torch           {torch_s:6.3f} s")
    print(f"import torch, maestro  {maestro_s:6.3f} s   (+{maestro_s - torch_s:.3f} s)")


if __name__ == "__main__":
    main()

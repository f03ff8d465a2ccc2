"""Attack speed, measured side by side in one run (interleaved repeats; the fastest of each).

    python benchmarks/attacks.py [--quick] [--threads N] [--clock cpu|wall]

Each timing is the minimum over interleaved repeats (the least-disturbed run: background load
only ever adds time). By default torch runs on one thread and the clock is this process's CPU
time (``time.process_time``), which other processes on a shared machine barely disturb;
``--clock wall --threads 0`` measures wall-clock time with torch's own thread count instead.

On ``lenet-mnist`` (and ``cnn-digits``), one batch of test images, L∞ PGD with the same eps,
steps, step size and no random start everywhere; robust accuracy is printed beside each time.

1. PGD-k ÷ (k × raw torch forward+backward of the same batch; ``torch.autograd.grad`` of the
   summed cross-entropy w.r.t. the input, timed as one loop of k calls so that both sides run
   for as long and background load hits them alike). Target ≤ 1.10. Shown twice: ``early_stop=False``
   (every example runs all k steps: the pure per-step overhead of the wrapper and the attack)
   and the default (broken examples leave the batch).
2. Our PGD ÷ torchattacks' PGD. Target ≤ 0.9.
3. ART's PGD ÷ ours. Target ≥ 3.
4. Text attacks (HotFlip, triggers): ``text_attack_rows`` from ``benchmarks/text_attacks.py``
   when that file is there.

Peers are optional: ``pip install --no-deps torchattacks adversarial-robustness-toolbox six``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import maestro
from maestro import ThreatModel
from maestro.attacks import PGD


def _raw_fwd_bwd(module, x, y):
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(module(x), y, reduction="sum")
    return torch.autograd.grad(loss, x)[0]


CLOCK = time.process_time


def _interleaved(fns: dict, repeats: int) -> dict:
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = CLOCK()
            fn()
            times[name].append(CLOCK() - start)
    return {k: min(v) for k, v in times.items()}


def _peers(module, x, y, eps, alpha, steps):
    """Callables running torchattacks' and ART's PGD (those that import), returning x_adv."""
    out = {}
    try:
        import torchattacks

        ta = torchattacks.PGD(module, eps=eps, alpha=alpha, steps=steps, random_start=False)
        out["torchattacks"] = lambda: ta(x, y)
    except Exception as err:
        print(f"(torchattacks unavailable: {type(err).__name__}: {err})")
    try:
        from art.attacks.evasion import ProjectedGradientDescent
        from art.estimators.classification import PyTorchClassifier

        clf = PyTorchClassifier(model=module, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                                nb_classes=10, clip_values=(0.0, 1.0), device_type="cpu")
        art = ProjectedGradientDescent(clf, norm=np.inf, eps=eps, eps_step=alpha, max_iter=steps,
                                       num_random_init=0, batch_size=len(x), verbose=False)
        xn, yn = x.numpy(), y.numpy()
        out["ART"] = lambda: torch.from_numpy(art.generate(xn, y=yn))
    except Exception as err:
        print(f"(ART unavailable: {type(err).__name__}: {err})")
    return out


def pgd_rows(name: str, dataset: str, batch: int, eps: float, steps: int, repeats: int) -> list[dict]:
    model = maestro.models.load(name)
    data = maestro.datasets.load(dataset, "test")[:batch]
    x, y = data.x, data.y
    module = model.model
    alpha = 2.5 * eps / steps
    tm = ThreatModel("linf", eps)
    ours = PGD(tm, steps=steps, step_size=alpha, random_start=False)
    full = PGD(tm, steps=steps, step_size=alpha, random_start=False, early_stop=False)
    fns = {
        "raw fwd+bwd": lambda: [_raw_fwd_bwd(module, x, y) for _ in range(steps)],
        "ours (early_stop=False)": lambda: full(model, x, y).x_adv,
        "ours": lambda: ours(model, x, y).x_adv,
        **_peers(module, x, y, eps, alpha, steps),
    }
    robust = {}
    for key, fn in fns.items():  # warm-up, and the robust accuracy of each
        out = fn()
        if key != "raw fwd+bwd":
            tm.check(x, out)
            robust[key] = float((model.predict(out) == y).float().mean())
    t = _interleaved(fns, repeats)
    per_step = t["raw fwd+bwd"] / steps
    rows = []
    for key in fns:
        if key == "raw fwd+bwd":
            continue
        row = {"model": name, "batch": len(x), "eps": eps, "steps": steps, "attack": key,
               "ms": t[key] * 1e3, "robust": robust[key], "vs_raw": t[key] / (steps * per_step)}
        if key == "torchattacks":
            row["ours_over_peer"] = t["ours"] / t[key]
        if key == "ART":
            row["peer_over_ours"] = t[key] / t["ours"]
        rows.append(row)
    rows.insert(0, {"model": name, "batch": len(x), "eps": eps, "steps": steps,
                    "attack": "raw fwd+bwd (1 step)", "ms": per_step * 1e3, "robust": float("nan"),
                    "vs_raw": 1 / steps})
    return rows


def print_pgd(rows: list[dict]) -> None:
    print(f"{'model':<12} {'batch':>5} {'eps':>5} {'k':>3} {'attack':<24} {'ms':>9} {'robust':>7} "
          f"{'÷ k·raw':>8} {'ours÷peer':>9} {'peer÷ours':>9}")
    for r in rows:
        extra = f"{r['ours_over_peer']:>9.2f}" if "ours_over_peer" in r else f"{'':>9}"
        extra += f" {r['peer_over_ours']:>9.2f}" if "peer_over_ours" in r else f" {'':>9}"
        robust = "" if r["robust"] != r["robust"] else f"{r['robust']:.1%}"
        print(f"{r['model']:<12} {r['batch']:>5} {r['eps']:>5} {r['steps']:>3} {r['attack']:<24} "
              f"{r['ms']:>9.2f} {robust:>7} {r['vs_raw']:>8.3f} {extra}")


def text_rows(quick: bool):
    path = Path(__file__).with_name("text_attacks.py")
    if not path.is_file():
        return None, None
    spec = importlib.util.spec_from_file_location("benchmarks_text_attacks", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.text_attack_rows(quick), getattr(module, "print_rows", None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small run: fewer repeats, smaller batch")
    parser.add_argument("--no-text", action="store_true", help="skip the text-attack rows")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="cpu: this process's CPU time (default); wall: wall-clock time")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    maestro.models.build(["cnn-digits", "lenet-mnist"], progress=False)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.clock} clock\n")
    print("L∞ PGD, no random start, step 2.5·eps/k; targets: ours ÷ k·raw ≤ 1.10, "
          "ours ÷ torchattacks ≤ 0.9, ART ÷ ours ≥ 3")
    repeats = 3 if args.quick else 9
    batch = 128 if args.quick else 256
    rows = []
    for name, dataset, eps in (("lenet-mnist", "mnist", 0.1), ("lenet-mnist", "mnist", 0.3), ("cnn-digits", "digits", 0.1)):
        rows += pgd_rows(name, dataset, batch, eps, 20, repeats)
    print_pgd(rows)
    if not args.no_text:
        found, printer = text_rows(args.quick)
        if found is not None:
            print("\ntext attacks (from benchmarks/text_attacks.py)")
            if printer is not None:
                printer(found)
            else:
                for r in found:
                    print("  ".join(f"{k}={v}" for k, v in r.items()))


if __name__ == "__main__":
    main()

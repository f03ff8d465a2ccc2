"""``maestro autograde`` (sandboxed, 2 workers) against plain ``nbgrader autograde``, side by side.

    python benchmarks/autograde.py [--n 20] [--workers 2] [--reps 5] [--rounds 1]
                                   [--nbgrader-threads 0] [--maestro-test-cells skip|run|both]
                                   [--skip-overhead] [--skip-compare]
    python benchmarks/autograde.py --quick        # 4 submissions, 3 repeats of the overhead runs

One course (``maestro course init`` + ``nbgrader generate_assignment 01-whitebox``) receives
``--n`` submissions of 01-whitebox: the released notebook with the reference solution cells
filled in, the final attack varied per student (PGD with 20-80 steps, 0-3 random restarts,
with or without a random start: ~75 %), FGSM only (~15 %, below the pass score) and the
unchanged released stub (~10 %). The course is copied twice (nbgrader_config.py pointed at the
copy) so neither grader sees the other's results, and in one run, on the same machine:

* ``nbgrader autograde 01-whitebox`` (its CLI, cwd = the course copy): one notebook after the
  other, each executed in an unsandboxed kernel on its DEFAULT parameters (the 500 public dev
  images) with the hidden test cells put back, the points of the test cells into the gradebook.
  ``--Execute.timeout`` is raised from nbgrader's 30 s per cell to grading.toml's timeout so a
  slow cell on a loaded machine is not cut short (which would make nbgrader look faster).
  The kernel keeps torch's default thread count.
* ``maestro autograde 01-whitebox --workers 2`` (its CLI): each notebook in the bubblewrap
  sandbox (one fresh interpreter + papermill + kernel per submission, torch on one thread:
  ``OMP_NUM_THREADS=1`` in the sandbox's environment) on the 500 HIDDEN images, no labels;
  the released test cells a submission holds unchanged are not run (grading.toml
  ``[notebook] test_cells = "skip"``, the default: the grade comes from the files); its x_adv
  files scored outside the sandbox, results.json + feedback + gradebook written.
  ``--maestro-test-cells run`` runs every cell instead, ``both`` runs maestro both ways in
  each round (one nbgrader run, two maestro runs, each on its own copy of the course).

Both do the same kind of work per submission (start a kernel, import torch + maestro, load
lenet-mnist, attack 500 MNIST images), not the same work: nbgrader also runs the hidden tests
(a few extra small PGD calls and one FGSM over all images), maestro also validates and scores
the artifact. Printed: the wall clock of each, the ratio nbgrader ÷ maestro (target ≥ 1.8),
the load average before and after each and the share of the machine's CPU that was busy
(other jobs included), and where the time goes per submission (papermill's and nbclient's
per-cell clocks in the executed notebooks). ``--rounds 2`` runs a second round in the other
order (maestro first) on fresh copies; ``--nbgrader-threads 1`` sets OMP_NUM_THREADS for
nbgrader's kernels (a sensitivity check: its default is torch's thread count).

Then the fixed cost per submission of the sandbox + kernel start: ``autograder.run_notebook``
on a trivial notebook (a parameters cell and ``x = 1``) in bubblewrap, against the same notebook
through papermill outside any sandbox (in-process, and as a fresh ``papermill`` process), and
``run_notebook``'s fallback (rlimits + unshare, no bwrap); interleaved, ``--reps`` repeats,
median (target: bwrap run ≤ 2 s).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

A = "01-whitebox"
NB = f"{A}.ipynb"
BIN = Path(sys.executable).parent
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1"}
TARGET_RATIO = 1.8
TARGET_OVERHEAD_S = 2.0


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, **OFFLINE, **extra}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # nbgrader runs `alembic`
    return env


def _load() -> str:
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


# -- the submissions ------------------------------------------------------------------------
PGD_VARIANTS = [  # (steps, restarts, random start of the first run); (40, 2, False) = reference
    (40, 2, False), (20, 0, True), (40, 0, False), (60, 1, False), (40, 3, True),
    (30, 1, False), (80, 2, False), (40, 1, True), (20, 2, False), (50, 0, False),
]


def _pgd_code(steps: int, restarts: int, random_start: bool) -> str:
    return (f"x_adv = pgd(model, x, y, threat, steps={steps}, random_start={random_start})\n"
            f"for restart in range({restarts}):  # random restarts for the images that survived\n"
            "    alive = model.predict(x_adv) == y\n"
            "    if not alive.any():\n"
            "        break\n"
            f"    x_adv[alive] = pgd(model, x[alive], y[alive], threat, steps={steps}, seed=restart)\n")


def mix(n: int) -> list[tuple[str, str, str | None]]:
    """(student id, kind, final-attack code or None for the stub): ~10 % stubs, ~15 % FGSM only,
    the rest PGD variants; shuffled with a fixed seed so both workers get a mix."""
    n_stub = max(1, round(0.10 * n)) if n >= 3 else 0
    n_fgsm = max(1, round(0.15 * n)) if n >= 2 else 0
    kinds: list[tuple[str, str | None]] = [("stub", None)] * n_stub
    kinds += [("fgsm", "x_adv = fgsm(model, x, y, threat)\n")] * n_fgsm
    for i in range(n - n_stub - n_fgsm):
        s, r, rs = PGD_VARIANTS[i % len(PGD_VARIANTS)]
        kinds.append((f"pgd{s}/r{r}{'/rs' if rs else ''}", _pgd_code(s, r, rs)))
    random.Random(0).shuffle(kinds)
    return [(f"s{i + 1:02d}", kind, code) for i, (kind, code) in enumerate(kinds)]


def _student_notebook(source: Path, released: Path, final_code: str | None):
    """The released notebook with the source's solutions filled in (hidden tests stay out, as
    in anything a student can submit); ``final_code`` replaces the final-attack cell."""
    rel = nbformat.read(released, as_version=4)
    if final_code is None:
        return rel
    src = {c.metadata.get("nbgrader", {}).get("grade_id"): c
           for c in nbformat.read(source, as_version=4).cells}
    for cell in rel.cells:
        meta = cell.metadata.get("nbgrader", {})
        if not meta.get("solution"):
            continue
        if meta["grade_id"] == "final_attack":
            cell.source = final_code
        else:
            lines = src[meta["grade_id"]].source.splitlines()
            cell.source = "\n".join(ln for ln in lines if "### BEGIN SOLUTION" not in ln
                                    and "### END SOLUTION" not in ln)
    return rel


def make_course(root: Path, n: int, workers: int) -> tuple[Path, list[tuple[str, str, str | None]]]:
    from autograder.course import REPO_ASSIGNMENTS, CourseSettings, init_course

    only = root / "assignments"  # just 01-whitebox: other units may be work in progress
    shutil.copytree(REPO_ASSIGNMENTS / A, only / A)
    base = root / "base"
    init_course(base, only, settings=CourseSettings(workers=workers))
    proc = subprocess.run([str(BIN / "nbgrader"), "generate_assignment", A], cwd=base, env=_env(),
                          capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"nbgrader generate_assignment failed:\n{proc.stdout}\n{proc.stderr}")
    subs = mix(n)
    for who, _, code in subs:
        dest = base / "submitted" / who / A / NB
        dest.parent.mkdir(parents=True)
        nbformat.write(_student_notebook(base / "source" / A / NB, base / "release" / A / NB, code),
                       dest)
    return base, subs


def copy_course(base: Path, dest: Path) -> Path:
    """A copy of the course folder; nbgrader_config.py names its root and gradebook by
    absolute path, so it is pointed at the copy (maestro derives both from the folder)."""
    shutil.copytree(base, dest, symlinks=True)
    cfg = dest / "nbgrader_config.py"
    cfg.write_text(cfg.read_text().replace(str(base), str(dest)))
    return dest


# -- running the two graders ----------------------------------------------------------------
def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat (every process: ours and
    other jobs on the same cores)."""
    with open("/proc/stat") as fh:
        vals = [int(v) for v in fh.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return sum(vals[:8]) - idle, sum(vals[:8])


def _timed(argv: list[str], cwd: Path, env: dict, timeout: float) -> dict:
    load0 = _load()
    busy0, total0 = _cpu_jiffies()
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    wall = time.perf_counter() - t0
    busy1, total1 = _cpu_jiffies()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} exited {proc.returncode}:\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return {"wall": wall, "busy": (busy1 - busy0) / max(1, total1 - total0),
            "load_before": load0, "load_after": _load(), "log": proc.stdout + proc.stderr}


def _nbgrader_env(threads: int) -> dict[str, str]:
    return _env(OMP_NUM_THREADS=str(threads)) if threads > 0 else _env()


def run_nbgrader(course: Path, timeout_s: int, n: int, threads: int) -> dict:
    argv = [str(BIN / "nbgrader"), "autograde", A, f"--Execute.timeout={timeout_s}"]
    return _timed(argv, course, _nbgrader_env(threads), timeout=60 + n * (timeout_s + 60))


def run_maestro(course: Path, workers: int, n: int, timeout_s: int) -> dict:
    argv = [str(BIN / "maestro"), "autograde", A, "--course", str(course), "--workers", str(workers)]
    return _timed(argv, course, _env(), timeout=60 + n * (timeout_s + 60))


def _with_test_cells(course: Path, mode: str) -> Path:
    """The course with 01's grading.toml set to ``[notebook] test_cells = mode``."""
    toml = course / "source" / A / "grading.toml"
    text = toml.read_text()
    assert "test_cells" not in text and "[notebook]\n" in text
    toml.write_text(text.replace("[notebook]\n", f'[notebook]\ntest_cells = "{mode}"\n', 1))
    return course


def _ts(s: str) -> float:
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def _cell_times_nbclient(nb) -> dict[str, float]:
    """grade_id -> seconds, from nbclient's execution timestamps (nbgrader's executed notebook)."""
    out = {}
    for cell in nb.cells:
        ex = cell.metadata.get("execution", {})
        if "iopub.execute_input" in ex and "shell.execute_reply" in ex:
            gid = cell.metadata.get("nbgrader", {}).get("grade_id", "?")
            out[gid] = _ts(ex["shell.execute_reply"]) - _ts(ex["iopub.execute_input"])
    return out


def _cell_times_papermill(nb) -> dict[str, float]:
    out = {}
    for cell in nb.cells:
        d = cell.metadata.get("papermill", {}).get("duration")
        if d is not None:
            out[cell.metadata.get("nbgrader", {}).get("grade_id", "injected")] = float(d)
    return out


ATTACK_CELLS = ("fgsm", "test_fgsm", "pgd", "test_pgd", "pgd_l2", "test_pgd_l2", "pgd_targeted",
                "test_pgd_targeted", "final_attack", "save", "final_l2", "save_l2", "final_targeted",
                "save_targeted", "test_artifact")


def nbgrader_results(course: Path, subs) -> dict[str, dict]:
    from nbgrader.api import Gradebook

    from autograder.course import course_id, db_url

    with Gradebook(db_url(course), course_id=course_id(course)) as gb:
        scores = {s.student_id: (s.score, s.max_score) for s in gb.assignment_submissions(A)}
    out = {}
    for who, _, _ in subs:
        nb_path = course / "autograded" / who / A / NB
        cells = _cell_times_nbclient(nbformat.read(nb_path, as_version=4)) if nb_path.is_file() else {}
        errors = []
        if nb_path.is_file():
            for c in nbformat.read(nb_path, as_version=4).cells:
                errors += [o.get("ename") for o in c.get("outputs", []) if o.get("output_type") == "error"]
        out[who] = {"score": scores.get(who, (None, None))[0], "max": scores.get(who, (None, None))[1],
                    "cells": cells, "errors": errors}
    return out


def maestro_results(course: Path, subs) -> dict[str, dict]:
    out = {}
    for who, _, _ in subs:
        res = json.loads((course / "autograded" / who / A / "results.json").read_text())
        meta = res["extra_data"]["maestro"]
        # the full executed notebook (autograded/ keeps a copy without outputs or papermill's
        # notebook metadata, for nbgrader generate_feedback)
        nb_path = course / ".maestro" / "runs" / A / f"{who}.ipynb"
        if not nb_path.is_file():
            nb_path = course / "autograded" / who / A / NB
        cells, nb_s = {}, None
        if nb_path.is_file():
            nb = nbformat.read(nb_path, as_version=4)
            cells = _cell_times_papermill(nb)
            nb_s = nb.metadata.get("papermill", {}).get("duration")
        out[who] = {"score": res["score"], "status": meta["status"], "run_s": meta["duration_s"],
                    "nb_s": nb_s, "cells": cells}
    return out


def driver_fixed_costs() -> dict:
    """In a fresh interpreter, what maestro's driver pays once (imports, hidden set, model load)
    and per submission outside the sandbox (scoring one artifact)."""
    code = r"""
import json, sys, tempfile, time
t0 = time.perf_counter()
import numpy as np, maestro
from autograder.config import load_config
from autograder.course import REPO_ASSIGNMENTS
from autograder.scoring import HiddenData, score_submission
from autograder import driver  # noqa: F401
t1 = time.perf_counter()
cfg = load_config(REPO_ASSIGNMENTS / "01-whitebox" / "grading.toml")
hidden = HiddenData.load(cfg, "benchmark-secret")
model = maestro.models.load(cfg.model)
hidden.with_targets(cfg, model, "benchmark-secret")  # the targeted artifact's target classes
t2 = time.perf_counter()
with tempfile.TemporaryDirectory() as tmp:
    files = {a.file: tmp + "/" + a.file for a in cfg.artifacts}  # every artifact the unit scores
    for path in files.values():
        np.save(path, hidden.x.numpy().astype("float32"))
    times = []
    for _ in range(5):
        s = time.perf_counter()
        score_submission(cfg, files, hidden, model)
        times.append(time.perf_counter() - s)
times.sort()
print(json.dumps({"imports": t1 - t0, "hidden_and_model": t2 - t1, "score": times[2]}))
"""
    proc = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True,
                          timeout=300, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def torch_threads(env: dict) -> int:
    proc = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                          env=env, capture_output=True, text=True, timeout=120, check=True)
    return int(proc.stdout.strip())


# -- sandbox + kernel start overhead --------------------------------------------------------
def trivial_notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell("inputs = None\noutput_dir = None")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("x = 1")]
    nbformat.write(nb, path)
    return path


def overhead(root: Path, reps: int) -> dict[str, list[float]]:
    import papermill

    from autograder.sandbox import probe_bwrap, run_notebook

    nb = trivial_notebook(root / "trivial.ipynb")
    works, why = probe_bwrap()
    counter = iter(range(10**6))

    def sandboxed(mode):
        def go():
            res = run_notebook(nb, workdir=root / f"w{next(counter)}", sandbox=mode)
            if res.status != "ok":
                raise RuntimeError(f"trivial notebook, sandbox={mode}: {res.status}: {res.reason}")
        return go

    def pm_inprocess():
        papermill.execute_notebook(str(nb), str(root / "pm-out.ipynb"), kernel_name="python3",
                                   progress_bar=False, log_output=False, cwd=str(root))

    def pm_cli():
        subprocess.run([str(BIN / "papermill"), str(nb), str(root / "pm-cli.ipynb"), "-k", "python3",
                        "--no-progress-bar", "--cwd", str(root)], env=_env(), check=True,
                       capture_output=True, timeout=120)

    cases = {"run_notebook, bwrap sandbox": sandboxed("bwrap") if works else None,
             "run_notebook, fallback (rlimits + unshare)": sandboxed("fallback"),
             "papermill CLI, fresh process, no sandbox": pm_cli,
             "papermill.execute_notebook in-process": pm_inprocess}
    if not works:
        print(f"(bwrap unavailable: {why})")
    cases = {k: v for k, v in cases.items() if v is not None}
    for fn in cases.values():  # warm the page cache once
        fn()
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(reps):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


# -- report ---------------------------------------------------------------------------------
def _f(v, fmt="{:.1f}") -> str:
    return "" if v is None else fmt.format(v)


def report_compare(subs, ng: dict, ms: dict, ngr: dict, msr: dict, workers: int, fixed: dict) -> dict:
    print("\nPer submission (nbgrader: dev data, points of the test cells; maestro: hidden data, "
          "score of x_adv.npy):")
    print("| student | kind | nbgrader pts | nbgrader cells s | nbgrader errors | maestro status | "
          "maestro score | maestro run s | in notebook s | setup cell s | attack cells s |")
    print("| --- | --- | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for who, kind, _ in subs:
        a, b = ngr[who], msr[who]
        errs = ",".join(sorted(set(e for e in a["errors"] if e))) or "-"
        atk = sum(b["cells"].get(c, 0.0) for c in ATTACK_CELLS)
        print(f"| {who} | {kind} | {_f(a['score'])} / {_f(a['max'], '{:g}')} | "
              f"{_f(sum(a['cells'].values()))} | {errs} | {b['status']} | {b['score']:.1f} | "
              f"{_f(b['run_s'])} | {_f(b['nb_s'])} | {_f(b['cells'].get('setup'))} | {atk:.1f} |")
    n = len(subs)
    ratio = ng["wall"] / ms["wall"]
    print("\n| grader | what runs | wall s | s / submission | machine CPU busy | load before → after |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    print(f"| nbgrader autograde | serial, no sandbox, dev data + hidden tests, torch "
          f"{fixed['threads_nbgrader']} threads | {ng['wall']:.1f} | {ng['wall'] / n:.2f} | "
          f"{ng['busy']:.0%} | {ng['load_before']} → {ng['load_after']} |")
    print(f"| maestro autograde | {workers} workers, bwrap, hidden data, scored outside, torch 1 "
          f"thread/kernel | {ms['wall']:.1f} | {ms['wall'] / n:.2f} | {ms['busy']:.0%} | "
          f"{ms['load_before']} → {ms['load_after']} |")
    met = "met" if ratio >= TARGET_RATIO else "MISSED"
    print(f"\nnbgrader ÷ maestro wall clock: {ratio:.2f}× (target ≥ {TARGET_RATIO}×: {met})")
    print("(machine CPU busy: share of both cores busy during the run, other jobs included)")

    # where the time goes
    graded = [w for w, k, _ in subs if k != "stub"]
    run_s = [msr[w]["run_s"] for w in graded if msr[w]["run_s"] is not None]
    nb_s = [msr[w]["nb_s"] for w in graded if msr[w]["nb_s"] is not None]
    setup = [msr[w]["cells"].get("setup", 0.0) for w in graded]
    atk = [sum(msr[w]["cells"].get(c, 0.0) for c in ATTACK_CELLS) for w in graded]
    ng_cells = [sum(ngr[w]["cells"].values()) for w in graded]
    ng_setup = [ngr[w]["cells"].get("setup", 0.0) for w in graded]
    ng_atk = [sum(ngr[w]["cells"].get(c, 0.0) for c in ATTACK_CELLS) for w in graded]
    m = statistics.mean
    print(f"\nWhere the time goes (means over the {len(graded)} non-stub submissions, seconds):")
    print("| | maestro (in its sandbox) | nbgrader |")
    print("| --- | ---: | ---: |")
    cells = [sum(msr[w]["cells"].values()) for w in graded]
    if run_s and nb_s:
        print(f"| whole run of one notebook | {m(run_s):.2f} | |")
        print(f"| before/after papermill's clock: bwrap, interpreter, imports (papermill...) | "
              f"{m(run_s) - m(nb_s):.2f} | |")
        print(f"| kernel start + shutdown (papermill's clock minus its cells) | "
              f"{m(nb_s) - m(cells):.2f} | |")
    print(f"| setup cell (import torch+maestro, load lenet-mnist, data, predict) | {m(setup):.2f} | "
          f"{m(ng_setup):.2f} |")
    print(f"| attack + test cells | {m(atk):.2f} | {m(ng_atk):.2f} |")
    print(f"| all cells | {m(cells):.2f} | {m(ng_cells):.2f} |")
    ng_other = ng["wall"] / n - m([sum(ngr[w]["cells"].values()) for w, _, _ in subs])
    print(f"| nbgrader per notebook outside the cells (kernel start, conversion, gradebook) | | "
          f"{ng_other:.2f} |")
    print(f"| driver, once: imports {fixed['imports']:.2f} + hidden set & model {fixed['hidden_and_model']:.2f}"
          f" | {fixed['imports'] + fixed['hidden_and_model']:.2f} | |")
    print(f"| driver, per submission: scoring x_adv.npy | {fixed['score']:.3f} | |")
    all_run = [msr[w]["run_s"] for w, _, _ in subs if msr[w]["run_s"] is not None]
    ideal = sum(all_run) / workers
    print(f"\nmaestro: sum of the {n} sandboxed runs {sum(all_run):.1f} s ÷ {workers} workers = "
          f"{ideal:.1f} s; wall {ms['wall']:.1f} s")
    return {"ratio": ratio, "nbgrader": ng["wall"], "maestro": ms["wall"]}


def report_overhead(times: dict[str, list[float]]) -> dict:
    med = {k: statistics.median(v) for k, v in times.items()}
    print("\n| trivial notebook (parameters + `x = 1`) | median s | min s | max s | repeats |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for k, v in times.items():
        print(f"| {k} | {med[k]:.2f} | {min(v):.2f} | {max(v):.2f} | {len(v)} |")
    bw = med.get("run_notebook, bwrap sandbox")
    if bw is not None:
        cli = med["papermill CLI, fresh process, no sandbox"]
        inp = med["papermill.execute_notebook in-process"]
        met = "met" if bw <= TARGET_OVERHEAD_S else "MISSED"
        print(f"\nper-submission overhead, sandbox + kernel start (the bwrap run): {bw:.2f} s "
              f"(target ≤ {TARGET_OVERHEAD_S:g} s: {met})")
        print(f"  bwrap run − papermill in-process (kernel start only): {bw - inp:+.2f} s; "
              f"bwrap run − papermill CLI (same fresh interpreter, no sandbox): {bw - cli:+.2f} s")
    return med


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=None, help="submissions (default 20; --quick: 4)")
    ap.add_argument("--quick", action="store_true", help="4 submissions, 3 overhead repeats")
    ap.add_argument("--workers", type=int, default=2, help="maestro autograde --workers")
    ap.add_argument("--reps", type=int, default=None, help="overhead repeats (default 5; --quick: 3)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="comparison rounds; odd rounds run maestro first (load drift hits both)")
    ap.add_argument("--nbgrader-threads", type=int, default=0,
                    help="OMP_NUM_THREADS for nbgrader's kernels (0: torch's default)")
    ap.add_argument("--maestro-test-cells", choices=("skip", "run", "both"), default="skip",
                    help="grading.toml [notebook] test_cells for maestro (default: skip, the "
                         "course default); both: a maestro run of each kind per round")
    ap.add_argument("--skip-compare", action="store_true", help="only the overhead part")
    ap.add_argument("--skip-overhead", action="store_true", help="only the comparison")
    ap.add_argument("--keep", default=None, metavar="DIR", help="keep the course folders here")
    args = ap.parse_args(argv)
    n = args.n or (4 if args.quick else 20)
    reps = args.reps or (3 if args.quick else 5)

    import torch

    from autograder.config import load_config
    from autograder.course import REPO_ASSIGNMENTS

    timeout_s = int(load_config(REPO_ASSIGNMENTS / A / "grading.toml").notebook.timeout_s)
    print(f"benchmarks/autograde.py: n={n}, workers={args.workers}, torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs, load average {_load()}, {dt.datetime.now():%Y-%m-%d %H:%M}")
    root = Path(args.keep).resolve() if args.keep else Path(tempfile.mkdtemp(prefix="maestro-bench-ag-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        if not args.skip_overhead:
            print(f"\n== per-submission overhead: sandbox + kernel start ({reps} repeats, interleaved)")
            (root / "overhead").mkdir()
            report_overhead(overhead(root / "overhead", reps))
        if args.skip_compare:
            return
        print("\n== maestro autograde vs nbgrader autograde")
        print("nbgrader: `nbgrader autograde 01-whitebox`, one notebook at a time, no sandbox, on the "
              "notebook's DEFAULT parameters (500 public dev images), hidden test cells restored, "
              f"--Execute.timeout={timeout_s}; points of the test cells (/50) into the gradebook.")
        print(f"maestro:  `maestro autograde 01-whitebox --workers {args.workers}`, each notebook in "
              "bubblewrap on the 500 HIDDEN images (no labels), unchanged test cells skipped "
              "(test_cells = \"skip\", the default; \"run\" runs them), its three x_adv files scored "
              "outside the sandbox (/100), results.json + feedback.html + gradebook.")
        base, subs = make_course(root / "course", n, args.workers)
        print("submissions: " + ", ".join(f"{w} {k}" for w, k, _ in subs))
        fixed = driver_fixed_costs()
        fixed["threads_nbgrader"] = torch_threads(_nbgrader_env(args.nbgrader_threads))
        variants = ["skip", "run"] if args.maestro_test_cells == "both" else [args.maestro_test_cells]
        summary = {v: [] for v in variants}
        for rnd in range(args.rounds):
            tag = f"r{rnd}"
            ng_course = copy_course(base, root / "course" / f"nbgrader-{tag}")
            graders = [("nbgrader", ng_course)]
            for v in variants:
                graders.append((f"maestro/{v}", _with_test_cells(
                    copy_course(base, root / "course" / f"maestro-{v}-{tag}"), v)))
            if rnd % 2:
                graders.reverse()
            done = {}
            for who, course in graders:
                print(f"[round {rnd + 1}] {who} autograde ... (load {_load()})", flush=True)
                if who == "nbgrader":
                    done[who] = run_nbgrader(course, timeout_s, n, args.nbgrader_threads)
                else:
                    done[who] = run_maestro(course, args.workers, n, timeout_s)
                print(f"[round {rnd + 1}] {who}: {done[who]['wall']:.1f} s", flush=True)
            ngr = nbgrader_results(ng_course, subs)
            for who, course in graders:
                if who == "nbgrader":
                    continue
                v = who.split("/")[1]
                print(f"\n-- round {rnd + 1} (order: {' then '.join(g for g, _ in graders)}): "
                      f"nbgrader vs maestro with test_cells = {v!r}")
                summary[v].append(report_compare(subs, done["nbgrader"], done[who], ngr,
                                                 maestro_results(course, subs), args.workers, fixed))
        for v in variants:
            if args.rounds > 1 or len(variants) > 1:
                ratios = [s["ratio"] for s in summary[v]]
                total = sum(s["nbgrader"] for s in summary[v]) / sum(s["maestro"] for s in summary[v])
                met = "met" if total >= TARGET_RATIO else "MISSED"
                print(f"\ntest_cells = {v!r}: ratios over {args.rounds} round(s): "
                      f"{', '.join(f'{r:.2f}' for r in ratios)}; all rounds together (sum ÷ sum): "
                      f"{total:.2f}× (target ≥ {TARGET_RATIO}×: {met})")
        print(f"\nload average at the end: {_load()}")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

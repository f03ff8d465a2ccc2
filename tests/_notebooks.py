"""Helpers the assignment tests share: run a notebook with papermill on this interpreter, and
look at its nbgrader cells and outputs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
import papermill

BIN = Path(sys.executable).parent


def execute(notebook: Path, out_dir: Path, **params):
    """Run ``notebook`` with papermill (kernel on this interpreter, ``output_dir`` under
    ``out_dir``); return the executed copy and the PapermillExecutionError, if any."""
    env_path = os.environ.get("PATH", "")
    os.environ["PATH"] = f"{BIN}{os.pathsep}{env_path}"  # the kernel's "python" is this venv's
    executed = out_dir / f"executed-{notebook.name}"
    error = None
    try:
        papermill.execute_notebook(
            str(notebook), str(executed), parameters={"output_dir": str(out_dir / "output"), **params},
            kernel_name="python3", cwd=str(out_dir), progress_bar=False, execution_timeout=300,
        )
    except papermill.PapermillExecutionError as err:
        error = err
    finally:
        os.environ["PATH"] = env_path
    return nbformat.read(executed, as_version=4), error


def cell_errors(nb) -> list[tuple[str | None, str]]:
    """(grade_id, exception name) of every cell that raised."""
    return [(c.metadata.get("nbgrader", {}).get("grade_id"), o.ename)
            for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]


def by_grade_id(nb) -> dict:
    """grade_id -> cell."""
    return {c.metadata.get("nbgrader", {}).get("grade_id"): c for c in nb.cells}


def printed_text(nb) -> str:
    """Everything the notebook printed."""
    return "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))


def release(notebook: Path, unit: str, course: Path) -> Path:
    """``nbgrader generate_assignment UNIT`` for ``notebook`` in a bare throw-away course folder
    ``course``; returns the released (student) notebook."""
    import shutil
    import subprocess

    from autograder.course import CODE_STUB

    (course / "nbgrader_config.py").write_text(
        "c = get_config()\n"
        f"c.CourseDirectory.root = {str(course)!r}\n"
        "c.CourseDirectory.course_id = 'maestro-test'\n"
        f"c.ClearSolutions.code_stub = {CODE_STUB!r}\n"  # the stubs say "not implemented yet"
    )
    src = course / "source" / unit
    src.mkdir(parents=True)
    shutil.copy(notebook, src / notebook.name)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(
        [str(BIN / "nbgrader"), "generate_assignment", unit, "--force"],
        cwd=course, env=env, capture_output=True, text=True, timeout=180, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    path = course / "release" / unit / notebook.name
    assert path.is_file()
    return path


def run_unit(unit_dir: Path, out_dir: Path, secret: str, *, notebook: Path | None = None,
             quick: bool = True, home=None, **params):
    """Run a unit-kind notebook (grading.toml kind from autograder.units) the way the grader
    does — the kind's ``prepare`` makes the input files and papermill parameters from ``secret``
    — but with papermill here, without the sandbox. Returns ``(executed notebook, error or None,
    {artifact name: path of the files the notebook wrote}, prepared, config)``; score with
    ``autograder.units.get(config.kind).score(config, artifacts, prepared)``."""
    from autograder import units
    from autograder.config import load_config

    config = load_config(unit_dir / "grading.toml")
    kind = units.get(config.kind)
    prepared = kind.prepare(config, secret, home=home)
    inputs = out_dir / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    for name, content in prepared.inputs.items():
        if isinstance(content, bytes):
            (inputs / name).write_bytes(content)
        else:
            import numpy as np

            np.save(inputs / name, np.asarray(content), allow_pickle=False)
    nb_params = {"labels_path": None, "eps": config.threat.eps if config.threat else None,
                 "inputs": {n: str(inputs / n) for n in prepared.inputs},
                 **prepared.plain_params(),
                 **{p: str(inputs / f) for p, f in prepared.input_params().items()},
                 "quick": quick, **params}
    nb, error = execute(notebook or unit_dir / config.notebook.file, out_dir, **nb_params)
    produced = {a.file: out_dir / "output" / a.file for a in config.artifacts
                if (out_dir / "output" / a.file).is_file()}
    return nb, error, produced, prepared, config

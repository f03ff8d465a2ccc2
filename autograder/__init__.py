"""Maestro's autograder: run student notebooks in a sandbox and bring back validated data.

``run_notebook`` (:mod:`autograder.sandbox`) executes a notebook with papermill inside
bubblewrap; :mod:`autograder.artifacts` accepts only plain data (``.npy``, ``.json``,
``.safetensors``) from it.
"""

from autograder.artifacts import ArtifactError, collect, load
from autograder.sandbox import Limits, RunResult, probe_bwrap, run_notebook

__all__ = ["ArtifactError", "Limits", "RunResult", "collect", "load", "probe_bwrap",
           "run_notebook"]

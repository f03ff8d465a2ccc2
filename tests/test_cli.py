"""The `maestro` command line, run as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def maestro(*args: str, home=None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if home is not None:
        env["MAESTRO_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "maestro.cli", *args], capture_output=True, text=True, env=env, check=False)


def test_help_lists_the_commands():
    out = maestro("--help")
    assert out.returncode == 0
    for word in ("datasets", "models", "demo"):
        assert word in out.stdout


def test_datasets_list():
    out = maestro("datasets", "list")
    assert out.returncode == 0
    for name in ("digits", "mnist", "tweets", "hf:", "csv:", "folder:", "npz:", "torchvision:"):
        assert name in out.stdout


def test_models_list_and_info_of_a_built_model():
    out = maestro("models", "list")
    assert out.returncode == 0
    for name in ("mlp-digits", "cnn-digits", "lenet-mnist", "lstm-tweets", "minilm-tweets"):
        assert name in out.stdout
    built = maestro("models", "build", "mlp-digits", "--quiet")
    assert built.returncode == 0, built.stderr
    info = maestro("models", "info", "mlp-digits", "--json")
    meta = json.loads(info.stdout)
    assert meta["test_accuracy"] >= 0.97 and len(meta["sha256"]) == 64
    assert "test_accuracy" in maestro("models", "info", "mlp-digits").stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (("models", "info", "no-such-model"), "unknown"),
        (("models", "build", "no-such-model"), "unknown"),
    ],
)
def test_errors_are_one_clear_line(args, message):
    out = maestro(*args)
    assert out.returncode == 1
    assert out.stderr.startswith("maestro: error:") and message in out.stderr.lower()
    assert "Traceback" not in out.stderr


def test_info_on_unbuilt_model_says_how_to_build(tmp_path):
    out = maestro("models", "info", "lenet-mnist", home=tmp_path)
    assert out.returncode == 1
    assert "maestro models build lenet-mnist" in out.stderr

"""`maestro demo --quick` runs end to end as a real process and prints its table."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_quick_demo_attacks_every_zoo_model():
    out = subprocess.run(
        [sys.executable, "-m", "maestro.cli", "demo", "--quick"], capture_output=True, text=True, timeout=600, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    for name in ("mlp-digits", "cnn-digits", "lenet-mnist", "lstm-tweets", "minilm-tweets"):
        row = next(ln for ln in out.stdout.splitlines() if ln.startswith(name + " "))
        clean, attacked = (float(p) for p in re.findall(r"([\d.]+)%", row))
        assert clean > 80 and attacked < clean - 20, row
    assert "->" in out.stdout  # a flipped tweet is shown

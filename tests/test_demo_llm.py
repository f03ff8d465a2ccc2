"""`maestro demo --llm --quick` end to end as a real process: the language-model act — a course,
four simulated students of `11-llm-suffix` through nbgrader's exchange (the reference, a
hand-written suffix, the stub, suffixes over the token budget), sandboxed autograding on hidden
requests, nbgrader's and Maestro's feedback, the leaderboard — with every outcome checked."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

from autograder.sandbox import probe_bwrap

A = "11-llm-suffix"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    where = tmp_path_factory.mktemp("demo-llm")
    out = subprocess.run([sys.executable, "-m", "maestro.cli", "demo", "--llm", "--quick"], cwd=where,
                         capture_output=True, text=True, timeout=900, check=False, env=dict(os.environ))
    return where / "maestro-demo-course", out


def test_the_llm_demo_grades_every_kind_of_submission_as_expected(demo):
    course, out = demo
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-3000:]
    assert "every outcome as expected" in out.stdout and "one assignment (11-llm-suffix), 4 students" in out.stdout
    assert "notebooks run with {'quick': True}" in out.stdout
    sandbox = "bwrap" if probe_bwrap()[0] else "fallback"
    results = {s: json.loads((course / "autograded" / s / A / "results.json").read_text())
               for s in ("ida", "jon", "kai", "lea")}
    assert all(r["extra_data"]["maestro"]["sandbox"] == sandbox for r in results.values())
    assert results["ida"]["score"] > results["jon"]["score"] > 0 == results["kai"]["score"] == results["lea"]["score"]
    lea = json.dumps(results["lea"])
    assert "breaks the suffix threat model" in lea and "more than eps = 20 tokens" in lea
    assert "not implemented yet" in json.dumps(results["kai"])


def test_the_llm_demo_feedback_and_leaderboard_show_no_hidden_request(demo):
    from autograder.config import load_config
    from autograder.course import read_secret
    from autograder.units import get

    course, out = demo
    assert out.returncode == 0, out.stdout[-3000:]
    cfg = load_config(course / "source" / A / "grading.toml")
    kind = get(cfg.kind)
    hidden = kind.hidden_texts(kind.prepare(cfg, read_secret(course)))
    assert len(hidden) == 20
    pages = [course / "feedback" / s / A / name for s in ("ida", "jon", "lea") for name in ("feedback.html", f"{A}.html")]
    board = course / "leaderboard" / A
    pages += [board / "leaderboard.html", board / "leaderboard.csv"]
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert not any(p in text for p in hidden), page
    rows = list(csv.DictReader((board / "leaderboard.csv").open(encoding="utf-8")))
    assert [r["name"] for r in rows[:2]] == ["ida", "jon"] and len(rows) == 4
    # the kind's own columns (autograder.units.llm_suffix), not an attack unit's
    assert {"prompt_success_rate", "universal_success_rate"} <= set(rows[0]), list(rows[0])
    assert "robust_accuracy" not in rows[0] and "success_rate" not in rows[0]
    page = (board / "leaderboard.html").read_text(encoding="utf-8")
    assert "prompts forced" in page and "universal suffix on hidden requests" in page

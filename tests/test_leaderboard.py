"""autograder.leaderboard: best submission per student, ranks, public/private, pseudonyms,
the tournament matrix, and the CSV / HTML / PNG / JSON files."""

from __future__ import annotations

import csv
import io
import json

import pytest

from autograder.leaderboard import Entry, pseudonym, rank, render_html, to_csv, tournament, write_all


def _e(student, when, pub, priv, **kw):
    # 50 public points + 50 private points; metrics on the public part only differ in success
    return Entry(student, "01-whitebox", when, pub + priv, 100.0, pub, 50.0, priv, 50.0,
                 {"success_rate": pub / 50, "median_l2": 2.5}, {"success_rate": priv / 50}, **kw)


ENTRIES = [
    _e("ann", "2026-11-01T10:00:00+00:00", 40, 45),
    _e("ann", "2026-11-02T10:00:00+00:00", 48, 30),   # ann's best on the public part
    _e("bob", "2026-11-01T09:00:00+00:00", 45, 50),   # bob's only one: best on the private part
    _e("cy", "2026-11-01T08:00:00+00:00", 45, 10),    # ties bob on public, submitted earlier
    _e("dee", "2026-11-03T08:00:00+00:00", 0, 0, status="crashed"),
]


def test_best_submission_per_student_ranked_on_the_public_part():
    board = rank(ENTRIES)
    got = [(r.rank, r.name, round(r.score, 1), r.submissions) for r in board.rows]
    assert got == [(1, "ann", 96.0, 2), (2, "cy", 90.0, 1), (2, "bob", 90.0, 1), (4, "dee", 0.0, 1)]
    d = board.as_dict()
    assert d["part"] == "public" and "private" not in json.dumps(d["rows"])
    assert d["rows"][0]["success_rate"] == pytest.approx(0.96)
    assert "public_score" not in d["rows"][0]  # nothing about the private part before the deadline


def test_final_ranks_on_the_private_part_and_shows_the_rest():
    board = rank(ENTRIES, final=True)
    got = [(r.rank, r.name, round(r.score, 1)) for r in board.rows]
    assert got == [(1, "bob", 100.0), (2, "ann", 90.0), (3, "cy", 20.0), (4, "dee", 0.0)]
    ann = board.rows[1].as_dict(final=True)
    assert ann["public_score"] == 80.0 and ann["total_score"] == 85.0  # ann's first submission


def test_pseudonyms_are_stable_secret_dependent_and_hide_ids():
    a, b = pseudonym("ann", "s1"), pseudonym("ann", "s1")
    assert a == b and a != pseudonym("ann", "s2") and "ann" not in a
    names = {pseudonym(f"student{i}", "s1") for i in range(200)}
    assert len(names) >= 190  # ~100k names: collisions are rare
    board = rank(ENTRIES, pseudonyms="s1")
    text = to_csv(board) + render_html(board) + json.dumps(board.as_dict())
    for who in ("ann", "bob", "cy", "dee"):
        assert f"{who}," not in text and f">{who}<" not in text and f'"{who}"' not in text


def test_tournament_scores_average_over_opponents():
    m = {"attackers": ["ann", "bob", "cy"], "defenders": ["ann", "bob", "cy"],
         "cells": [[0.9, 0.8, 0.6], [0.2, 0.0, None], [0.5, 0.3, 1.0]]}
    board = tournament(m, assignment="10-war")
    scores = {r.name: r.score for r in board.rows}
    # ann: attacks 0.8, 0.6 -> 0.7; defends against bob 0.2, cy 0.5 -> 1 - 0.35 = 0.65 -> 67.5
    assert scores["ann"] == pytest.approx(67.5)
    # bob: attacks ann 0.2 (cy not played) -> 0.2; defends ann 0.8, cy 0.3 -> 0.45 -> 32.5
    assert scores["bob"] == pytest.approx(32.5)
    # cy: attacks 0.5, 0.3 -> 0.4; defends ann 0.6 (bob not played) -> 0.4 -> 40
    assert scores["cy"] == pytest.approx(40.0)
    assert [r.name for r in board.rows] == ["ann", "cy", "bob"]
    page = render_html(board)
    assert 'id="matrix"' in page and "90%" in page  # self-play is shown, not scored
    with pytest.raises(ValueError, match="cells"):
        tournament({"attackers": ["a"], "defenders": ["b", "c"], "cells": [[0.1]]})
    # with the graded submissions: how many each player made and when the latest came in
    board = tournament(m, assignment="10-war", history=[_e("ann", "2026-11-01T10:00:00+00:00", 1, 1),
                                                        _e("ann", "2026-11-02T10:00:00+00:00", 1, 1),
                                                        _e("cy", "2026-11-01T08:00:00+00:00", 1, 1)])
    got = {r.name: (r.submissions, r.entry.submitted_at) for r in board.rows}
    assert got == {"ann": (2, "2026-11-02T10:00:00+00:00"), "cy": (1, "2026-11-01T08:00:00+00:00"), "bob": (0, "")}
    assert "2026-11-02" in render_html(board) and "2026-11-02" in to_csv(board)


def test_files_csv_html_png_json(tmp_path):
    board = rank(ENTRIES, assignment="01-whitebox", title="White-box <FGSM> & PGD")
    paths = write_all(board, tmp_path)
    rows = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    assert [r["name"] for r in rows] == ["ann", "cy", "bob", "dee"] and rows[0]["rank"] == "1"
    page = paths["html"].read_text()
    assert "White-box &lt;FGSM&gt; &amp; PGD" in page and 'name="viewport"' in page
    assert page.count("<tr>") == 5 and "<script>" not in page  # static: no live refresher
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths["png"].stat().st_size > 5000
    assert json.loads(paths["json"].read_text())["rows"][0]["name"] == "ann"
    live = render_html(board, live_url="/v1/assignments/01-whitebox/leaderboard", refresh_s=3)
    assert "<script>" in live and "setInterval(refresh, 3000)" in live
    final = write_all(rank(ENTRIES, final=True), tmp_path)
    assert final["csv"].name == "leaderboard-final.csv" and paths["csv"].exists()


def test_empty_board_renders():
    board = rank([], assignment="01-whitebox")
    assert "no graded submissions yet" in render_html(board)
    assert to_csv(board).splitlines()[0].startswith("rank,name,score")


def test_an_attacks_other_artifacts_get_their_own_columns():
    """01-whitebox scores x_adv_l2.npy and x_adv_targeted.npy beside x_adv.npy: their metrics are
    columns of their own (CSV, HTML, JSON), titled after the artifact, from the score terms."""
    from pathlib import Path

    from autograder.config import load_config
    from autograder.leaderboard import board_metrics

    cfg = load_config(Path(__file__).resolve().parents[1] / "assignments" / "01-whitebox" / "grading.toml")
    keys = board_metrics(cfg)
    assert keys[:2] == ("success_rate", "robust_accuracy") and "median_l2" in keys
    assert keys[-2:] == ("x_adv_l2.success_rate", "x_adv_targeted.targeted_success_rate")
    e = Entry("ann", "01-whitebox", "2026-11-01T10:00:00+00:00", 90.0, 100.0, 45.0, 50.0, 45.0, 50.0,
              {"success_rate": 0.95, "x_adv_l2.success_rate": 0.91, "x_adv_targeted.targeted_success_rate": 0.6,
               "x_adv_l2.median_linf": 0.7, "x_adv_l2.n": 250}, {})
    board = rank([e])
    board.metrics = keys
    header = to_csv(board).splitlines()[0].split(",")
    assert "x_adv_l2.success_rate" in header and "x_adv_targeted.targeted_success_rate" in header
    assert "x_adv_l2.n" not in header and "x_adv_l2.median_linf" not in header  # only what the terms use
    row = next(csv.DictReader(io.StringIO(to_csv(board))))
    assert float(row["x_adv_targeted.targeted_success_rate"]) == pytest.approx(0.6)
    page = render_html(board)
    assert "success (x_adv_l2)" in page and "targeted (x_adv_targeted)" in page and "60.0%" in page
    assert board.as_dict()["rows"][0]["x_adv_l2.success_rate"] == pytest.approx(0.91)
    from autograder.cli import print_board

    printed = io.StringIO()
    print_board(board, file=printed)  # `maestro leaderboard` prints the same columns
    assert "success rate  95.0%  success (x_adv_l2)  91.0%  targeted (x_adv_targeted)  60.0%" in printed.getvalue()


def test_a_unit_kinds_board_shows_its_own_columns():
    """A unit kind names its leaderboard columns (Kind.leaderboard_columns): the course board shows
    those, titled in words, and not an attack unit's success/robust accuracy."""
    from pathlib import Path

    from autograder.config import load_config
    from autograder.leaderboard import board_metrics

    root = Path(__file__).resolve().parents[1] / "assignments"
    cfg = load_config(root / "11-llm-suffix" / "grading.toml")
    assert board_metrics(cfg) == ("prompt_success_rate", "universal_success_rate")
    e = Entry("ann", "11-llm-suffix", "2026-12-01T10:00:00+00:00", 80.0, 100.0, 40.0, 50.0, 40.0, 50.0,
              {"prompt_success_rate": 2 / 3, "universal_success_rate": 0.9, "clean_universal_rate": 0.0,
               "n": 3}, {})
    board = rank([e])
    board.metrics = board_metrics(cfg)
    header = to_csv(board).splitlines()[0].split(",")
    assert "prompt_success_rate" in header and "universal_success_rate" in header
    assert "robust_accuracy" not in header and "clean_universal_rate" not in header
    page = render_html(board)
    assert "prompts forced" in page and "universal suffix on hidden requests" in page and "90.0%" in page
    assert "robust acc." not in page
    assert board_metrics(load_config(root / "05-text-attacks" / "grading.toml")) == (
        "success_rate", "trigger_success_rate", "mean_tokens_changed")

"""maestro.widgets on real zoo models and real attacks: the perturbation explorer (lenet-mnist),
the text attack viewer (lstm-tweets), the plots and the leaderboard table.

Widgets are built without a browser: ipywidgets' traitlets run the callbacks synchronously when
a control's value changes, exactly as when a student drags a slider. What the widgets show is
checked as data (the figure's images and bars, the PNG bytes, the HTML). The browser test is
tests/test_jupyterlab.py.
"""

from __future__ import annotations

import html
import re
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import maestro
from maestro.attacks import FGSM, PGD, RandomNoise, SquareAttack
from maestro.widgets import (
    PerturbationExplorer,
    TextAttackViewer,
    figure_png,
    leaderboard_html,
    leaderboard_table,
    perturbation_figure,
    plot_attack_comparison,
    plot_robustness_curve,
    text_attack_html,
    word_diff,
)
from maestro.widgets._render import image_array

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def lenet():
    return maestro.models.load("lenet-mnist")


@pytest.fixture(scope="module")
def digits():
    return maestro.datasets.load("mnist", split="dev")[:6]


@pytest.fixture(scope="module")
def lstm():
    return maestro.models.load("lstm-tweets")


@pytest.fixture(scope="module")
def tweets():
    return maestro.datasets.load("tweets", split="dev")[:8]


def bar_widths(fig):
    """(original, adversarial) bar lengths of the explorer's probability panel, class order."""
    ax = fig.axes[3]
    original, adversarial = ax.containers
    return ([p.get_width() for p in original.patches], [p.get_width() for p in adversarial.patches])


# ----------------------------------------------------------------------------- import

def test_import_is_lazy():
    code = ("import sys, maestro, maestro.widgets as w; w.__all__; "
            "print(sorted(m for m in ('ipywidgets', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- explorer

def test_explorer_shows_images_and_bars(lenet, digits):
    ex = PerturbationExplorer(lenet, digits.x, digits.y, attacks=["FGSM", "PGD"], eps=0.2)
    run = ex.current
    assert ex.error is None and run.result.attack == "FGSM"
    maestro.ThreatModel("linf", 0.2).check(digits.x, run.x_adv)  # batched: one x_adv per image
    assert run.x_adv.shape == digits.x.shape
    assert bytes(ex.image.value).startswith(PNG) and ex.image.format == "png"
    fig = ex.figure
    assert [len(ax.images) for ax in fig.axes] == [1, 1, 1, 0]
    # the first image is example 0, the second its adversarial version
    torch.testing.assert_close(torch.as_tensor(fig.axes[0].images[0].get_array()), torch.as_tensor(image_array(digits.x[0], (0, 1))))
    torch.testing.assert_close(torch.as_tensor(fig.axes[1].images[0].get_array()), torch.as_tensor(image_array(run.x_adv[0], (0, 1))))
    clean, adv = bar_widths(fig)
    expected_clean = lenet.predict_proba(digits.x[:1])[0]
    expected_adv = lenet.predict_proba(run.x_adv[:1])[0]
    torch.testing.assert_close(torch.tensor(clean, dtype=torch.float32), expected_clean, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(adv, dtype=torch.float32), expected_adv, atol=1e-5, rtol=0)
    n_correct_adv = int((lenet.predict(run.x_adv) == digits.y).sum())
    assert f"under attack {n_correct_adv}/6" in ex.summary and "FGSM at eps = 0.2" in ex.summary


def test_explorer_callbacks_fire(lenet, digits):
    ex = PerturbationExplorer(lenet, digits.x, digits.y, attacks=["FGSM", "PGD"], eps=0.1, steps=10)
    first_png, first_summary = bytes(ex.image.value), ex.summary

    ex.eps_slider.value = 0.3
    assert ex.error is None
    assert "eps = 0.3" in ex.summary and bytes(ex.image.value) != first_png
    assert float((ex.current.x_adv - digits.x).abs().max()) <= 0.3 + 1e-6

    ex.attack_picker.value = "PGD"
    pgd = ex.current.result
    assert pgd.attack == "PGD" and ex.summary.startswith("PGD at eps = 0.3")
    clean_correct = int((lenet.predict(digits.x) == digits.y).sum())
    robust = int((lenet.predict(ex.current.x_adv) == digits.y).sum())
    assert robust < clean_correct  # PGD at eps 0.3 breaks lenet-mnist
    assert f"under attack {robust}/6" in ex.summary

    # changing the example reuses the batch's attack run: no new queries, another picture
    queries = lenet.queries
    ex.index_slider.value = 4
    assert lenet.queries == queries
    torch.testing.assert_close(torch.as_tensor(ex.figure.axes[0].images[0].get_array()),
                               torch.as_tensor(image_array(digits.x[4], (0, 1))))
    # back to the first setting: the cached run, the same summary
    ex.attack_picker.value, ex.eps_slider.value, ex.index_slider.value = "FGSM", 0.1, 0
    assert ex.summary == first_summary and lenet.queries == queries


def test_explorer_eps_zero_is_the_clean_input(lenet, digits):
    ex = PerturbationExplorer(lenet, digits, attacks=["FGSM"], eps=0.0)  # a Dataset works too
    assert ex.current.result is None and torch.equal(ex.current.x_adv, digits.x)
    assert ex.figure.axes[2].get_title() == "no perturbation"
    clean, adv = bar_widths(ex.figure)
    assert clean == adv


def test_explorer_error_in_a_callback_is_shown(lenet, digits):
    # SquareAttack supports L∞ only: choosing it under an L2 threat model fails, and says why
    ex = PerturbationExplorer(lenet, digits.x, digits.y, norm="l2", eps=1.0,
                              attacks={"FGSM": FGSM, "Square": lambda t: SquareAttack(t, max_queries=10)})
    assert ex.error is None and "(L2)" in ex.summary
    assert float(ex.current.result.norms.max()) <= 1.0 + 1e-5
    ex.attack_picker.value = "Square"
    assert isinstance(ex.error, ValueError)
    assert "maestro-error" in ex.status.value and "supports norm linf" in ex.status.value
    ex.attack_picker.value = "FGSM"
    assert ex.error is None and "maestro-error" not in ex.status.value


def test_explorer_follows_the_access_level(lenet, digits):
    scores = PerturbationExplorer(lenet.restrict("scores"), digits.x, digits.y, attacks=None)
    assert scores.attack_picker.options == ("SquareAttack", "RandomNoise")
    oracle = lenet.restrict("labels", budget=200)
    labels = PerturbationExplorer(oracle, digits.x, digits.y)
    assert labels.attack_picker.options == ("RandomNoise",)
    clean, adv = bar_widths(labels.figure)  # labels only: the bars are the predicted class
    assert sorted(clean) == [0.0] * 9 + [1.0] and sorted(adv) == [0.0] * 9 + [1.0]
    assert oracle.queries <= 200


def test_explorer_rejects_what_it_cannot_show(lenet, lstm, digits):
    with pytest.raises(TypeError, match="TextAttackViewer"):
        PerturbationExplorer(lstm, ["a tweet"], [0])
    with pytest.raises(ValueError, match="unknown attack"):
        PerturbationExplorer(lenet, digits.x, digits.y, attacks=["FGSM", "DeepFool"])
    with pytest.raises(ValueError, match="eps"):
        PerturbationExplorer(lenet, digits.x, digits.y, eps=0.9, eps_max=0.5)
    with pytest.raises(ValueError, match="index"):
        PerturbationExplorer(lenet, digits.x, digits.y, index=6)


def test_explorer_displays_as_a_widget(lenet, digits):
    ex = PerturbationExplorer(lenet, digits.x[:1], digits.y[:1], attacks=["FGSM"])
    bundle = ex._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == ex.widget.model_id
    assert ex.index_slider.disabled  # one example: nothing to choose


def test_perturbation_figure_amplifies():
    x = torch.full((1, 4, 4), 0.5)
    x_adv = x.clone()
    x_adv[0, 0, 0] += 0.05
    fig = perturbation_figure(x, x_adv, torch.tensor([0.9, 0.1]), torch.tensor([0.2, 0.8]), ["cat", "dog"], label=0)
    assert "×10" in fig.axes[2].get_title()  # 0.05 stretched to half the range
    shown = torch.as_tensor(fig.axes[2].images[0].get_array())
    assert float(shown[0, 0]) == pytest.approx(1.0) and float(shown[1, 1]) == pytest.approx(0.5)
    assert "fooled" in fig.axes[1].get_title()
    assert figure_png(fig).startswith(PNG)


# ----------------------------------------------------------------------------- text viewer

def sentence_text(markup: str, kind: str) -> str:
    body = re.search(rf'<div class="maestro-sentence maestro-{kind}"[^>]*>(.*?)</div>', markup).group(1)
    return html.unescape(re.sub(r"<[^>]+>", "", body))


def test_text_viewer_highlights_the_changed_words(lstm, tweets):
    viewer = TextAttackViewer(lstm, tweets.x, tweets.y, eps=2)
    assert viewer.attack_picker.options == ("HotFlip", "WordSubstitution")
    run = viewer.current
    assert run.result.attack == "HotFlip"
    maestro.ThreatModel("tokens", 2).check(tweets.x, run.x_adv)
    flipped = [i for i in range(len(tweets.x)) if int(run.probs[i].argmax()) != int(viewer._p_clean[i].argmax())]
    assert flipped, "HotFlip with 2 swaps flips none of 8 tweets"
    viewer.index_slider.value = flipped[0]
    markup = viewer.html
    assert sentence_text(markup, "original") == tweets.x[flipped[0]]
    assert sentence_text(markup, "adversarial") == run.x_adv[flipped[0]]
    marked = re.findall(r'<mark class="maestro-changed maestro-added"[^>]*>(.*?)</mark>', markup)
    _, after = word_diff(tweets.x[flipped[0]], run.x_adv[flipped[0]])
    assert marked and marked == [html.escape(p) for p, changed in after if changed]
    assert "maestro-flip" in markup and "prediction flipped" in markup
    bars = [float(v) for v in re.findall(r'data-p="([0-9.]+)"', markup)]
    expected = torch.cat([viewer._p_clean[flipped[0]], run.probs[flipped[0]]]).tolist()
    assert bars == pytest.approx(expected, abs=1e-5)
    unchanged = [i for i in range(len(tweets.x)) if run.x_adv[i] == tweets.x[i]]
    if unchanged:  # an example the attack left alone has no marks
        viewer.index_slider.value = unchanged[0]
        assert "maestro-changed" not in viewer.html


def test_text_viewer_callbacks_fire(lstm, tweets):
    viewer = TextAttackViewer(lstm, tweets.x[:4], tweets.y[:4], eps=2, attacks=["HotFlip", "WordSubstitution"])
    viewer.eps_slider.value = 1
    assert viewer.error is None and "at most 1 token:" in viewer.summary
    assert all(c <= 1 for c in viewer.current.result.info["changed"].tolist())
    viewer.attack_picker.value = "WordSubstitution"
    assert viewer.error is None and viewer.summary.startswith("WordSubstitution")
    assert viewer.current.result.attack == "WordSubstitution"
    maestro.ThreatModel("tokens", 1).check(tweets.x[:4], viewer.current.x_adv)
    viewer.index_slider.value = 3
    assert sentence_text(viewer.html, "original") == tweets.x[3]


def test_text_viewer_scores_access_and_errors(lstm, tweets):
    viewer = TextAttackViewer(lstm.restrict("scores"), tweets.x[:2], tweets.y[:2], eps=1)
    assert viewer.attack_picker.options == ("WordSubstitution",)
    with pytest.raises(TypeError, match="PerturbationExplorer"):
        TextAttackViewer(maestro.models.load("lenet-mnist"), torch.zeros(1, 1, 28, 28))
    with pytest.raises(ValueError, match="eps"):
        TextAttackViewer(lstm, tweets.x[:2], eps=0)


@pytest.mark.parametrize(("before", "after", "removed", "added"), [
    ("the flight was late", "the flight was early", ["late"], ["early"]),
    ("great crew, thank you!", "great crew, thanks you!", ["thank"], ["thanks"]),
    ("same words", "same words", [], []),
    ("delayed  again", "delayed terribly  again", [], ["terribly"]),
    ("it's fine", "it's awful.", ["fine"], ["awful", "."]),
])
def test_word_diff(before, after, removed, added):
    a, b = word_diff(before, after)
    assert [p for p, c in a if c] == removed and [p for p, c in b if c] == added
    assert "".join(p for p, _ in a) == before and "".join(p for p, _ in b) == after


@settings(max_examples=200, deadline=None)
@given(st.text(), st.text())
def test_word_diff_keeps_every_character(before, after):
    a, b = word_diff(before, after)
    assert "".join(p for p, _ in a) == before and "".join(p for p, _ in b) == after
    assert not any(c and p.isspace() for p, c in a + b)
    same, _ = word_diff(before, before)
    assert not any(c for _, c in same)


def test_text_html_escapes_the_text():
    markup = text_attack_html("<b>hi</b> there", "<b>hi</b> where", [0.7, 0.3], [0.4, 0.6], ["neg", "<pos>"], label=0)
    assert "<b>hi</b>" not in markup and "&lt;b&gt;" in markup and "&lt;pos&gt;" in markup
    assert 'maestro-added" style="background:#ffe08a;padding:0 2px;border-radius:3px">where</mark>' in markup


# ----------------------------------------------------------------------------- plots

def test_attack_comparison_from_a_report(lenet):
    data = maestro.datasets.load("mnist", split="dev")[:32]
    threat = maestro.ThreatModel("linf", 0.15)
    report = maestro.evaluate(lenet, data, threat=threat, cascade=False, progress=False,
                              attacks=[RandomNoise(threat), FGSM(threat), PGD(threat, steps=5)])
    fig = plot_attack_comparison(report)
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert heights == pytest.approx([100 * r.robust_accuracy for r in report.rows])
    assert [t.get_text() for t in ax.get_xticklabels()] == [r.attack for r in report.rows]
    lines = sorted(line.get_ydata()[0] for line in ax.lines)
    assert lines == pytest.approx(sorted([100 * report.clean_accuracy, 100 * report.robust_accuracy]))
    fig = plot_attack_comparison(report.rows, metric="queries")
    assert [p.get_height() for p in fig.axes[0].patches] == [r.queries for r in report.rows]
    assert figure_png(fig).startswith(PNG)


def test_attack_comparison_from_results(lenet):
    data = maestro.datasets.load("mnist", split="dev")[:16]
    threat = maestro.ThreatModel("linf", 0.2)
    results = {"FGSM": FGSM(threat)(lenet, data.x, data.y), "PGD": PGD(threat, steps=5)(lenet, data.x, data.y)}
    fig = plot_attack_comparison(results)
    assert [p.get_height() for p in fig.axes[0].patches] == pytest.approx(
        [100 * r.success_rate for r in results.values()])
    with pytest.raises(ValueError, match="EvaluationReport"):
        plot_attack_comparison(results, metric="robust_accuracy")
    with pytest.raises(ValueError, match="metric"):
        plot_attack_comparison(results, metric="accuracy")
    with pytest.raises(TypeError):
        plot_attack_comparison([1, 2])


def test_robustness_curve_plot(lenet):
    data = maestro.datasets.load("mnist", split="dev")[:16]
    curve = maestro.robustness_curve(lenet, data, attack_factory=FGSM, eps_list=[0, 0.1, 0.3], progress=False)
    fig = plot_robustness_curve(curve)
    ys = list(fig.axes[0].lines[0].get_ydata())
    assert ys == pytest.approx([100 * a for a in curve.accuracy])
    assert plot_robustness_curve is maestro.evaluation.plot_robustness_curve


# ----------------------------------------------------------------------------- leaderboard

ROWS = [
    {"rank": 2, "name": "bob <img src=x onerror=alert(1)>", "score": 0.5, "eps": 0.1},
    {"rank": 1, "name": "alice", "score": 0.91234, "time": 3},
    {"rank": 3, "name": "carol", "score": None},
]


def test_leaderboard_html():
    markup = leaderboard_html(ROWS, highlight="alice", title="Unit 1")
    head = re.findall(r"<th style[^>]*>(.*?)</th>", markup)
    assert head == ["rank", "name", "score", "eps", "time"]
    body = [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr class.*?</tr>", markup)]
    assert body == [
        ["1", "alice", "0.912", "—", "3"],
        ["2", "bob &lt;img src=x onerror=alert(1)&gt;", "0.500", "0.100", "—"],
        ["3", "carol", "—", "—", "—"],
    ]
    assert markup.count("maestro-highlight") == 1 and "<img" not in markup
    assert "Unit 1" in markup
    short = leaderboard_html(ROWS, columns=["time"], max_rows=2)
    assert re.findall(r"<th style[^>]*>(.*?)</th>", short) == ["rank", "name", "score", "time"]
    assert short.count("<tr class") == 2


@pytest.mark.parametrize(("rows", "error", "match"), [
    ([{"rank": 1, "name": "a"}], ValueError, "lacks score"),
    ([{"rank": 0, "name": "a", "score": 1.0}], ValueError, "rank"),
    ([{"rank": True, "name": "a", "score": 1.0}], ValueError, "rank"),
    ([{"rank": 1, "name": "a", "score": "high"}], ValueError, "score"),
    ({"rank": 1, "name": "a", "score": 1.0}, TypeError, "list of dicts"),
    ([("a", 1.0)], TypeError, "rows\\[0\\]"),
])
def test_leaderboard_rejects_bad_rows(rows, error, match):
    with pytest.raises(error, match=match):
        leaderboard_html(rows)


def test_leaderboard_table_is_a_widget():
    import ipywidgets

    widget = leaderboard_table(ROWS, highlight="carol")
    assert isinstance(widget, ipywidgets.HTML)
    assert widget.value == leaderboard_html(ROWS, highlight="carol")

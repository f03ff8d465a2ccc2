"""Evaluation: evaluate() agrees with direct attack calls, validates every x_adv, picks a suite
for the access level; robustness curves and their plot; the sanity checks flag gradient
masking (and stay quiet on a clean model), and BPDA / EOT then break the masked defenses."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import maestro
from maestro.attacks import BPDA, EOT, FGSM, PGD, Attack
from maestro.defenses import BitDepthSqueeze, TransformedModel
from maestro.errors import AssetUnavailable, ThreatModelViolation
from maestro.evaluation import (
    EvaluationReport,
    SanityFlag,
    evaluate,
    plot_robustness_curve,
    robustness_curve,
    sanity_checks,
)
from maestro.models.archs import build_arch

LINF = maestro.ThreatModel("linf", 0.2)


def _wrap(module, name="cnn", **kw) -> maestro.ModelWrapper:
    return maestro.ModelWrapper(module.eval(), modality="image", num_classes=10, input_shape=(1, 8, 8), name=name, **kw)


@pytest.fixture(scope="module")
def digits_cnn():
    """The zoo's cnn-digits when it is built, else the same architecture trained here (~5 s)."""
    try:
        return maestro.models.load("cnn-digits")
    except AssetUnavailable:
        train = maestro.datasets.load("digits", "train")
        torch.manual_seed(0)
        module = build_arch("small-cnn", {"input_shape": [1, 8, 8], "num_classes": 10})
        opt = torch.optim.Adam(module.parameters(), 2e-3)
        for epoch in range(10):
            module.train()
            for x, y in train.batches(32, shuffle=True, seed=epoch):
                loss = F.cross_entropy(module(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
        return _wrap(module, "cnn-digits (trained in the test)")


@pytest.fixture(scope="module")
def test_set():
    return maestro.datasets.load("digits", "test")


def _clean_correct(model, x, y):
    return model.predict(x).cpu() == y


# -- evaluate -----------------------------------------------------------------------------
def test_evaluate_matches_direct_attack_calls(digits_cnn, test_set):
    x, y = test_set.x[:80], test_set.y[:80]
    fgsm, pgd = FGSM(LINF), PGD(LINF, steps=10)
    report = evaluate(digits_cnn, (x, y), threat=LINF, attacks=[fgsm, pgd], progress=False)
    assert isinstance(report, EvaluationReport)
    correct = _clean_correct(digits_cnn, x, y)
    assert report.clean_accuracy == pytest.approx(float(correct.float().mean()))
    # first attack: exactly a direct call on the clean-correct points
    idx = correct.nonzero().flatten()
    direct = fgsm(digits_cnn.restrict("white-box"), x[idx], y[idx])
    row = report.row("FGSM")
    assert row.attacked == len(idx)
    assert row.broken == int(direct.success.sum()) == row.claimed
    assert row.queries == direct.queries
    assert row.success_rate == pytest.approx(direct.success_rate)
    assert row.median_norm == pytest.approx(float(direct.norms[direct.success].median()), abs=1e-6)
    # second attack: only the points FGSM left standing
    left = idx[~direct.success]
    direct2 = pgd(digits_cnn.restrict("white-box"), x[left], y[left])
    row2 = report.row("PGD-10")
    assert row2.attacked == len(left) and row2.broken == int(direct2.success.sum())
    expected = (len(left) - int(direct2.success.sum())) / len(x)
    assert report.robust_accuracy == pytest.approx(expected) == row2.robust_accuracy
    # per example: broken_by names the attack that broke it, x_adv is a valid worst case
    assert sum(b == "FGSM" for b in report.broken_by) == row.broken
    assert not report.robust[~correct].any()
    LINF.check(x, report.x_adv)
    assert ((digits_cnn.predict(report.x_adv).cpu() == y) == report.robust).all()


def test_evaluate_standalone_mode_and_worst_case(digits_cnn, test_set):
    x, y = test_set.x[:60], test_set.y[:60]
    attacks = [FGSM(LINF), PGD(LINF, steps=10)]
    report = evaluate(digits_cnn, (x, y), threat=LINF, attacks=attacks, cascade=False, progress=False)
    correct = _clean_correct(digits_cnn, x, y)
    assert all(r.attacked == int(correct.sum()) for r in report.rows)
    direct = PGD(LINF, steps=10)(digits_cnn, x[correct], y[correct])
    assert report.row("PGD-10").robust_accuracy == pytest.approx((int(correct.sum()) - int(direct.success.sum())) / 60)
    assert report.robust_accuracy <= min(r.robust_accuracy for r in report.rows) + 1e-9


def test_report_table_and_json(digits_cnn, test_set):
    report = evaluate(digits_cnn, test_set[:30], threat=LINF, attacks=[FGSM(LINF)], progress=False)
    text = str(report)
    for word in ("clean accuracy", "FGSM", "robust acc", "median norm", "queries", "worst case"):
        assert word in text
    data = json.loads(json.dumps(report.to_dict()))
    assert data["n"] == 30 and data["attacks"][0]["attack"] == "FGSM"
    assert data["threat"]["eps"] == 0.2 and len(data["per_example"]["robust"]) == 30


class _Cheater(Attack):
    """Moves every pixel by 2·eps: a threat-model violation evaluate must catch."""

    name = "Cheater"

    def __call__(self, model, x, y, *, target=None):
        x_adv = (x + 2 * self.threat.eps).clamp(0, 1)
        from maestro.attacks.base import AttackResult

        return AttackResult(x_adv, torch.ones(len(x), dtype=torch.bool), torch.zeros(len(x)), 0, 0.0, "Cheater")


def test_evaluate_validates_every_adversarial_example(digits_cnn, test_set):
    with pytest.raises(ThreatModelViolation):
        evaluate(digits_cnn, test_set[:20], threat=LINF, attacks=[_Cheater(LINF)], progress=False)


def test_default_suite_follows_access(digits_cnn, test_set):
    data = test_set[:12]
    white = evaluate(digits_cnn, data, threat=LINF, progress=False)
    names = [r.attack for r in white.rows]
    assert names[:2] == ["FGSM", "PGD-20"]
    assert white.robust_accuracy <= 0.1
    scores = digits_cnn.restrict("scores")
    suite = [r.attack for r in evaluate(scores, data, threat=maestro.ThreatModel("linf", 0.2, query_budget=100),
                                        attacks=None, progress=False).rows]
    assert suite and not any(n.startswith(("FGSM", "PGD", "APGD")) for n in suite)
    # the threat model's access level caps the suite too
    capped = maestro.ThreatModel("linf", 0.2, access="labels", query_budget=60)
    rows = evaluate(digits_cnn, data[:5], threat=capped, progress=False).rows
    assert all(r.error is None for r in rows)
    assert not any(r.attack.startswith(("FGSM", "PGD", "APGD", "Square")) for r in rows)


def test_evaluate_text_suite_is_chosen_for_text_threats():
    from maestro.evaluation.suite import default_suite

    class _Text:
        access, modality = "white-box", "text"

    suite = default_suite(_Text(), maestro.ThreatModel("tokens", 2))
    assert suite and all("text" in a.modalities for a in suite)


# -- robustness curves --------------------------------------------------------------------
def test_robustness_curve_and_plot(digits_cnn, test_set, tmp_path):
    data = test_set[:60]
    eps_list = [0.0, 0.05, 0.1, 0.2, 0.3]
    curve = robustness_curve(digits_cnn, data, attack_factory=lambda t: PGD(t, steps=10), eps_list=eps_list,
                             threat_kwargs={"norm": "linf"}, progress=False)
    assert curve.eps == eps_list and curve.attack == "PGD-10"
    assert curve.per_example.shape == (5, 60)
    assert curve.accuracy[0] == pytest.approx(float(_clean_correct(digits_cnn, data.x, data.y).float().mean()))
    assert all(a >= b for a, b in zip(curve.cumulative, curve.cumulative[1:]))
    assert curve.accuracy[-1] <= 0.05 < curve.accuracy[0]
    json.dumps(curve.to_dict())
    fig = plot_robustness_curve(curve, title="cnn-digits")
    from matplotlib.figure import Figure

    assert isinstance(fig, Figure)
    fig.savefig(tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 1000
    two = plot_robustness_curve([curve, curve], labels=["a", "b"])
    assert len(two.axes[0].lines) == 2
    with pytest.raises(ValueError):
        robustness_curve(digits_cnn, data, attack_factory=lambda t: PGD(t), eps_list=[0.1], threat_kwargs={"eps": 1})


# -- sanity checks ------------------------------------------------------------------------
def _flags(flags) -> dict[str, SanityFlag]:
    assert all(isinstance(f, SanityFlag) and f.explanation for f in flags)
    return {f.name: f for f in flags}


def test_sanity_checks_pass_on_the_clean_model(digits_cnn, test_set):
    flags = _flags(sanity_checks(digits_cnn, test_set, threat=LINF, n=40))
    print("\n" + "\n".join(map(str, flags.values())))
    failed = [str(f) for f in flags.values() if not f.passed]
    assert failed == []
    for name in ("softmax_outputs", "zero_gradients", "deterministic", "accuracy_falls_with_eps",
                 "more_iterations_do_not_help", "black_box_not_stronger"):
        assert name in flags


def test_bit_depth_squeeze_is_flagged_and_bpda_breaks_it(digits_cnn, test_set):
    model = TransformedModel(digits_cnn, BitDepthSqueeze(1))
    flags = _flags(sanity_checks(model, test_set, threat=LINF, n=40))
    print("\n" + "\n".join(map(str, flags.values())))
    assert not flags["zero_gradients"].passed
    assert not flags["accuracy_falls_with_eps"].passed
    assert not flags["bpda_not_stronger"].passed
    x, y = test_set.x[:60], test_set.y[:60]
    pgd = 1 - PGD(LINF, steps=20)(model, x, y).success_rate
    bpda = 1 - BPDA(LINF, steps=20)(model, x, y).success_rate
    assert bpda <= pgd - 0.3


def test_saturated_softmax_is_flagged_and_bpda_breaks_it(digits_cnn, test_set):
    model = TransformedModel(digits_cnn, output_transform=lambda z: 1000 * z.softmax(-1))
    flags = _flags(sanity_checks(model, test_set, threat=LINF, n=40, black_box=False))
    assert not flags["zero_gradients"].passed
    assert not flags["accuracy_falls_with_eps"].passed
    x, y = test_set.x[:60], test_set.y[:60]
    assert 1 - PGD(LINF, steps=20)(model, x, y).success_rate >= 0.85
    assert 1 - BPDA(LINF, steps=20)(model, x, y).success_rate <= 0.15


def test_log_one_hot_outputs_are_flagged(digits_cnn, test_set):
    one_hot = TransformedModel(digits_cnn, output_transform=lambda z: torch.log(
        F.one_hot(z.argmax(1), z.shape[1]).float() + 1e-12))
    flags = _flags(sanity_checks(one_hot, test_set, threat=LINF, n=30, black_box=False))
    assert not flags["zero_gradients"].passed and not flags["accuracy_falls_with_eps"].passed
    x, y = test_set.x[:40], test_set.y[:40]
    assert 1 - BPDA(LINF, steps=20)(one_hot, x, y).success_rate <= 0.15


def test_softmax_outputs_are_flagged(digits_cnn, test_set):
    probs = TransformedModel(digits_cnn, output_transform=lambda z: z.softmax(-1))
    flags = _flags(sanity_checks(probs, test_set, threat=LINF, n=20, black_box=False))
    assert not flags["softmax_outputs"].passed


def test_randomized_model_is_flagged_and_eot_is_used(digits_cnn, test_set):
    from maestro.defenses.smoothing import GaussianNoise

    noisy = _wrap(GaussianNoise(digits_cnn.model, 0.3, seed=1), "noisy")
    flags = _flags(sanity_checks(noisy, test_set, threat=LINF, n=30, black_box=False))
    assert not flags["deterministic"].passed
    assert "eot_not_stronger" in flags
    x, y = test_set.x[:30], test_set.y[:30]
    assert EOT(LINF, samples=8, steps=10)(noisy, x, y).success_rate > 0.5

"""Defenses: adversarial training, input transformations (and BPDA against them), randomized
smoothing (and EOT against it).

Randomized smoothing soundness is tested on the smoothed classifier g itself: every test point
certified (n = 500 draws, alpha = 0.001) with radius R is attacked by EOT-PGD in L2 (gradients
of the cross-entropy of the averaged softmax over 16 Gaussian draws, success judged by the
majority vote) inside the ball of radius 0.95·R rounded down to a multiple of 0.05 (points
grouped by that radius, one attack per group), and g's Monte Carlo prediction at the attack's
output must be the certified class or an abstention. The same attack at L2 eps 1.75 (over
three times the largest radius n = 500 draws can certify) must change most predictions, so a
pass is not the attack's weakness.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import maestro
from maestro.attacks import BPDA, EOT, PGD
from maestro.defenses import (
    BitDepthSqueeze,
    MedianSmoothing,
    RandomizedSmoothing,
    TrainingRecord,
    TransformedModel,
    adversarial_training,
)
from maestro.errors import AssetUnavailable
from maestro.models.archs import build_arch

LINF = maestro.ThreatModel("linf", 0.2)


def _cnn(channels=(32, 64), hidden=128) -> torch.nn.Module:
    return build_arch("small-cnn", {"input_shape": [1, 8, 8], "num_classes": 10, "channels": list(channels),
                                    "hidden": hidden})


def _wrap(module, name="cnn") -> maestro.ModelWrapper:
    return maestro.ModelWrapper(module.eval(), modality="image", num_classes=10, input_shape=(1, 8, 8), name=name)


def _train(module, data, *, epochs, noise=0.0, seed=0, lr=2e-3, batch_size=32):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(module.parameters(), lr)
    for epoch in range(epochs):
        module.train()
        for x, y in data.batches(batch_size, shuffle=True, seed=seed * 1000 + epoch):
            if noise:
                x = x + noise * torch.randn(x.shape, generator=gen)
            loss = F.cross_entropy(module(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return module.eval()


@pytest.fixture(scope="module")
def train():
    return maestro.datasets.load("digits", "train")


@pytest.fixture(scope="module")
def test_set():
    return maestro.datasets.load("digits", "test")


@pytest.fixture(scope="module")
def digits_cnn(train):
    """The zoo's cnn-digits when it is built, else the same architecture trained here (~5 s)."""
    try:
        return maestro.models.load("cnn-digits")
    except AssetUnavailable:
        return _wrap(_train(_cnn(), train, epochs=10), "cnn-digits (trained in the test)")


def _accuracy(model, x, y) -> float:
    return float((model.predict(x).cpu() == y).float().mean())


def _pgd_accuracy(model, x, y, threat=LINF, steps=20) -> float:
    return 1.0 - PGD(threat, steps=steps)(model, x, y).success_rate


# -- adversarial training -----------------------------------------------------------------
def test_pgd_adversarial_training_keeps_half_under_pgd20(train, test_set):
    torch.manual_seed(0)
    module = _cnn()
    record = adversarial_training(module, train, threat=LINF, method="pgd", epochs=15, steps=5, lr=3e-3,
                                  batch_size=64, seed=0, val=test_set[:60], eval_steps=5, progress=False)
    assert isinstance(record, TrainingRecord) and len(record.history) == 15
    assert record.history[-1].robust_accuracy > record.history[0].robust_accuracy
    model = _wrap(module, "pgd-at")
    clean = _accuracy(model, test_set.x, test_set.y)
    robust = _pgd_accuracy(model, test_set.x, test_set.y)
    print(f"\nPGD-AT: clean {clean:.1%}, PGD-20 eps 0.2 {robust:.1%}, {record.seconds:.1f}s\n{record}")
    assert clean >= 0.90
    assert robust >= 0.50
    assert "epoch" in str(record) and record.to_dict()["method"] == "pgd"


def test_fgsm_adversarial_training_improves_robustness(train, test_set, digits_cnn):
    torch.manual_seed(1)
    module = _cnn()
    record = adversarial_training(module, train, threat=LINF, method="fgsm", epochs=8, lr=3e-3, batch_size=64,
                                  seed=0, eval_size=100, progress=False)
    assert record.step_size == pytest.approx(1.25 * 0.2)
    model = _wrap(module, "fgsm-at")
    before = _pgd_accuracy(digits_cnn, test_set.x, test_set.y)
    after = _pgd_accuracy(model, test_set.x, test_set.y)
    print(f"\nFGSM-AT: PGD-20 accuracy {before:.1%} (undefended) -> {after:.1%}, clean "
          f"{_accuracy(model, test_set.x, test_set.y):.1%}")
    assert _accuracy(model, test_set.x, test_set.y) >= 0.85
    assert after >= before + 0.25


def test_adversarial_training_is_deterministic(train):
    small = train[:128]
    states = []
    for _ in range(2):
        torch.manual_seed(123)  # the same initial weights; the training itself uses only seed=
        module = _cnn((8, 8), 16)
        torch.manual_seed(999)  # global RNG state must not matter
        adversarial_training(module, small, threat=LINF, epochs=2, steps=2, lr=1e-3, batch_size=32, seed=5,
                             eval_size=32, progress=False)
        states.append({k: v.clone() for k, v in module.state_dict().items()})
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_adversarial_training_l2_and_perturbation_stays_in_the_ball(train):
    from maestro.defenses.training import perturb

    module = _cnn((8, 8), 16)
    l2 = maestro.ThreatModel("l2", 1.0)
    record = adversarial_training(module, train[:96], threat=l2, epochs=1, steps=3, batch_size=32, seed=0,
                                  eval_size=32, progress=False)
    assert record.step_size == pytest.approx(2.5 * 1.0 / 3) and "L2" in record.threat
    x, y = train.x[:16], train.y[:16]
    for threat in (l2, LINF):
        x_adv = perturb(module, x, y, threat, steps=3, step_size=0.5, gen=torch.Generator().manual_seed(0))
        threat.check(x, x_adv)


def test_adversarial_training_rejects_bad_arguments(train):
    module = _cnn((8, 8), 16)
    with pytest.raises(ValueError, match="method"):
        adversarial_training(module, train, threat=LINF, method="trades", epochs=1, progress=False)
    with pytest.raises(TypeError, match="ThreatModel"):
        adversarial_training(module, train, threat=0.2, epochs=1, progress=False)
    with pytest.raises(TypeError, match="Dataset"):
        adversarial_training(module, (train.x, train.y), threat=LINF, epochs=1, progress=False)


# -- input transformations ----------------------------------------------------------------
def test_bit_depth_squeeze_levels():
    x = torch.rand(4, 1, 8, 8)
    for bits in (1, 2, 3, 8):
        out = BitDepthSqueeze(bits)(x)
        levels = torch.unique(out)
        assert len(levels) <= 2**bits
        assert torch.allclose(out * (2**bits - 1), torch.round(out * (2**bits - 1)), atol=1e-5)
        assert (out - x).abs().max() <= 0.5 / (2**bits - 1) + 1e-6
        assert torch.equal(BitDepthSqueeze(bits)(out), out)
    assert torch.equal(BitDepthSqueeze(1)(torch.tensor([0.2, 0.49, 0.51, 0.9])), torch.tensor([0.0, 0.0, 1.0, 1.0]))
    # other bounds: levels spread over [lo, hi]
    assert torch.allclose(BitDepthSqueeze(1, bounds=(-1, 1))(torch.tensor([-0.6, 0.3])), torch.tensor([-1.0, 1.0]))
    with pytest.raises(ValueError):
        BitDepthSqueeze(0)


def test_median_smoothing_matches_scipy():
    from scipy.ndimage import median_filter

    x = torch.rand(3, 2, 8, 8)
    ours = MedianSmoothing(3)(x).numpy()
    ref = median_filter(x.numpy(), size=(1, 1, 3, 3), mode="mirror")
    np.testing.assert_allclose(ours, ref, atol=1e-7)
    assert MedianSmoothing(2)(x).shape == x.shape
    assert torch.equal(MedianSmoothing(1)(x), x)


def test_transformed_model_is_a_model_wrapper(digits_cnn, test_set):
    x, y = test_set.x[:20], test_set.y[:20]
    squeeze = BitDepthSqueeze(3)
    model = TransformedModel(digits_cnn, squeeze)
    assert isinstance(model, maestro.ModelWrapper)
    assert torch.equal(model.predict(x), digits_cnn.predict(squeeze(x)))
    assert model.queries == 20 and model.base is digits_cnn
    labels_only = model.restrict("labels", budget=20)
    assert isinstance(labels_only, TransformedModel) and labels_only.access == "labels"
    assert torch.equal(labels_only.predict(x), model.predict(x))
    with pytest.raises(maestro.AccessDenied):
        labels_only.logits(x)
    # rounding masks the gradient: exactly zero almost everywhere
    assert float(model.gradient(x, y).abs().max()) == 0.0
    # BPDA's straight-through estimator: the base model's gradient at the transformed input
    with model.straight_through():
        g = model.gradient(x, y)
    assert torch.allclose(g, digits_cnn.gradient(squeeze(x), y), atol=1e-6)
    assert float(model.gradient(x, y).abs().max()) == 0.0  # switched off again
    with pytest.raises(ValueError):
        TransformedModel(digits_cnn)


def test_bpda_breaks_bit_depth_squeeze(digits_cnn, test_set):
    x, y = test_set.x[:100], test_set.y[:100]
    model = TransformedModel(digits_cnn, BitDepthSqueeze(1))
    clean = _accuracy(model, x, y)
    pgd = _pgd_accuracy(model, x, y)
    bpda = 1.0 - BPDA(LINF, steps=20, restarts=2)(model, x, y).success_rate
    print(f"\n1-bit squeeze: clean {clean:.0%}, PGD-20 {pgd:.0%} (masked), BPDA {bpda:.0%}")
    assert clean >= 0.85
    assert pgd >= clean - 0.1  # PGD learns nothing from zero gradients
    assert bpda <= pgd - 0.3  # the adaptive attack removes most of the apparent robustness
    eps3 = maestro.ThreatModel("linf", 0.3)
    assert 1.0 - BPDA(eps3, steps=20)(model, x, y).success_rate <= 0.35


def test_bpda_breaks_a_saturated_softmax(digits_cnn, test_set):
    x, y = test_set.x[:60], test_set.y[:60]
    model = TransformedModel(digits_cnn, output_transform=lambda z: 1000 * z.softmax(-1))
    assert _pgd_accuracy(model, x, y) >= 0.85
    assert 1.0 - BPDA(LINF, steps=20)(model, x, y).success_rate <= 0.15


def test_eot_with_bpda_on_a_random_non_differentiable_transform(digits_cnn, test_set):
    gen = torch.Generator().manual_seed(0)

    def noisy_squeeze(x):  # random noise, then rounding: randomized *and* gradient-masked
        return BitDepthSqueeze(2)((x + 0.05 * torch.randn(x.shape, generator=gen)).clamp(0, 1))

    model = TransformedModel(digits_cnn, noisy_squeeze)
    x, y = test_set.x[:40], test_set.y[:40]
    assert float(model.gradient(x, y).abs().max()) == 0.0
    plain = EOT(LINF, samples=4, steps=10)(model, x, y)
    through = EOT(LINF, samples=4, steps=10, bpda=True)(model, x, y)
    assert through.success_rate >= plain.success_rate + 0.3


def test_bpda_on_a_plain_model_is_pgd(digits_cnn, test_set):
    x, y = test_set.x[:60], test_set.y[:60]
    result = BPDA(LINF, steps=20)(digits_cnn, x, y)
    assert result.info["straight_through"] is False
    assert result.success_rate >= 0.9
    assert float(result.norms.max()) <= 0.2 + 1e-6


# -- randomized smoothing -----------------------------------------------------------------
@pytest.fixture(scope="module")
def smoothed(train):
    base = _wrap(_train(_cnn((16, 32), 64), train, epochs=12, noise=0.25, lr=3e-3, batch_size=64), "noisy-cnn")
    return RandomizedSmoothing(base, 0.25, n0=64, n=500, alpha=0.001, batch_size=2000, seed=0)


def test_clopper_pearson_and_radius_formula(smoothed, test_set):
    from scipy.stats import beta, norm

    from maestro.defenses.smoothing import clopper_pearson_lower

    k = torch.tensor([0, 250, 400, 499, 500])
    ours = clopper_pearson_lower(k, 500, 0.001)
    ref = [0.0 if v == 0 else beta.ppf(0.001, v, 500 - v + 1) for v in k.tolist()]
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-5)
    cert = smoothed.certify(test_set.x[:10])
    ok = cert.prediction >= 0
    expected = 0.25 * norm.ppf(clopper_pearson_lower(cert.count, 500, 0.001).numpy())
    np.testing.assert_allclose(cert.radius[ok].numpy(), expected[ok.numpy()], rtol=1e-4)
    assert (cert.radius[~ok] == 0).all()
    # the largest radius n = 500 draws can certify: all 500 votes for one class
    assert float(cert.radius.max()) <= 0.25 * norm.ppf(0.001 ** (1 / 500)) + 1e-5


def test_smoothing_predicts_and_abstains(smoothed, test_set):
    x, y = test_set.x[:40], test_set.y[:40]
    pred = smoothed.predict(x)
    assert pred.shape == (40,) and pred.dtype == torch.long
    assert float((pred == y).float().mean()) >= 0.85
    # a blank grey image has no clear winner under heavy noise: with few draws, abstain
    grey = torch.full((4, 1, 8, 8), 0.5)
    wide = RandomizedSmoothing(smoothed.base, 1.0, n=20, alpha=0.001, seed=3)
    assert (wide.predict(grey) == -1).all()
    # reproducible for a seed
    a = RandomizedSmoothing(smoothed.base, 0.25, n=200, seed=7).certify(x[:5])
    b = RandomizedSmoothing(smoothed.base, 0.25, n=200, seed=7).certify(x[:5])
    assert torch.equal(a.prediction, b.prediction) and torch.equal(a.radius, b.radius)
    prediction, radius = a  # unpacks as (prediction, radius)
    assert torch.equal(prediction, a.prediction) and torch.equal(radius, a.radius)


def test_no_certified_point_falls_inside_its_radius(smoothed, test_set):
    x, y = test_set.x[:30], test_set.y[:30]
    cert = smoothed.certify(x)
    certified = (cert.prediction == y).nonzero().flatten()
    assert len(certified) >= 20
    # one EOT attack per group of points, at eps = 0.95·R rounded down to a multiple of 0.05,
    # so every point is attacked strictly inside its own certified ball
    eps_of = torch.floor(0.95 * cert.radius[certified] * 20) / 20
    violations, attacked = [], 0
    for eps in torch.unique(eps_of).tolist():
        if eps <= 0:
            continue
        idx = certified[eps_of == eps]
        result = EOT(maestro.ThreatModel("l2", eps), samples=16, steps=20, seed=0)(smoothed, x[idx], y[idx])
        assert (result.norms <= cert.radius[idx]).all()
        after = smoothed.predict(result.x_adv)
        attacked += len(idx)
        bad = (after != cert.prediction[idx]) & (after != -1)
        violations += [(int(i), float(cert.radius[i]), int(a)) for i, a in zip(idx[bad], after[bad])]
    # the same attack, allowed well beyond every radius (all R < 0.6 with n = 500), does break points
    far = EOT(maestro.ThreatModel("l2", 1.75), samples=16, steps=20, seed=0)(smoothed, x[certified], y[certified])
    changed = int((smoothed.predict(far.x_adv) != cert.prediction[certified]).sum())
    print(f"\nsmoothing: {len(certified)} certified, {attacked} attacked inside their radius, violations "
          f"{violations}; {changed} changed at L2 eps 1.75 (max radius {float(cert.radius.max()):.3f})")
    assert attacked >= len(certified) // 2
    assert violations == []
    assert float(cert.radius.max()) < 1.75 / 2
    assert changed >= len(certified) // 2


def test_eot_beats_single_draw_pgd_on_the_smoothed_classifier(smoothed, test_set):
    x, y = test_set.x[:40], test_set.y[:40]
    threat = maestro.ThreatModel("l2", 1.0)
    eot = EOT(threat, samples=16, steps=20)(smoothed, x, y)
    assert eot.info["samples"] == 16
    smoothed_after = smoothed.predict(eot.x_adv)
    pgd = PGD(threat, steps=20)(smoothed.noisy, x, y)
    smoothed_after_pgd = smoothed.predict(pgd.x_adv)
    eot_acc = float((smoothed_after == y).float().mean())
    pgd_acc = float((smoothed_after_pgd == y).float().mean())
    print(f"\nsmoothed classifier at L2 eps 1.0: after EOT {eot_acc:.0%}, after single-draw PGD {pgd_acc:.0%}")
    assert eot_acc <= pgd_acc

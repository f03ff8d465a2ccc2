"""Our PGD against the peers' on the same model, inputs and settings (L∞, eps, steps, step size,
no random start): robust accuracy within 2 points of torchattacks' and of ART's.

The peers are dev-only: ``pip install --no-deps torchattacks adversarial-robustness-toolbox six``
(torchattacks imports without torchvision; ART needs ``six`` besides numpy/scipy/scikit-learn)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import maestro
from maestro import ThreatModel
from maestro.attacks import PGD

EPS, STEPS = 0.1, 20
ALPHA = 2.5 * EPS / STEPS


@pytest.fixture(scope="module")
def setup():
    from maestro.errors import AssetUnavailable

    try:
        model = maestro.models.load("cnn-digits")
    except AssetUnavailable:
        maestro.models.build(["cnn-digits"], progress=False)
        model = maestro.models.load("cnn-digits")
    test = maestro.datasets.load("digits", "test")
    x, y = test.x[:150], test.y[:150]
    ours = PGD(ThreatModel("linf", EPS), steps=STEPS, step_size=ALPHA, random_start=False)(model, x, y)
    robust = float((model.predict(ours.x_adv) == y).float().mean())
    assert 0.05 < robust < 0.95, "pick an eps where robust accuracy says something"
    return model, x, y, robust


def test_pgd_matches_torchattacks(setup):
    try:
        import torchattacks
    except Exception as err:
        pytest.skip(f"torchattacks cannot be imported ({type(err).__name__}: {err}); "
                    "pip install --no-deps torchattacks")
    model, x, y, robust = setup
    attack = torchattacks.PGD(model.model, eps=EPS, alpha=ALPHA, steps=STEPS, random_start=False)
    x_adv = attack(x, y)
    ThreatModel("linf", EPS).check(x, x_adv)
    theirs = float((model.predict(x_adv) == y).float().mean())
    assert abs(robust - theirs) <= 0.02, (robust, theirs)


def test_pgd_matches_art(setup):
    try:
        from art.attacks.evasion import ProjectedGradientDescent
        from art.estimators.classification import PyTorchClassifier
    except Exception as err:
        pytest.skip(f"adversarial-robustness-toolbox cannot be imported ({type(err).__name__}: {err}); "
                    "pip install --no-deps adversarial-robustness-toolbox six")
    model, x, y, robust = setup
    classifier = PyTorchClassifier(
        model=model.model, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
        nb_classes=model.num_classes, clip_values=(0.0, 1.0), device_type="cpu",
    )
    attack = ProjectedGradientDescent(
        classifier, norm=np.inf, eps=EPS, eps_step=ALPHA, max_iter=STEPS, num_random_init=0,
        batch_size=len(x), verbose=False,
    )
    x_adv = torch.from_numpy(attack.generate(x.numpy(), y=y.numpy()))
    ThreatModel("linf", EPS).check(x, x_adv)
    theirs = float((model.predict(x_adv) == y).float().mean())
    assert abs(robust - theirs) <= 0.02, (robust, theirs)

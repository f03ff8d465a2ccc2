"""Image attacks on real zoo models (``cnn-digits``, ``mlp-digits`` as a transfer surrogate; built on
first use): strength (FGSM/PGD at eps 0.3), monotonicity in eps, targeted mode, restarts, exact
query budgets for the score- and label-based attacks, determinism, threat-model validity of
every ``x_adv`` and clear errors."""

from __future__ import annotations

import itertools

import pytest
import torch

import maestro
from maestro import ThreatModel
from maestro.attacks import (
    APGD,
    FGSM,
    PGD,
    CarliniWagnerL2,
    HopSkipJump,
    RandomNoise,
    SimBA,
    SquareAttack,
    TransferAttack,
    UniversalPerturbation,
)
from maestro.errors import AccessDenied

N = 100


def _zoo(name: str) -> maestro.ModelWrapper:
    from maestro.errors import AssetUnavailable

    try:
        return maestro.models.load(name)
    except AssetUnavailable:
        maestro.models.build([name], progress=False)
        return maestro.models.load(name)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return _zoo("cnn-digits")


@pytest.fixture(scope="module")
def data(model):
    test = maestro.datasets.load("digits", "test")
    x, y = test.x[:N], test.y[:N]
    return x, y


def _accuracy(model, x, y) -> float:
    return float((model.predict(x) == y).float().mean())


def _claims_hold(model, result, y, target=None):
    """Every example an attack calls a success really is one."""
    if result.success.any():
        pred = model.predict(result.x_adv[result.success])
        goal = target[result.success] if target is not None else None
        assert (pred == goal).all() if goal is not None else (pred != y[result.success]).all()


def test_fgsm_eps_03_leaves_at_most_5_percent(model, data):
    x, y = data
    assert _accuracy(model, x, y) > 0.9
    result = FGSM(ThreatModel("linf", 0.3))(model, x, y)
    assert _accuracy(model, result.x_adv, y) <= 0.05


def test_pgd20_eps_03_leaves_zero_and_checks_out(model, data):
    x, y = data
    tm = ThreatModel("linf", 0.3)
    result = PGD(tm, steps=20)(model, x, y)
    assert _accuracy(model, result.x_adv, y) == 0.0
    assert result.success.all()
    tm.check(x, result.x_adv)
    _claims_hold(model, result, y)
    # the active set: broken points leave, so far fewer than 20 gradients per example were spent
    assert result.queries < 20 * len(x)


def test_accuracy_non_increasing_in_eps(model, data):
    x, y = data
    accs = [_accuracy(model, x, y)]
    for eps in (0.05, 0.1, 0.2, 0.3):
        r = PGD(ThreatModel("linf", eps), steps=10, random_start=False)(model, x, y)
        accs.append(float((model.predict(r.x_adv) == y).float().mean()))
    assert all(a >= b for a, b in itertools.pairwise(accs)), accs
    assert accs[0] > 0.9 and accs[-1] == 0.0


def test_pgd_l2_and_margin_loss(model, data):
    x, y = data
    tm = ThreatModel("l2", 1.5)
    ce = PGD(tm, steps=20)(model, x, y)
    margin = PGD(tm, steps=20, loss="margin")(model, x, y)
    assert ce.success_rate > 0.8 and margin.success_rate > 0.8
    assert float(ce.norms.max()) <= 1.5 + 1e-5
    tm.check(x, margin.x_adv)


def test_targeted_pgd_hits_targets(model, data):
    x, y = data
    target = (y + 1) % 10
    result = PGD(ThreatModel("linf", 0.3), steps=40, targeted=True)(model, x, y, target=target)
    assert result.success_rate >= 0.9
    _claims_hold(model, result, y, target)
    assert (model.predict(result.x_adv)[result.success] == target[result.success]).all()


def test_restarts_never_lower_success(model, data):
    x, y = data
    tm = ThreatModel("linf", 0.08)
    one = PGD(tm, steps=10, restarts=1, seed=3)(model, x, y)
    three = PGD(tm, steps=10, restarts=3, seed=3)(model, x, y)
    assert three.success[one.success].all()
    assert three.success.sum() >= one.success.sum()
    _claims_hold(model, three, y)


def test_pgd_is_deterministic_and_early_stop_only_saves_work(model, data):
    x, y = data
    tm = ThreatModel("linf", 0.1)
    a = PGD(tm, steps=10, seed=5)(model, x, y)
    b = PGD(tm, steps=10, seed=5)(model, x, y)
    full = PGD(tm, steps=10, seed=5, early_stop=False)(model, x, y)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.success, b.success)
    assert torch.equal(a.success, full.success)
    assert a.queries < full.queries


def test_apgd_and_cw(model, data):
    x, y = data
    x, y = x[:60], y[:60]
    tm = ThreatModel("linf", 0.1)
    apgd = APGD(tm, steps=20)(model, x, y)
    pgd = PGD(tm, steps=20)(model, x, y)
    assert apgd.success_rate >= pgd.success_rate - 0.05
    assert APGD(ThreatModel("linf", 0.3), steps=20)(model, x, y).success.all()
    _claims_hold(model, apgd, y)
    l2 = APGD(ThreatModel("l2", 1.5), steps=20)(model, x, y)
    assert l2.success_rate > 0.8
    cw = CarliniWagnerL2(ThreatModel("l2", 1.5), steps=30, binary_search_steps=3)(model, x[:30], y[:30])
    assert cw.success_rate > 0.7
    assert float(cw.norms.max()) <= 1.5 + 1e-5
    _claims_hold(model, cw, y[:30])
    # eps is an acceptance radius: a tiny one leaves successes only where they are inside it
    tiny = CarliniWagnerL2(ThreatModel("l2", 0.05), steps=20, binary_search_steps=2)(model, x[:30], y[:30])
    assert float(tiny.norms.max()) <= 0.05 + 1e-5
    assert tiny.success_rate < cw.success_rate


# -- query budgets: score- and label-based attacks ------------------------------------------
BLACK_BOX = [
    ("square", lambda tm, **kw: SquareAttack(tm, **kw), "scores", ThreatModel("linf", 0.2, query_budget=60, access="scores")),
    ("simba", lambda tm, **kw: SimBA(tm, **kw), "scores", ThreatModel("linf", 0.2, query_budget=60, access="scores")),
    ("simba-l2", lambda tm, **kw: SimBA(tm, **kw), "scores", ThreatModel("l2", 1.0, query_budget=60, access="scores")),
    ("hsj-l2", lambda tm, **kw: HopSkipJump(tm, **kw), "labels", ThreatModel("l2", 1.5, query_budget=150, access="labels")),
    ("hsj-linf", lambda tm, **kw: HopSkipJump(tm, **kw), "labels", ThreatModel("linf", 0.3, query_budget=150, access="labels")),
    ("noise", lambda tm, **kw: RandomNoise(tm, samples=20, **kw), "labels", ThreatModel("linf", 0.3, query_budget=10, access="labels")),
]


@pytest.mark.parametrize("name,make,access,tm", BLACK_BOX, ids=[b[0] for b in BLACK_BOX])
def test_black_box_budgets_exact_and_reproducible(model, data, name, make, access, tm):
    x, y = data
    x, y = x[:30], y[:30]
    per_example = tm.query_budget
    # 1. per-example budget (ThreatModel.query_budget), wrapper unlimited
    wrapped = model.restrict(access)
    result = make(tm, seed=1)(wrapped, x, y)
    assert result.queries == wrapped.queries
    assert result.queries <= per_example * len(x)
    tm.check(x, result.x_adv)
    _claims_hold(model, result, y)
    # one example alone never spends more than its budget
    alone = model.restrict(access)
    single = make(tm, seed=1)(alone, x[:1], y[:1])
    assert alone.queries == single.queries <= per_example
    # 2. a wrapper budget smaller than the plan: used up to the last query, never exceeded,
    #    no QueryBudgetExceeded
    total = 7 * len(x) + 3
    tight = model.restrict(access, budget=total)
    again = make(tm, seed=1)(tight, x, y)
    assert tight.queries <= total
    assert again.queries == tight.queries
    tm.check(x, again.x_adv)
    _claims_hold(model, again, y)
    # 3. same seed, same everything
    repeat = make(tm, seed=1)(model.restrict(access, budget=total), x, y)
    assert torch.equal(repeat.x_adv, again.x_adv) and torch.equal(repeat.success, again.success)
    assert repeat.queries == again.queries
    # 4. an exhausted wrapper: a clean stop with nothing sent
    empty = model.restrict(access, budget=0)
    none = make(tm, seed=1)(empty, x, y)
    assert none.queries == 0 and not none.success.any()


def test_black_box_attacks_work(model, data):
    x, y = data
    x, y = x[:40], y[:40]
    square = SquareAttack(ThreatModel("linf", 0.2), max_queries=200)(model.restrict("scores"), x, y)
    assert square.success_rate > 0.8
    simba = SimBA(ThreatModel("linf", 0.2), max_queries=200)(model.restrict("scores"), x, y)
    assert simba.success_rate > 0.5
    hsj = HopSkipJump(ThreatModel("l2", 1.5), max_queries=300)(model.restrict("labels"), x, y)
    assert hsj.success_rate > 0.6
    noise = RandomNoise(ThreatModel("linf", 0.2), samples=5)(model.restrict("labels"), x, y)
    assert noise.success_rate < square.success_rate
    t = (y + 1) % 10
    targeted = SquareAttack(ThreatModel("linf", 0.3), max_queries=200, targeted=True)(model.restrict("scores"), x, y, target=t)
    _claims_hold(model, targeted, y, t)
    assert targeted.success_rate > 0.3


def test_transfer_counts_target_queries(model, data):
    x, y = data
    surrogate = _zoo("mlp-digits")
    target = model.restrict("labels", budget=len(x) - 10)
    tm = ThreatModel("linf", 0.3)
    result = TransferAttack(tm, surrogate, PGD(tm, steps=10))(target, x, y)
    assert result.queries == target.queries == len(x) - 10  # the last 10 did not fit: failures
    assert not result.success[-10:].any()
    assert result.success_rate > 0.2
    assert result.info["surrogate_success"].float().mean() > 0.9
    _claims_hold(model, result, y)
    with pytest.raises(ValueError, match="same wrapper"):
        TransferAttack(tm, target)(target, x, y)


def test_universal_perturbation(model, data):
    x, y = data
    tm = ThreatModel("linf", 0.25)
    result = UniversalPerturbation(tm, epochs=5, seed=0)(model, x, y)
    delta = result.info["delta"]
    assert delta.shape == x.shape[1:]
    assert float(delta.abs().max()) <= 0.25 + 1e-6
    assert torch.allclose(result.x_adv, (x + delta).clamp(0, 1))
    assert 0 <= result.info["fooling_rate"] <= 1 and result.info["fooling_rate"] > 0.2
    assert len(result.info["holdout_indices"]) == round(0.25 * len(x))
    _claims_hold(model, result, y)
    l2 = UniversalPerturbation(ThreatModel("l2", 2.0), epochs=3)(model, x, y)
    assert float(l2.info["delta"].norm()) <= 2.0 + 1e-5


def test_every_attack_returns_valid_x_adv(model, data):
    x, y = data
    x, y = x[:20], y[:20]
    cases = [
        (PGD(ThreatModel("linf", 0.1), steps=5), model),
        (PGD(ThreatModel("l2", 0.5), steps=5), model),
        (APGD(ThreatModel("linf", 0.1), steps=5), model),
        (CarliniWagnerL2(ThreatModel("l2", 0.5), steps=10, binary_search_steps=2), model),
        (SquareAttack(ThreatModel("linf", 0.1), max_queries=20), model.restrict("scores")),
        (SimBA(ThreatModel("l2", 0.5), max_queries=20), model.restrict("scores")),
        (HopSkipJump(ThreatModel("linf", 0.1), max_queries=50), model.restrict("labels")),
        (RandomNoise(ThreatModel("l2", 0.5)), model.restrict("labels")),
        (UniversalPerturbation(ThreatModel("l2", 0.5), epochs=1), model),
    ]
    for attack, wrapped in cases:
        result = attack(wrapped, x, y)
        attack.threat.check(x, result.x_adv)
        assert result.x_adv.shape == x.shape and result.success.shape == (len(x),)
        assert result.queries == wrapped.queries or wrapped is model


def test_bad_inputs_give_clear_errors(model, data):
    x, y = data
    x, y = x[:8], y[:8]
    with pytest.raises(AccessDenied, match="white-box"):
        PGD(ThreatModel("linf", 0.1))(model.restrict("scores"), x, y)
    with pytest.raises(AccessDenied, match="scores"):
        SquareAttack(ThreatModel("linf", 0.1))(model.restrict("labels"), x, y)
    with pytest.raises(AccessDenied, match="threat model allows only"):
        PGD(ThreatModel("linf", 0.1, access="labels"))(model, x, y)
    with pytest.raises(ValueError, match="eps"):
        ThreatModel("linf", -0.1)
    with pytest.raises(ValueError, match="bounds"):
        PGD(ThreatModel("linf", 0.1, bounds=(-1.0, 1.0)))(model, x, y)
    with pytest.raises(ValueError, match="bounds"):
        PGD(ThreatModel("linf", 0.1))(model, x * 255, y)
    with pytest.raises(ValueError, match="needs target"):
        PGD(ThreatModel("linf", 0.1), targeted=True)(model, x, y)
    with pytest.raises(ValueError, match="untargeted"):
        PGD(ThreatModel("linf", 0.1))(model, x, y, target=y)
    with pytest.raises(ValueError, match="supports norm"):
        CarliniWagnerL2(ThreatModel("linf", 0.1))
    with pytest.raises(ValueError, match="supports norm"):
        SquareAttack(ThreatModel("l2", 0.1))
    with pytest.raises(ValueError, match="steps"):
        PGD(ThreatModel("linf", 0.1), steps=0)
    with pytest.raises(ValueError, match="loss"):
        PGD(ThreatModel("linf", 0.1), loss="hinge")

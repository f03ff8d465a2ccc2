"""ThreatModel: the one validator. Each rule is checked, and each message names the examples."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maestro import ThreatModel, ThreatModelViolation
from maestro.text import TokenBatch


@pytest.fixture
def x():
    return torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("norm", ["linf", "l2", "l0"])
def test_projection_is_valid_and_idempotent(x, norm):
    eps = {"linf": 0.1, "l2": 0.5, "l0": 5}[norm]
    tm = ThreatModel(norm, eps)
    noisy = x + torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    p = tm.project(x, noisy)
    tm.check(x, p)
    assert bool(tm.valid(x, p).all())
    assert torch.allclose(tm.project(x, p), p)
    assert float(tm.norms(x, p).max()) <= eps + 1e-6


def test_eps_boundary_tolerance(x):
    tm = ThreatModel("linf", 0.25)
    tm.check(x.clamp(0, 0.5), x.clamp(0, 0.5) + 0.25 + 5e-7)
    with pytest.raises(ThreatModelViolation):
        tm.check(x.clamp(0, 0.5), x.clamp(0, 0.5) + 0.25 + 1e-5)


def test_each_rule_names_its_examples(x):
    tm = ThreatModel("linf", 0.1)
    adv = x.clone()
    adv[2] = (adv[2] + 0.3).clamp(0, 1)  # over eps
    adv[5, 0, 0, 0] = float("nan")  # not finite
    adv[7, 0, 1, 1] = 1.5  # out of bounds (and over eps)
    with pytest.raises(ThreatModelViolation) as info:
        tm.check(x, adv)
    rules = {v.rule: v.indices for v in info.value.violations}
    assert rules["finite"] == (5,)
    assert rules["bounds"] == (7,)
    assert set(rules["norm"]) == {2, 7}
    text = str(info.value)
    assert "example 5: NaN" in text and "examples 2, 7" in text
    assert tm.valid(x, adv).tolist() == [i not in (2, 5, 7) for i in range(12)]


def test_whole_input_rules(x):
    tm = ThreatModel("l2", 1.0)
    assert tm.violations(x, x[:5])[0].rule == "shape"
    assert tm.violations(x, (x * 255).to(torch.uint8))[0].rule == "dtype"
    assert tm.violations(x, "not an array")[0].rule == "dtype"
    assert tm.violations(x, np.zeros(3, dtype=object))[0].rule == "dtype"
    assert ThreatModel("l2", 1.0, dtype=torch.float32).violations(x, x.double())[0].rule == "dtype"
    assert tm.violations(x.numpy(), x.numpy().copy()) == []  # numpy arrays are accepted
    assert tm.valid(x, x[:5]).sum() == 0


def test_l0_counts_changed_values(x):
    tm = ThreatModel("l0", 3)
    adv = x.clone()
    adv[0, 0, 0, :4] = 1 - adv[0, 0, 0, :4]
    assert tm.norms(x, adv)[0] == 4
    assert tm.violations(x, adv)[0].indices == (0,)


def test_check_inputs_catches_mismatched_bounds(x):
    with pytest.raises(ValueError, match="bounds"):
        ThreatModel("linf", 0.1).check_inputs(x * 255)
    ThreatModel("linf", 0.1, bounds=(0, 255)).check_inputs(x * 255)


def test_tokens_norm_on_strings_ids_and_vocab():
    tm = ThreatModel("tokens", 2)
    clean = ["the flight was late", "great crew"]
    assert tm.norms(clean, ["the flight was early", "cc dd great crew"]).tolist() == [1.0, 2.0]
    found = tm.violations(clean, ["a b c flight was late", "great crew"])
    assert found[0].rule == "norm" and found[0].indices == (0,)
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    mask = (ids != 0).long()
    adv = torch.tensor([[5, 3, 7, 0], [8, 9, 0, 0]])
    assert tm.norms(TokenBatch(ids, mask), TokenBatch(adv, mask)).tolist() == [1.0, 0.0]
    vocab = ThreatModel("tokens", 2, vocab={"great", "awful"})
    assert vocab.violations(clean, ["the flight was awful", "great crew"]) == []
    assert vocab.violations(clean, ["the flight was meh", "great crew"])[0].rule == "vocab"
    assert tm.violations(clean, ["only one"])[0].rule == "shape"


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(norm="l3", eps=0.1), ValueError, "norm must be one of"),
        (dict(norm="linf", eps=-0.1), ValueError, "eps must be ≥ 0"),
        (dict(norm="linf", eps=float("nan")), TypeError, "finite number"),
        (dict(norm="linf", eps="0.1"), TypeError, "finite number"),
        (dict(norm="tokens", eps=1.5), ValueError, "whole number"),
        (dict(norm="linf", eps=0.1, bounds=(1, 0)), ValueError, "low < high"),
        (dict(norm="linf", eps=0.1, bounds=5), TypeError, "bounds"),
        (dict(norm="linf", eps=0.1, query_budget=-3), ValueError, "query_budget"),
        (dict(norm="linf", eps=0.1, access="admin"), ValueError, "access"),
        (dict(norm="linf", eps=0.1, vocab={"a"}), ValueError, "vocab applies only"),
        (dict(norm="linf", eps=0.1, dtype=torch.int64), TypeError, "floating"),
    ],
)
def test_bad_threat_models(kwargs, error, match):
    with pytest.raises(error, match=match):
        ThreatModel(**kwargs)


def test_describe_is_readable():
    text = ThreatModel("linf", 0.3, query_budget=1000, access="scores").describe()
    assert "eps=0.3" in text and "query budget 1000" in text and "scores" in text


def test_linf_eps_beyond_the_input_range_is_a_scale_mistake():
    with pytest.raises(ValueError, match="larger than the whole input range"):
        ThreatModel("linf", 8)
    ThreatModel("linf", 8, bounds=(0, 255))
    ThreatModel("linf", 1.0)  # the whole range is allowed (sanity checks use it)
    ThreatModel("l2", 8)  # L2 radii can exceed the per-pixel range

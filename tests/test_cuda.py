"""The CUDA paths: the same weights on the GPU and on the CPU give the same answers, and every
image attack, ``evaluate`` (and the robustness curve and sanity checks), adversarial training,
randomized smoothing and the text attacks run on a model on the GPU, whether the inputs are
CPU tensors or already on the GPU.

The contract checked (see ``ModelWrapper`` and ``AttackResult``): wrapper methods return
tensors on the model's device; an attack's ``x_adv`` comes back on the device of the ``x`` it
was given, its ``success``, ``norms`` and ``info`` tensors on the CPU; smoothing's predictions
and certificates are CPU tensors. GPU float math differs from the CPU's (TF32 convolutions, other
reduction orders, other random streams for the seeded draws), so numbers are compared with loose
tolerances, and success rates only to within ``TOL``.

Small models are trained here on the CPU (no model zoo needed): a small CNN and an MLP
(transfer surrogate) on sklearn's digits, a small word LSTM on tweets; the CPU copy is the
reference, a deep copy goes to the GPU. Skipped where torch sees no GPU (CI has none);
``MAESTRO_TEST_DEVICE=cpu`` runs the same checks with a second CPU copy in place of the GPU
(a dry run of the test logic), ``MAESTRO_TEST_DEVICE=cuda:1`` picks another card.
"""

from __future__ import annotations

import copy
import math
import os

import pytest
import torch
import torch.nn.functional as F

import maestro
from maestro import ThreatModel
from maestro.attacks import (
    APGD,
    BPDA,
    EOT,
    FGSM,
    PGD,
    CarliniWagnerL2,
    HopSkipJump,
    HotFlip,
    RandomNoise,
    SimBA,
    SquareAttack,
    TransferAttack,
    UniversalPerturbation,
    UniversalTrigger,
    WordSubstitution,
)
from maestro.defenses import BitDepthSqueeze, RandomizedSmoothing, TransformedModel, adversarial_training
from maestro.errors import QueryBudgetExceeded
from maestro.evaluation import evaluate, robustness_curve, sanity_checks
from maestro.models.archs import build_arch

DEVICE = os.environ.get("MAESTRO_TEST_DEVICE", "cuda")
KIND = torch.device(DEVICE).type

pytestmark = [
    pytest.mark.skipif(
        KIND == "cuda" and not torch.cuda.is_available(),
        reason="needs a CUDA GPU and a CUDA build of torch (torch.cuda.is_available() is False); "
        "CI has no GPU, so these run on a GPU host",
    ),
    pytest.mark.usefixtures("one_torch_thread"),  # the CPU side: tiny models run fastest on one thread
]

N = 64  # digits test images attacked
TOL = 0.15  # success rates / accuracies: GPU vs CPU (other random streams, other float math)
SAME = 0.05  # the GPU model with CPU inputs vs with GPU inputs (same draws, same math)


def _on_device(t: torch.Tensor) -> bool:
    return t.device.type == KIND


def _train(module, data, *, epochs, seed=0, lr=3e-3, batch_size=64):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(module.parameters(), lr)
    for epoch in range(epochs):
        module.train()
        for x, y in data.batches(batch_size, shuffle=True, seed=seed * 1000 + epoch):
            loss = F.cross_entropy(module(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return module.eval()


def _wrap(module, device, name):
    return maestro.ModelWrapper(module, modality="image", num_classes=10, input_shape=(1, 8, 8), name=name,
                                device=device)


@pytest.fixture(scope="module")
def digits():
    return maestro.datasets.load("digits", "train"), maestro.datasets.load("digits", "test")


@pytest.fixture(scope="module")
def nets(digits):
    """A small CNN (the target) and an MLP (a transfer surrogate), each as a CPU wrapper and a
    device wrapper over a deep copy of the same weights."""
    train, _ = digits
    with torch.random.fork_rng(devices=[]):
        cnn = _train(build_arch("small-cnn", {"input_shape": [1, 8, 8], "num_classes": 10, "channels": [8, 16],
                                              "hidden": 32}), train, epochs=8)
        mlp = _train(build_arch("mlp", {"input_shape": [1, 8, 8], "num_classes": 10, "hidden": [64]}), train,
                     epochs=10, seed=1)
    return {
        "cpu": _wrap(cnn, "cpu", "cnn (cpu)"),
        "dev": _wrap(copy.deepcopy(cnn), DEVICE, f"cnn ({DEVICE})"),
        "mlp-cpu": _wrap(mlp, "cpu", "mlp (cpu)"),
        "mlp-dev": _wrap(copy.deepcopy(mlp), DEVICE, f"mlp ({DEVICE})"),
    }


@pytest.fixture(scope="module")
def data(digits):
    _, test = digits
    return test.x[:N], test.y[:N]


def _rate(mask: torch.Tensor) -> float:
    return float(mask.float().mean())


def _rel_errors(a: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-example relative L2 error of ``a`` against ``ref`` (double: tiny gradients don't underflow)."""
    a, ref = a.detach().cpu().double().flatten(1), ref.detach().cpu().double().flatten(1)
    return (a - ref).norm(dim=1) / ref.norm(dim=1).clamp_min(1e-300)


def _close(a: torch.Tensor, ref: torch.Tensor, rel: float = 1e-2) -> None:
    a, ref = a.detach().cpu(), ref.detach().cpu()
    assert a.shape == ref.shape and a.dtype == ref.dtype
    err = float((a - ref).abs().max())
    assert err <= rel * float(ref.abs().max()) + 1e-5, err


# -- the wrapper -------------------------------------------------------------------------------------
def test_the_model_lives_on_the_device(nets):
    dev = nets["dev"]
    assert dev.device.type == KIND and nets["cpu"].device.type == "cpu"
    assert all(_on_device(p) for p in dev.model.parameters())
    assert all(p.device.type == "cpu" for p in nets["cpu"].model.parameters())  # a copy went, not the original
    for access in ("white-box", "scores", "labels"):
        assert dev.restrict(access).device == dev.device
    assert f"device={dev.device}" in repr(dev)


@pytest.mark.parametrize("where", ["cpu", "device", "numpy"])
def test_wrapper_outputs_agree_with_the_cpu(nets, data, where):
    cpu, dev = nets["cpu"], nets["dev"]
    x, y = data
    xin = {"cpu": x, "device": x.to(DEVICE), "numpy": x.numpy()}[where]
    yin = y.to(DEVICE) if where == "device" else (y.numpy() if where == "numpy" else y)

    logits = dev.logits(xin)
    assert _on_device(logits) and logits.shape == (N, 10)
    _close(logits, cpu.logits(x))
    proba = dev.predict_proba(xin)
    assert _on_device(proba)
    _close(proba, cpu.predict_proba(x))
    pred = dev.predict(xin)
    assert _on_device(pred) and pred.dtype == torch.long
    assert _rate(pred.cpu() == cpu.predict(x)) >= 0.98
    assert (pred == logits.argmax(1)).all()  # compared on the device, where both live

    for loss in ("ce", "margin"):
        for targeted, goal in ((False, yin), (True, 3)):  # labels as tensors/arrays, or one int
            grad, z = dev.gradient(xin, goal, loss, targeted, return_logits=True)
            assert _on_device(grad) and _on_device(z) and grad.shape == x.shape
            errors = _rel_errors(grad, cpu.gradient(x, y if not targeted else 3, loss, targeted))
            # loose: cuDNN convolutions may run in TF32; a device mix-up would be off by ~100 %
            assert float(errors.median()) < 2e-2 and _rate(errors < 1e-1) >= 0.9, (loss, targeted, errors.max())
    assert dev.queries > 0 and dev.gradient_queries > 0  # counted like on the CPU


def test_budgets_and_counters_on_the_device(nets, data):
    x, y = data
    oracle = nets["dev"].restrict("labels", budget=N + 10)
    assert _on_device(oracle.predict(x))
    assert oracle.remaining == 10
    with pytest.raises(QueryBudgetExceeded):
        oracle.predict(x[:11])
    assert oracle.remaining == 10


# -- the image attacks ---------------------------------------------------------------------------------
LINF, L2 = ThreatModel("linf", 0.2), ThreatModel("l2", 1.5)

# id -> (make(side, nets) -> attack, how the model is seen, the threat model)
ATTACKS = {
    "fgsm-linf": (lambda s, n: FGSM(LINF), "white-box", LINF),
    "fgsm-l2": (lambda s, n: FGSM(L2), "white-box", L2),
    "pgd-linf": (lambda s, n: PGD(ThreatModel("linf", 0.15), steps=10), "white-box", ThreatModel("linf", 0.15)),
    "pgd-l2-margin-restarts": (lambda s, n: PGD(ThreatModel("l2", 1.0), steps=10, restarts=2, loss="margin"),
                               "white-box", ThreatModel("l2", 1.0)),
    "pgd-targeted": (lambda s, n: PGD(LINF, steps=10, targeted=True), "white-box", LINF),
    "apgd-linf": (lambda s, n: APGD(ThreatModel("linf", 0.15), steps=20), "white-box", ThreatModel("linf", 0.15)),
    "apgd-l2": (lambda s, n: APGD(ThreatModel("l2", 1.0), steps=20), "white-box", ThreatModel("l2", 1.0)),
    "cw": (lambda s, n: CarliniWagnerL2(L2, steps=30, binary_search_steps=3), "white-box", L2),
    "square": (lambda s, n: SquareAttack(LINF, max_queries=200), "scores", LINF),
    "square-per-example-budget": (lambda s, n: SquareAttack(ThreatModel("linf", 0.3, query_budget=40)), "scores",
                                  ThreatModel("linf", 0.3, query_budget=40)),
    "simba-linf": (lambda s, n: SimBA(LINF, max_queries=200), "scores", LINF),
    "simba-l2": (lambda s, n: SimBA(L2, max_queries=200), "scores", L2),
    "hopskipjump-l2": (lambda s, n: HopSkipJump(L2, max_queries=300), "labels", L2),
    "hopskipjump-linf-total-budget": (lambda s, n: HopSkipJump(LINF, max_queries=200), "labels-budget", LINF),
    "noise": (lambda s, n: RandomNoise(ThreatModel("linf", 0.3), samples=10), "labels", ThreatModel("linf", 0.3)),
    "universal": (lambda s, n: UniversalPerturbation(ThreatModel("linf", 0.25), epochs=3), "white-box",
                  ThreatModel("linf", 0.25)),
    "transfer": (lambda s, n: TransferAttack(LINF, n[f"mlp-{s}"], PGD(LINF, steps=10, random_start=False)), "labels",
                 LINF),
    "bpda": (lambda s, n: BPDA(LINF, steps=10), "squeezed", LINF),
    "eot": (lambda s, n: EOT(ThreatModel("l2", 1.0), samples=4, steps=10), "smoothed", ThreatModel("l2", 1.0)),
}
BUDGET = 60 * N  # the wrapper's total for "labels-budget"


def _seen_as(view: str, base):
    """(the model the attack gets, the model that re-checks its claims or None)."""
    if view == "white-box":
        return base, base
    if view in ("scores", "labels"):
        return base.restrict(view), base
    if view == "labels-budget":
        return base.restrict("labels", budget=BUDGET), base
    if view == "squeezed":
        squeezed = TransformedModel(base, BitDepthSqueeze(3))
        return squeezed, squeezed
    if view == "smoothed":  # EOT attacks the noisy base classifier; its success is a majority vote
        return RandomizedSmoothing(base, 0.25, seed=0), None
    raise AssertionError(view)


def _check_result(result, threat, x_in, y, judge, target=None):
    n = len(x_in)
    assert isinstance(result.x_adv, torch.Tensor)
    assert result.x_adv.device == x_in.device, "x_adv comes back on the input's device"
    assert result.x_adv.shape == x_in.shape and result.x_adv.dtype == x_in.dtype
    assert result.success.device.type == "cpu" and result.success.dtype == torch.bool and result.success.shape == (n,)
    assert result.norms.device.type == "cpu" and result.norms.shape == (n,)
    for key, value in result.info.items():
        if isinstance(value, torch.Tensor):
            assert value.device.type == "cpu", key
    threat.check(x_in, result.x_adv)  # the input and x_adv side by side, as a user would
    threat.check(x_in.cpu(), result.x_adv.cpu())
    assert float(result.norms.max()) <= threat.eps + threat.atol
    _close(result.norms, threat.norms(x_in.cpu(), result.x_adv.cpu()).float(), rel=1e-5)
    if judge is not None and result.success.any():  # a claimed success is one (boundary points aside)
        pred = judge.predict(result.x_adv[result.success]).cpu()
        goal = target[result.success] if target is not None else y[result.success]
        hold = (pred == goal) if target is not None else (pred != goal)
        claimed = int(result.success.sum())
        assert int(hold.sum()) >= claimed - max(2, math.ceil(0.05 * claimed)), (int(hold.sum()), claimed)


@pytest.mark.parametrize("case", list(ATTACKS))
def test_image_attack_on_the_device(nets, data, case):
    make, view, threat = ATTACKS[case]
    x, y = data
    attack = make("cpu", nets)
    target = (y + 1) % 10 if attack.targeted else None

    model, judge = _seen_as(view, nets["cpu"])
    ref = attack(model, x, y, target=target)
    _check_result(ref, threat, x, y, judge, target)

    rates = []
    for xin, yin, tin in ((x, y, target), (x.to(DEVICE), y.to(DEVICE), None if target is None else target.to(DEVICE))):
        model, judge = _seen_as(view, nets["dev"])
        result = make("dev", nets)(model, xin, yin, target=tin)
        _check_result(result, threat, xin, y, judge, target)
        if view in ("scores", "labels", "labels-budget"):  # a fresh view: its counter is the attack's
            assert result.queries == model.queries
        if view == "labels-budget":
            assert model.queries <= BUDGET
        if threat.query_budget is not None:
            assert int(result.info["queries_per_example"].max()) <= threat.query_budget
        rates.append(result.success_rate)
    assert abs(rates[0] - ref.success_rate) <= TOL, (rates, ref.success_rate)
    assert abs(rates[1] - rates[0]) <= SAME, rates


def test_universal_perturbation_delta_is_the_perturbation(nets, data):
    x, y = data
    result = UniversalPerturbation(ThreatModel("linf", 0.25), epochs=2)(nets["dev"], x.to(DEVICE), y)
    delta = result.info["delta"]
    assert delta.device.type == "cpu" and delta.shape == x.shape[1:]
    _close(result.x_adv.cpu(), (x + delta).clamp(0, 1), rel=1e-6)


def test_transfer_between_devices(nets, data):
    """A CPU surrogate against a GPU target and the other way round: x_adv follows the input."""
    x, y = data
    rates = []
    for surrogate, target in (("mlp-cpu", "dev"), ("mlp-dev", "cpu")):
        oracle = nets[target].restrict("labels")
        for xin in (x, x.to(DEVICE)):
            result = TransferAttack(LINF, nets[surrogate], PGD(LINF, steps=10, random_start=False))(oracle, xin, y)
            assert result.x_adv.device == xin.device
            assert result.info["surrogate_success"].device.type == "cpu"
            LINF.check(xin, result.x_adv)
            rates.append(result.success_rate)
    assert max(rates) - min(rates) <= TOL, rates


# -- evaluation ------------------------------------------------------------------------------------------
def test_evaluate_runs_the_default_suite_on_the_device(nets, data, digits):
    x, y = data
    threat = ThreatModel("linf", 0.15)
    ref = evaluate(nets["cpu"], (x, y), threat=threat, progress=False)
    assert all(r.error is None for r in ref.rows), [r.error for r in ref.rows]
    for inputs in ((x, y), (x.to(DEVICE), y.to(DEVICE)), digits[1].take(N)):
        report = evaluate(nets["dev"], inputs, threat=threat, batch_size=40, progress=False)
        # an attack that raised (e.g. tensors on two devices) would be listed as "not run"
        assert all(r.error is None for r in report.rows), [r.error for r in report.rows]
        assert [r.attack for r in report.rows] == [r.attack for r in ref.rows]
        assert abs(report.clean_accuracy - ref.clean_accuracy) <= 0.02
        assert abs(report.robust_accuracy - ref.robust_accuracy) <= TOL
        assert report.robust_accuracy <= report.clean_accuracy
        assert report.robust.device.type == "cpu" and report.clean_correct.device.type == "cpu"
        assert isinstance(report.x_adv, torch.Tensor) and report.x_adv.device.type == "cpu"
        threat.check(x, report.x_adv)
        assert report.to_dict()["n"] == N


def test_evaluate_with_given_attacks_raises_nothing_on_the_device(nets, data):
    x, y = data
    threat = ThreatModel("l2", 1.0, access="labels")
    attacks = [HopSkipJump(threat, max_queries=100), RandomNoise(threat, samples=5)]
    report = evaluate(nets["dev"], (x, y), threat=threat, attacks=attacks, progress=False)
    ref = evaluate(nets["cpu"], (x, y), threat=threat, attacks=attacks, progress=False)
    assert abs(report.robust_accuracy - ref.robust_accuracy) <= TOL
    assert all(r.queries > 0 for r in report.rows[:1])


def test_robustness_curve_and_sanity_checks_on_the_device(nets, data):
    x, y = data
    curves = [robustness_curve(nets[side], (x, y), attack_factory=lambda t: PGD(t, steps=10),
                               eps_list=[0.0, 0.05, 0.1, 0.2], progress=False) for side in ("cpu", "dev")]
    ref, curve = curves
    assert curve.per_example.device.type == "cpu" and curve.per_example.shape == (4, N)
    assert all(a >= b for a, b in zip(curve.cumulative, curve.cumulative[1:]))
    assert all(abs(a - b) <= TOL for a, b in zip(curve.accuracy, ref.accuracy)), (curve.accuracy, ref.accuracy)

    threat = ThreatModel("linf", 0.15)
    flags = {side: sanity_checks(nets[side], (x, y), threat=threat, n=32, steps=5, square_queries=100)
             for side in ("cpu", "dev")}
    names = [f.name for f in flags["dev"]]
    assert names == [f.name for f in flags["cpu"]]
    by_name = {f.name: f for f in flags["dev"]}
    # identical calls on the device give identical outputs and gradients: not "randomized"
    for name in ("softmax_outputs", "zero_gradients", "deterministic"):
        assert by_name[name].passed, str(by_name[name])


# -- defenses ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method, threat", [("pgd", ThreatModel("linf", 0.2)), ("fgsm", ThreatModel("l2", 1.0))])
def test_adversarial_training_on_the_device(nets, digits, method, threat):
    train, test = digits
    records, wrapped = {}, {}
    for side, device in (("cpu", "cpu"), ("dev", DEVICE)):
        module = copy.deepcopy(nets["cpu"].model).to(device)  # the trained weights, a fresh copy each
        record = adversarial_training(module, train[:256], threat=threat, method=method, epochs=2, steps=3,
                                      lr=1e-3, batch_size=64, seed=0, val=test[:96], eval_steps=5, progress=False)
        assert all(p.device.type == torch.device(device).type for p in module.parameters())
        assert not module.training
        assert len(record.history) == 2
        assert all(math.isfinite(r.loss) and 0 <= r.robust_accuracy <= r.clean_accuracy + 0.05 for r in record.history)
        records[side], wrapped[side] = record, _wrap(module, device, f"{method}-at ({side})")
    assert abs(records["dev"].clean_accuracy - records["cpu"].clean_accuracy) <= TOL
    assert abs(records["dev"].robust_accuracy - records["cpu"].robust_accuracy) <= TOL
    x, y = test.x[:96], test.y[:96]
    accs = [_rate(wrapped[side].predict(x).cpu() == y) for side in ("cpu", "dev")]
    assert abs(accs[0] - accs[1]) <= TOL, accs


def test_randomized_smoothing_on_the_device(nets, data):
    x, y = data
    x, y = x[:32], y[:32]
    ref = RandomizedSmoothing(nets["cpu"], 0.25, n0=20, n=200, seed=0)
    ref_cert = ref.certify(x)
    ref_pred = ref.predict(x)
    for xin in (x, x.to(DEVICE)):
        rs = RandomizedSmoothing(nets["dev"], 0.25, n0=20, n=200, seed=0)
        assert rs.noisy.device == nets["dev"].device
        counts = rs.counts(xin, 50)
        assert counts.device.type == "cpu" and counts.shape == (32, 10) and (counts.sum(1) == 50).all()
        pred = rs.predict(xin)
        assert pred.device.type == "cpu" and pred.shape == (32,)
        cert = rs.certify(xin)
        for t in (cert.prediction, cert.radius, cert.p_lower, cert.count):
            assert t.device.type == "cpu" and t.shape == (32,)
        assert (cert.radius >= 0).all() and (cert.radius[cert.prediction == -1] == 0).all()
        assert float(cert.radius.max()) <= 0.25 * 2  # σ·Φ⁻¹(p̲), p̲ ≤ alpha^(1/n) ≈ 0.966 at n = 200
        certified = (cert.prediction == y) & (cert.radius > 0)
        ref_certified = (ref_cert.prediction == y) & (ref_cert.radius > 0)
        assert abs(_rate(certified) - _rate(ref_certified)) <= TOL
        assert _rate(pred == ref_pred) >= 0.8
        # reproducible on the device for a seed, like on the CPU
        rs.reseed(0)
        assert torch.equal(rs.counts(xin, 50), counts)


# -- text: a word LSTM (cuDNN runs an RNN's backward pass only in training mode) ----------------------------
@pytest.fixture(scope="module")
def lstms():
    from maestro.models.train import fit, shuffled
    from maestro.text import WordTokenizer

    train = maestro.datasets.load("tweets", "train").take(3000)
    tok = WordTokenizer.fit(train.x, min_freq=2, max_size=5000, max_length=32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = build_arch("lstm", {"vocab_size": tok.vocab_size, "num_classes": train.num_classes, "embed_dim": 32,
                                     "hidden": 32, "bidirectional": True, "pad_id": tok.pad_id, "dropout": 0.0})

        def batches(epoch):
            for idx in shuffled(len(train), 64, epoch):
                yield tok.encode([train.x[i] for i in idx.tolist()]), train.y[idx]

        fit(module, lambda tb: module(tb.input_ids, tb.attention_mask), batches, epochs=3, lr=3e-3, progress=False)
    module.eval()
    return {
        "cpu": maestro.wrap(module, tok, num_classes=train.num_classes, name="lstm (cpu)"),
        "dev": maestro.wrap(copy.deepcopy(module), tok, num_classes=train.num_classes, name=f"lstm ({DEVICE})",
                            device=DEVICE),
    }


@pytest.fixture(scope="module")
def tweets():
    test = maestro.datasets.load("tweets", "test")
    return test.x[:48], test.y[:48]


def test_text_wrapper_on_the_device(lstms, tweets):
    cpu, dev = lstms["cpu"], lstms["dev"]
    x, y = tweets
    logits = dev.logits(x)
    assert _on_device(logits)
    _close(logits, cpu.logits(x))
    assert _rate(dev.predict(x).cpu() == cpu.predict(x)) >= 0.95
    grad, z = dev.gradient(x, y, return_logits=True)  # through the LSTM in eval mode
    assert _on_device(grad) and _on_device(z) and grad.dim() == 3
    errors = _rel_errors(grad, cpu.gradient(x, y))
    assert float(errors.median()) < 1e-2 and _rate(errors < 5e-2) >= 0.9
    tb = dev.tokenize(x)
    assert _on_device(dev.gradient(tb, y))  # a CPU TokenBatch
    assert _on_device(dev.gradient(tb.to(DEVICE), y.to(DEVICE)))
    # the white-box pieces, differentiated by hand
    emb = dev.embeddings(x)
    assert _on_device(emb) and _on_device(dev.embedding_matrix())
    emb = emb.clone().requires_grad_(True)
    out = dev.logits_from_embeddings(emb, tb.attention_mask)
    (g,) = torch.autograd.grad(F.cross_entropy(out, y.to(DEVICE), reduction="sum"), emb)
    assert _on_device(g)
    _close(g, grad, rel=5e-2)
    assert torch.backends.cudnn.enabled  # switched off only for the call


TEXT = {
    "hotflip": (lambda m: HotFlip(ThreatModel("tokens", 2), candidates=5), "white-box"),
    "trigger": (lambda m: UniversalTrigger(ThreatModel("tokens", 2), steps=2, batch_size=32, candidates=5), "white-box"),
    "word-substitution": (lambda m: WordSubstitution(ThreatModel("tokens", 2, access="scores"),
                                                     embedding_matrix=m["cpu"].embedding_matrix(), max_queries=40),
                          "scores"),
}


@pytest.mark.parametrize("case", list(TEXT))
def test_text_attack_on_the_device(lstms, tweets, case):
    make, view = TEXT[case]
    x, y = tweets
    results = []
    for side, yin in (("cpu", y), ("dev", y), ("dev", y.to(DEVICE))):
        base = lstms[side]
        model = base if view == "white-box" else base.restrict(view)
        result = make(lstms)(model, x, yin)
        assert isinstance(result.x_adv, list) and len(result.x_adv) == len(x)
        assert result.success.device.type == "cpu" and result.success.shape == (len(x),)
        assert result.norms.device.type == "cpu"
        for value in result.info.values():
            if isinstance(value, torch.Tensor):
                assert value.device.type == "cpu"
        ThreatModel("tokens", 2).check(x, result.x_adv)
        # success is judged on the returned strings (a near-tie may flip between two forward passes)
        assert _rate(result.success == (base.predict(result.x_adv).cpu() != y)) >= 0.95
        results.append(result)
    assert abs(results[1].success_rate - results[0].success_rate) <= TOL
    assert abs(results[2].success_rate - results[1].success_rate) <= SAME

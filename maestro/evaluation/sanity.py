"""Automatic red flags for false robustness (Carlini et al. 2019, "On evaluating adversarial
robustness"; Athalye et al. 2018, "Obfuscated gradients give a false sense of security").

``sanity_checks(model, data, threat=...)`` returns one :class:`SanityFlag` per check:

* ``softmax_outputs`` — the model reports probabilities (rows ≥ 0 summing to 1) instead of
  logits, which flattens the cross-entropy gradient;
* ``zero_gradients`` — the loss gradient is exactly zero for many inputs (rounding, a
  saturated softmax, argmax outputs): gradient attacks stall for the wrong reason;
* ``deterministic`` — outputs or gradients change between two identical calls (a randomized
  defense: attack it with EOT);
* ``accuracy_falls_with_eps`` — PGD accuracy must fall as eps grows and reach about chance
  when eps covers the whole input range (anything can then be turned into anything);
* ``more_iterations_do_not_help`` — 5× the PGD steps, or 5 restarts, must not *raise* accuracy;
* ``black_box_not_stronger`` — random noise, a score-based (Square) or a transfer attack
  must not break points that white-box PGD could not;
* ``bpda_not_stronger`` (TransformedModel) / ``eot_not_stronger`` (randomized models) — if
  bypassing the transform or averaging the randomness beats PGD, PGD's number is not robustness.

A flag with ``passed=False`` says the evaluation cannot be trusted as it stands, and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..threat import ThreatModel
from ..wrapper import _RANK
from ._common import _as_dataset, _predict, _view


@dataclass
class SanityFlag:
    """One check: ``passed`` False means a red flag; ``explanation`` says what was measured."""

    name: str
    passed: bool
    explanation: str
    details: dict = field(default_factory=dict)

    def __str__(self) -> str:
        return f"[{'ok' if self.passed else 'RED FLAG'}] {self.name}: {self.explanation}"


def sanity_checks(
    model,
    data,
    *,
    threat: ThreatModel,
    n: int = 100,
    steps: int = 20,
    seed: int = 0,
    tolerance: float = 0.03,
    surrogate=None,
    black_box: bool = True,
    square_queries: int = 500,
    progress: bool = False,
) -> list[SanityFlag]:
    """Run the checks above on the first ``n`` examples of ``data`` under ``threat``
    (images, L∞ or L2). ``tolerance``: accuracy differences up to this are noise.
    ``surrogate``: a white-box model for the transfer check (skipped without one).
    Checks that need more access than the model offers are reported as skipped (passed)."""
    from tqdm.auto import tqdm

    if not isinstance(threat, ThreatModel):
        raise TypeError(f"threat: expected a maestro.ThreatModel, got {type(threat).__name__}")
    if threat.norm not in ("linf", "l2"):
        raise ValueError("sanity_checks covers image threat models with norm linf or l2")
    if getattr(model, "access", None) not in _RANK:
        raise TypeError(f"model: expected a maestro ModelWrapper, got {type(model).__name__}")
    d = _as_dataset(data).take(n)
    ctx = _Context(model, d, threat, steps, seed, tolerance)
    checks = [
        ("softmax_outputs", lambda: _softmax(ctx)),
        ("zero_gradients", lambda: _zero_gradients(ctx)),
        ("deterministic", lambda: _deterministic(ctx)),
        ("accuracy_falls_with_eps", lambda: _eps_sweep(ctx)),
        ("more_iterations_do_not_help", lambda: _more_iterations(ctx)),
        ("black_box_not_stronger", lambda: _black_box(ctx, surrogate, black_box, square_queries)),
        ("adaptive_attack_not_stronger", lambda: _adaptive(ctx)),
    ]
    flags = []
    for _name, run in tqdm(checks, desc="sanity checks", disable=not progress, unit="check"):
        flag = run()
        if flag is not None:
            flags.append(flag)
    return flags


class _Context:
    """Shared state: the data, PGD results computed once and reused across checks."""

    def __init__(self, model, data, threat, steps, seed, tolerance) -> None:
        self.model, self.data, self.threat = model, data, threat
        self.steps, self.seed, self.tol = steps, seed, tolerance
        self.white = _RANK[model.access] >= _RANK["white-box"] and _RANK[threat.access] >= _RANK["white-box"]
        self.scores = _RANK[model.access] >= _RANK["scores"] and _RANK[threat.access] >= _RANK["scores"]
        self.judge = _view(model, model.access)
        self.y = data.y.cpu()
        self.clean = _predict(self.judge, data.x, None).cpu() == self.y
        self._pgd: dict = {}
        self.randomized = False
        self.no_graph = False

    @property
    def n(self) -> int:
        return len(self.data)

    def correct_after(self, attack, threat=None, only: torch.Tensor | None = None) -> torch.Tensor:
        """Per example: still correct after ``attack`` (points wrong already stay wrong);
        with ``only`` (a mask), the attack runs on those points only, the rest count as wrong."""
        threat = threat or self.threat
        base = self.clean if only is None else self.clean & only
        idx = base.nonzero().flatten()
        out = base.clone()
        if len(idx):
            sub = self.data[idx]
            try:
                result = attack(_view(self.model, self.model.access), sub.x, sub.y)
            except RuntimeError as err:  # no graph from input to output: the attack cannot move
                if "does not require grad" not in str(err):
                    raise
                self.no_graph = True
                return out
            threat.check(sub.x, result.x_adv)
            out[idx] = _predict(self.judge, result.x_adv, None).cpu() == sub.y.cpu()
        return out

    def pgd(self, *, steps=None, restarts=1, eps=None, random_start=True) -> torch.Tensor:
        from ..attacks import PGD

        steps = steps or self.steps
        key = (steps, restarts, eps, random_start)
        if key not in self._pgd:
            threat = self.threat if eps is None else _with_eps(self.threat, eps)
            attack = PGD(threat, steps=steps, restarts=restarts, random_start=random_start, seed=self.seed)
            self._pgd[key] = self.correct_after(attack, threat)
        return self._pgd[key]

    def acc(self, mask: torch.Tensor) -> float:
        return float(mask.float().mean())


def _with_eps(threat: ThreatModel, eps: float) -> ThreatModel:
    return ThreatModel(threat.norm, eps, threat.bounds, threat.query_budget, threat.access, dtype=threat.dtype,
                       atol=threat.atol)


def _skipped(name: str, why: str) -> SanityFlag:
    return SanityFlag(name, True, f"skipped: {why}", {"skipped": True})


# -- the checks --------------------------------------------------------------------------
def _softmax(c: _Context) -> SanityFlag:
    name = "softmax_outputs"
    if not c.scores:
        return _skipped(name, "needs scores access")
    out = c.judge.logits(c.data.x).cpu().double()
    nonneg = bool((out >= 0).all())
    sums = out.sum(1)
    is_prob = nonneg and bool(((sums - 1).abs() < 1e-3).all())
    if is_prob:
        return SanityFlag(name, False, "the model returns probabilities (non-negative rows summing to 1), not "
                          "logits: the cross-entropy on top of them saturates and gradients vanish; attack the "
                          "logits or use the margin loss", {"row_sum_min": float(sums.min())})
    return SanityFlag(name, True, "outputs are unnormalised scores (logits)", {"row_sum_min": float(sums.min()),
                                                                             "nonnegative": nonneg})


def _gradients(c: _Context, x: torch.Tensor) -> torch.Tensor:
    try:
        return c.judge.gradient(x, c.data.y).detach().cpu().double()
    except RuntimeError as err:  # the outputs do not depend differentiably on the input at all
        if "does not require grad" not in str(err):
            raise
        c.no_graph = True
        return torch.zeros(x.shape, dtype=torch.double)


def _random_points(c: _Context) -> torch.Tensor:
    from ..attacks.bpda import random_start

    gen = torch.Generator(device=c.data.x.device).manual_seed(c.seed + 7)
    return random_start(c.threat, c.data.x, gen)


def _zero_gradients(c: _Context) -> SanityFlag:
    name = "zero_gradients"
    if not c.white:
        return _skipped(name, "needs white-box access")
    grads = torch.cat([_gradients(c, c.data.x), _gradients(c, _random_points(c))])
    norms = grads.flatten(1).norm(dim=1)
    zero = float((norms == 0).double().mean())
    tiny = float((norms < 1e-12).double().mean())
    details = {"fraction_zero": zero, "fraction_below_1e-12": tiny, "median_norm": float(norms.median()),
               "no_graph": c.no_graph}
    if c.no_graph:
        return SanityFlag(name, False, "the outputs do not depend differentiably on the input at all (no autograd "
                          "graph: argmax, one-hot or detached outputs); gradient attacks cannot even start — "
                          "use BPDA or a score-based attack", details)
    if tiny > 0.05:
        return SanityFlag(name, False, f"the loss gradient is zero (or < 1e-12) for {tiny:.0%} of the clean and "
                          "randomly perturbed inputs: gradients are masked (rounding or quantisation, a saturated "
                          "softmax, argmax outputs); gradient attacks stall for the wrong reason — use BPDA "
                          "(bypass the non-differentiable part) or a score-based attack", details)
    return SanityFlag(name, True, f"non-zero gradients for {1 - tiny:.0%} of inputs "
                      f"(median norm {float(norms.median()):.3g})", details)


def _deterministic(c: _Context) -> SanityFlag:
    name = "deterministic"
    if not c.scores:
        a, b = c.judge.predict(c.data.x).cpu(), c.judge.predict(c.data.x).cpu()
        differs = float((a != b).double().mean())
        c.randomized = differs > 0
        details = {"labels_changed": differs}
    else:
        a, b = c.judge.logits(c.data.x).cpu(), c.judge.logits(c.data.x).cpu()
        scale = a.abs().max().clamp_min(1e-12)
        out_diff = float((a - b).abs().max() / scale)
        details = {"output_relative_change": out_diff}
        differs = out_diff > 1e-4
        if c.white:
            g1, g2 = _gradients(c, c.data.x), _gradients(c, c.data.x)
            g_diff = float((g1 - g2).norm() / g1.norm().clamp_min(1e-30))
            details["gradient_relative_change"] = g_diff
            differs = differs or g_diff > 1e-3
        c.randomized = differs
    if c.randomized:
        return SanityFlag(name, False, "two identical calls gave different outputs or gradients: the model is "
                          "randomized, so a single-draw attack underestimates it; attack the expectation "
                          "(EOT) and report the prediction over many draws", details)
    return SanityFlag(name, True, "identical calls give identical outputs and gradients", details)


def _full_range(threat: ThreatModel, numel: int) -> float:
    lo, hi = threat.bounds
    return (hi - lo) if threat.norm == "linf" else (hi - lo) * numel**0.5


def _eps_sweep(c: _Context) -> SanityFlag:
    name = "accuracy_falls_with_eps"
    if not c.white:
        return _skipped(name, "needs white-box access (PGD)")
    top = _full_range(c.threat, c.data.x[0].numel())
    eps_values = sorted({min(float(c.threat.eps) * f, top) for f in (1, 2, 4)} | {top})
    eps_values = [e for e in eps_values if e > 0]
    accs = [c.acc(c.pgd(eps=e, random_start=False, steps=max(c.steps, 20))) for e in eps_values]
    majority = float(torch.bincount(c.y).max()) / max(c.n, 1)
    limit = min(0.5, majority + 0.1)
    rising = [(eps_values[i], eps_values[i + 1]) for i in range(len(accs) - 1) if accs[i + 1] > accs[i] + c.tol]
    details = {"eps": eps_values, "accuracy": accs, "limit_at_full_range": limit}
    curve = ", ".join(f"eps {e:.3g}: {a:.0%}" for e, a in zip(eps_values, accs))
    if accs[-1] > limit:
        return SanityFlag(name, False, f"PGD accuracy stays at {accs[-1]:.0%} even when eps covers the whole input "
                          f"range (over {limit:.0%} is impossible for a working attack: {curve}); the attack is "
                          "not reaching the model — masked or broken gradients", details)
    if rising:
        return SanityFlag(name, False, f"accuracy rises with eps ({curve}): the attack is unreliable "
                          "(step size, iterations or masked gradients)", details)
    return SanityFlag(name, True, f"accuracy falls with eps to {accs[-1]:.0%} ({curve})", details)


def _more_iterations(c: _Context) -> SanityFlag:
    name = "more_iterations_do_not_help"
    if not c.white:
        return _skipped(name, "needs white-box access (PGD)")
    base = c.acc(c.pgd())
    longer = c.acc(c.pgd(steps=5 * c.steps))
    restarts = c.acc(c.pgd(restarts=5))
    details = {"pgd": base, "pgd_5x_steps": longer, "pgd_5_restarts": restarts, "steps": c.steps}
    worse = [what for what, acc in (("5× the steps", longer), ("5 restarts", restarts)) if acc > base + c.tol]
    text = (f"PGD-{c.steps}: {base:.0%}, PGD-{5 * c.steps}: {longer:.0%}, PGD-{c.steps} with 5 restarts: "
            f"{restarts:.0%}")
    if worse:
        return SanityFlag(name, False, f"a stronger attack ({' and '.join(worse)}) gave *higher* accuracy ({text}): "
                          "the attack is not converging; its numbers are not worst cases", details)
    return SanityFlag(name, True, text, details)


def _black_box(c: _Context, surrogate, enabled: bool, square_queries: int) -> SanityFlag:
    from .. import attacks as A

    name = "black_box_not_stronger"
    if not c.white:
        return _skipped(name, "needs white-box access to compare with PGD")
    if not enabled:
        return _skipped(name, "black_box=False")
    # the points no white-box run broke (PGD, 5× the steps, 5 restarts: all computed once)
    pgd = c.pgd() & c.pgd(steps=5 * c.steps) & c.pgd(restarts=5)
    found: dict[str, float] = {}  # accuracy under PGD *and* the black-box attack (run where PGD failed)
    beaten: dict[str, int] = {}
    candidates = []
    for cls_name, kwargs in (("RandomNoise", {"seed": c.seed}), ("SquareAttack", {"seed": c.seed})):
        try:
            cls = getattr(A, cls_name)
        except (AttributeError, ImportError):
            continue
        candidates.append((cls_name, cls, kwargs))
    for cls_name, cls, kwargs in candidates:
        threat = c.threat
        if cls_name == "SquareAttack":
            threat = ThreatModel(threat.norm, threat.eps, threat.bounds, square_queries, "scores",
                                 dtype=threat.dtype, atol=threat.atol)
        try:
            attack = cls(threat, **kwargs)
        except (TypeError, ValueError):
            continue
        mask = c.correct_after(attack, threat, only=pgd)
        found[cls_name] = c.acc(mask)
        beaten[cls_name] = int((pgd & ~mask).sum())
    if surrogate is not None and hasattr(A, "__all__") and "TransferAttack" in A.__all__:
        try:
            attack = A.TransferAttack(c.threat, surrogate=surrogate)
            mask = c.correct_after(attack, only=pgd)
            found["TransferAttack"] = c.acc(mask)
            beaten["TransferAttack"] = int((pgd & ~mask).sum())
        except (ImportError, AttributeError, TypeError):
            pass
    if not found:
        return _skipped(name, "no black-box attack available")
    base = c.acc(pgd)
    details = {"pgd": base, **{f"pgd_then_{k}_accuracy": v for k, v in found.items()},
               **{f"{k}_breaks_where_pgd_failed": v for k, v in beaten.items()}}
    text = ", ".join(f"{k} breaks {beaten[k]}" for k in found)
    stronger = [k for k in found if beaten[k] / max(c.n, 1) > c.tol and beaten[k] >= 2]
    if stronger:
        return SanityFlag(name, False, f"{' and '.join(stronger)} break points that white-box PGD could not "
                          f"(PGD leaves {base:.0%}; of those, {text} of {c.n}): gradients are misleading the "
                          "white-box attack (gradient masking)", details)
    return SanityFlag(name, True, f"of the points PGD leaves robust ({base:.0%}), {text or 'none'} "
                      f"(within tolerance {c.tol:.0%})", details)


def _adaptive(c: _Context) -> SanityFlag | None:
    """BPDA for a TransformedModel, EOT for a randomized model: must not beat PGD."""
    from ..attacks import BPDA, EOT
    from ..defenses.transforms import TransformedModel

    if not c.white:
        return None
    if isinstance(c.model, TransformedModel):
        attack, label = BPDA(c.threat, steps=max(c.steps, 20), seed=c.seed), "BPDA"
    elif c.randomized:
        attack, label = EOT(c.threat, steps=max(c.steps, 20), samples=8, seed=c.seed), "EOT"
    else:
        return None
    name = f"{label.lower()}_not_stronger"
    base = c.acc(c.pgd())
    adaptive = c.acc(c.correct_after(attack))
    details = {"pgd": base, label.lower(): adaptive}
    if adaptive < base - c.tol:
        why = ("bypassing the transform on the backward pass" if label == "BPDA"
               else "averaging gradients over the randomness")
        return SanityFlag(name, False, f"{label} ({why}) drives accuracy to {adaptive:.0%} where PGD-{c.steps} "
                          f"reports {base:.0%}: the defense obfuscates gradients", details)
    return SanityFlag(name, True, f"{label} {adaptive:.0%} vs PGD-{c.steps} {base:.0%}", details)

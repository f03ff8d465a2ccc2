"""Kind ``certified``: randomized smoothing (Cohen, Rosenfeld & Kolter 2019), graded soundly.

The notebook hands in two things: the weights of a base classifier f (``.safetensors``, a zoo
architecture), trained to work under Gaussian noise of standard deviation σ, and its own
certificates for the hidden inputs — CERTIFY's class ``ĉ`` (``-1`` = abstain) and L2 radius
``R = σ·Φ⁻¹(p̲_A)`` per input (two ``.npy`` files). The smoothed classifier is
g(x) = argmax_c P(f(x + σε) = c), ε ~ N(0, I).

The trusted scorer, here, with noise seeded from the course secret (deterministic per course,
unknowable to students):

* **certifies the submitted model itself** (n0 selection draws, n estimation draws, one-sided
  Clopper–Pearson bound at ``alpha``, abstain when p̲_A ≤ ½) on the hidden inputs, and measures
  certified accuracy at each configured radius on the hidden labels: the share of inputs whose
  certified class is the label with a radius ≥ r (r = 0: not abstaining);
* **checks every claim** (ĉ ≥ 0, R > 0) of the student's certificates. A true claim means
  P(f(x' + σε) = ĉ) ≥ Φ((R − ‖x' − x‖₂)/σ) for every x' (the Neyman–Pearson bound behind the
  certificate), so with p̄ a one-sided (1 − ``check_alpha``) Clopper–Pearson UPPER bound on that
  probability from n fresh draws at x', the claim is refuted when
  ``R > ‖x' − x‖₂ + σ·Φ⁻¹(p̄) + tolerance``. Checked at x' = x and at x' = an attack point: L2
  PGD within R on the smoothed soft classifier (EOT: the cross-entropy of the softmax averaged
  over ``attack_samples`` noise draws, ``attack_steps`` steps, no early stop). A radius larger
  than n draws can ever certify, σ·Φ⁻¹(alpha^(1/n)), is refuted outright. An honest claim is
  refuted with probability at most alpha + 2·check_alpha;
* scores: certified accuracy (the model), ``tightness`` (the sum of the student's *sound* radii
  over the sum of the grader's: an honest CERTIFY with the same n gets ≈ 1, an over-cautious one
  less, refuted claims count 0) and ``soundness`` (the share of claims not refuted). Reasons
  give counts of refuted claims, never labels or per-example values.

Cost: (n0 + 2n) noisy forward passes per hidden input plus the attack (``attack_steps`` ×
``attack_samples`` forward and backward passes per claim): a few seconds for ~180 digits on an
MLP, one CPU thread.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import Kind, Prepared

#: radii a grading.toml may report or score; metric certified_accuracy_r<r> (0.25 -> r0_25)
RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
CLAIMS = ("tightness", "soundness", "unsound_claims")  # the metrics of the student's certificates


def radius_metric(r: float) -> str:
    """``certified_accuracy_r0_25`` for r = 0.25."""
    return "certified_accuracy_r" + f"{r:g}".replace(".", "_")


@dataclass(frozen=True)
class CertifiedSpec:
    """grading.toml ``[certified]``: the smoothing and CERTIFY parameters (the notebook gets
    sigma, n0, n and alpha as papermill parameters) and the soundness checks' settings."""

    sigma: float
    n0: int
    n: int
    alpha: float
    radii: tuple[float, ...]
    tolerance: float = 0.02
    check_alpha: float = 0.001
    attack_steps: int = 20
    attack_samples: int = 16
    batch_size: int = 10000
    weights: str = "base_model.safetensors"
    predictions: str = "predictions.npy"
    radius: str = "radii.npy"
    architecture: str = "mlp-digits"

    def max_radius(self) -> float:
        """The largest radius CERTIFY with n draws can return: all n votes for one class."""
        from scipy.stats import norm

        return float(self.sigma * norm.ppf(self.alpha ** (1.0 / self.n)))


@dataclass
class _Hidden:
    """What the scorer keeps: the hidden inputs and labels, the public mask, the noise seed."""

    x: torch.Tensor
    y: torch.Tensor
    public: np.ndarray
    seed: int
    num_classes: int

    def __repr__(self) -> str:  # never print the labels
        return f"_Hidden(n={len(self.y)}, public={int(self.public.sum())})"


def noise_seed(secret: str | bytes, assignment: str) -> int:
    """A 63-bit seed for the grader's noise draws, from the course secret and the assignment."""
    from maestro.datasets.splits import secret_seed

    return secret_seed(secret, assignment, domain="maestro-certified")


class Certified(Kind):
    name = "certified"
    table = "certified"
    metrics = {
        **{radius_metric(r): f"share of the hidden inputs the grader's own certification of your "
           f"base model (smoothed with sigma) classifies correctly with a certified L2 radius ≥ {r:g}"
           + (" (not abstaining)" if r == 0 else "") for r in RADII},
        "abstain_rate": "share of the hidden inputs on which the grader's certification abstains",
        "tightness": "sum of your certified radii that survive every soundness check, divided by "
                     "the sum of the grader's certified radii (same sigma, n0, n, alpha)",
        "soundness": "share of your certificates (class ≥ 0, radius > 0) that no check refutes "
                     "(1 when you claim nothing)",
        "unsound_claims": "number of your certificates refuted: a radius larger than n samples can "
                          "certify, or one the grader's samples at the input or at an attack point "
                          "within the radius show to be too large",
    }
    lower_is_better = ("unsound_claims", "abstain_rate")

    # -- grading.toml -----------------------------------------------------------------------
    def parse(self, where: str, raw, config) -> CertifiedSpec:
        from ..config import ConfigError, _Table

        if raw is None:
            raise ConfigError(f"{where}: [certified] missing: give sigma, n0, n, alpha and radii")
        t = _Table(where, raw, "certified")

        def positive(v):
            return None if v > 0 else "must be > 0"

        def prob(v):
            return None if 0 < v < 1 else "must lie strictly between 0 and 1"

        def count(v):
            return None if v >= 1 else "must be ≥ 1"

        sigma = t.get("sigma", float, check=positive)
        n0 = t.get("n0", int, check=count)
        n = t.get("n", int, check=count)
        alpha = t.get("alpha", float, check=prob)
        radii = t.get("radii", list, what="a list of radii, e.g. [0.0, 0.25, 0.5]")
        menu = ", ".join(f"{r:g}" for r in RADII)
        if not radii or not all(isinstance(r, (int, float)) and not isinstance(r, bool) and float(r) in RADII
                                for r in radii) or sorted(set(map(float, radii))) != [float(r) for r in radii]:
            raise ConfigError(f"{where}: [certified] radii: expected an increasing list of radii "
                              f"from {menu}, got {radii!r}")
        spec = CertifiedSpec(
            sigma, n0, n, alpha, tuple(float(r) for r in radii),
            tolerance=t.get("tolerance", float, 0.02, check=lambda v: None if v >= 0 else "must be ≥ 0"),
            check_alpha=t.get("check_alpha", float, alpha, check=prob),
            attack_steps=t.get("attack_steps", int, 20, check=count),
            attack_samples=t.get("attack_samples", int, 16, check=count),
            batch_size=t.get("batch_size", int, 10000, check=count),
        )
        t.done()
        arts = {a.key: a for a in config.artifacts}
        want = {"weights": ("safetensors", "float32"), "predictions": ("npy", "int64"),
                "radii": ("npy", "float32")}
        if set(arts) != set(want):
            raise ConfigError(f"{where}: a certified unit has exactly the artifacts [artifacts.weights] "
                              f"(.safetensors), [artifacts.predictions] (int64 .npy) and [artifacts.radii] "
                              f"(float32 .npy); got {', '.join(sorted(arts))}")
        for key, (fmt, dtype) in want.items():
            a = arts[key]
            if a.format != fmt or a.dtype != dtype or (fmt == "npy" and a.shape != "any"):
                shape = ', shape = "any"' if fmt == "npy" else ""
                raise ConfigError(f"{where}: [artifacts.{key}] must be a .{fmt} file with dtype = "
                                  f"{dtype!r}{shape} (got {a.file!r}, {a.dtype!r}, shape {a.shape!r})")
        from maestro.models.zoo import ZOO

        if ZOO[arts["weights"].architecture].dataset != config.dataset:
            raise ConfigError(f"{where}: [artifacts.weights] architecture {arts['weights'].architecture!r} "
                              f"is a model of another data set than [assignment] dataset {config.dataset!r}")
        for term in config.terms:
            if term.metric.startswith("certified_accuracy_r") and term.metric not in {
                    radius_metric(r) for r in spec.radii}:
                raise ConfigError(f"{where}: [score.terms {term.name!r}] metric {term.metric}: its radius is "
                                  f"not in [certified] radii {list(spec.radii)}")
        return dataclasses.replace(spec, weights=arts["weights"].file, predictions=arts["predictions"].file,
                                   radius=arts["radii"].file, architecture=arts["weights"].architecture)

    # -- inputs -------------------------------------------------------------------------------
    def prepare(self, config, secret, home=None) -> Prepared:
        import maestro
        from maestro.datasets.splits import resolve_secret

        from ..scoring import public_mask

        secret = resolve_secret(secret)
        spec: CertifiedSpec = config.unit
        data = maestro.datasets.load(config.dataset, split="hidden", secret=secret, home=home)
        x = data.x.float()
        hidden = _Hidden(x, data.y.long(), public_mask(len(data), config, secret),
                         noise_seed(secret, config.id), data.num_classes)
        return Prepared(
            inputs={"inputs.npy": x.numpy()},
            params={"inputs_path": "inputs.npy", "sigma": spec.sigma, "n0": spec.n0, "n": spec.n,
                    "alpha": spec.alpha},
            state=hidden,
        )

    def hidden_labels(self, prepared: Prepared):
        return prepared.state.y.numpy().astype(np.int64)

    # -- scoring ------------------------------------------------------------------------------
    def score(self, config, artifacts: dict[str, Path], prepared: Prepared, *, queries=None):
        from maestro.models.train import num_threads

        from ..scoring import ArtifactRefused, Part, score_parts

        spec: CertifiedSpec = config.unit
        hidden: _Hidden = prepared.state
        problems: list[str] = []
        try:
            module = self._weights(spec, artifacts, hidden)
        except ArtifactRefused as err:
            return score_parts(config, {"public": None, "private": None}, [str(err)], kind=self.name)
        claims_problem = None
        try:
            pred, radius = self._certificates(spec, artifacts, hidden)
        except ArtifactRefused as err:
            claims_problem = str(err)
            problems.append(claims_problem)
            pred = radius = None
        # one torch thread: the model is tiny, and a grading machine is busy with sandboxes
        with num_threads(1), torch.no_grad():
            grader = _certify(module, hidden, spec)
            checks = _check_claims(module, hidden, spec, grader, pred, radius) if pred is not None else None
        rows = {"public": hidden.public, "private": ~hidden.public}
        metrics = {label: _part_metrics(spec, hidden, grader, pred, radius, checks, rows[label])
                   for label in rows}
        overall = _part_metrics(spec, hidden, grader, pred, radius, checks, np.ones(len(hidden.y), bool))
        extra = {label: [Part(f"{label}: your certificates", 0.0, 0.0,
                              _claims_line(metrics[label], checks, rows[label], claims_problem), label)]
                 for label in rows}
        result = score_parts(config, metrics, problems, kind=self.name, overall=overall, extra=extra)
        if claims_problem is not None:  # say why the certificate terms earn nothing
            terms = {t.name for t in config.terms if t.metric in CLAIMS}
            for part in result.parts:
                if part.name.split(": ", 1)[-1] in terms:
                    part.reason = f"{claims_problem} ({part.reason})"
        return result

    def _weights(self, spec: CertifiedSpec, artifacts: dict, hidden: _Hidden) -> torch.nn.Module:
        from maestro.models.zoo import ZOO

        from ..scoring import ArtifactRefused, load_weights

        path = artifacts.get(spec.weights, artifacts.get("weights"))
        if path is None:
            raise ArtifactRefused(f"{spec.weights} was not produced: the notebook must save the base "
                                  "classifier's weights in output_dir (did every cell run without an error?)")
        entry = ZOO[spec.architecture]
        arch_config = {**entry.config, "input_shape": list(hidden.x.shape[1:]), "num_classes": hidden.num_classes}
        module = load_weights(path, arch=entry.arch, config=arch_config,
                              label=f"{spec.architecture} ({entry.arch})")
        with torch.no_grad():
            tiny = torch.finfo(torch.float32).tiny
            for p in module.parameters():  # subnormal weights: the same model, up to 7x slower on CPU
                p[p.abs() < tiny] = 0.0
            if not bool(torch.isfinite(module(hidden.x)).all()):
                raise ArtifactRefused(f"{spec.weights}: the model outputs NaN or infinite logits on the "
                                      "hidden inputs; the weights cannot be graded")
        return module

    def _certificates(self, spec: CertifiedSpec, artifacts: dict, hidden: _Hidden):
        """The student's (class, radius) per hidden input, checked: shape, dtype, classes in
        [-1, K), radii finite and ≥ 0, radius 0 where abstaining."""
        from ..scoring import ArtifactRefused

        n, k = len(hidden.y), hidden.num_classes
        arrays = {}
        for file, dtype, hint in ((spec.predictions, "int64", "cert_pred.numpy().astype(np.int64)"),
                                  (spec.radius, "float32", "cert_radius.numpy().astype(np.float32)")):
            path = artifacts.get(file)
            if path is None:
                raise ArtifactRefused(f"{file} was not produced: save your certificates for the {n} "
                                      f"hidden inputs in output_dir ({hint}, one entry per input)")
            try:
                arrays[file] = _load_npy(path, dtype, (n,))
            except ArtifactRefused as err:
                raise ArtifactRefused(f"{err} — {file} holds one {dtype} per hidden input, in order "
                                      f"({n} of them): np.save(path, {hint})") from None
        pred, radius = arrays[spec.predictions], arrays[spec.radius]

        def rows(mask) -> str:
            idx = np.flatnonzero(mask)
            return ", ".join(map(str, idx[:5])) + (f" (+{len(idx) - 5} more)" if len(idx) > 5 else "")

        bad = (pred < -1) | (pred >= k)
        if bad.any():
            raise ArtifactRefused(f"{spec.predictions}: classes must be -1 (abstain) or 0..{k - 1}; "
                                  f"rows {rows(bad)} are not")
        bad = ~np.isfinite(radius) | (radius < 0)
        if bad.any():
            raise ArtifactRefused(f"{spec.radius}: radii must be finite and ≥ 0; rows {rows(bad)} are not")
        bad = (pred == -1) & (radius != 0)
        if bad.any():
            raise ArtifactRefused(f"{spec.radius}: an abstention (class -1) certifies nothing, so its "
                                  f"radius must be 0; rows {rows(bad)} abstain with a radius > 0")
        return torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(radius.astype(np.float64))

    def summary(self, metrics: dict) -> str:
        from ..scoring import _fmt

        out = []
        for key, value in metrics.items():
            if key not in self.metrics or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            if key.startswith("certified_accuracy_r"):
                out.append(f"certified accuracy at r = {key[20:].replace('_', '.')} {_fmt('x_accuracy', value)}")
            elif key in ("soundness", "abstain_rate"):
                out.append(f"{key.replace('_', ' ')} {_fmt('x_rate', value)}")
            elif key == "unsound_claims":
                out.append(f"unsound claims {int(value)}")
            else:
                out.append(f"{key} {_fmt(key, value)}")
        return ", ".join(out)

    def leaderboard_columns(self) -> list[tuple[str, str, str]]:
        cols = [(radius_metric(r), f"certified accuracy r={r:g}", "desc") for r in RADII]
        return cols + [("tightness", "tightness", "desc"), ("soundness", "soundness", "desc")]


KIND = Certified()


def _load_npy(path: Path, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """:func:`autograder.scoring.load_artifact` with a cast hint for certificates."""
    from .. import scoring

    return scoring.load_artifact(path, dtype=dtype, shape=shape, cast_hint=f"np.asarray(a, dtype=np.{dtype})",
                                 shape_hint="one value per hidden input, in the order of inputs.npy")


# -- the grader's certification and the soundness checks ---------------------------------------
@dataclass
class _Grader:
    prediction: torch.Tensor  # -1 = abstain
    radius: torch.Tensor  # float64
    counts: torch.Tensor  # N×K class counts of the n estimation draws at x


def _smoothed(module, hidden: _Hidden, spec: CertifiedSpec, seed: int):
    import maestro
    from maestro.defenses import RandomizedSmoothing

    wrapped = maestro.models.wrap(module, num_classes=hidden.num_classes, input_shape=tuple(hidden.x.shape[1:]),
                                  name="submission")
    return RandomizedSmoothing(wrapped, spec.sigma, n0=spec.n0, n=spec.n, alpha=spec.alpha,
                               batch_size=spec.batch_size, seed=seed)


def _certify(module, hidden: _Hidden, spec: CertifiedSpec) -> _Grader:
    """CERTIFY (Cohen et al.) on the hidden inputs: the class of n0 draws, a Clopper–Pearson
    lower bound from n fresh draws, R = σ·Φ⁻¹(p̲_A), abstain when p̲_A ≤ ½; keeps the counts."""
    from maestro.defenses.smoothing import clopper_pearson_lower
    from scipy.stats import norm

    rs = _smoothed(module, hidden, spec, hidden.seed)
    guess = rs.counts(hidden.x, spec.n0).argmax(1)
    counts = rs.counts(hidden.x, spec.n)
    p_lower = clopper_pearson_lower(counts.gather(1, guess[:, None]).squeeze(1), spec.n, spec.alpha).double()
    ok = p_lower > 0.5
    radius = torch.where(ok, spec.sigma * torch.from_numpy(norm.ppf(p_lower.clamp(0.5, 1.0).numpy())),
                         torch.zeros_like(p_lower))
    radius = torch.nan_to_num(radius, posinf=spec.max_radius())
    return _Grader(torch.where(ok, guess, torch.full_like(guess, -1)), radius, counts)


def clopper_pearson_upper(successes: torch.Tensor, trials: int, alpha: float) -> torch.Tensor:
    """One-sided (1 − alpha) upper confidence bound on a binomial proportion: the 1 − alpha
    quantile of Beta(k + 1, n − k) (1 when k = n)."""
    from scipy.stats import beta

    k = successes.double().numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        upper = beta.ppf(1 - alpha, k + 1, trials - k)
    return torch.from_numpy(np.where(k >= trials, 1.0, np.nan_to_num(upper, nan=1.0)))


def _supported(p_upper: torch.Tensor, sigma: float) -> torch.Tensor:
    """σ·Φ⁻¹(p̄): the largest radius a class probability ≤ p̄ can support (−inf at 0, inf at 1)."""
    from scipy.stats import norm

    return sigma * torch.from_numpy(norm.ppf(p_upper.numpy()))


@dataclass
class _Checks:
    claimed: torch.Tensor  # class ≥ 0 and radius > 0
    over_max: torch.Tensor  # radius beyond what n draws can certify
    at_input: torch.Tensor  # refuted by the grader's draws at x
    by_attack: torch.Tensor  # refuted by the draws at an attack point within the radius

    @property
    def unsound(self) -> torch.Tensor:
        return self.over_max | self.at_input | self.by_attack


def _check_claims(module, hidden: _Hidden, spec: CertifiedSpec, grader: _Grader,
                  pred: torch.Tensor, radius: torch.Tensor) -> _Checks:
    claimed = (pred >= 0) & (radius > 0)
    cls = pred.clamp(min=0)
    over_max = claimed & (radius > spec.max_radius() + spec.tolerance)
    p_up = clopper_pearson_upper(grader.counts.gather(1, cls[:, None]).squeeze(1), spec.n, spec.check_alpha)
    at_input = claimed & ~over_max & (radius > _supported(p_up, spec.sigma) + spec.tolerance)
    by_attack = torch.zeros_like(claimed)
    todo = torch.nonzero(claimed & ~over_max & ~at_input).flatten()
    if len(todo):
        x0 = hidden.x[todo]
        with torch.enable_grad():
            x_adv = _smoothed_pgd(module, x0, cls[todo], radius[todo], spec, hidden.seed + 1)
        dist = (x_adv.double() - x0.double()).flatten(1).norm(dim=1)
        rs = _smoothed(module, hidden, spec, hidden.seed + 2)
        counts = rs.counts(x_adv, spec.n)
        p_up = clopper_pearson_upper(counts.gather(1, cls[todo][:, None]).squeeze(1), spec.n, spec.check_alpha)
        by_attack[todo] = radius[todo] > dist + _supported(p_up, spec.sigma) + spec.tolerance
    return _Checks(claimed, over_max, at_input, by_attack)


def _smoothed_pgd(module, x: torch.Tensor, cls: torch.Tensor, radius: torch.Tensor,
                  spec: CertifiedSpec, seed: int) -> torch.Tensor:
    """L2 PGD within a per-example ``radius`` (and the [0, 1] box) that ascends the cross-entropy
    of the smoothed soft classifier, −log (1/S) Σ_s softmax(f(x' + σε_s))_ĉ (EOT over S draws),
    for a fixed number of steps (no early stop: a refutation needs p_ĉ well below ½). Every
    result is validated by maestro.ThreatModel at its own radius."""
    import maestro

    gen = torch.Generator().manual_seed(seed)
    s, m = spec.attack_samples, len(x)
    eps = radius.float().view(-1, *[1] * (x.dim() - 1))
    step = 2.5 * eps / spec.attack_steps

    def project(cur):
        delta = cur - x
        norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view_as(eps)
        return (x + delta * (eps * (1 - 1e-6) / norm).clamp(max=1.0)).clamp(0.0, 1.0)

    cur = x.clone()
    per = max(1, spec.batch_size // s)
    for _ in range(spec.attack_steps):
        grads = []
        for start in range(0, m, per):
            xc = cur[start:start + per].detach().requires_grad_(True)
            k = len(xc)
            rep = xc.repeat(s, *[1] * (x.dim() - 1))
            noise = torch.randn(rep.shape, generator=gen)
            logp = module(rep + spec.sigma * noise).log_softmax(1).view(s, k, -1)
            mean_logp = torch.logsumexp(logp, 0) - math.log(s)
            loss = -mean_logp.gather(1, cls[start:start + per, None]).sum()
            (grad,) = torch.autograd.grad(loss, xc)
            grads.append(grad)
        grad = torch.cat(grads)
        norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view_as(eps)
        cur = project(cur.detach() + step * grad / norm)
    cur = cur.detach()
    for r in torch.unique(radius):
        rows = radius == r
        maestro.ThreatModel("l2", float(r)).check(x[rows], cur[rows])
    return cur


# -- metrics and feedback -----------------------------------------------------------------------
def _part_metrics(spec: CertifiedSpec, hidden: _Hidden, grader: _Grader, pred, radius, checks,
                  rows: np.ndarray) -> dict:
    """Aggregate metrics on ``rows`` (numbers only: nothing per example)."""
    mask = torch.from_numpy(rows)
    n = int(mask.sum())
    right = (grader.prediction == hidden.y) & (grader.prediction >= 0) & mask
    out: dict = {"n": n}
    for r in spec.radii:
        ok = right & (grader.radius >= r) if r > 0 else right
        out[radius_metric(r)] = int(ok.sum()) / n if n else float("nan")
    out["abstain_rate"] = int(((grader.prediction < 0) & mask).sum()) / n if n else float("nan")
    out["grader_mean_radius"] = float(grader.radius[mask].mean()) if n else float("nan")
    if checks is not None:
        claimed = checks.claimed & mask
        unsound = checks.unsound & mask
        n_claims = int(claimed.sum())
        total = float(grader.radius[mask].sum())
        kept = float(torch.where(claimed & ~unsound, radius, torch.zeros_like(radius))[mask].sum())
        out.update({
            "claims": n_claims,
            "unsound_claims": int(unsound.sum()),
            "soundness": 1.0 - int(unsound.sum()) / n_claims if n_claims else 1.0,
            "tightness": kept / total if total > 0 else float("nan"),
            "mean_claimed_radius": float(radius[mask].mean()) if n else float("nan"),
        })
    return out


def _claims_line(m: dict, checks, rows: np.ndarray, problem: str | None) -> str:
    if checks is None:
        return f"not checked: {problem}"
    mask = torch.from_numpy(rows)
    over, at_x, attack = (int((c & mask).sum()) for c in (checks.over_max, checks.at_input, checks.by_attack))
    line = (f"{m['claims']} of {m['n']} inputs certified (class ≥ 0, radius > 0), mean radius "
            f"{m['mean_claimed_radius']:.3f} (the grader's: {m['grader_mean_radius']:.3f}); "
            f"{m['unsound_claims']} unsound")
    if m["unsound_claims"]:
        line += (f": {over} larger than n samples can ever certify, {at_x} refuted by the grader's "
                 f"samples at the input, {attack} refuted at an attack point within the radius")
    return line

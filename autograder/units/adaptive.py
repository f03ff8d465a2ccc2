"""Kind ``adaptive-attack``: break deliberately masked defenses with adaptive attacks.

Each defense of the grading.toml's ``[adaptive] defenses`` is a zoo model (``[assignment]
model``) behind a cheap add-on that hides its gradients without making it robust (Athalye,
Carlini & Wagner 2018, "Obfuscated gradients give a false sense of security"). The menu,
:data:`CATALOG`, holds one defense per kind of gradient masking:

* ``squeeze`` — bit-depth squeezing of the input to ``2**bits`` grey levels: piecewise constant,
  its gradient is 0 almost everywhere (*shattered* gradients); broken by BPDA, the
  straight-through gradient;
* ``saturate`` — the logits multiplied by ``scale`` (1e4): same predictions, but the softmax
  saturates and the cross-entropy's gradient underflows to exactly 0 (*vanishing* gradients);
  broken by a loss that does not saturate, the margin (Carlini–Wagner) loss;
* ``noise`` — Gaussian noise of standard deviation ``sigma`` added to every query (*stochastic*
  gradients, and a success check that one lucky draw fools); broken by EOT: gradients averaged
  over draws, success judged in expectation;
* ``noisy_squeeze`` — noise, then squeezing: needs EOT and BPDA together.

The notebook gets the hidden inputs (``inputs_path``) and the defenses' parameters
(``defenses``: name -> parameters, a papermill parameter) and saves one ``x_adv_<name>.npy`` per
defense. The trusted scorer, here, builds every defense itself from grading.toml, reads each file
safely (:func:`autograder.scoring.load_artifact`), validates it with the one threat-model
validator (:class:`maestro.ThreatModel`) and measures the defended model's **robust accuracy**
on the hidden labels: the share of the part's inputs it still classifies correctly at
``x_adv``. A randomized defense is evaluated deterministically: each input's accuracy is
averaged over ``draws`` noise draws from a generator seeded with the course secret (students
cannot reproduce the draws). One metric per defense, ``<name>_robust_accuracy`` (lower is
better), and ``mean_robust_accuracy`` over the configured defenses; a refused or missing file
voids only its own defense's terms (on the part whose rows break the threat model, or on both),
with the reason: file, rule and row numbers of the student's own array, never labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import Kind, Prepared

__all__ = ["CATALOG", "KIND", "AdaptiveAttack", "AdaptiveSpec", "LogitScale", "MaskedDefense",
           "metric", "noise_seed"]


@dataclass(frozen=True)
class _Entry:
    """One defense of the menu: what it is, its parameters (name -> type), whether it is random."""

    title: str
    params: tuple[tuple[str, type], ...]
    randomized: bool


#: the defenses a grading.toml may configure (each at most once); metric ``<name>_robust_accuracy``
CATALOG: dict[str, _Entry] = {
    "squeeze": _Entry("bit-depth squeezing", (("bits", int),), False),  # shattered gradients
    "saturate": _Entry("saturated logits", (("scale", float),), False),  # vanishing gradients
    "noise": _Entry("random input noise", (("sigma", float),), True),  # stochastic gradients
    "noisy_squeeze": _Entry("random noise, then bit-depth squeezing",  # both
                            (("sigma", float), ("bits", int)), True),
}


def metric(name: str) -> str:
    """The metric of defense ``name``: ``<name>_robust_accuracy``."""
    return f"{name}_robust_accuracy"


class LogitScale(torch.nn.Module):
    """``scale · z``: the same argmax, a softmax saturated to exact 0s and 1s in float32."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = float(scale)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.scale

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}"


@dataclass(frozen=True)
class MaskedDefense:
    """One configured defense: a :data:`CATALOG` name, its parameters and its artifact file."""

    name: str
    params: tuple[tuple[str, int | float], ...]
    file: str

    @property
    def entry(self) -> _Entry:
        return CATALOG[self.name]

    @property
    def randomized(self) -> bool:
        return self.entry.randomized

    def describe(self) -> str:
        """``squeeze (bit-depth squeezing, bits = 2)``."""
        args = ", ".join(f"{k} = {v:g}" for k, v in self.params)
        return f"{self.name} ({self.entry.title}, {args})"

    def build(self, base, seed: int = 0):
        """The defended model around the white-box :class:`maestro.ModelWrapper` ``base``, as a
        :class:`maestro.defenses.TransformedModel`; ``seed`` seeds a randomized defense's noise."""
        from maestro.defenses.smoothing import GaussianNoise
        from maestro.defenses.transforms import BitDepthSqueeze, TransformedModel

        p = dict(self.params)
        bounds = tuple(base.input_bounds)
        if self.name == "squeeze":
            return TransformedModel(base, BitDepthSqueeze(p["bits"], bounds), name=self.name)
        if self.name == "saturate":
            return TransformedModel(base, output_transform=LogitScale(p["scale"]), name=self.name)
        noise = GaussianNoise(torch.nn.Identity(), p["sigma"], seed=seed)
        if self.name == "noise":
            return TransformedModel(base, noise, name=self.name)
        return TransformedModel(base, torch.nn.Sequential(noise, BitDepthSqueeze(p["bits"], bounds)),
                                name=self.name)


@dataclass(frozen=True)
class AdaptiveSpec:
    """grading.toml ``[adaptive]``: the defenses, and how many noise draws a randomized one is
    evaluated with."""

    defenses: tuple[MaskedDefense, ...]
    draws: int = 32

    def names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.defenses)

    def notebook_param(self) -> dict:
        """The ``defenses`` papermill parameter: name -> {parameter: value}."""
        return {d.name: dict(d.params) for d in self.defenses}


@dataclass
class _Hidden:
    """What the scorer keeps: the hidden inputs and labels, the public mask, the noise seed and
    the undefended model."""

    x: torch.Tensor
    y: torch.Tensor
    public: np.ndarray
    seed: int
    model: object

    def __repr__(self) -> str:  # never print the labels
        return f"_Hidden(n={len(self.y)}, public={int(self.public.sum())})"


def noise_seed(secret: str | bytes, assignment: str) -> int:
    """A 63-bit seed for the grader's noise draws, from the course secret and the assignment."""
    from maestro.datasets.splits import secret_seed

    return secret_seed(secret, assignment, domain="maestro-adaptive")


def _in_range(lo, hi):
    def check(v):
        return None if lo <= v <= hi else f"must lie in [{lo:g}, {hi:g}], got {v!r}"
    return check


_LIMITS = {"bits": (1, 8), "scale": (1.0, 1e30), "sigma": (1e-6, 10.0)}


class AdaptiveAttack(Kind):
    name = "adaptive-attack"
    table = "adaptive"
    metrics = {
        "mean_robust_accuracy": "robust accuracy averaged over the configured defenses (a defense "
                                "whose x_adv is missing or refused counts with its clean accuracy)",
        **{metric(name): f"share of the hidden inputs that the '{name}' defense ({e.title}) still "
           "classifies correctly at your x_adv_" + name + ".npy"
           + (" (averaged over the grader's noise draws)" if e.randomized else "")
           for name, e in CATALOG.items()},
    }
    needs_threat = True
    lower_is_better = tuple(metrics)

    # -- grading.toml -------------------------------------------------------------------------
    def parse(self, where: str, raw, config) -> AdaptiveSpec:
        from maestro.models.zoo import ZOO

        from ..config import ConfigError, _Table

        if raw is None:
            raise ConfigError(f"{where}: [adaptive] missing: name the defenses, e.g. defenses = "
                              "[{ name = \"squeeze\", bits = 2 }]")
        t = _Table(where, raw, "adaptive")
        draws = t.get("draws", int, 32, check=lambda v: None if 1 <= v <= 1000 else "must lie in 1..1000")
        entries = t.get("defenses", list, what="an array of tables { name = \"squeeze\", ... }")
        t.done()
        menu = ", ".join(CATALOG)
        if not entries:
            raise ConfigError(f"{where}: [adaptive] defenses is empty: give at least one of {menu}")
        defenses = []
        for i, body in enumerate(entries):
            d = _Table(where, body, f"adaptive.defenses #{i + 1}")
            name = d.get("name", str, check=lambda v: None if v in CATALOG else
                         f"must be one of {menu}, got {v!r}")
            params = tuple((key, d.get(key, kind, check=_in_range(*_LIMITS[key])))
                           for key, kind in CATALOG[name].params)
            d.done()
            defenses.append(MaskedDefense(name, params, f"x_adv_{name}.npy"))
        names = [d.name for d in defenses]
        if len(set(names)) != len(names):
            raise ConfigError(f"{where}: [adaptive] defenses: each defense may appear once, got {names}")
        if config.threat.norm not in ("linf", "l2"):
            raise ConfigError(f"{where}: [threat] norm: an adaptive-attack unit perturbs images in linf "
                              f"or l2, got {config.threat.norm!r}")
        entry = ZOO.get(config.model)
        if entry is None or entry.recipe != "image" or entry.dataset != config.dataset:
            raise ConfigError(f"{where}: [assignment] model: the defenses wrap an image model of the zoo "
                              f"trained on [assignment] dataset {config.dataset!r}, got {config.model!r}")
        arts = {a.key: a for a in config.artifacts}
        example = "; ".join(f'[artifacts.{n}] file = "x_adv_{n}.npy"' for n in names)
        if set(arts) != set(names):
            raise ConfigError(f"{where}: an adaptive-attack unit has one artifact per defense, named "
                              f"after it ({example}); got {', '.join(sorted(arts))}")
        for d in defenses:
            a = arts[d.name]
            if a.file != d.file or a.format != "npy" or a.dtype != "float32" or a.shape != "inputs":
                raise ConfigError(f"{where}: [artifacts.{d.name}] must be file = {d.file!r}, dtype = "
                                  f"\"float32\", shape = \"inputs\" (got {a.file!r}, {a.dtype!r}, "
                                  f"shape {a.shape!r})")
        for term in config.terms:
            if term.metric != "mean_robust_accuracy" and term.metric not in {metric(n) for n in names}:
                raise ConfigError(f"{where}: [score.terms {term.name!r}] metric {term.metric}: its "
                                  f"defense is not in [adaptive] defenses ({', '.join(names)})")
        return AdaptiveSpec(tuple(defenses), draws)

    # -- inputs -------------------------------------------------------------------------------
    def prepare(self, config, secret, home=None) -> Prepared:
        import maestro
        from maestro.datasets.splits import resolve_secret

        from ..scoring import public_mask

        secret = resolve_secret(secret)
        spec: AdaptiveSpec = config.unit
        data = maestro.datasets.load(config.dataset, split="hidden", secret=secret, home=home)
        x = data.x.float()
        model = maestro.models.load(config.model, home=home)
        hidden = _Hidden(x, data.y.long(), public_mask(len(data), config, secret),
                         noise_seed(secret, config.id), model)
        return Prepared(inputs={"inputs.npy": x.numpy()},
                        params={"inputs_path": "inputs.npy", "defenses": spec.notebook_param()},
                        state=hidden)

    def hidden_labels(self, prepared: Prepared):
        return prepared.state.y.numpy().astype(np.int64)

    # -- scoring ------------------------------------------------------------------------------
    def score(self, config, artifacts: dict[str, Path], prepared: Prepared, *, queries=None):
        from maestro.models.train import num_threads

        from ..scoring import Part, score_parts

        spec: AdaptiveSpec = config.unit
        hidden: _Hidden = prepared.state
        threat = config.threat.threat_model()
        rows = {"public": hidden.public, "private": ~hidden.public}
        problems: list[str] = []
        clean: dict[str, torch.Tensor] = {}  # name -> per-input accuracy at x (float, N)
        robust: dict[str, torch.Tensor] = {}  # name -> per-input accuracy at x_adv
        void: dict[str, dict[str, str]] = {}  # name -> {part: why its terms earn nothing}
        # one torch thread: the models are tiny, and a grading machine is busy with sandboxes
        with num_threads(1), torch.no_grad():
            for i, d in enumerate(spec.defenses):
                seed = hidden.seed + 1000 * i
                clean[d.name] = _accuracy(d, hidden, hidden.x, spec.draws, seed)
                x_adv, why = _read(d, artifacts, hidden, threat, rows)
                void[d.name] = why
                if x_adv is not None:
                    # the same draws as the clean images: x_adv = x gives robust = clean exactly
                    robust[d.name] = _accuracy(d, hidden, x_adv, spec.draws, seed)
                if len(set(why.values())) == 1 and len(why) == len(rows):
                    problems.append(next(iter(why.values())))
                else:
                    problems += [f"{label} part: {reason}" for label, reason in why.items()]

        def part_metrics(mask: np.ndarray, label: str | None) -> dict:
            sel = torch.from_numpy(mask)
            out: dict = {"n": int(sel.sum()), "mean_robust_accuracy": None}
            pooled = []
            for d in spec.defenses:
                c = float(clean[d.name][sel].mean())
                ok = d.name in robust and (label is None and not void[d.name] or
                                           label is not None and label not in void[d.name])
                r = float(robust[d.name][sel].mean()) if ok else None
                out[metric(d.name)] = r
                out[f"{d.name}_clean_accuracy"] = c
                pooled.append(c if r is None else r)
            out["mean_robust_accuracy"] = float(np.mean(pooled))
            return out

        metrics = {label: part_metrics(rows[label], label) for label in rows}
        overall = part_metrics(np.ones(len(hidden.y), dtype=bool), None)
        extra = {label: [Part(f"{label}: the defenses at a glance", 0.0, 0.0,
                              _glance(spec, metrics[label], void, label), label)] for label in rows}
        result = score_parts(config, metrics, [], kind=self.name, overall=overall, extra=extra)
        result.problems = problems
        by_term = {t.name: t.metric for t in config.terms}
        for part in result.parts:
            label, _, term = part.name.partition(": ")
            name = by_term.get(term, "").removesuffix("_robust_accuracy")
            if name in void and label in void[name]:  # say why the defense's terms earn nothing
                part.reason = f"{void[name][label]} ({part.reason})"
        return result

    def summary(self, metrics: dict) -> str:
        from ..scoring import _fmt

        out = [f"{k.removesuffix('_robust_accuracy').replace('_', ' ')} {_fmt(k, v)}"
               for k, v in metrics.items() if k in self.metrics and isinstance(v, float)]
        return "robust accuracy: " + ", ".join(out) if out else "not scored"

    def leaderboard_columns(self) -> list[tuple[str, str, str]]:
        return [(m, m.replace("_", " "), "asc") for m in self.metrics]


KIND = AdaptiveAttack()


def _accuracy(d: MaskedDefense, hidden: _Hidden, images: torch.Tensor, draws: int, seed: int) -> torch.Tensor:
    """Per input, the share of correct answers of defense ``d`` at ``images``: one for a
    deterministic defense, the mean over ``draws`` noise draws (generator seeded ``seed``) for a
    randomized one."""
    defended = d.build(hidden.model, seed=seed)
    lo, hi = hidden.model.input_bounds
    images = images.clamp(lo, hi)  # valid rows may lie atol outside the bounds
    if not d.randomized:
        return (defended.predict(images) == hidden.y).double()
    hits = torch.zeros(len(images), dtype=torch.double)
    for _ in range(draws):
        hits += (defended.predict(images) == hidden.y).double()
    return hits / draws


def _read(d: MaskedDefense, artifacts: dict, hidden: _Hidden, threat, rows: dict):
    """(x_adv with every row that breaks the threat model replaced by its clean input, or None;
    {part: reason} of the parts the file cannot be scored on)."""
    from ..scoring import ArtifactRefused, broken_rows, load_artifact

    x = hidden.x
    path = artifacts.get(d.file, artifacts.get(d.name))
    if path is None:
        why = (f"{d.file} was not produced: the notebook must save your adversarial images for the "
               f"'{d.name}' defense in output_dir (did every cell run without an error?)")
        return None, {label: why for label in rows}
    try:
        x_adv = torch.from_numpy(load_artifact(path, dtype="float32", shape=tuple(x.shape)))
    except ArtifactRefused as err:
        return None, {label: str(err) for label in rows}
    found = threat.violations(x, x_adv)
    whole = [str(v) for v in found if not v.indices]
    if whole:
        why = f"{d.file} breaks the threat model ({threat.describe()}): {'; '.join(whole)}"
        return None, {label: why for label in rows}
    why = {}
    bad = torch.zeros(len(x), dtype=torch.bool)
    for label, mask in rows.items():
        broken = [t for v in found if (t := broken_rows(v, mask, d.file, threat))]
        if broken:
            why[label] = (f"{d.file} breaks the threat model ({threat.describe()}): {'; '.join(broken)}"
                          + _order_hint(found, len(x)))
    for v in found:
        bad[list(v.indices)] = True
    return torch.where(bad.view(-1, *[1] * (x.dim() - 1)), x, x_adv), why


def _order_hint(found, n: int) -> str:
    far = {i for v in found if v.rule == "norm" for i in v.indices}
    if len(far) > n // 2:
        return (" — most rows are far from their inputs: x_adv must keep the row order of the inputs "
                "the notebook was given")
    return ""


def _glance(spec: AdaptiveSpec, m: dict, void: dict, label: str) -> str:
    """One line: every defense's clean accuracy on the part, and at the student's x_adv."""
    from ..scoring import _fmt

    items = []
    for d in spec.defenses:
        at = (f"not scored ({d.file} missing or refused)" if label in void[d.name]
              else _fmt("robust_accuracy", m[metric(d.name)]))
        items.append(f"{d.describe()}: clean {_fmt('clean_accuracy', m[f'{d.name}_clean_accuracy'])} "
                     f"→ {at}")
    draws = any(d.randomized for d in spec.defenses)
    tail = f" (randomized defenses: the mean over {spec.draws} noise draws per image)" if draws else ""
    return "accuracy on the hidden inputs, clean → at your x_adv: " + "; ".join(items) + tail


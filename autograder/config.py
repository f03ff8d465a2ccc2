"""grading.toml: what an assignment's artifact must be and how it is scored.

``load_config(path)`` reads the file with :mod:`tomllib` and returns a :class:`GradingConfig`;
anything missing, misspelt or out of range raises :class:`ConfigError` naming the file, the
table and the key. The file format (see ``assignments/01-whitebox/grading.toml``)::

    [assignment]  id, title, model, dataset, max_score, pass_score, kind ("attack" | "defense" | a unit kind)
    [threat]      norm, eps, bounds, atol          -> maestro.ThreatModel
    [notebook]    file, labels ("model-predictions": hidden labels never reach the sandbox), timeout_s,
                  test_cells ("skip": the grader leaves unrun the released test cells that a
                  submission holds unchanged and nothing else reads, see autograder/testcells.py;
                  "run": every cell runs)
    [artifacts.NAME]  file, dtype, shape ("inputs" or a list of ints)             (attack: *.npy)
                      threat = { norm, eps, param }, targeted = true              (attack, optional)
    [artifacts.NAME]  file, format = "safetensors", dtype, architecture           (defense)
    [defense]     attacks = [{ attack = "PGD", steps = 20, ... }, ...]            (defense only)
    [split]       public_fraction, public_weight, salt   (the public/private split of the hidden set)
    [[score.terms]]  name, metric, points, zero_at, full_at, requires, artifact (optional)

Two kinds of assignment (``[assignment] kind``, default "attack"):

* **attack**: the notebook saves adversarial inputs (``.npy``); the scorer checks them against
  the threat model and measures what they do to ``[assignment] model``. An attack assignment may
  ask for several such arrays, one per ``[artifacts.NAME]`` table, each scored on its own: an
  artifact with its own ``threat = { norm = "l2", eps = 2.5, param = "eps_l2" }`` is checked
  against that threat model instead of ``[threat]`` (bounds and atol come from ``[threat]``;
  ``param`` names the papermill parameter the grader sets to that eps), and one with
  ``targeted = true`` must make the model read each input as the grader's TARGET class (given to
  the notebook as ``targets_path``: a secret random class other than the model's own reading of
  the input). A score term names the artifact it measures with ``artifact = "NAME"`` (default:
  the first); a violation or a missing file costs only that artifact's terms.
* **defense**: the notebook saves the weights of a model (``.safetensors``) whose tensors must fit
  ``architecture`` exactly (a zoo model's name; default: ``[assignment] model``, the undefended
  baseline). The trusted scorer builds that architecture, loads the weights (names, shapes and
  dtype checked first; NaN/inf refused) and attacks the model itself on the hidden set with the
  ``[defense] attacks`` suite (each attack on the points the previous ones left robust; every
  ``x_adv`` validated by the threat model). Metrics: ``clean_accuracy``, ``robust_accuracy`` (the
  worst case over the suite), ``success_rate`` (share of the clean-correct points the suite breaks).

**The other kinds** (text attacks, adaptive attacks, backdoors, membership inference, certified
robustness, the war) are plug-ins, :mod:`autograder.units`: each reads its own table (named after
the kind, e.g. ``[privacy]``), makes its own sandbox inputs from the course secret, scores every
artifact itself and names its own metrics. For them ``[threat]`` is optional unless the kind
perturbs inputs (its norm may be ``"tokens"``), artifacts may also be ``.json`` or integer arrays
(``shape = "any"`` lets the kind check the shape), and ``[defense]`` is optional.

A score term earns ``points · clip((metric − zero_at) / (full_at − zero_at), 0, 1)``: it works
for "higher is better" (full_at > zero_at) and "lower is better" (full_at < zero_at) metrics.
A term with ``requires = "<other term>"`` earns nothing unless that term earned some points.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .oracle import OracleSpec

#: metrics the scorer computes for each part (public / private) of the hidden set
METRICS = {
    "success_rate": "fraction of the examples the model classifies correctly (clean) that x_adv "
    "gets misclassified",
    "robust_accuracy": "fraction of all examples still classified correctly at x_adv",
    "clean_accuracy": "fraction of all examples classified correctly without attack",
    "median_linf": "median L∞ distance of the successful adversarial examples",
    "median_l2": "median L2 distance of the successful adversarial examples",
    "targeted_success_rate": "fraction of the examples the model classifies correctly (clean) that "
    "x_adv gets classified as the grader's target class (targeted artifacts only)",
    "queries_per_example": "queries the grader's oracle counted for the whole notebook run, "
    "divided by the number of hidden examples (black-box units: needs [oracle])",
}
NORMS = ("linf", "l2", "l0", "tokens", "suffix")  # text units: "tokens" (changed tokens), "suffix" (chat)
DTYPES = ("float32", "float64", "float16")
INT_DTYPES = ("int64", "int32", "bool")  # unit kinds only (token ids, masks)
LABEL_MODES = ("model-predictions", "none")
KINDS = ("attack", "defense")
FORMATS = {".npy": "npy", ".safetensors": "safetensors", ".json": "json"}  # .json: unit kinds only
#: attacks a [defense] suite may name (maestro.attacks classes that work on an image ModelWrapper)
SUITE_ATTACKS = ("FGSM", "PGD", "APGD", "SquareAttack", "SimBA", "RandomNoise")


class ConfigError(ValueError):
    """A grading.toml that cannot be used; the message names the file, table and key."""


@dataclass(frozen=True)
class ThreatSpec:
    norm: str
    eps: float
    bounds: tuple[float, float] = (0.0, 1.0)
    atol: float = 1e-6

    def threat_model(self):
        import maestro

        return maestro.ThreatModel(self.norm, self.eps, bounds=self.bounds, atol=self.atol)


@dataclass(frozen=True)
class ArtifactSpec:
    key: str
    file: str
    dtype: str = "float32"
    shape: str | tuple[int, ...] = "inputs"
    format: str = "npy"  # "npy" (an array) or "safetensors" (model weights)
    architecture: str | None = None  # safetensors: the zoo model whose architecture the weights fit
    threat: ThreatSpec | None = None  # attack: this artifact's own threat model (None: [threat])
    eps_param: str | None = None  # attack: the papermill parameter set to ``threat.eps``
    targeted: bool = False  # attack: scored against the grader's target classes

    def expected_shape(self, inputs_shape) -> tuple[int, ...]:
        if self.format != "npy":
            raise ValueError(f"artifact {self.file!r} holds model weights, not an array shaped like the inputs")
        return tuple(inputs_shape) if self.shape == "inputs" else tuple(self.shape)


@dataclass(frozen=True)
class SuiteAttack:
    """One attack of a defense's reference suite: ``maestro.attacks.<attack>(threat, **options)``."""

    label: str
    attack: str
    options: tuple[tuple[str, object], ...] = ()

    def build(self, threat):
        from maestro import attacks

        return getattr(attacks, self.attack)(threat, **dict(self.options))


@dataclass(frozen=True)
class DefenseSpec:
    attacks: tuple[SuiteAttack, ...]

    def suite(self, threat) -> list:
        """``[(label, attack), ...]`` for :func:`maestro.evaluation.evaluate` (fresh objects:
        every attack starts from its own seed, so scoring is deterministic)."""
        return [(a.label, a.build(threat)) for a in self.attacks]


@dataclass(frozen=True)
class SplitSpec:
    public_fraction: float = 0.5
    public_weight: float = 0.5
    salt: str = ""


@dataclass(frozen=True)
class ScoreTerm:
    name: str
    metric: str
    points: float
    zero_at: float
    full_at: float
    requires: str | None = None
    artifact: str | None = None  # attack: the key of the artifact it measures (None: the first)

    @property
    def key(self) -> str:
        """The name of its metric in a part's metrics: ``metric`` for the first artifact,
        ``"<artifact>.<metric>"`` for another one (queries are counted per run, never per artifact)."""
        return self.metric if self.artifact is None else f"{self.artifact}.{self.metric}"

    def fraction(self, value: float) -> float:
        """The share of ``points`` that ``value`` earns, in [0, 1] (NaN earns 0)."""
        if value is None or not math.isfinite(value):
            return 0.0
        return float(np.clip((value - self.zero_at) / (self.full_at - self.zero_at), 0.0, 1.0))


@dataclass(frozen=True)
class NotebookSpec:
    file: str = ""
    labels: str = "model-predictions"
    timeout_s: int = 300
    test_cells: str = "skip"  # "skip": unchanged test cells nothing reads are not run (testcells.py)


@dataclass(frozen=True)
class GradingConfig:
    id: str
    title: str
    model: str
    dataset: str
    threat: ThreatSpec | None  # None only for unit kinds that perturb nothing (e.g. membership)
    artifacts: tuple[ArtifactSpec, ...]
    terms: tuple[ScoreTerm, ...]
    split: SplitSpec = field(default_factory=SplitSpec)
    notebook: NotebookSpec = field(default_factory=NotebookSpec)
    max_score: float = 100.0
    pass_score: float = 0.0
    path: Path | None = None
    kind: str = "attack"
    defense: DefenseSpec | None = None
    oracle: OracleSpec | None = None  # black-box units: the model is reached through an oracle
    unit: object = None  # the other kinds (autograder.units): the spec their table parsed to

    def artifact(self, key: str | None = None) -> ArtifactSpec:
        if key is None:
            return self.artifacts[0]
        for a in self.artifacts:
            if a.key == key or a.file == key:
                return a
        raise KeyError(f"{self.id}: no artifact {key!r}; configured: "
                       f"{', '.join(a.file for a in self.artifacts)}")

    def threat_for(self, spec: ArtifactSpec) -> ThreatSpec:
        """The threat model ``spec`` is checked against: its own, else ``[threat]``."""
        return spec.threat or self.threat

    @property
    def targeted(self) -> bool:
        """Whether an artifact is scored against target classes (the notebook gets ``targets_path``)."""
        return any(a.targeted for a in self.artifacts)

    def metric_prefix(self, spec: ArtifactSpec) -> str:
        """How the metrics of ``spec`` are named in a part's metrics (see :attr:`ScoreTerm.key`)."""
        return "" if spec is self.artifacts[0] else f"{spec.key}."

    def notebook_params(self) -> dict:
        """The papermill parameters of the threat models: ``eps`` and each artifact's ``param``."""
        out = {"eps": self.threat.eps if self.threat else None}
        out.update({a.eps_param: a.threat.eps for a in self.artifacts if a.eps_param})
        return out


# -- loading -----------------------------------------------------------------------------
class _Table:
    """A TOML table with typed getters whose errors say where the problem is."""

    def __init__(self, where: str, data, name: str):
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: [{name}] must be a table, got {type(data).__name__}")
        self.where, self.data, self.name, self.used = where, data, name, set()

    def _err(self, key: str, msg: str) -> ConfigError:
        return ConfigError(f"{self.where}: [{self.name}] {key}: {msg}")

    def get(self, key, kind, default=..., *, check=None, what=""):
        self.used.add(key)
        if key not in self.data:
            if default is ...:
                raise self._err(key, f"missing (expected {what or kind.__name__})")
            return default
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
            raise self._err(key, f"expected {what or kind.__name__}, got {value!r}")
        if kind is float and not math.isfinite(value):
            raise self._err(key, f"must be finite, got {value!r}")
        if check is not None:
            problem = check(value)
            if problem:
                raise self._err(key, problem)
        return value

    def done(self) -> None:
        extra = sorted(set(self.data) - self.used)
        if extra:
            raise ConfigError(f"{self.where}: [{self.name}] unknown key(s) {', '.join(extra)} "
                              f"(known: {', '.join(sorted(self.used))})")


def _one_of(options):
    return lambda v: None if v in options else f"must be one of {', '.join(map(repr, options))}, got {v!r}"


def load_config(path) -> GradingConfig:
    """Read and validate a grading.toml; raise :class:`ConfigError` on any problem."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such grading config") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    cfg = parse_config(raw, where=str(path))
    object.__setattr__(cfg, "path", path)
    return cfg


def parse_config(raw: dict, where: str = "grading.toml") -> GradingConfig:
    """Validate an already-parsed TOML document (see :func:`load_config`)."""
    from . import units

    kinds = KINDS + tuple(units.KINDS)
    kind_raw = raw.get("assignment", {}).get("kind", "attack") if isinstance(raw.get("assignment"), dict) else "attack"
    if kind_raw not in kinds:  # before the unknown-table check: a misspelt kind explains it
        raise ConfigError(f"{where}: [assignment] kind: {_one_of(kinds)(kind_raw)}")
    unit = units.get(kind_raw) if units.is_unit_kind(kind_raw) else None
    top = _Table(where, raw, "top level")
    for key in ("assignment", "threat", "artifacts", "score", "split", "notebook", "defense", "oracle"):
        top.used.add(key)
    if unit is not None and unit.table:
        top.used.add(unit.table)
    top.done()

    a = _Table(where, raw.get("assignment"), "assignment")
    ident = a.get("id", str, check=lambda v: None if v.strip() else "must not be empty")
    title = a.get("title", str, "")
    model = a.get("model", str)
    dataset = a.get("dataset", str)
    max_score = a.get("max_score", float, 100.0, check=lambda v: None if v > 0 else "must be > 0")
    pass_score = a.get("pass_score", float, 0.0,
                       check=lambda v: None if 0 <= v <= max_score else f"must lie in [0, {max_score:g}]")
    kind = a.get("kind", str, "attack", check=_one_of(kinds))
    a.done()

    threat = None
    if unit is None or unit.needs_threat or raw.get("threat") is not None:
        threat = _threat(where, raw.get("threat"), tokens=unit is not None)

    arts_raw = raw.get("artifacts")

    if not isinstance(arts_raw, dict) or not arts_raw:
        raise ConfigError(f"{where}: [artifacts.NAME] missing: name at least one artifact, e.g. "
                          "[artifacts.x_adv] file = \"x_adv.npy\"")
    artifacts = []
    for key, body in arts_raw.items():
        artifacts.append(_artifact(where, key, body, kind, model, unit is not None, threat))
    params = [a.eps_param for a in artifacts if a.eps_param]
    if len(set(params)) != len(params):
        raise ConfigError(f"{where}: [artifacts] threat param: each artifact needs its own parameter name, "
                          f"got {params}")
    first = artifacts[0]
    want = "npy" if kind == "attack" else "safetensors"
    if unit is None and first.format != want:
        raise ConfigError(f"{where}: [artifacts.{first.key}] file: a {kind} assignment grades "
                          f"a .{want} file first, got {first.file!r}")
    defense = _defense(where, raw.get("defense"), kind, threat, optional=unit is not None)

    sp = _Table(where, raw.get("split", {}), "split")
    frac = sp.get("public_fraction", float, 0.5,
                  check=lambda v: None if 0 < v < 1 else "must lie strictly between 0 and 1")
    weight = sp.get("public_weight", float, frac, check=lambda v: None if 0 <= v <= 1 else "must lie in [0, 1]")
    salt = sp.get("salt", str, ident)
    sp.done()

    nb = _Table(where, raw.get("notebook", {}), "notebook")
    notebook = NotebookSpec(
        nb.get("file", str, ""),
        nb.get("labels", str, "model-predictions", check=_one_of(LABEL_MODES)),
        nb.get("timeout_s", int, 300, check=lambda v: None if v > 0 else "must be > 0"),
        nb.get("test_cells", str, "skip", check=_one_of(("skip", "run"))),
    )
    nb.done()

    sc = _Table(where, raw.get("score"), "score")
    terms_raw = sc.get("terms", list, what="an array of tables [[score.terms]]")
    sc.done()
    if not terms_raw:
        raise ConfigError(f"{where}: [[score.terms]] is empty: give at least one term")
    terms = []
    for i, body in enumerate(terms_raw):
        s = _Table(where, body, f"score.terms #{i + 1}")
        term = ScoreTerm(
            s.get("name", str),
            s.get("metric", str, check=_one_of(tuple(unit.metrics if unit is not None else METRICS))),
            s.get("points", float, check=lambda v: None if v > 0 else "must be > 0"),
            s.get("zero_at", float),
            s.get("full_at", float),
            s.get("requires", str, None),
            s.get("artifact", str, None),
        )
        s.done()
        if term.zero_at == term.full_at:
            raise ConfigError(f"{where}: [score.terms #{i + 1}] zero_at and full_at must differ "
                              f"(both {term.zero_at:g})")
        terms.append(term)
    terms = [_term_artifact(where, i, t, kind, unit is not None, artifacts) for i, t in enumerate(terms)]
    names = [t.name for t in terms]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: [[score.terms]] names must be unique, got {names}")
    for term in terms:
        if term.requires is not None and (term.requires not in names or term.requires == term.name):
            raise ConfigError(f"{where}: [score.terms {term.name!r}] requires {term.requires!r}: "
                              f"must name another term ({', '.join(names)})")
    oracle = _oracle(where, raw.get("oracle"), kind)
    if oracle is None and any(t.metric == "queries_per_example" for t in terms):
        raise ConfigError(f"{where}: [[score.terms]] metric queries_per_example needs an [oracle] table "
                          "(the oracle counts the queries)")
    total = sum(t.points for t in terms)
    if not math.isclose(total, max_score, rel_tol=1e-9):
        raise ConfigError(f"{where}: the [[score.terms]] points add up to {total:g}, but "
                          f"[assignment] max_score is {max_score:g}")
    config = GradingConfig(ident, title, model, dataset, threat, tuple(artifacts), tuple(terms),
                           SplitSpec(frac, weight, salt), notebook, max_score, pass_score,
                           kind=kind, defense=defense, oracle=oracle)
    if unit is not None:
        config = dataclasses.replace(config, unit=unit.parse(where, raw.get(unit.table) if unit.table else None,
                                                             config))
    return config


def _term_artifact(where: str, i: int, term: ScoreTerm, kind: str, unit: bool, artifacts) -> ScoreTerm:
    """Check ``artifact =`` of a score term (attack assignments only) and store its key, None
    for the first artifact."""
    here = f"{where}: [score.terms #{i + 1}]"
    if term.artifact is None:
        spec = artifacts[0]
    elif unit or kind != "attack":
        raise ConfigError(f"{here} artifact: only attack assignments score several artifacts "
                          "(a unit kind names its metrics itself)")
    else:
        found = [a for a in artifacts if term.artifact in (a.key, a.file)]
        if not found:
            raise ConfigError(f"{here} artifact: {term.artifact!r} is not one of "
                              f"{', '.join(a.key for a in artifacts)}")
        spec = found[0]
    if term.metric == "targeted_success_rate" and not spec.targeted:
        raise ConfigError(f"{here} metric targeted_success_rate: artifact {spec.key!r} is not "
                          "targeted (set targeted = true in its [artifacts] table)")
    if term.metric == "queries_per_example" and spec is not artifacts[0]:
        raise ConfigError(f"{here} artifact: queries are counted per run, not per artifact; leave "
                          "artifact out of the queries_per_example term")
    return dataclasses.replace(term, artifact=None if spec is artifacts[0] else spec.key)


def _threat(where: str, raw, *, tokens: bool) -> ThreatSpec:
    if raw is None:
        raise ConfigError(f"{where}: [threat] missing: give norm and eps, e.g. norm = \"linf\", eps = 0.1")
    t = _Table(where, raw, "threat")
    norm = t.get("norm", str, check=_one_of(NORMS if tokens else NORMS[:3]))
    eps = t.get("eps", float, check=lambda v: None if v >= 0 else "must be ≥ 0")
    bounds = t.get("bounds", list, [0.0, 1.0], what="[low, high]")
    if (len(bounds) != 2 or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
            or not bounds[0] < bounds[1]):
        raise ConfigError(f"{where}: [threat] bounds: expected [low, high] with low < high, got {bounds!r}")
    atol = t.get("atol", float, 1e-6, check=lambda v: None if 0 <= v < 1 else "must lie in [0, 1)")
    t.done()
    return ThreatSpec(norm, eps, (float(bounds[0]), float(bounds[1])), atol)


def _oracle(where: str, raw, kind: str) -> OracleSpec | None:
    """[oracle] access, queries_per_example, private_model (see autograder.oracle.OracleSpec)."""
    if raw is None:
        return None
    if kind != "attack":
        raise ConfigError(f"{where}: [oracle] is only for attack assignments")
    o = _Table(where, raw, "oracle")
    spec = OracleSpec(
        o.get("access", str, "scores", check=_one_of(("labels", "scores", "white-box"))),
        o.get("queries_per_example", int, 1000, check=lambda v: None if v >= 1 else "must be ≥ 1"),
        o.get("private_model", bool, True),
    )
    o.done()
    return spec


def _artifact(where: str, key: str, body, kind: str, model: str, unit: bool = False,
              main: ThreatSpec | None = None) -> ArtifactSpec:
    s = _Table(where, body, f"artifacts.{key}")
    if not key.isidentifier():
        raise ConfigError(f"{where}: [artifacts.{key}] the name must be a plain identifier "
                          "(letters, digits, _), e.g. x_adv_l2")
    exts = tuple(FORMATS) if unit else (".npy",) if kind == "attack" else tuple(FORMATS)[:2]

    def plain(v):
        if "/" in v or "\\" in v or v.startswith(".") or not v.endswith(exts):
            return f"must be a plain {' or '.join('*' + e for e in exts)} file name"
        return None

    file = s.get("file", str, check=plain)
    fmt = FORMATS[next(e for e in exts if file.endswith(e))]
    s.get("format", str, fmt, check=lambda v: None if v == fmt else
          f"{file!r} is a .{fmt} file; format must be {fmt!r} (or left out), got {v!r}")
    if fmt == "json":
        s.done()
        return ArtifactSpec(key, file, "json", "any", fmt)
    dtype = s.get("dtype", str, "float32", check=_one_of(DTYPES + (INT_DTYPES if unit else ())))
    if fmt == "npy":
        shapes = ("inputs", "any") if unit else ("inputs",)
        shape = s.get("shape", (str, list), "inputs", what='"inputs" or a list of ints')
        if isinstance(shape, str) and shape not in shapes or isinstance(shape, list) and not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise ConfigError(f"{where}: [artifacts.{key}] shape: expected {' or '.join(map(repr, shapes))} "
                              f"or a list of non-negative ints, got {shape!r}")
        own, param, targeted = None, None, False
        if kind == "attack" and not unit:
            own, param = _own_threat(where, key, s.get("threat", dict, None, what="a table { norm, eps }"), main)
            targeted = s.get("targeted", bool, False)
        s.done()
        return ArtifactSpec(key, file, dtype, shape if isinstance(shape, str) else tuple(shape),
                            threat=own, eps_param=param, targeted=targeted)
    arch = s.get("architecture", str, model, check=_image_zoo_model)
    s.done()
    return ArtifactSpec(key, file, dtype, "inputs", fmt, arch)


def _own_threat(where: str, key: str, raw, main: ThreatSpec | None):
    """``threat = { norm, eps, param }`` of an attack artifact: (ThreatSpec, param) or (None, None)."""
    if raw is None:
        return None, None
    t = _Table(where, raw, f"artifacts.{key}.threat")
    norm = t.get("norm", str, check=_one_of(NORMS[:2]))
    eps = t.get("eps", float, check=lambda v: None if v >= 0 else "must be ≥ 0")
    param = t.get("param", str, None, check=lambda v: None if v.isidentifier() and v not in (
        "eps", "inputs_path", "labels_path", "targets_path", "output_dir", "quick")
        else "must be a new papermill parameter name, e.g. eps_l2")
    t.done()
    if main is None:
        raise ConfigError(f"{where}: [artifacts.{key}] threat: needs a [threat] table (bounds and atol come from it)")
    return dataclasses.replace(main, norm=norm, eps=eps), param


def _image_zoo_model(name: str) -> str | None:
    from maestro.models.zoo import ZOO

    if name not in ZOO:
        return f"must name a model of the zoo ({', '.join(ZOO)}), got {name!r}"
    if ZOO[name].recipe != "image":
        return f"{name!r} is not an image model; a defense's weights must fit an image architecture"
    return None


def _default_label(attack: str, options: dict) -> str:
    name = {"SquareAttack": "Square"}.get(attack, attack)
    n = options.get("steps", options.get("max_queries"))
    label = f"{name}-{n}" if n is not None else name
    if options.get("loss") not in (None, "ce"):
        label += f" ({options['loss']})"
    if options.get("restarts", 1) != 1:
        label += f" ×{options['restarts']}"
    return label


def _defense(where: str, raw, kind: str, threat: ThreatSpec | None, optional: bool = False) -> DefenseSpec | None:
    if optional and raw is None:
        return None
    if optional and threat is None:
        raise ConfigError(f"{where}: [defense] needs a [threat] table (the suite attacks under it)")
    if kind == "attack":
        if raw is not None:
            raise ConfigError(f"{where}: [defense] is only for [assignment] kind = \"defense\"")
        return None
    if raw is None:
        raise ConfigError(f"{where}: [defense] missing: a defense assignment names its reference "
                          "attack suite, e.g. attacks = [{ attack = \"PGD\", steps = 20 }]")
    d = _Table(where, raw, "defense")
    entries = d.get("attacks", list, what="an array of tables { attack = \"PGD\", ... }")
    d.done()
    if not entries:
        raise ConfigError(f"{where}: [defense] attacks is empty: give at least one attack")
    if threat.norm not in ("linf", "l2"):
        raise ConfigError(f"{where}: [threat] norm: a defense is attacked under linf or l2, got {threat.norm!r}")
    tm = threat.threat_model()
    suite = []
    for i, body in enumerate(entries):
        name = f"defense.attacks #{i + 1}"
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: [{name}] must be a table {{ attack = \"PGD\", ... }}, got {body!r}")
        options = dict(body)
        attack = options.pop("attack", None)
        if attack not in SUITE_ATTACKS:
            raise ConfigError(f"{where}: [{name}] attack: must be one of {', '.join(SUITE_ATTACKS)}, "
                              f"got {attack!r}")
        label = options.pop("label", None)
        if label is not None and (not isinstance(label, str) or not label.strip()):
            raise ConfigError(f"{where}: [{name}] label: expected a non-empty string, got {label!r}")
        if "targeted" in options:
            raise ConfigError(f"{where}: [{name}] targeted: the suite's attacks are untargeted")
        spec = SuiteAttack(label or _default_label(attack, options), attack, tuple(sorted(options.items())))
        try:
            spec.build(tm)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{where}: [{name}] {attack}: {err}") from None
        suite.append(spec)
    labels = [a.label for a in suite]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"{where}: [defense] attacks: labels must be unique, got {labels} "
                          "(set label = \"...\" on the repeated attack)")
    return DefenseSpec(tuple(suite))

"""The attack-vs-defense war (``[assignment] kind = "war"``): every student hands in a defense AND
an attack, and every attack then meets every defense.

One run of the notebook leaves two artifacts:

* the **defense**: the weights (``.safetensors``) of a model of the zoo architecture named by the
  artifact (``architecture``, e.g. ``mlp-digits``), adversarially trained by the student;
* the **attack**: adversarial versions ``x_adv`` (``.npy``, shaped like the hidden inputs, same
  row order) of the hidden images the grader hands the notebook, within ``[threat]`` (checked by
  :class:`maestro.ThreatModel`). The notebook sees neither the hidden labels nor the other
  students' defenses: it crafts ``x_adv`` on surrogates it has (transfer attacks).

**Per-submission score** (:meth:`WarKind.score`, when the submission is graded), against fixed
reference opponents, per part (public / private) of the hidden set:

* ``clean_accuracy`` and ``robust_accuracy`` of the defense, the latter the worst case over the
  grader's white-box ``[defense]`` suite (as for a defense unit, :mod:`autograder.scoring`);
* ``undefended_fool_rate`` / ``robust_fool_rate`` of the attack: the share of the part's hidden
  images that the reference defenses misclassify at ``x_adv`` (true labels) — the zoo model
  ``[war] undefended`` and a PGD-adversarially-trained model of the same architecture that the
  grader trains itself with the ``[war.robust]`` recipe and a seed derived from the course secret
  (nobody can rebuild its exact weights; cached under ``COURSE/.maestro/war-models``).

The feedback also shows (0 points) how the defense fares against the grader's reference attacks:
PGD on each reference model, with that model's own predictions as labels — the rules the
students play by.

**The tournament** (:func:`tournament_matrix`, for ``maestro leaderboard``): the kind sets
``keep_artifacts``, so the driver keeps each student's latest valid artifacts under
``autograder.driver.kept_artifacts(course, assignment) / <student>/``; the matrix holds, for every
attacker (row) and defender (column), the share of the part's hidden images that the defender
misclassifies at the attacker's ``x_adv`` — the same number as the fool rates above, in the form
:func:`autograder.leaderboard.tournament` scores (mean over opponents). An error rate rather than
"the share of correctly classified images that flip": a defense that classifies nothing correctly
must not look unbreakable.

Nothing per example derived from the hidden labels leaves this module: reasons hold aggregate
rates and, for threat-model violations, row numbers of the student's own ``x_adv``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import Kind, Prepared

__all__ = ["KIND", "Reference", "RobustRecipe", "WarKind", "WarSpec", "WarState", "robust_seed",
           "kept_stamp", "tournament_matrix"]

#: the prefix of the reference players' names in a tournament matrix (no student id has a "/")
REFERENCE = "reference/"


@dataclass(frozen=True)
class RobustRecipe:
    """``[war.robust]``: PGD adversarial training (:func:`maestro.defenses.adversarial_training`)
    of the defense architecture on the public train split, at ``[threat]`` eps."""

    epochs: int = 30
    steps: int = 10
    lr: float = 2e-3
    batch_size: int = 64


@dataclass(frozen=True)
class WarSpec:
    """What ``[war]`` and the two artifacts parse to."""

    defense_file: str  # the .safetensors artifact
    attack_file: str  # the .npy artifact
    architecture: str  # the zoo model whose architecture the defense weights fit
    undefended: str  # reference defender 1: a zoo model
    robust: RobustRecipe  # reference defender 2: trained by the grader
    attack_steps: int = 40  # the reference attacks: PGD-<attack_steps> on each reference model


@dataclass
class Reference:
    """A reference player: a defense (white-box wrapper) and its attack on the hidden inputs
    (PGD on its own model, its own predictions as labels)."""

    name: str
    title: str
    model: object  # maestro ModelWrapper
    x_adv: torch.Tensor


@dataclass
class WarState:
    """The scorer's hidden state (never in a sandbox): the hidden inputs and labels, the public
    mask, and the reference players."""

    x: torch.Tensor
    y: torch.Tensor
    public: np.ndarray
    references: list[Reference]

    def __repr__(self) -> str:  # never print the labels
        return f"WarState(n={len(self.y)}, public={int(self.public.sum())}, references={[r.name for r in self.references]})"


# -- grading.toml -----------------------------------------------------------------------------
def _parse_war(where: str, raw, config) -> WarSpec:
    from ..config import ConfigError, _image_zoo_model, _Table

    if raw is None:
        raise ConfigError(f"{where}: [war] missing: name the reference opponents, e.g. "
                          "undefended = \"mlp-digits\" and [war.robust] epochs = 30")
    if config.threat is None or config.threat.norm not in ("linf", "l2"):
        raise ConfigError(f"{where}: [threat] norm: a war is fought under linf or l2, got "
                          f"{config.threat.norm if config.threat else None!r}")
    if config.defense is None:
        raise ConfigError(f"{where}: [defense] missing: the white-box suite that attacks each "
                          "student's defense, e.g. attacks = [{ attack = \"PGD\", steps = 20 }]")
    weights = [a for a in config.artifacts if a.format == "safetensors"]
    arrays = [a for a in config.artifacts if a.format == "npy"]
    if len(weights) != 1 or len(arrays) != 1 or len(config.artifacts) != 2:
        raise ConfigError(f"{where}: [artifacts]: a war takes exactly two artifacts, the defense's "
                          "weights (*.safetensors) and the attack's x_adv (*.npy); got "
                          f"{', '.join(a.file for a in config.artifacts)}")
    attack = arrays[0]
    if attack.shape != "inputs" or attack.dtype not in ("float32", "float64"):
        raise ConfigError(f"{where}: [artifacts.{attack.key}]: the attack's x_adv must be shaped like "
                          "the inputs (shape = \"inputs\") with a float32 or float64 dtype")

    t = _Table(where, raw, "war")

    def zoo(name):
        problem = _image_zoo_model(name)
        if problem:
            return problem
        from maestro.models.zoo import ZOO

        if ZOO[name].dataset != config.dataset:
            return f"{name!r} reads {ZOO[name].dataset!r}, not the assignment's {config.dataset!r}"
        return None

    undefended = t.get("undefended", str, config.model, check=zoo)
    steps = t.get("attack_steps", int, 40, check=lambda v: None if v >= 1 else "must be ≥ 1")
    robust_raw = t.get("robust", dict, {}, what="a table [war.robust]")
    t.done()
    r = _Table(where, robust_raw, "war.robust")
    robust = RobustRecipe(
        r.get("epochs", int, 30, check=lambda v: None if 1 <= v <= 500 else "must lie in [1, 500]"),
        r.get("steps", int, 10, check=lambda v: None if 1 <= v <= 100 else "must lie in [1, 100]"),
        r.get("lr", float, 2e-3, check=lambda v: None if 0 < v < 1 else "must lie in (0, 1)"),
        r.get("batch_size", int, 64, check=lambda v: None if v >= 1 else "must be ≥ 1"),
    )
    r.done()
    return WarSpec(weights[0].file, attack.file, weights[0].architecture, undefended, robust, steps)


# -- the reference opponents ------------------------------------------------------------------
def robust_seed(secret: str | bytes, assignment: str) -> int:
    """The reference robust model's 31-bit training seed, from the course secret."""
    from maestro.datasets.splits import secret_seed

    return secret_seed(secret, assignment, domain="maestro-war-robust", bits=31)


def _course_of(config) -> Path | None:
    """The course folder when ``config`` was read from ``COURSE/source/<id>/grading.toml``."""
    path = getattr(config, "path", None)
    if path is None or path.parent.parent.name != "source":
        return None
    course = path.parents[2]
    return course if (course / ".maestro" / "secret").is_file() else None


def _cache_dir(course) -> Path | None:
    return Path(course) / ".maestro" / "war-models" if course is not None else None


def _robust_module(config, secret, cache: Path | None, home=None):
    """The grader's adversarially trained reference (built once per course and recipe; a few
    seconds of CPU), as a torch module in eval mode."""
    import maestro
    from maestro.defenses import adversarial_training
    from maestro.models.archs import build_arch
    from maestro.models.train import num_threads

    from ..scoring import load_weights

    spec: WarSpec = config.unit
    meta = maestro.models.info(spec.architecture, home=home)
    seed = robust_seed(secret, config.id)
    t = config.threat
    recipe = {"recipe": spec.robust.__dict__, "arch": meta["arch"], "config": meta["config"],
              "dataset": config.dataset, "threat": [t.norm, t.eps, list(t.bounds)], "seed": seed,
              "torch": torch.__version__.split("+")[0]}
    tag = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    path = cache / f"{config.id}-robust-{tag}.safetensors" if cache is not None else None
    if path is not None and path.is_file():
        return load_weights(path, arch=meta["arch"], config=meta["config"])
    train = maestro.datasets.load(config.dataset, split="train")
    with num_threads(1), torch.random.fork_rng():
        torch.manual_seed(seed)
        module = build_arch(meta["arch"], meta["config"])
        adversarial_training(module, train, threat=t.threat_model(), epochs=spec.robust.epochs,
                             steps=spec.robust.steps, lr=spec.robust.lr, batch_size=spec.robust.batch_size,
                             seed=seed, val=train.take(32), eval_steps=1, progress=False)
    module.eval()
    if path is not None:
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, str(tmp))
        os.replace(tmp, path)
    return module


def _wrap(module, meta: dict, name: str):
    import maestro

    return maestro.models.wrap(module.eval(), num_classes=meta["num_classes"],
                               input_shape=meta.get("input_shape"),
                               input_bounds=tuple(meta.get("input_bounds") or (0.0, 1.0)), name=name)


def _references(config, secret, x: torch.Tensor, home, cache) -> list[Reference]:
    import maestro
    from maestro.defenses.training import perturb
    from maestro.models.train import num_threads

    spec: WarSpec = config.unit
    threat = config.threat.threat_model()
    undefended = maestro.models.load(spec.undefended, home=home)
    meta = maestro.models.info(spec.architecture, home=home)
    robust = _wrap(_robust_module(config, secret, cache, home), meta, "robust reference")
    refs = []
    for name, title, model in (("undefended", f"the undefended {spec.undefended}", undefended),
                               ("robust", f"the grader's PGD-trained {spec.architecture}", robust)):
        with num_threads(1):
            own = model.predict(x)  # the rules of the war: no labels, the model's own answers
            # every step on every image (no early stop: a minimal perturbation transfers badly)
            x_adv = perturb(model.model, x, own, threat, steps=spec.attack_steps,
                            step_size=2.5 * threat.eps / spec.attack_steps, random_start=False)
        threat.check(x, x_adv)
        refs.append(Reference(name, title, model, x_adv.detach().to(x.dtype)))
    return refs


# -- loading a submission's artifacts -----------------------------------------------------------
def _load_defense(config, path, home=None):
    """(wrapper, "") or (None, reason) for the defense's weights at ``path``."""
    import maestro

    from ..scoring import ArtifactRefused, load_weights

    spec: WarSpec = config.unit
    if path is None:
        return None, (f"{spec.defense_file} was not produced: the notebook must save your defense's "
                      "weights in output_dir (did every cell run without an error?)")
    meta = maestro.models.info(spec.architecture, home=home)
    try:
        module = load_weights(path, arch=meta["arch"], config=meta["config"],
                              dtype=config.artifact(spec.defense_file).dtype,
                              label=f"{spec.architecture} ({meta['arch']})")
    except ArtifactRefused as err:
        return None, str(err)
    return _wrap(module, meta, "defense"), ""


def _finite_logits(model, x, file: str) -> str:
    with torch.no_grad():
        ok = bool(torch.isfinite(model.logits(x)).all())
    return "" if ok else (f"{file}: the model outputs NaN or infinite logits on the hidden inputs; "
                          "the weights cannot be graded")


def _load_attack(config, path, x):
    """(x_adv tensor, "") or (None, reason) for the attack's array at ``path`` (shape and dtype
    checked; the threat model is checked per part by the caller)."""
    from ..scoring import ArtifactRefused, load_artifact

    spec: WarSpec = config.unit
    if path is None:
        return None, (f"{spec.attack_file} was not produced: the notebook must save your attack's "
                      "x_adv in output_dir (did every cell run without an error?)")
    art = config.artifact(spec.attack_file)
    try:
        return torch.from_numpy(load_artifact(path, dtype=art.dtype, shape=art.expected_shape(x.shape))), ""
    except ArtifactRefused as err:
        return None, str(err)


def _violations(config, x, x_adv, rows: np.ndarray) -> str:
    """Why ``x_adv`` breaks the threat model on the rows ``rows`` ("" when it does not)."""
    from ..scoring import broken_rows

    spec: WarSpec = config.unit
    threat = config.threat.threat_model()
    found = threat.violations(x.to(x_adv.dtype), x_adv)
    whole = [str(v) for v in found if not v.indices]
    broken = [t for v in found if (t := broken_rows(v, rows, spec.attack_file, threat))]
    if not whole and not broken:
        return ""
    why = "; ".join(whole + broken)
    if sum(len(v.indices) for v in found if v.rule == "norm") > len(x) // 2:
        why += (" — most rows are far from their inputs: x_adv must keep the row order of the "
                "inputs the notebook was given")
    return f"{spec.attack_file} breaks the threat model ({threat.describe()}): {why}"


def _error_rate(model, x_adv, y) -> float:
    """Share of ``x_adv`` that ``model`` misclassifies (labels ``y``)."""
    if not len(y):
        return float("nan")
    with torch.no_grad():
        return float((model.predict(x_adv).cpu() != y).float().mean())


# -- the kind -----------------------------------------------------------------------------------
class WarKind(Kind):
    name = "war"
    table = "war"
    metrics = {
        "clean_accuracy": "your defense: share of the part's hidden images it classifies correctly",
        "robust_accuracy": "your defense: share of the part's hidden images it still classifies "
        "correctly after every attack of the grader's white-box suite ([defense])",
        "undefended_fool_rate": "your attack: share of the part's hidden images that the undefended "
        "reference model ([war] undefended) misclassifies at your x_adv",
        "robust_fool_rate": "your attack: share of the part's hidden images that the grader's "
        "adversarially trained reference model (its seed comes from the course secret) "
        "misclassifies at your x_adv",
    }
    needs_threat = True
    keep_artifacts = True

    def parse(self, where, raw, config):
        return _parse_war(where, raw, config)

    def prepare(self, config, secret, home=None) -> Prepared:
        return _prepare(config, secret, home, _cache_dir(_course_of(config)))

    def hidden_labels(self, prepared):
        return prepared.state.y.numpy()

    def score(self, config, artifacts, prepared, *, queries=None):
        from maestro.evaluation import evaluate
        from maestro.models.train import num_threads

        from ..scoring import Part, suite_metrics, suite_part, score_parts

        spec: WarSpec = config.unit
        st: WarState = prepared.state
        x, y = st.x, st.y
        threat = config.threat.threat_model()
        rows = {"public": st.public, "private": ~st.public}
        problems: list[str] = []

        defense, why_defense = _load_defense(config, artifacts.get(spec.defense_file))
        if defense is not None:
            why_defense = _finite_logits(defense, x.float(), spec.defense_file)
            defense = None if why_defense else defense
        if why_defense:
            problems.append(f"defense: {why_defense}")
        x_adv, why_attack = _load_attack(config, artifacts.get(spec.attack_file), x)
        if why_attack:
            problems.append(f"attack: {why_attack}")

        report = None
        if defense is not None:
            # one torch thread: the models are tiny and the grading machine is busy with sandboxes
            with num_threads(1):
                report = evaluate(defense, (x.float(), y), threat=threat,
                                  attacks=config.defense.suite(threat), progress=False)

        metrics: dict[str, dict] = {}
        extra: dict[str, list] = {}
        reasons: dict[str, dict[str, str]] = {}  # part -> metric -> why it is missing
        for label in ("public", "private"):
            mask = rows[label]
            m: dict = {"n": int(mask.sum())}
            why: dict[str, str] = {}
            extra[label] = []
            if report is not None:
                suite = suite_metrics(report, x.float(), mask)
                m["clean_accuracy"], m["robust_accuracy"] = suite["clean_accuracy"], suite["robust_accuracy"]
                extra[label].append(suite_part(report, mask, label, label))
                idx = torch.from_numpy(np.flatnonzero(mask))
                against = ", ".join(f"PGD-{spec.attack_steps} on {r.title} "
                                    f"{100 * (1 - _error_rate(defense, r.x_adv[idx].float(), y[idx])):.1f}%"
                                    for r in st.references)
                extra[label].append(Part(f"{label}: your defense against the reference attacks", 0.0, 0.0,
                                         "accuracy at the grader's transfer attacks (each crafted on a "
                                         f"reference model, without labels): {against}", label))
            else:
                why["clean_accuracy"] = why["robust_accuracy"] = why_defense
            broken = _violations(config, x, x_adv, mask) if x_adv is not None else why_attack
            if x_adv is not None and broken:
                problems.append(f"{label} part: {broken}")
            if not broken:
                idx = torch.from_numpy(np.flatnonzero(mask))
                xa = x_adv[idx].to(x.dtype)
                for r in st.references:
                    m[f"{r.name}_fool_rate"] = _error_rate(r.model, xa, y[idx])
            else:
                why["undefended_fool_rate"] = why["robust_fool_rate"] = broken
            metrics[label] = m
            reasons[label] = why

        # the whole hidden set: what is valid on it (None when nothing is)
        overall: dict = {}
        everything = np.ones(len(y), dtype=bool)
        if report is not None:
            suite = suite_metrics(report, x.float(), everything)
            overall.update(clean_accuracy=suite["clean_accuracy"], robust_accuracy=suite["robust_accuracy"])
        if x_adv is not None and not _violations(config, x, x_adv, everything):
            overall.update({f"{r.name}_fool_rate": _error_rate(r.model, x_adv.to(x.dtype), y)
                            for r in st.references})
        overall = {"n": len(y), **overall} if overall else None
        result = score_parts(config, metrics, problems, kind=self.name, overall=overall, extra=extra)
        by_name = {t.name: t for t in config.terms}
        for part in result.parts:
            label, _, term = part.name.partition(": ")
            if term in by_name and by_name[term].metric in reasons.get(label, {}):
                part.reason = reasons[label][by_name[term].metric]
        return result


def _prepare(config, secret, home, cache) -> Prepared:
    from ..scoring import HiddenData

    hidden = HiddenData.load(config, secret)
    x = hidden.x.to(torch.float32)
    refs = _references(config, secret, x, home, cache)
    return Prepared(inputs={"inputs.npy": x.numpy()}, params={"inputs_path": "inputs.npy"},
                    state=WarState(x, hidden.y, hidden.public, refs))


KIND = WarKind()


# -- the tournament -------------------------------------------------------------------------------
def kept_stamp(folder: Path) -> tuple:
    """What identifies one player's kept artifacts: the folder and its files (the driver replaces
    a player's folder whole, by a rename; a file changed by hand changes its own stat)."""
    def stat(path):
        st = path.stat()
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    try:
        return (stat(folder), *sorted((f.name, stat(Path(f.path))) for f in os.scandir(folder)))
    except (FileNotFoundError, NotADirectoryError):
        return ()


def tournament_matrix(course, config, secret, *, part: str = "public", references: bool = False,
                      home=None, prepared: Prepared | None = None, memo: dict | None = None) -> dict:
    """Every kept attack against every kept defense of ``config``'s assignment in ``course``.

    Reads ``autograder.driver.kept_artifacts(course, config.id) / <student>/`` (each student's
    latest valid artifacts, kept by the driver) with the safe loaders, checks every ``x_adv``
    against the threat model, and measures each defense on each attack with the hidden labels.

    ``part``: "public" (before the deadline), "private" (after it) or "all" hidden images.
    ``references``: add the two reference players (names starting with ``reference/``): the
    reference defenses, each with its PGD attack — a board with few students still has opponents.
    ``prepared``: this course's :meth:`WarKind.prepare` (made here when None; pass it to build
    the public and the private matrix from one). ``memo``: a dict kept from call to call (a live
    board's): each player's checked artifacts and each played cell are kept under the players'
    :func:`kept_stamp`, so after one new player a call loads that one and plays only its row
    and column (O(N) cells, not O(N²)); what no longer matches is dropped from it.

    Returns what :func:`autograder.leaderboard.tournament` takes: ``{"attackers": [ids],
    "defenders": [ids], "cells": [[share of the part's images defender j misclassifies at
    attacker i's x_adv, or None]]}`` (the same players in the same order on both axes; None where
    the attack or the defense was refused), plus ``"part"``, ``"n"`` (images per cell) and
    ``"problems"`` ({student: [reasons]}, for the instructor: which artifacts could not play).
    """
    from ..driver import kept_artifacts

    if part not in ("public", "private", "all"):
        raise ValueError(f"part must be 'public', 'private' or 'all', got {part!r}")
    spec: WarSpec = config.unit
    if prepared is None:
        prepared = _prepare(config, secret, home, _cache_dir(course))
    st: WarState = prepared.state
    x, y = st.x, st.y
    rows = {"public": st.public, "private": ~st.public, "all": np.ones(len(y), dtype=bool)}[part]
    idx = torch.from_numpy(np.flatnonzero(rows))
    root = kept_artifacts(course, config.id)
    players = sorted(p.name for p in root.iterdir()
                     if not p.name.startswith(".") and p.is_dir() and not p.is_symlink()) if root.is_dir() else []
    defenses: dict[str, object] = {}
    attacks: dict[str, torch.Tensor] = {}
    problems: dict[str, list[str]] = {}
    stamps: dict[str, tuple] = {}
    kept: dict = {}  # what memo keeps after this call
    for who in players:
        folder = root / who
        stamps[who] = kept_stamp(folder)
        key = ("player", part, who, stamps[who])
        if memo is not None and key in memo:
            model, x_adv, said = memo[key]
        else:
            found = {f.name for f in folder.iterdir()}
            said = []
            model, why = _load_defense(config, folder / spec.defense_file if spec.defense_file in found else None, home)
            why = why or _finite_logits(model, x, spec.defense_file)
            if why:
                said.append(f"defense: {why}")
                model = None
            x_adv, why = _load_attack(config, folder / spec.attack_file if spec.attack_file in found else None, x)
            why = why or _violations(config, x, x_adv, rows)
            if why:
                said.append(f"attack: {why}")
                x_adv = None
            else:
                x_adv = x_adv[idx].to(x.dtype)
        kept[key] = (model, x_adv, said)
        if model is not None:
            defenses[who] = model
        if x_adv is not None:
            attacks[who] = x_adv
        if said:
            problems[who] = list(said)
    if references:
        for r in st.references:
            name = REFERENCE + r.name
            players.append(name)
            stamps[name] = ("reference",)
            defenses[name], attacks[name] = r.model, r.x_adv[idx]
    yy = y[idx]

    def play(a: str, d: str):
        if a not in attacks or d not in defenses:
            return None
        key = ("cell", part, a, stamps[a], d, stamps[d])
        value = memo[key] if memo is not None and key in memo else _error_rate(defenses[d], attacks[a], yy)
        kept[key] = value
        return value

    cells = [[play(a, d) for d in players] for a in players]
    if memo is not None:  # keep only what still matches; another part's entries stay
        for key in [k for k in memo if k[1] == part]:
            del memo[key]
        memo.update(kept)
    return {"attackers": list(players), "defenders": list(players), "cells": cells, "part": part,
            "n": len(idx), "problems": problems}

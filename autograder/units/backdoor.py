"""Kind ``backdoor``: plant a backdoor under a poison budget (attack), find someone else's (defense).

**Attack.** The notebook designs a trigger — a pattern and a mask, both C×H×W in [0, 1]; the
triggered image is ``x · (1 − mask) + pattern · mask`` and the mask may touch at most ``[threat]
eps`` pixels (``norm = "l0"``, checked with :class:`maestro.ThreatModel` on every hidden image)
— and at most ``[backdoor] poison_budget`` poisoned training points (images in [0, 1] with any
labels). The grader trains the VICTIM itself, :func:`maestro.attacks.backdoor.train_victim` (architecture
``[assignment] model``, the zoo's recipe with ``[backdoor] victim_epochs`` epochs, one torch
thread: deterministic), on the public ``train`` split plus the poison, ``[backdoor] victims``
times with training seeds drawn from the course secret (students can simulate the recipe but
not the seeds: a backdoor must survive retraining, not one lucky initialisation), and measures
on the hidden split (:func:`autograder.scoring.public_mask` makes its public/private parts):

* ``clean_accuracy``: the victims' mean accuracy on the part's hidden images;
* ``attack_success_rate``: the share of the part's hidden images whose class is not
  ``[backdoor] target_class`` that the victims assign to it once triggered (mean over victims).

**Defense.** From the course secret the grader builds a SUSPECT training set of its own: the
public ``train`` split in a secret order, where a secret number of rows (``[backdoor]
suspect_poison``, a range) carry a secret BadNets trigger (a random binary 3×3 patch at a random
place) and a secret target label, and a share (``label_noise``) of other rows carry an honest
random wrong label (decoys: they are mislabelled, not poisoned); every row gets a little pixel
noise (``pixel_noise``, so rows cannot be matched byte for byte against the public digits).
The notebook gets the images, the labels and the weights of a model the grader trained on them
(``suspect_model.safetensors``) and saves one suspicion score per row. The poisoned-row mask
never leaves this module; per public/private part of the rows (a second ``public_mask``, salt
``<salt>/suspect``) the scorer measures ``detection_ap`` (average precision of the poisoned rows
in the scores' ranking; tied scores count together, so a constant score earns the poisoned
share) and ``detection_auc`` (ROC AUC).

The grader and the notebook use the same functions from ``maestro`` (the sandbox cannot import
this module): :func:`~maestro.attacks.backdoor.train_victim`,
:func:`~maestro.attacks.backdoor.triggered`, :func:`~maestro.attacks.backdoor.suspect_set` and
:func:`~maestro.defenses.backdoor_detection.detection_metrics`: students simulate the victim
exactly, only the seeds are secret.

Artifacts (grading.toml ``[artifacts.*]``): ``trigger.npy``, ``trigger_mask.npy`` (float32
C×H×W), ``poison_x.npy`` (float32 n×C×H×W), ``poison_y.npy`` (int64 n), ``suspicion.npy``
(float32, one per suspect row). The two halves are scored independently: a refused or missing
attack file zeroes the attack terms only (and vice versa), with the reason.

Only aggregate numbers leave this module. Known limit (as for every built-in data set, see
:mod:`maestro.datasets.splits`): the raw digits are public, so a student could match suspect
rows against a clean copy; the notebook forbids it, nothing here can detect it.
"""

from __future__ import annotations

import dataclasses
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from maestro.attacks.backdoor import suspect_set, train_victim, triggered
from maestro.defenses.backdoor_detection import detection_metrics

from . import Kind, Prepared

__all__ = ["KIND", "BackdoorSpec", "detection_metrics", "suspect_set", "train_victim", "triggered"]

#: the .npy artifacts by role (the [artifacts.*] file names are free; these keys are not)
ROLES = {
    "trigger": "float32",
    "trigger_mask": "float32",
    "poison_x": "float32",
    "poison_y": "int64",
    "suspicion": "float32",
}
INPUT_FILES = {
    "suspect_x_path": "suspect_x.npy",
    "suspect_y_path": "suspect_y.npy",
    "suspect_model_path": "suspect_model.safetensors",
}
ATTACK_METRICS = ("clean_accuracy", "attack_success_rate")
DEFENSE_METRICS = ("detection_ap", "detection_auc")
_MIN_SUSPECT_ASR = 0.8  # the grader's own backdoor must work on its suspect model (dev split)


@dataclass(frozen=True)
class BackdoorSpec:
    """grading.toml ``[backdoor]``."""

    target_class: int = 7
    poison_budget: int = 8
    victims: int = 3
    victim_epochs: int = 20
    suspect_poison: tuple[int, int] = (24, 40)
    label_noise: float = 0.05
    pixel_noise: float = 0.03
    flag_fraction: float = 0.05  # the feedback's "your top 5% rows hold x% of the poisoned rows"
    files: tuple[tuple[str, str], ...] = ()  # role -> artifact file name

    def file(self, role: str) -> str:
        return dict(self.files)[role]


# -- victims and metrics: maestro.attacks.backdoor, maestro.defenses.backdoor_detection ------------
def _predict(module, x: torch.Tensor) -> torch.Tensor:
    from maestro.models.train import num_threads

    with torch.no_grad(), num_threads(1):
        return module(x.float()).argmax(1)


def _recall_at(scores: np.ndarray, poisoned: np.ndarray, k: int) -> float:
    """Share of the poisoned rows among the ``k`` highest scores (ties broken by row order)."""
    top = np.argsort(-scores, kind="stable")[:k]
    return float(poisoned[top].sum() / max(int(poisoned.sum()), 1))


# -- hidden state -------------------------------------------------------------------------------
@dataclass
class BackdoorState:
    """What the scorer keeps to itself (never written where a sandbox can read it)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    hidden_x: torch.Tensor
    hidden_y: torch.Tensor
    public: np.ndarray  # public part of the hidden images
    victim_seeds: tuple[int, ...]
    clean_victim: object  # a victim trained without poison (the trigger's base rate)
    poisoned: np.ndarray  # suspect rows carrying the grader's trigger
    suspect_public: np.ndarray  # public part of the suspect rows
    image_shape: tuple[int, ...]

    def __repr__(self) -> str:  # never print the hidden labels or the poisoned rows
        return (f"BackdoorState(hidden={len(self.hidden_y)}, train={len(self.train_y)}, "
                f"suspect={len(self.poisoned)}, victims={len(self.victim_seeds)})")


def _rng(secret: str | bytes, ident: str, what: str) -> torch.Generator:
    from maestro.datasets.splits import secret_seed

    return torch.Generator().manual_seed(secret_seed(secret, ident, what, domain="maestro-backdoor"))


# -- the kind -----------------------------------------------------------------------------------
class Backdoor(Kind):
    name = "backdoor"
    table = "backdoor"
    needs_threat = True
    metrics = {
        "clean_accuracy": "attack: the victims' accuracy on the part's hidden images (they trained "
        "on the public training split plus your poison; mean over the victims)",
        "attack_success_rate": "attack: share of the part's hidden images outside the target class "
        "that the victims assign to the target class once your trigger is stamped on them",
        "detection_ap": "defense: average precision of the grader's poisoned rows in the ranking of "
        "your suspicion scores (1 = all poisoned rows first; a constant score earns the poisoned share)",
        "detection_auc": "defense: ROC AUC of your suspicion scores for the grader's poisoned rows "
        "against all the other rows (0.5 = chance)",
    }

    # -- grading.toml -------------------------------------------------------------------------
    def parse(self, where: str, raw, config) -> BackdoorSpec:
        from maestro.models.zoo import ZOO

        from ..config import ConfigError, _Table

        if raw is None:
            raise ConfigError(f"{where}: [backdoor] missing: give at least target_class and poison_budget")
        if config.threat.norm != "l0":
            raise ConfigError(f"{where}: [threat] norm: a backdoor trigger is limited in l0 (pixels "
                              f"changed), got {config.threat.norm!r}")
        if not 1 <= config.threat.eps or config.threat.eps != int(config.threat.eps):
            raise ConfigError(f"{where}: [threat] eps: the number of pixels the trigger may change, a whole "
                              f"number ≥ 1, got {config.threat.eps:g}")
        if config.model not in ZOO or ZOO[config.model].recipe != "image":
            raise ConfigError(f"{where}: [assignment] model: the victim's architecture must be an image "
                              f"model of the zoo, got {config.model!r}")
        if ZOO[config.model].dataset != config.dataset:
            raise ConfigError(f"{where}: [assignment] dataset: the victim {config.model!r} trains on "
                              f"{ZOO[config.model].dataset!r}, not {config.dataset!r}")
        t = _Table(where, raw, "backdoor")
        target = t.get("target_class", int, check=lambda v: None if 0 <= v < 10 else "must lie in [0, 9]")
        budget = t.get("poison_budget", int, check=lambda v: None if v >= 1 else "must be ≥ 1")
        victims = t.get("victims", int, 3, check=lambda v: None if 1 <= v <= 10 else "must lie in [1, 10]")
        epochs = t.get("victim_epochs", int, 20, check=lambda v: None if 1 <= v <= 200 else "must lie in [1, 200]")
        rng = t.get("suspect_poison", list, [24, 40], what="[lowest, highest] number of poisoned rows")
        if (len(rng) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in rng)
                or not 1 <= rng[0] <= rng[1]):
            raise ConfigError(f"{where}: [backdoor] suspect_poison: expected [lowest, highest] with "
                              f"1 ≤ lowest ≤ highest, got {rng!r}")
        noise = t.get("label_noise", float, 0.05, check=lambda v: None if 0 <= v < 0.5 else "must lie in [0, 0.5)")
        pixel = t.get("pixel_noise", float, 0.03, check=lambda v: None if 0 <= v <= 0.2 else "must lie in [0, 0.2]")
        flag = t.get("flag_fraction", float, 0.05, check=lambda v: None if 0 < v < 1 else "must lie in (0, 1)")
        t.done()
        files = {}
        by_key = {a.key: a for a in config.artifacts}
        for role, dtype in ROLES.items():
            a = by_key.get(role)
            if a is None:
                raise ConfigError(f"{where}: [artifacts.{role}] missing: a backdoor unit grades the artifacts "
                                  f"{', '.join(ROLES)}")
            if a.format != "npy" or a.dtype != dtype:
                raise ConfigError(f"{where}: [artifacts.{role}] must be a .npy file of dtype {dtype}, got "
                                  f"{a.file!r} ({a.dtype})")
            files[role] = a.file
        extra = sorted(set(by_key) - set(ROLES))
        if extra:
            raise ConfigError(f"{where}: [artifacts.{extra[0]}] is not read by kind 'backdoor' (it grades "
                              f"{', '.join(ROLES)})")
        if len(set(files.values())) != len(files):
            raise ConfigError(f"{where}: [artifacts.*] file names must differ")
        return BackdoorSpec(target, budget, victims, epochs, (rng[0], rng[1]), noise, pixel, flag,
                            tuple(files.items()))

    # -- the inputs and the hidden state --------------------------------------------------------
    def prepare(self, config, secret: str | bytes, home=None) -> Prepared:
        import maestro
        from maestro.datasets.splits import resolve_secret
        from safetensors.torch import save as save_safetensors

        from ..scoring import public_mask

        secret = resolve_secret(secret)
        spec: BackdoorSpec = config.unit
        train = maestro.datasets.load(config.dataset, split="train", home=home)
        hidden = maestro.datasets.load(config.dataset, split="hidden", secret=secret, home=home)
        dev = maestro.datasets.load(config.dataset, split="dev", home=home)
        if spec.target_class >= train.num_classes:
            raise ValueError(f"[backdoor] target_class {spec.target_class}: {config.dataset} has "
                             f"{train.num_classes} classes")
        seeds_gen = _rng(secret, config.id, "victims")
        seeds = tuple(int(s) for s in torch.randint(2**31 - 1, (spec.victims,), generator=seeds_gen))
        train_kw = {"model": config.model, "epochs": spec.victim_epochs, "home": home}
        clean_victim = train_victim(train.x, train.y, seeds[0], **train_kw)

        gen = _rng(secret, config.id, "suspect")
        for _attempt in range(20):  # the grader's own backdoor must work, or the defense is moot
            x, y, poisoned, attack = suspect_set(train, gen, poison=spec.suspect_poison,
                                                 label_noise=spec.label_noise, pixel_noise=spec.pixel_noise)
            model_seed = int(torch.randint(2**31 - 1, (1,), generator=gen))
            suspect = train_victim(x, y, model_seed, **train_kw)
            keep = dev.y != attack.target_class
            asr = float((_predict(suspect, attack.apply(dev.x[keep])) == attack.target_class).float().mean())
            if asr >= _MIN_SUSPECT_ASR:
                break
        else:
            raise RuntimeError("the grader could not plant a working backdoor in the suspect set "
                               "(20 attempts); raise [backdoor] suspect_poison")
        split_salt = dataclasses.replace(config.split, salt=config.split.salt + "/suspect")
        suspect_public = public_mask(len(y), dataclasses.replace(config, split=split_salt), secret)
        state = BackdoorState(
            train.x, train.y, hidden.x, hidden.y, public_mask(len(hidden), config, secret), seeds,
            clean_victim, poisoned, suspect_public, tuple(train.x.shape[1:]))
        weights = {k: v.detach().contiguous() for k, v in suspect.state_dict().items()}
        inputs = {
            INPUT_FILES["suspect_x_path"]: x.numpy().astype(np.float32),
            INPUT_FILES["suspect_y_path"]: y.numpy().astype(np.int64),
            INPUT_FILES["suspect_model_path"]: save_safetensors(weights, metadata={"model": config.model}),
        }
        params = {**INPUT_FILES, "target_class": spec.target_class, "poison_budget": spec.poison_budget,
                  "victim_model": config.model, "victim_epochs": spec.victim_epochs,
                  "victims": spec.victims, "flag_fraction": spec.flag_fraction}
        return Prepared(inputs, params, state)

    def hidden_labels(self, prepared: Prepared):
        return prepared.state.hidden_y.numpy().astype(np.int64)

    # -- scoring ------------------------------------------------------------------------------
    def score(self, config, artifacts: dict[str, Path], prepared: Prepared, *, queries=None):
        from ..scoring import Part, score_parts

        spec: BackdoorSpec = config.unit
        st: BackdoorState = prepared.state
        problems: list[str] = []
        attack, attack_why, base = self._attack(config, spec, st, artifacts)
        defense, defense_why, recall = self._defense(spec, st, artifacts)
        if attack_why:
            problems.append(f"attack: {attack_why}")
        if defense_why:
            problems.append(f"defense: {defense_why}")
        metrics, extra = {}, {}
        for label in ("public", "private"):
            m = {}
            lines = []
            if attack is not None:
                m.update(attack[label])
                lines.append(Part(f"{label}: the trigger alone", 0.0, 0.0,
                                  f"victims trained WITHOUT your poison send {100 * base[label]:.1f}% of the "
                                  f"part's triggered non-target images to class {spec.target_class} (your "
                                  f"poison: {100 * attack[label]['attack_success_rate']:.1f}%)", label))
            if defense is not None:
                m.update(defense[label])
                lines.append(Part(f"{label}: your most suspicious rows", 0.0, 0.0,
                                  f"the top {100 * spec.flag_fraction:g}% of the part's rows by your scores "
                                  f"hold {100 * recall[label]:.1f}% of its poisoned rows", label))
            metrics[label] = m if m else None
            extra[label] = lines
        overall = None
        if attack is not None or defense is not None:
            overall = {**(attack or {}).get("whole", {}), **(defense or {}).get("whole", {})}
        result = score_parts(config, metrics, problems, kind=self.name, overall=overall, extra=extra)
        reasons = {m: f"attack: {attack_why}" for m in ATTACK_METRICS if attack is None}
        reasons.update({m: f"defense: {defense_why}" for m in DEFENSE_METRICS if defense is None})
        by_name = {t.name: t for t in config.terms}
        for part in result.parts:
            term = by_name.get(part.name.split(": ", 1)[-1])
            if term is not None and term.metric in reasons:
                part.reason = reasons[term.metric]
        return result

    def _attack(self, config, spec: BackdoorSpec, st: BackdoorState, artifacts):
        """Per-part attack metrics (or None and the reason) and the trigger's base rate."""
        from ..scoring import ArtifactRefused

        shape = st.image_shape
        try:
            arrays = {role: _load_fixed(_path(artifacts, spec.file(role)), shape, "one C×H×W image")
                      for role in ("trigger", "trigger_mask")}
            px = _load_rows(_path(artifacts, spec.file("poison_x")), "float32", shape, spec.poison_budget)
            py = _load_rows(_path(artifacts, spec.file("poison_y")), "int64", (), spec.poison_budget)
        except ArtifactRefused as err:
            return None, str(err), None
        pattern, mask = arrays["trigger"], arrays["trigger_mask"]
        why = _check_trigger(pattern, mask, config, spec)
        if not why and len(px) != len(py):
            why = (f"{spec.file('poison_x')} has {len(px)} rows but {spec.file('poison_y')} has {len(py)} "
                   "labels: one label per poisoned image")
        if not why:
            why = _check_poison(px, py, spec, st)
        if why:
            return None, why, None
        pattern_t, mask_t = torch.from_numpy(pattern), torch.from_numpy(mask)
        x_trig = triggered(st.hidden_x, pattern_t, mask_t)
        threat = config.threat.threat_model()
        found = threat.violations(st.hidden_x, x_trig)
        if found:  # unreachable after _check_trigger; the one validator has the last word
            return None, f"the triggered images break the {threat.describe()}: {found[0]}", None
        x = torch.cat([st.train_x, torch.from_numpy(px)])
        y = torch.cat([st.train_y, torch.from_numpy(py)])
        clean_ok, hit = [], []
        other = (st.hidden_y != spec.target_class).numpy()
        for seed in st.victim_seeds:
            victim = train_victim(x, y, seed, model=config.model, epochs=spec.victim_epochs)
            clean_ok.append((_predict(victim, st.hidden_x) == st.hidden_y).numpy())
            hit.append((_predict(victim, x_trig) == spec.target_class).numpy())
        clean_ok, hit = np.stack(clean_ok), np.stack(hit)
        base_hit = (_predict(st.clean_victim, x_trig) == spec.target_class).numpy()
        out, base = {}, {}
        for label, rows in (("public", st.public), ("private", ~st.public), ("whole", np.ones_like(st.public))):
            trig_rows = rows & other
            out[label] = {
                "clean_accuracy": float(clean_ok[:, rows].mean()) if rows.any() else float("nan"),
                "attack_success_rate": float(hit[:, trig_rows].mean()) if trig_rows.any() else float("nan"),
                "n_images": int(rows.sum()),
                "n_triggered": int(trig_rows.sum()),
                "poison_rows": len(px),
            }
            base[label] = float(base_hit[trig_rows].mean()) if trig_rows.any() else float("nan")
        return out, "", base

    def _defense(self, spec: BackdoorSpec, st: BackdoorState, artifacts):
        """Per-part detection metrics (or None and the reason) and the top-rows recall."""
        from ..scoring import ArtifactRefused

        name = spec.file("suspicion")
        n = len(st.poisoned)
        try:
            scores = _load_fixed(_path(artifacts, name), (n,),
                                 "one score per row of suspect_x, in its order").astype(np.float64)
        except ArtifactRefused as err:
            return None, str(err), None
        bad = np.flatnonzero(~np.isfinite(scores))
        if len(bad):
            return None, (f"{name}: NaN or infinite scores in rows {_rows(bad)}; give every row a "
                          "finite score"), None
        out, recall = {}, {}
        for label, rows in (("public", st.suspect_public), ("private", ~st.suspect_public),
                            ("whole", np.ones_like(st.suspect_public))):
            out[label] = {**detection_metrics(scores[rows], st.poisoned[rows]), "n_rows": int(rows.sum())}
            recall[label] = _recall_at(scores[rows], st.poisoned[rows],
                                       math.ceil(spec.flag_fraction * int(rows.sum())))
        return out, "", recall

    def leaderboard_columns(self) -> list[tuple[str, str, str]]:
        return [("attack_success_rate", "attack success rate", "desc"),
                ("detection_ap", "detection average precision", "desc")]


KIND = Backdoor()


# -- checks and loading -------------------------------------------------------------------------
def _path(artifacts: dict, name: str) -> Path:
    from ..scoring import ArtifactRefused

    path = artifacts.get(name)
    if path is None:
        raise ArtifactRefused(f"{name} was not produced: the notebook must save it in output_dir "
                              "(did every cell before it run without an error?)")
    return Path(path)


def _load_fixed(path: Path, shape: tuple[int, ...], what: str) -> np.ndarray:
    """A float32 array of exactly ``shape``: :func:`autograder.scoring.load_artifact`."""
    from ..scoring import load_artifact

    return load_artifact(path, dtype="float32", shape=shape, shape_hint=what,
                         cast_hint="a.astype(np.float32)")


def _rows(idx) -> str:
    idx = [int(i) for i in idx]
    return ", ".join(map(str, idx[:10])) + (f" (+{len(idx) - 10} more)" if len(idx) > 10 else "")


def _check_trigger(pattern: np.ndarray, mask: np.ndarray, config, spec: BackdoorSpec) -> str:
    k = int(config.threat.eps)
    for role, a in (("trigger", pattern), ("trigger_mask", mask)):
        name = spec.file(role)
        if not np.isfinite(a).all():
            return f"{name} holds NaN or infinite values"
        if a.min() < 0 or a.max() > 1:
            return f"{name}: values must lie in [0, 1], got [{a.min():.4g}, {a.max():.4g}]"
    used = int((mask > config.threat.atol).sum())
    if used > k:
        return (f"{spec.file('trigger_mask')} covers {used} pixels; the trigger may change at most {k} "
                f"([threat] l0 eps = {k}): set the mask to 0 everywhere else")
    if used == 0:
        return f"{spec.file('trigger_mask')} is 0 everywhere: the trigger changes nothing"
    return ""


def _check_poison(px: np.ndarray, py: np.ndarray, spec: BackdoorSpec, st: BackdoorState) -> str:
    name_x, name_y = spec.file("poison_x"), spec.file("poison_y")
    flat = px.reshape(len(px), -1)
    bad = np.flatnonzero(~np.isfinite(flat).all(1))
    if len(bad):
        return f"{name_x}: NaN or infinite values in rows {_rows(bad)}"
    bad = np.flatnonzero((flat < 0).any(1) | (flat > 1).any(1))
    if len(bad):
        return f"{name_x}: pixels outside [0, 1] in rows {_rows(bad)} (clip them: np.clip(x, 0, 1))"
    classes = int(st.train_y.max()) + 1
    bad = np.flatnonzero((py < 0) | (py >= classes))
    if len(bad):
        return f"{name_y}: labels must be classes 0..{classes - 1}; rows {_rows(bad)} are not"
    return ""


def _load_rows(path: Path, dtype: str, row_shape: tuple[int, ...], budget: int) -> np.ndarray:
    """An n×``row_shape`` array with n ≤ ``budget`` rows: the header is read first (the file
    checks of :mod:`autograder.artifacts`, no data) to learn n and say "too many rows" plainly,
    then :func:`autograder.scoring.load_artifact` reads the file for that exact shape."""
    from ..artifacts import read_file
    from ..scoring import ArtifactRefused, load_artifact

    name = path.name
    want = np.dtype(dtype)
    row = int(np.prod(row_shape, dtype=np.int64)) * want.itemsize
    cast = "x.astype(np.float32)" if want.kind == "f" else "y.astype(np.int64)"
    # room for far more rows than allowed: "too many rows" is then said from the header
    data = read_file(path, 4096 + 64 * max(budget, 16) * max(row, 8),
                     too_large=f"{name} is far larger than {budget} rows of shape {tuple(row_shape)} "
                     f"({dtype}) need: the budget is {budget} poisoned training points")
    with io.BytesIO(data) as fh:
        try:
            version = np.lib.format.read_magic(fh)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            shape, _, got = read(fh)
        except Exception as err:
            raise ArtifactRefused(f"{name} is not a valid .npy file (save it with np.save): "
                                  f"{str(err)[:200]}") from None
    if got.hasobject:
        raise ArtifactRefused(f"{name} holds Python objects (a pickle); save a plain {dtype} array")
    if got.kind != want.kind or got.itemsize != want.itemsize:
        raise ArtifactRefused(f"{name} has dtype {got}; expected {dtype} ({cast})")
    want_shape = "(n, " + ", ".join(map(str, row_shape)) + ")" if row_shape else "(n,)"
    if len(shape) != 1 + len(row_shape) or tuple(shape[1:]) != tuple(row_shape):
        raise ArtifactRefused(f"{name} has shape {tuple(shape)}; expected {want_shape} with n ≤ {budget}")
    if shape[0] > budget:
        raise ArtifactRefused(f"{name} has {shape[0]} rows: the budget is {budget} poisoned training "
                              "points; keep your best ones")
    return load_artifact(path, dtype=dtype, shape=tuple(shape), cast_hint=cast)

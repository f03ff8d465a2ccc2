"""Kind ``membership``: membership inference against a target model the grader trains.

From the course secret, :meth:`Membership.prepare` draws, out of the public pool of
``[assignment] dataset`` (its ``train``, ``dev`` and ``test`` splits: the instructor-only
reserve is never touched, so no other unit's hidden examples are shown), ``2 · members``
*candidates* and ``aux`` further examples. It trains the TARGET — architecture
``[assignment] model`` (a :mod:`maestro.models.archs` image architecture) with the recipe of
``[privacy]`` (:func:`train_target`: Adam on cross-entropy, shuffled minibatches; long enough
to overfit) — on a secret half of the candidates, the *members*, and hands the notebook:

* ``target.safetensors``: the target's weights (white-box), and ``target_spec`` (a papermill
  parameter): its architecture, configuration and training recipe, everything but the seed;
* ``candidates.npy`` / ``candidate_labels.npy``: the candidates (members and non-members in a
  secret order) with their true class labels — the adversary knows the pair (x, y) it asks about;
* ``aux.npy`` / ``aux_labels.npy``: examples of the same distribution, none of them a candidate
  and none in the target's training set (for shadow models and calibration).

The member mask stays in :attr:`~autograder.units.Prepared.state`. The notebook saves one
membership score per candidate (higher = more likely a member, ``.npy``, the configured float
dtype); the scorer measures, per public/private part of the candidates
(:func:`autograder.scoring.public_mask`), the ROC AUC and the TPR at low FPR (1%, 2%, 5%: the
highest share of the part's members found while accusing at most that share of its non-members;
tied scores move together, :func:`maestro.attacks.membership.roc_curve`). A missing file, a
wrong length or dtype, NaN/inf or constant scores are refused with the reason.

Only aggregate numbers leave this module. Known limit: the public part's AUC is shown to the
student, so thousands of resubmissions, each moving one score, could map the public members;
the private part, revealed after the deadline, is out of reach of that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import Kind, Prepared

#: the splits that make the pool candidates and auxiliary data are drawn from (never the reserve)
POOL_SPLITS = ("train", "dev", "test")
#: built-in image data sets: input shape and size of the whole data set (for the pool's size)
DATASETS = {"digits": ((1, 8, 8), 1797), "mnist": ((1, 28, 28), 5000)}
#: image architectures a target may have (maestro.models.archs)
ARCHS = ("mlp", "small-cnn", "lenet")
#: metric -> the false-positive rate of a "TPR at low FPR" metric
LOW_FPR = {"tpr_at_1pct_fpr": 0.01, "tpr_at_2pct_fpr": 0.02, "tpr_at_5pct_fpr": 0.05}
INPUT_FILES = {
    "target_path": "target.safetensors",
    "candidates_path": "candidates.npy",
    "candidate_labels_path": "candidate_labels.npy",
    "aux_path": "aux.npy",
    "aux_labels_path": "aux_labels.npy",
}


@dataclass(frozen=True)
class PrivacySpec:
    """grading.toml ``[privacy]``: how many members, how much auxiliary data, the target's
    architecture configuration and its training recipe."""

    members: int
    aux: int | None  # None: every pool example that is not a candidate
    arch: str
    config: dict = field(hash=False)  # the architecture's keyword arguments (input shape and classes added)
    epochs: int = 40
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0

    @property
    def candidates(self) -> int:
        return 2 * self.members

    def target_spec(self) -> dict:
        """What the notebook is told about the target (``target_spec``): all but its seed."""
        return {"arch": self.arch, "config": dict(self.config), "members": self.members,
                "epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
                "weight_decay": self.weight_decay}


@dataclass
class _Hidden:
    """What the scorer keeps: the member mask of the candidates, the public mask, and numbers
    about the target for the instructor."""

    member: np.ndarray
    public: np.ndarray
    info: dict = field(default_factory=dict)

    def __repr__(self) -> str:  # never print the mask
        return f"_Hidden(candidates={len(self.member)}, public={int(self.public.sum())})"


# -- the target's recipe (the notebook gets the same one in target_spec) ----------------------
def build_target(spec: dict) -> torch.nn.Module:
    """A fresh module of the architecture ``spec["arch"]`` with ``spec["config"]``."""
    from maestro.models.archs import build_arch

    return build_arch(spec["arch"], spec["config"])


def train_target(x: torch.Tensor, y: torch.Tensor, spec: dict, seed: int) -> torch.nn.Module:
    """Train a target (or shadow) model the way the grader does: ``torch.manual_seed(seed)``, a
    fresh module, then ``epochs`` epochs of Adam (``lr``, ``weight_decay``) on the mean
    cross-entropy over minibatches of ``batch_size``, each epoch in a new order drawn with
    ``torch.randperm`` from one ``torch.Generator().manual_seed(seed)``. Leaves the caller's RNG alone; returns the module in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = build_target(spec)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(module.parameters(), lr=spec["lr"], weight_decay=spec["weight_decay"])
    module.train()
    for _ in range(spec["epochs"]):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), spec["batch_size"]):
            idx = order[start:start + spec["batch_size"]]
            loss = F.cross_entropy(module(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return module.eval()


def _seed(secret: str | bytes, salt: str, what: str) -> int:
    """A 63-bit seed for ``what`` from the course secret and the assignment's salt."""
    from maestro.datasets.splits import secret_seed

    return secret_seed(secret, salt, what, domain="maestro-membership")


def pool_size(dataset: str) -> int:
    """How many examples the public splits of a built-in data set hold."""
    from maestro.datasets.splits import FRACTIONS

    n = DATASETS[dataset][1]
    return sum(round(share * n) for share in FRACTIONS.values())


# -- metrics ---------------------------------------------------------------------------------
def membership_metrics(scores: np.ndarray, member: np.ndarray) -> dict:
    """AUC and TPR at the :data:`LOW_FPR` rates of ``scores`` (higher = member) against the
    boolean ``member`` mask; aggregate numbers only."""
    from maestro.attacks.membership import roc_auc, roc_curve, tpr_at_fpr

    s = torch.from_numpy(np.asarray(scores, dtype=np.float64))
    m = torch.from_numpy(np.asarray(member, dtype=bool))
    fpr, tpr, _ = roc_curve(s, m)
    out = {"n": len(s), "auc": roc_auc(s, m)}
    out.update({metric: tpr_at_fpr(fpr, tpr, rate) for metric, rate in LOW_FPR.items()})
    return out


# -- the kind --------------------------------------------------------------------------------
class Membership(Kind):
    name = "membership"
    table = "privacy"
    metrics = {
        "auc": "area under the ROC curve of your membership scores on the part's candidates: the "
               "chance that a random member scores higher than a random non-member (0.5 = guessing)",
        "tpr_at_1pct_fpr": "share of the part's members your scores find while accusing at most 1% "
                           "of its non-members (the best threshold; tied scores move together)",
        "tpr_at_2pct_fpr": "share of the part's members found while accusing at most 2% of its non-members",
        "tpr_at_5pct_fpr": "share of the part's members found while accusing at most 5% of its non-members",
    }
    needs_threat = False

    def parse(self, where: str, raw: dict | None, config) -> PrivacySpec:
        from ..config import ConfigError, _Table

        if raw is None:
            raise ConfigError(f"{where}: [privacy] missing: give members = <the target's training-set "
                              "size> and its recipe (epochs, batch_size, lr)")
        if config.dataset not in DATASETS:
            raise ConfigError(f"{where}: [assignment] dataset: a membership unit draws from a built-in "
                              f"image data set ({', '.join(DATASETS)}), got {config.dataset!r}")
        if config.model not in ARCHS:
            raise ConfigError(f"{where}: [assignment] model: the target's architecture, one of "
                              f"{', '.join(ARCHS)} (maestro.models.archs), got {config.model!r}")
        if config.defense is not None:
            raise ConfigError(f"{where}: [defense] is not read by kind 'membership'")
        t = _Table(where, raw, "privacy")
        pool = pool_size(config.dataset)
        members = t.get("members", int, check=lambda v: None if 10 <= v <= pool // 2
                        else f"must lie in [10, {pool // 2}] (the pool of {config.dataset} holds {pool})")
        aux = t.get("aux", int, None, check=lambda v: None if 1 <= v <= pool - 2 * members else
                    f"must lie in [1, {pool - 2 * members}]: the pool holds {pool} examples, "
                    f"{2 * members} of them candidates")
        arch_config = t.get("config", dict, {}, what="a table of the architecture's keyword arguments")
        epochs = t.get("epochs", int, 40, check=lambda v: None if v >= 1 else "must be ≥ 1")
        batch_size = t.get("batch_size", int, 128, check=lambda v: None if v >= 1 else "must be ≥ 1")
        lr = t.get("lr", float, 1e-3, check=lambda v: None if v > 0 else "must be > 0")
        wd = t.get("weight_decay", float, 0.0, check=lambda v: None if v >= 0 else "must be ≥ 0")
        t.done()
        shape = DATASETS[config.dataset][0]
        fixed = {"input_shape", "num_classes"} & set(arch_config)
        if fixed:
            raise ConfigError(f"{where}: [privacy] config: {', '.join(sorted(fixed))} come from the data "
                              "set; leave them out")
        full = {**arch_config, "input_shape": list(shape), "num_classes": 10}
        try:
            build_target({"arch": config.model, "config": full})
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{where}: [privacy] config does not build a {config.model!r}: {err}") from None
        if len(config.artifacts) != 1:
            raise ConfigError(f"{where}: [artifacts] a membership unit grades one file, the scores "
                              f"(got {', '.join(a.file for a in config.artifacts)})")
        art = config.artifacts[0]
        if art.format != "npy" or art.dtype not in ("float32", "float64"):
            raise ConfigError(f"{where}: [artifacts.{art.key}] the scores are a float32 or float64 .npy "
                              f"file, got {art.file!r} ({art.dtype})")
        if art.shape != (2 * members,):
            raise ConfigError(f"{where}: [artifacts.{art.key}] shape: one score per candidate, "
                              f"[{2 * members}] (2 × members), got {art.shape!r}")
        return PrivacySpec(members, aux, config.model, full, epochs, batch_size, lr, wd)

    def prepare(self, config, secret: str | bytes, home=None) -> Prepared:
        import maestro
        from maestro.datasets.splits import resolve_secret
        from maestro.models.train import num_threads
        from safetensors.torch import save as save_safetensors

        from ..scoring import public_mask

        spec: PrivacySpec = config.unit
        secret = resolve_secret(secret)
        salt = config.split.salt
        parts = [maestro.datasets.load(config.dataset, split, home=home) for split in POOL_SPLITS]
        x = torch.cat([p.x for p in parts]).float()
        y = torch.cat([p.y for p in parts]).long()
        m = spec.members
        n_aux = spec.aux if spec.aux is not None else len(x) - 2 * m
        if 2 * m + n_aux > len(x):
            raise ValueError(f"{config.id}: {2 * m} candidates and {n_aux} auxiliary examples do not fit "
                             f"in the {len(x)} public examples of {config.dataset}")
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(_seed(secret, salt, "pool")))
        members, aux = perm[:m], perm[2 * m:2 * m + n_aux]
        order = torch.randperm(2 * m, generator=torch.Generator().manual_seed(_seed(secret, salt, "order")))
        candidates = perm[:2 * m][order]
        member = (order < m).numpy()
        recipe = spec.target_spec()
        with num_threads(1):  # tiny models: one thread is fastest on a busy grader, and reproducible
            target = train_target(x[members], y[members], recipe, _seed(secret, salt, "target"))
            with torch.no_grad():
                right = (target(x[candidates]).argmax(1) == y[candidates]).numpy()
        state = {k: v.detach().contiguous() for k, v in target.state_dict().items()}
        info = {"train_accuracy": float(right[member].mean()), "test_accuracy": float(right[~member].mean())}
        inputs = {
            INPUT_FILES["target_path"]: save_safetensors(state),
            INPUT_FILES["candidates_path"]: x[candidates].numpy(),
            INPUT_FILES["candidate_labels_path"]: y[candidates].numpy().astype(np.int64),
            INPUT_FILES["aux_path"]: x[aux].numpy(),
            INPUT_FILES["aux_labels_path"]: y[aux].numpy().astype(np.int64),
        }
        params = {**INPUT_FILES, "target_spec": recipe}
        hidden = _Hidden(member, public_mask(2 * m, config, secret), info)
        return Prepared(inputs=inputs, params=params, state=hidden)

    def score(self, config, artifacts: dict[str, Path], prepared: Prepared, *, queries=None):
        from ..scoring import ArtifactRefused, score_parts

        art = config.artifact()
        hidden: _Hidden = prepared.state
        path = artifacts.get(art.file, artifacts.get(art.key))
        problems: list[str] = []
        scores = None
        if path is None:
            problems.append(f"{art.file} was not produced: the notebook must save one membership score per "
                            f"candidate in output_dir (did every cell run without an error?)")
        else:
            try:
                scores = load_scores(path, dtype=art.dtype, n=len(hidden.member))
            except ArtifactRefused as err:
                problems.append(str(err))
        if scores is None:
            return score_parts(config, {"public": None, "private": None}, problems, kind=self.name)
        rows = {"public": hidden.public, "private": ~hidden.public}
        metrics = {label: membership_metrics(scores[r], hidden.member[r]) for label, r in rows.items()}
        return score_parts(config, metrics, problems, kind=self.name,
                           overall=membership_metrics(scores, hidden.member))

    def hidden_labels(self, prepared: Prepared):
        return prepared.state.member.astype(np.int64)

    def summary(self, metrics: dict) -> str:
        from ..scoring import _fmt

        return (f"AUC {_fmt('auc', metrics.get('auc'))}, TPR at 1% FPR "
                f"{_fmt('tpr_at_1pct_fpr', metrics.get('tpr_at_1pct_fpr'))}, at 5% FPR "
                f"{_fmt('tpr_at_5pct_fpr', metrics.get('tpr_at_5pct_fpr'))}")

    def leaderboard_columns(self) -> list[tuple[str, str, str]]:
        return [("auc", "AUC", "desc"), ("tpr_at_1pct_fpr", "TPR at 1% FPR", "desc"),
                ("tpr_at_5pct_fpr", "TPR at 5% FPR", "desc")]


def load_scores(path, *, dtype: str, n: int) -> np.ndarray:
    """The membership scores in ``path`` (read by :func:`autograder.scoring.load_artifact`: no
    pickle, header checked first), or :class:`~autograder.scoring.ArtifactRefused` with what to
    change: n values of ``dtype``, finite, not all equal."""
    from ..scoring import ArtifactRefused, load_artifact

    name = Path(path).name
    scores = load_artifact(path, dtype=dtype, shape=(n,),
                           cast_hint=f"save np.asarray(scores, dtype=np.{dtype})",
                           shape_hint="one score per candidate, in the order of candidates.npy "
                                      "(a flat array: scores.reshape(-1))")
    bad = ~np.isfinite(scores)
    if bad.any():
        rows = ", ".join(map(str, np.flatnonzero(bad)[:5]))
        raise ArtifactRefused(f"{name} holds NaN or infinite values ({int(bad.sum())} of {n}, e.g. at "
                              f"position {rows}); every candidate needs a finite score (np.nan_to_num, "
                              "or clip log-likelihoods)")
    if n and float(scores.max()) == float(scores.min()):
        raise ArtifactRefused(f"{name}: every candidate has the same score ({float(scores[0]):g}); such "
                              "scores rank nothing (AUC 0.5). Give higher scores to likelier members")
    return scores.astype(np.float64)


KIND = Membership()

__all__ = ["KIND", "LOW_FPR", "Membership", "PrivacySpec", "build_target", "load_scores",
           "membership_metrics", "train_target"]

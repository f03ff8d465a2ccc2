"""Backdoor detection in a (possibly poisoned) training set, from a model trained on it.

Both detectors are the defender's tools, so they use white-box access: they read each
example's penultimate representation (by default the input of the last ``nn.Linear`` of the
model, or the output of a named layer) with a forward hook while the wrapper computes logits.
The forward passes go through the wrapper, so they count as queries (the budget is checked
before anything runs).

- :func:`activation_clustering` (Chen et al. 2018): per class, reduce the representations
  (PCA), split them in two with k-means and flag the smaller cluster when it is small and well
  separated (relative size and silhouette tests).
- :func:`spectral_signatures` (Tran et al. 2018): per class, score each example by its squared
  projection on the top singular vector of the centred representations and remove the highest
  scores (a fixed fraction of every analysed class).

Both return a :class:`DetectionReport`; ``report.score(poisoned_indices)`` gives precision and
recall against known poisoned indices::

    report = activation_clustering(model, poisoned_train)
    report.score(poisoned_idx)      # DetectionScore(precision=..., recall=...)
    cleaned = poisoned_train[report.keep_mask]

:func:`detection_metrics` rates any per-row suspicion scores against the true poisoned rows
(average precision and ROC AUC, ties counted together), as the backdoor unit's grader does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..datasets.base import Dataset
from ..errors import AccessDenied, QueryBudgetExceeded

__all__ = [
    "DetectionReport",
    "DetectionScore",
    "activation_clustering",
    "penultimate_activations",
    "spectral_signatures",
]


@dataclass(frozen=True)
class DetectionScore:
    """Flagged examples compared with the known poisoned ones."""

    precision: float
    recall: float
    f1: float
    true_positives: int
    false_positives: int
    false_negatives: int
    n_flagged: int
    n_poisoned: int
    chance_precision: float  # the poisoned fraction of the data: precision of a random flagger

    def __repr__(self) -> str:
        return (
            f"DetectionScore(precision {self.precision:.1%}, recall {self.recall:.1%}, F1 {self.f1:.3f}; "
            f"{self.true_positives} of {self.n_poisoned} poisoned found, {self.false_positives} clean "
            f"flagged; chance precision {self.chance_precision:.1%})"
        )


@dataclass
class DetectionReport:
    """What a detector flagged.

    ``flagged``: sorted LongTensor of indices into the data judged poisoned. ``scores``: a
    per-example suspicion score (higher = more suspicious; comparable within one class).
    ``suspicious_classes``: the classes in which something was flagged. ``per_class``: the
    statistics behind each class's decision. ``queries``: inputs sent through the wrapper.
    """

    method: str
    flagged: torch.Tensor
    scores: torch.Tensor
    n: int
    layer: str
    suspicious_classes: list[int]
    per_class: dict[int, dict] = field(default_factory=dict)
    queries: int = 0
    info: dict = field(default_factory=dict)

    @property
    def keep_mask(self) -> torch.Tensor:
        """Boolean mask of the examples not flagged (index the Dataset with it to clean it)."""
        mask = torch.ones(self.n, dtype=torch.bool)
        mask[self.flagged] = False
        return mask

    def score(self, poisoned_indices) -> DetectionScore:
        """Precision, recall and F1 of ``flagged`` against the known ``poisoned_indices``."""
        truth = torch.zeros(self.n, dtype=torch.bool)
        idx = torch.as_tensor(poisoned_indices).long().flatten()
        if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= self.n):
            raise IndexError(f"poisoned_indices must lie in [0, {self.n - 1}]")
        truth[idx] = True
        flagged = ~self.keep_mask
        tp = int((flagged & truth).sum())
        fp = int((flagged & ~truth).sum())
        fn = int((~flagged & truth).sum())
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return DetectionScore(
            precision=precision,
            recall=recall,
            f1=f1,
            true_positives=tp,
            false_positives=fp,
            false_negatives=fn,
            n_flagged=tp + fp,
            n_poisoned=int(truth.sum()),
            chance_precision=int(truth.sum()) / self.n if self.n else 0.0,
        )

    def __repr__(self) -> str:
        return (
            f"DetectionReport({self.method}: flagged {len(self.flagged)} of {self.n}, suspicious "
            f"classes {self.suspicious_classes}, layer {self.layer!r}, queries {self.queries})"
        )


# -- representations -----------------------------------------------------------------------
def penultimate_activations(model, data: Dataset, *, layer: str | None = None) -> tuple[torch.Tensor, str]:
    """Per-example representations N×D of ``data`` (on the CPU) and the layer they came from.

    ``layer=None``: the input of the model's last ``nn.Linear`` (the classifier head), so the
    penultimate representation; ``layer="name"``: the output of that named sub-module,
    flattened. Needs white-box access; counts ``len(data)`` queries.
    """
    if getattr(model, "access", None) != "white-box":
        raise AccessDenied(
            "backdoor detection reads the model's internal representations and needs a white-box "
            f"ModelWrapper; this one has {getattr(model, 'access', type(model).__name__)!r} access"
        )
    if not isinstance(data, Dataset):
        raise TypeError(f"data: expected a maestro Dataset, got {type(data).__name__}")
    if len(data) == 0:
        raise ValueError("data is empty")
    if data.num_classes != model.num_classes:
        raise ValueError(f"the data has {data.num_classes} classes but the model has {model.num_classes}")
    remaining = model.remaining
    if remaining is not None and remaining < len(data):
        raise QueryBudgetExceeded(
            f"reading the representations of {len(data)} examples needs {len(data)} queries but the "
            f"budget has {remaining} left; nothing was run"
        )
    module = model.model
    captured: list[torch.Tensor] = []
    if layer is None:
        linears = [(n, m) for n, m in module.named_modules() if isinstance(m, torch.nn.Linear)]
        if not linears:
            raise ValueError(
                "the model has no nn.Linear head to take the penultimate representation from: "
                "pass layer=<name of a sub-module> (see model.model.named_modules())"
            )
        name, target = linears[-1]
        layer_name = f"input of {name}"

        def pre_hook(_mod, inputs):
            captured.append(inputs[0].detach().flatten(1).float().cpu())

        handle = target.register_forward_pre_hook(pre_hook)
    else:
        modules = dict(module.named_modules())
        if layer not in modules:
            names = [n for n in modules if n]
            raise ValueError(f"no layer named {layer!r}; the model's layers are: {', '.join(names[:40])}")
        layer_name = layer

        def hook(_mod, _inputs, output):
            out = output[0] if isinstance(output, (tuple, list)) else output
            out = out.logits if hasattr(out, "logits") else out
            captured.append(out.detach().flatten(1).float().cpu())

        handle = modules[layer].register_forward_hook(hook)
    try:
        model.logits(data.x)
    finally:
        handle.remove()
    acts = torch.cat(captured)
    if len(acts) != len(data):
        raise RuntimeError(
            f"the hooked layer {layer_name!r} ran {len(acts)} times for {len(data)} inputs: choose a "
            "layer that runs once per input with layer=..."
        )
    return acts, layer_name


# -- activation clustering -----------------------------------------------------------------
def activation_clustering(
    model,
    data: Dataset,
    *,
    layer: str | None = None,
    n_components: int = 10,
    size_threshold: float = 0.35,
    silhouette_threshold: float | None = 0.15,
    n_init: int = 5,
    seed: int = 0,
) -> DetectionReport:
    """Activation clustering (Chen et al. 2018).

    For each class (by the labels in ``data``): project the centred penultimate representations
    on their top ``n_components`` principal directions, split them with 2-means (best of
    ``n_init`` k-means++ starts) and flag the smaller cluster when its relative size is at most
    ``size_threshold`` and the split's mean silhouette is at least ``silhouette_threshold``
    (``None`` disables that test). Per-example scores: how much closer an example lies to the
    smaller cluster's centre than to the larger one's, in units of the class's spread.
    """
    if not 0 < size_threshold <= 0.5:
        raise ValueError(f"size_threshold must lie in (0, 0.5], got {size_threshold!r}")
    before = model.queries
    acts, layer_name = penultimate_activations(model, data, layer=layer)
    gen = torch.Generator().manual_seed(seed)
    y = data.y
    flagged, suspicious, per_class = [], [], {}
    scores = torch.zeros(len(data))
    for c in range(data.num_classes):
        idx = (y == c).nonzero().flatten()
        if len(idx) < 4:
            per_class[c] = {"n": len(idx), "skipped": "fewer than 4 examples"}
            continue
        z = _pca(acts[idx], n_components)
        assign, centres = _kmeans2(z, n_init=n_init, generator=gen)
        sizes = torch.bincount(assign, minlength=2)
        small = int(sizes.argmin())
        rel = float(sizes[small]) / len(idx)
        sil = _silhouette(z, assign, generator=gen)
        d = torch.cdist(z, centres)
        spread = z.std(0).norm().clamp_min(1e-12)
        scores[idx] = (d[:, 1 - small] - d[:, small]) / spread
        is_poisoned = 0 < rel <= size_threshold and (silhouette_threshold is None or sil >= silhouette_threshold)
        per_class[c] = {
            "n": len(idx),
            "relative_size": rel,
            "silhouette": sil,
            "flagged": bool(is_poisoned),
        }
        if is_poisoned:
            suspicious.append(c)
            flagged.append(idx[assign == small])
    flagged_t = torch.cat(flagged).sort().values if flagged else torch.zeros(0, dtype=torch.long)
    return DetectionReport(
        method="activation_clustering",
        flagged=flagged_t,
        scores=scores,
        n=len(data),
        layer=layer_name,
        suspicious_classes=suspicious,
        per_class=per_class,
        queries=model.queries - before,
        info={"n_components": n_components, "size_threshold": size_threshold,
              "silhouette_threshold": silhouette_threshold},
    )


def _pca(a: torch.Tensor, k: int) -> torch.Tensor:
    a = a.double()
    a = a - a.mean(0, keepdim=True)
    k = max(1, min(k, a.shape[0] - 1, a.shape[1]))
    _, _, v = torch.linalg.svd(a, full_matrices=False)
    return (a @ v[:k].T).float()


def _kmeans2(z: torch.Tensor, *, n_init: int, generator: torch.Generator, iters: int = 100):
    """2-means with k-means++ starts; returns the best assignment (0/1) and centres 2×D."""
    best = None
    n = len(z)
    for _ in range(max(1, n_init)):
        first = z[torch.randint(n, (1,), generator=generator)]
        d2 = ((z - first) ** 2).sum(1)
        if float(d2.sum()) <= 0:
            second = z[torch.randint(n, (1,), generator=generator)]
        else:
            second = z[torch.multinomial(d2 / d2.sum(), 1, generator=generator)]
        centres = torch.cat([first, second])
        assign = torch.zeros(n, dtype=torch.long)
        for it in range(iters):
            new = torch.cdist(z, centres).argmin(1)
            if it and bool((new == assign).all()):
                break
            assign = new
            for j in range(2):
                if bool((assign == j).any()):
                    centres[j] = z[assign == j].mean(0)
        inertia = float(((z - centres[assign]) ** 2).sum())
        if best is None or inertia < best[0]:
            best = (inertia, assign.clone(), centres.clone())
    return best[1], best[2]


def _silhouette(z: torch.Tensor, assign: torch.Tensor, *, generator: torch.Generator, max_n: int = 2000) -> float:
    """Mean silhouette of a 2-cluster split (on a random subset of at most ``max_n`` points)."""
    if len(z) > max_n:
        keep = torch.randperm(len(z), generator=generator)[:max_n]
        z, assign = z[keep], assign[keep]
    if int(assign.min()) == int(assign.max()):
        return 0.0
    d = torch.cdist(z.double(), z.double())
    counts = torch.bincount(assign, minlength=2).double()
    sums = torch.stack([d[:, assign == 0].sum(1), d[:, assign == 1].sum(1)], 1)
    own = assign
    n_own = counts[own]
    a = sums.gather(1, own[:, None]).squeeze(1) / (n_own - 1).clamp_min(1)
    b = sums.gather(1, (1 - own)[:, None]).squeeze(1) / counts[1 - own]
    s = (b - a) / torch.maximum(a, b).clamp_min(1e-12)
    s[n_own <= 1] = 0.0  # silhouette of a singleton is 0 by convention
    return float(s.mean())


# -- spectral signatures -------------------------------------------------------------------
def spectral_signatures(
    model,
    data: Dataset,
    *,
    poison_rate: float = 0.05,
    eps_fraction: float | None = None,
    classes=None,
    layer: str | None = None,
) -> DetectionReport:
    """Spectral signatures (Tran et al. 2018).

    Per class ``c``, centre the penultimate representations, take their top right singular
    vector ``v`` and score each example by ``((r - mean) · v)²``; remove the
    ``ceil(eps_fraction · n_c)`` highest scores. ``poison_rate`` is the defender's guess of the
    poisoned fraction *of the attacked class* (the paper's ε); ``eps_fraction`` defaults to
    1.5 × ``poison_rate``, the paper's rule. ``classes``: the classes to analyse (default all;
    the defender does not know which class was attacked, so every class pays the removal) —
    e.g. ``activation_clustering(...).suspicious_classes`` to spend it where clusters look
    suspicious. Per-class statistics include ``spike``, the top singular value's share of the
    centred variance.
    """
    if not 0 < poison_rate < 1:
        raise ValueError(f"poison_rate must lie in (0, 1), got {poison_rate!r}")
    eps = 1.5 * poison_rate if eps_fraction is None else float(eps_fraction)
    if not 0 < eps < 1:
        raise ValueError(f"eps_fraction must lie in (0, 1), got {eps!r}")
    if classes is None:
        chosen = list(range(data.num_classes)) if isinstance(data, Dataset) else []
    else:
        chosen = sorted({int(c) for c in classes})
        if isinstance(data, Dataset) and any(not 0 <= c < data.num_classes for c in chosen):
            raise ValueError(f"classes must lie in [0, {data.num_classes - 1}], got {chosen}")
    before = model.queries
    acts, layer_name = penultimate_activations(model, data, layer=layer)
    y = data.y
    scores = torch.zeros(len(data))
    per_class: dict[int, dict] = {}
    flagged = []
    for c in range(data.num_classes):
        idx = (y == c).nonzero().flatten()
        if len(idx) < 3:
            per_class[c] = {"n": len(idx), "skipped": "fewer than 3 examples", "flagged": False}
            continue
        r = acts[idx].double()
        r = r - r.mean(0, keepdim=True)
        _, s, v = torch.linalg.svd(r, full_matrices=False)
        class_scores = ((r @ v[0]) ** 2).float()
        scores[idx] = class_scores
        spike = float(s[0] ** 2 / (s**2).sum().clamp_min(1e-30))
        k = math.ceil(eps * len(idx)) if c in chosen else 0
        per_class[c] = {"n": len(idx), "spike": spike, "removed": k, "flagged": k > 0}
        if k:
            flagged.append(idx[class_scores.topk(min(k, len(idx))).indices])
    flagged_t = torch.cat(flagged).sort().values if flagged else torch.zeros(0, dtype=torch.long)
    return DetectionReport(
        method="spectral_signatures",
        flagged=flagged_t,
        scores=scores,
        n=len(data),
        layer=layer_name,
        suspicious_classes=[c for c in chosen if per_class.get(c, {}).get("flagged")],
        per_class=per_class,
        queries=model.queries - before,
        info={"eps_fraction": eps, "poison_rate": poison_rate, "classes": chosen},
    )


def detection_metrics(scores, poisoned) -> dict:
    """``detection_ap`` (average precision over the distinct score thresholds: tied rows are
    flagged together) and ``detection_auc`` (ROC AUC, ties counted half) of ``scores`` (higher =
    more suspicious) against the boolean ``poisoned``; NaN when a class is absent."""
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(poisoned, dtype=bool)
    n_pos, n_neg = int(t.sum()), int((~t).sum())
    if n_pos == 0 or n_neg == 0:
        return {"detection_ap": float("nan"), "detection_auc": float("nan")}
    order = np.argsort(-s, kind="stable")
    s_sorted, t_sorted = s[order], t[order]
    last = np.r_[np.flatnonzero(np.diff(s_sorted) != 0), len(s) - 1]  # end of each tie group
    tp = np.cumsum(t_sorted)[last]
    flagged = last + 1
    recall = tp / n_pos
    precision = tp / flagged
    ap = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    from scipy.stats import rankdata

    ranks = rankdata(s)  # average ranks for ties
    auc = float((ranks[t].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return {"detection_ap": ap, "detection_auc": auc}

"""Membership inference: was this example in the model's training set?

- :class:`LossThresholdMIA` (Yeom et al. 2018): the membership score is ``−loss(f(x), y)``;
  members tend to have lower loss. A threshold is set explicitly, fitted on known members and
  non-members (``fit``), or calibrated with Yeom's rule from the training loss (``calibrate``).
- :class:`ShadowModelMIA` (Shokri et al. 2017): train ``n_shadows`` shadow models of the same
  architecture on disjoint data from the same distribution (half of each part in, half out),
  then a logistic-regression attack model on their sorted output (log-)probability vectors and
  the label, and apply it to the target model's outputs.

Both need ``scores`` access (probabilities/logits), count their queries through the wrapper
and check the budget *before* sending anything: a request the budget cannot cover raises
:class:`~maestro.errors.QueryBudgetExceeded` up front, never half-way. ``evaluate`` returns an
:class:`MIAReport` with the ROC AUC, TPR at 1% (and 0.1%) FPR and the ROC curve::

    mia = LossThresholdMIA()
    report = mia.evaluate(model, members=train_subset, nonmembers=test)
    report.auc, report.tpr_at_1pct_fpr

The ROC helpers :func:`roc_auc` and :func:`roc_curve` are plain torch (rank-based, ties
counted as half), checked against scikit-learn.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..datasets.base import Dataset
from ..errors import AccessDenied, QueryBudgetExceeded
from ..wrapper import _RANK

__all__ = [
    "LossThresholdMIA",
    "MIAReport",
    "ShadowModelMIA",
    "roc_auc",
    "roc_curve",
    "tpr_at_fpr",
]


# -- ROC ------------------------------------------------------------------------------------
def _as_scores_labels(scores, labels) -> tuple[torch.Tensor, torch.Tensor]:
    s = torch.as_tensor(scores).detach().cpu().double().flatten()
    lab = torch.as_tensor(labels).detach().cpu().flatten()
    if s.shape != lab.shape:
        raise ValueError(f"scores and labels differ in length: {len(s)} vs {len(lab)}")
    if lab.dtype != torch.bool:
        if not bool(((lab == 0) | (lab == 1)).all()):
            raise ValueError("labels must be 0/1 or bool (1 = positive, e.g. member)")
        lab = lab.bool()
    if not bool(torch.isfinite(s).all()):
        raise ValueError("scores contain NaN or infinite values")
    n_pos = int(lab.sum())
    if n_pos == 0 or n_pos == len(lab):
        raise ValueError("ROC needs at least one positive and one negative example")
    return s, lab


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve: the probability that a random positive scores higher than a
    random negative, ties counting one half (Mann–Whitney U with mid-ranks)."""
    s, lab = _as_scores_labels(scores, labels)
    sorted_s, order = torch.sort(s, stable=True)
    _, inverse, counts = torch.unique_consecutive(sorted_s, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    midrank = ends - (counts.double() - 1) / 2  # 1-based mid-rank of each tied group
    ranks = torch.empty_like(s)
    ranks[order] = midrank[inverse]
    n_pos = int(lab.sum())
    n_neg = len(lab) - n_pos
    u = float(ranks[lab].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def roc_curve(scores, labels) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(fpr, tpr, thresholds)``: one point per distinct score (predict positive when
    ``score >= threshold``), from ``(0, 0)`` at threshold ``+inf`` to ``(1, 1)``."""
    s, lab = _as_scores_labels(scores, labels)
    order = torch.argsort(s, descending=True, stable=True)
    s, lab = s[order], lab[order]
    last = torch.nonzero(s[1:] != s[:-1]).flatten()
    ends = torch.cat([last, torch.tensor([len(s) - 1])])
    tps = torch.cumsum(lab.double(), 0)[ends]
    fps = (ends + 1).double() - tps
    zero = torch.zeros(1, dtype=torch.double)
    fpr = torch.cat([zero, fps / fps[-1]])
    tpr = torch.cat([zero, tps / tps[-1]])
    thresholds = torch.cat([torch.tensor([math.inf], dtype=torch.double), s[ends]])
    return fpr, tpr, thresholds


def tpr_at_fpr(fpr: torch.Tensor, tpr: torch.Tensor, max_fpr: float) -> float:
    """The highest TPR among ROC points whose FPR is at most ``max_fpr``."""
    ok = fpr <= max_fpr + 1e-12
    return float(tpr[ok].max()) if bool(ok.any()) else 0.0


# -- report ---------------------------------------------------------------------------------
@dataclass
class MIAReport:
    """How well an attack separates members from non-members.

    ``auc``: ROC AUC of the membership scores (0.5 = chance). ``tpr_at_1pct_fpr``: the
    fraction of members identified while at most 1% of non-members are wrongly accused;
    ``tpr_at_01pct_fpr`` the same at 0.1% (``None`` with fewer than 1,000 non-members, where
    the only such operating point is zero false positives). ``fpr``/``tpr``/``thresholds``:
    the ROC curve. With a decision ``threshold``: its TPR and FPR, ``advantage`` = TPR − FPR
    (Yeom et al.) and ``balanced_accuracy``. ``queries``: inputs sent to the target model.
    """

    attack: str
    auc: float
    tpr_at_1pct_fpr: float
    tpr_at_01pct_fpr: float | None
    fpr: torch.Tensor
    tpr: torch.Tensor
    thresholds: torch.Tensor
    member_scores: torch.Tensor
    nonmember_scores: torch.Tensor
    queries: int
    time: float
    threshold: float | None = None
    tpr_at_threshold: float | None = None
    fpr_at_threshold: float | None = None
    info: dict = field(default_factory=dict)

    @property
    def n_members(self) -> int:
        return len(self.member_scores)

    @property
    def n_nonmembers(self) -> int:
        return len(self.nonmember_scores)

    @property
    def advantage(self) -> float | None:
        """TPR − FPR at the decision threshold (Yeom et al.'s membership advantage)."""
        if self.threshold is None:
            return None
        return self.tpr_at_threshold - self.fpr_at_threshold

    @property
    def balanced_accuracy(self) -> float | None:
        if self.threshold is None:
            return None
        return 0.5 * (self.tpr_at_threshold + 1 - self.fpr_at_threshold)

    def __repr__(self) -> str:
        low = f", TPR@0.1%FPR {self.tpr_at_01pct_fpr:.1%}" if self.tpr_at_01pct_fpr is not None else ""
        thr = ""
        if self.threshold is not None:
            thr = (
                f", at threshold {self.threshold:.4g}: TPR {self.tpr_at_threshold:.1%} "
                f"FPR {self.fpr_at_threshold:.1%} (advantage {self.advantage:.3f})"
            )
        return (
            f"MIAReport({self.attack}: AUC {self.auc:.3f}, TPR@1%FPR {self.tpr_at_1pct_fpr:.1%}{low}"
            f"{thr}; {self.n_members} members, {self.n_nonmembers} non-members, queries {self.queries})"
        )


def _report(attack: str, member_scores, nonmember_scores, queries, elapsed, threshold, info) -> MIAReport:
    m = member_scores.detach().cpu().double()
    n = nonmember_scores.detach().cpu().double()
    scores = torch.cat([m, n])
    labels = torch.cat([torch.ones(len(m), dtype=torch.bool), torch.zeros(len(n), dtype=torch.bool)])
    fpr, tpr, thresholds = roc_curve(scores, labels)
    tpr_t = fpr_t = None
    if threshold is not None:
        tpr_t = float((m >= threshold).double().mean())
        fpr_t = float((n >= threshold).double().mean())
    return MIAReport(
        attack=attack,
        auc=roc_auc(scores, labels),
        tpr_at_1pct_fpr=tpr_at_fpr(fpr, tpr, 0.01),
        tpr_at_01pct_fpr=tpr_at_fpr(fpr, tpr, 0.001) if len(n) >= 1000 else None,
        fpr=fpr.float(),
        tpr=tpr.float(),
        thresholds=thresholds,
        member_scores=m.float(),
        nonmember_scores=n.float(),
        queries=queries,
        time=elapsed,
        threshold=threshold,
        tpr_at_threshold=tpr_t,
        fpr_at_threshold=fpr_t,
        info=info,
    )


# -- shared checks and queries --------------------------------------------------------------
def _check_model(model, who: str) -> None:
    access = getattr(model, "access", None)
    if access not in _RANK:
        raise TypeError(f"model: expected a maestro ModelWrapper (or remote client), got {type(model).__name__}")
    if _RANK[access] < _RANK["scores"]:
        raise AccessDenied(
            f"{who} needs 'scores' access (probabilities) but the model offers {access!r}"
        )


def _check_data(model, data, arg: str) -> None:
    if not isinstance(data, Dataset):
        raise TypeError(f"{arg}: expected a maestro Dataset, got {type(data).__name__}")
    if len(data) == 0:
        raise ValueError(f"{arg} is empty")
    if data.num_classes != model.num_classes:
        raise ValueError(f"{arg} has {data.num_classes} classes but the model has {model.num_classes}")


def _check_budget(model, need: int, who: str, detail: str) -> None:
    remaining = getattr(model, "remaining", None)
    if remaining is not None and remaining < need:
        raise QueryBudgetExceeded(
            f"{who} needs {need} queries ({detail}) but the model's budget has {remaining} left; "
            "nothing was run: pass fewer examples or a larger budget"
        )


def _log_probs(model, x) -> torch.Tensor:
    """Log-probabilities N×K of the model on ``x``, computed from logits when the model
    offers them (exact even where a probability underflows)."""
    if hasattr(model, "logits"):
        return torch.log_softmax(model.logits(x).detach().cpu().double(), -1)
    return model.predict_proba(x).detach().cpu().double().clamp_min(1e-300).log()


def _ce(log_probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return -log_probs.gather(1, y.long().cpu()[:, None]).squeeze(1)


# -- loss threshold -------------------------------------------------------------------------
class LossThresholdMIA:
    """Loss-threshold membership inference (Yeom et al. 2018).

    The membership score of ``(x, y)`` is ``−CE(f(x), y)`` (higher = more likely a member).
    ``threshold`` (on that score) decides membership; without one, ``evaluate`` still reports
    the threshold-free AUC and TPR at low FPR. Set it by ``fit`` (best balanced accuracy on
    known members/non-members, the attacker's reference data), ``calibrate`` (Yeom's rule:
    member when the loss is below the average training loss) or directly.
    """

    name = "LossThresholdMIA"
    requires = "scores"

    def __init__(self, threshold: float | None = None) -> None:
        if threshold is not None and not math.isfinite(float(threshold)):
            raise ValueError(f"threshold must be a finite number, got {threshold!r}")
        self.threshold = None if threshold is None else float(threshold)

    def __repr__(self) -> str:
        return f"LossThresholdMIA(threshold={self.threshold})"

    def score(self, model, data: Dataset) -> torch.Tensor:
        """Membership scores ``−loss`` of every example of ``data`` (``len(data)`` queries)."""
        _check_model(model, self.name)
        _check_data(model, data, "data")
        _check_budget(model, len(data), self.name, f"{len(data)} examples")
        return -_ce(_log_probs(model, data.x), data.y)

    def calibrate(self, train_loss: float) -> LossThresholdMIA:
        """Yeom et al.'s rule: a member iff its loss is below ``train_loss`` (the model's
        average training loss, which the adversary is assumed to know). Returns self."""
        if not math.isfinite(float(train_loss)) or float(train_loss) < 0:
            raise ValueError(f"train_loss must be a finite non-negative number, got {train_loss!r}")
        self.threshold = -float(train_loss)
        return self

    def fit(self, model, members: Dataset, nonmembers: Dataset) -> LossThresholdMIA:
        """Set ``threshold`` to the score with the best balanced accuracy on known members and
        non-members (``len(members) + len(nonmembers)`` queries). Returns self."""
        m_s, n_s = self._both_scores(model, members, nonmembers, "fit")
        self.threshold = _best_threshold(m_s, n_s)
        return self

    def infer(self, model, data: Dataset) -> torch.Tensor:
        """Boolean membership guesses for ``data`` (needs a threshold)."""
        if self.threshold is None:
            raise ValueError("infer() needs a threshold: pass threshold=, or call fit() or calibrate() first")
        return self.score(model, data) >= self.threshold

    def evaluate(self, model, members: Dataset, nonmembers: Dataset) -> MIAReport:
        """Score known ``members`` and ``nonmembers`` and report AUC, TPR at low FPR and (with a
        threshold) TPR/FPR/advantage. Costs ``len(members) + len(nonmembers)`` queries."""
        before = getattr(model, "queries", 0)
        start = time.perf_counter()
        m_s, n_s = self._both_scores(model, members, nonmembers, "evaluate")
        return _report(
            self.name, m_s, n_s, getattr(model, "queries", 0) - before, time.perf_counter() - start,
            self.threshold, {"score": "-cross-entropy"},
        )

    def _both_scores(self, model, members, nonmembers, what):
        _check_model(model, self.name)
        _check_data(model, members, "members")
        _check_data(model, nonmembers, "nonmembers")
        need = len(members) + len(nonmembers)
        _check_budget(model, need, f"{self.name}.{what}", f"{len(members)} members + {len(nonmembers)} non-members")
        m_s = -_ce(_log_probs(model, members.x), members.y)
        n_s = -_ce(_log_probs(model, nonmembers.x), nonmembers.y)
        return m_s, n_s


def _best_threshold(member_scores: torch.Tensor, nonmember_scores: torch.Tensor) -> float:
    """The ROC threshold maximising TPR − FPR (balanced accuracy), as a finite number."""
    scores = torch.cat([member_scores, nonmember_scores])
    labels = torch.cat([torch.ones(len(member_scores)), torch.zeros(len(nonmember_scores))])
    fpr, tpr, thr = roc_curve(scores, labels)
    best = int((tpr - fpr)[1:].argmax()) + 1  # skip the +inf point
    return float(thr[best])


# -- shadow models --------------------------------------------------------------------------
TrainFn = Callable[[torch.nn.Module, Dataset], torch.nn.Module | None]


def _default_train(
    module: torch.nn.Module, data: Dataset, *, epochs: int, lr: float, batch_size: int,
    weight_decay: float, seed: int, device: str | torch.device,
) -> torch.nn.Module:
    """Adam on cross-entropy for ``epochs`` epochs; returns the module in eval mode."""
    module.to(device).train()
    opt = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay)
    for epoch in range(epochs):
        for x, y in data.batches(batch_size, shuffle=True, seed=seed * 100_003 + epoch):
            opt.zero_grad()
            F.cross_entropy(module(x.to(device)), y.to(device)).backward()
            opt.step()
    return module.eval()


def _features(log_probs: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Attack features: the sorted log-probability vector (clamped at −50), the logit-scaled
    confidence of the true class and of the top class, and the one-hot label."""
    lp = log_probs.double()
    sorted_lp = lp.sort(1, descending=True).values.clamp_min(-50.0)
    y = y.long().cpu()

    def scaled(col: torch.Tensor) -> torch.Tensor:  # log p − log(1 − p), stably
        p_log = lp.gather(1, col[:, None]).squeeze(1)
        rest = lp.scatter(1, col[:, None], float("-inf")).logsumexp(1)
        return (p_log - rest).clamp(-50.0, 50.0)

    conf_true = scaled(y)
    conf_top = scaled(lp.argmax(1))
    onehot = F.one_hot(y, num_classes).double()
    return torch.cat([sorted_lp, conf_true[:, None], conf_top[:, None], onehot], 1)


class ShadowModelMIA:
    """Shadow-model membership inference (Shokri et al. 2017).

    Parameters
    ----------
    model_factory: a callable returning a fresh, untrained ``nn.Module`` of the target's
        architecture (or the attacker's best guess of it).
    n_shadows: number of shadow models; ``fit`` splits its data into that many disjoint parts,
        each half "in" (trained on) and half "out".
    epochs, lr, batch_size, weight_decay: the default shadow training (Adam, cross-entropy);
        mimic the target's training. ``train_fn(module, data)`` replaces it entirely (it may
        return the trained module or train in place).
    attack_l2, attack_steps: the logistic-regression attack model's L2 penalty and LBFGS steps.
    seed: fixes the data split, the shadow initialisations and the batch order (the global
        torch RNG of the caller is left as it was).
    device: where shadow models train (``"cpu"`` by default).

    The default training feeds ``shadow_data.x`` batches straight to the module (image
    models); for anything else pass ``train_fn``.
    """

    name = "ShadowModelMIA"
    requires = "scores"

    def __init__(
        self,
        model_factory: Callable[[], torch.nn.Module],
        *,
        n_shadows: int = 4,
        epochs: int = 50,
        lr: float = 1e-3,
        batch_size: int = 64,
        weight_decay: float = 0.0,
        train_fn: TrainFn | None = None,
        attack_l2: float = 1e-3,
        attack_steps: int = 200,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        if not callable(model_factory):
            raise TypeError("model_factory must be a callable returning a fresh nn.Module")
        if not isinstance(n_shadows, int) or n_shadows < 1:
            raise ValueError(f"n_shadows must be a positive int, got {n_shadows!r}")
        if not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a positive int, got {epochs!r}")
        if train_fn is not None and not callable(train_fn):
            raise TypeError("train_fn must be a callable (module, data) -> module or None")
        self.model_factory = model_factory
        self.n_shadows = n_shadows
        self.epochs = epochs
        self.lr = float(lr)
        self.batch_size = int(batch_size)
        self.weight_decay = float(weight_decay)
        self.train_fn = train_fn
        self.attack_l2 = float(attack_l2)
        self.attack_steps = int(attack_steps)
        self.seed = seed
        self.device = torch.device(device)
        self.shadow_models_: list[torch.nn.Module] = []
        self.shadow_stats_: list[dict] = []
        self._weights: torch.Tensor | None = None
        self._mean = self._std = None
        self._num_classes: int | None = None

    def __repr__(self) -> str:
        state = "fitted" if self.fitted else "not fitted"
        return f"ShadowModelMIA(n_shadows={self.n_shadows}, epochs={self.epochs}, {state})"

    @property
    def fitted(self) -> bool:
        return self._weights is not None

    # -- training ----------------------------------------------------------------------------
    def fit(self, shadow_data: Dataset) -> ShadowModelMIA:
        """Train the shadow models and the attack model on ``shadow_data`` (the attacker's own
        data from the target's distribution, disjoint from what is evaluated). Sends nothing to
        the target model. Returns self."""
        if not isinstance(shadow_data, Dataset):
            raise TypeError(f"shadow_data: expected a maestro Dataset, got {type(shadow_data).__name__}")
        per = len(shadow_data) // self.n_shadows
        if per < 4:
            raise ValueError(
                f"{len(shadow_data)} examples cannot feed {self.n_shadows} shadow models (need ≥ 4 each)"
            )
        gen = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(len(shadow_data), generator=gen)
        feats, labels = [], []
        self.shadow_models_, self.shadow_stats_ = [], []
        for k in range(self.n_shadows):
            part = order[k * per : (k + 1) * per]
            d_in, d_out = shadow_data[part[: per // 2]], shadow_data[part[per // 2 :]]
            with torch.random.fork_rng(devices=[]):  # seeded, without touching the caller's RNG
                torch.manual_seed(self.seed * 1_000 + k)
                module = self.model_factory()
                if not isinstance(module, torch.nn.Module):
                    raise TypeError(f"model_factory returned {type(module).__name__}, not an nn.Module")
                if self.train_fn is not None:
                    module = self.train_fn(module, d_in) or module
                else:
                    module = _default_train(
                        module, d_in, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                        weight_decay=self.weight_decay, seed=self.seed * 1_000 + k, device=self.device,
                    )
            module.eval()
            lp_in, lp_out = self._shadow_log_probs(module, d_in), self._shadow_log_probs(module, d_out)
            self.shadow_models_.append(module)
            self.shadow_stats_.append({
                "n_in": len(d_in),
                "n_out": len(d_out),
                "train_accuracy": float((lp_in.argmax(1) == d_in.y).double().mean()),
                "test_accuracy": float((lp_out.argmax(1) == d_out.y).double().mean()),
            })
            feats += [_features(lp_in, d_in.y, shadow_data.num_classes),
                      _features(lp_out, d_out.y, shadow_data.num_classes)]
            labels += [torch.ones(len(d_in)), torch.zeros(len(d_out))]
        x = torch.cat(feats)
        t = torch.cat(labels).double()
        self._num_classes = shadow_data.num_classes
        self._mean = x.mean(0)
        self._std = x.std(0).clamp_min(1e-6)
        self._weights = _logistic_regression((x - self._mean) / self._std, t, self.attack_l2, self.attack_steps)
        return self

    def _shadow_log_probs(self, module: torch.nn.Module, data: Dataset) -> torch.Tensor:
        dev = next(module.parameters(), torch.empty(0, device=self.device)).device
        outs = []
        with torch.no_grad():
            for x, _ in data.batches(512):
                outs.append(torch.log_softmax(module(x.to(dev)).double(), -1).cpu())
        return torch.cat(outs)

    # -- attack ------------------------------------------------------------------------------
    def _attack_scores(self, log_probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = (_features(log_probs, y, self._num_classes) - self._mean) / self._std
        x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
        return x @ self._weights  # the attack model's logit: higher = more likely a member

    def _require_fitted(self, model) -> None:
        if not self.fitted:
            raise ValueError("ShadowModelMIA: call fit(shadow_data) before attacking a model")
        if model.num_classes != self._num_classes:
            raise ValueError(
                f"the shadow models have {self._num_classes} classes but the model has {model.num_classes}"
            )

    def score(self, model, data: Dataset) -> torch.Tensor:
        """The attack model's membership logits for ``data`` (``len(data)`` queries)."""
        _check_model(model, self.name)
        _check_data(model, data, "data")
        self._require_fitted(model)
        _check_budget(model, len(data), self.name, f"{len(data)} examples")
        return self._attack_scores(_log_probs(model, data.x), data.y)

    def infer(self, model, data: Dataset) -> torch.Tensor:
        """Boolean membership guesses (attack probability ≥ 0.5)."""
        return self.score(model, data) >= 0

    def evaluate(self, model, members: Dataset, nonmembers: Dataset) -> MIAReport:
        """Attack the target ``model`` on known ``members`` and ``nonmembers``; costs
        ``len(members) + len(nonmembers)`` queries (checked before anything is sent)."""
        _check_model(model, self.name)
        _check_data(model, members, "members")
        _check_data(model, nonmembers, "nonmembers")
        self._require_fitted(model)
        need = len(members) + len(nonmembers)
        _check_budget(model, need, f"{self.name}.evaluate", f"{len(members)} members + {len(nonmembers)} non-members")
        before = getattr(model, "queries", 0)
        start = time.perf_counter()
        m_s = self._attack_scores(_log_probs(model, members.x), members.y)
        n_s = self._attack_scores(_log_probs(model, nonmembers.x), nonmembers.y)
        return _report(
            self.name, m_s, n_s, getattr(model, "queries", 0) - before, time.perf_counter() - start,
            0.0, {"shadow_stats": list(self.shadow_stats_)},
        )


def _logistic_regression(x: torch.Tensor, t: torch.Tensor, l2: float, steps: int) -> torch.Tensor:
    """Weights (with the bias last) of an L2-regularised logistic regression, by LBFGS."""
    xb = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    w = torch.zeros(xb.shape[1], dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=max(1, steps), line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(xb @ w, t) + l2 * (w[:-1] ** 2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach()

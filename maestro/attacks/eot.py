"""EOT (Athalye et al. 2018): expectation over transformation for randomized defenses,
∇ₓ E_r[L(f_r(x), y)] ≈ (1/S) Σ_s ∇ₓ L(f_{r_s}(x), y), inside projected gradient steps.

The model's own forward pass supplies the randomness (e.g. ``RandomizedSmoothing.noisy``,
which adds Gaussian noise, or a TransformedModel with a random transform). Whether a point
is broken is decided by the majority vote of ``samples`` draws, the prediction of the
smoothed classifier. Passing a :class:`~maestro.defenses.RandomizedSmoothing` attacks its
noisy base classifier, i.e. the smoothed classifier g (Salman et al. 2019).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F

from .base import Attack
from .bpda import _check_iterations, _step_size, pgd_iterations


class EOT(Attack):
    """PGD on the gradient averaged over ``samples`` random draws of the model.

    ``loss="ce"`` is the cross-entropy of the *averaged* softmax, log E_r[softmax f_r(x)]
    (the smoothed soft classifier); ``"margin"`` or a callable average the per-draw loss.
    ``bpda=True`` also passes gradients straight through a TransformedModel's transforms.
    """

    name = "EOT"
    requires = "white-box"

    def __init__(
        self,
        threat,
        *,
        samples: int = 16,
        steps: int = 40,
        step_size: float | None = None,
        restarts: int = 1,
        random_start: bool = True,
        loss="ce",
        bpda: bool = False,
        targeted: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(threat, targeted=targeted, seed=seed)
        _check_iterations(steps, restarts)
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValueError(f"samples must be a positive int, got {samples!r}")
        self.samples, self.steps, self.restarts = samples, steps, restarts
        self.random_start = bool(random_start)
        self.step_size = _step_size(threat, steps, step_size)
        self.loss, self.bpda = loss, bool(bpda)

    def __call__(self, model, x, y, *, target=None):
        from ..defenses.smoothing import RandomizedSmoothing

        if isinstance(model, RandomizedSmoothing):
            model = model.noisy
        return super().__call__(model, x, y, target=target)

    def _votes(self, logits: torch.Tensor, n: int) -> torch.Tensor:
        k = logits.shape[1]
        pred = logits.argmax(1).view(self.samples, n)
        return F.one_hot(pred, k).sum(0).argmax(1)

    def _run(self, model, x, y, target):
        from ..defenses.transforms import TransformedModel

        goal = target if self.targeted else y
        s = self.samples
        ctx = model.straight_through() if self.bpda and isinstance(model, TransformedModel) else nullcontext()

        def step(xa: torch.Tensor, g: torch.Tensor):
            # chunks of examples whose s copies fit in one forward pass of the wrapper
            per = max(1, model.batch_size // s)
            grads, preds = [], []
            for start in range(0, len(xa), per):
                xc, gc = xa[start : start + per], g[start : start + per]
                n = len(xc)
                grad, logits = model.gradient(
                    xc.repeat(s, *[1] * (xc.dim() - 1)), gc.repeat(s), loss=self._loss(s, n, model),
                    targeted=self.targeted, return_logits=True,
                )
                grads.append(grad.view(s, n, *xc.shape[1:]).mean(0))
                preds.append(self._votes(logits, n))
            return torch.cat(grads), torch.cat(preds)

        def final(xa: torch.Tensor) -> torch.Tensor:
            per = max(1, model.batch_size // s)
            return torch.cat([
                self._votes(model.logits(xa[i : i + per].repeat(s, *[1] * (xa.dim() - 1))), len(xa[i : i + per]))
                for i in range(0, len(xa), per)
            ])

        with ctx:
            x_adv, success = pgd_iterations(self, x, y, target, goal, step, final)
        return x_adv, success, {"samples": s}

    def _loss(self, s: int, n: int, model):
        if self.loss != "ce":
            return self.loss
        if s * n > model.batch_size:  # the wrapper would split the copies: average per-draw CE
            return "ce"

        def averaged_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            # log of the mean softmax over the s draws of each example; spread evenly over
            # the draws so that summing per-row losses gives each example's loss once
            logp = logits.log_softmax(1).view(s, n, -1)
            mean_logp = torch.logsumexp(logp, 0) - torch.log(torch.tensor(float(s)))
            per_example = F.nll_loss(mean_logp, y.view(s, n)[0], reduction="none")
            return per_example.repeat(s) / s

        return averaged_ce

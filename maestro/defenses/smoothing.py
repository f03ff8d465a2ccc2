"""Randomized smoothing (Cohen, Rosenfeld & Kolter 2019): a certified L2 defense.

The smoothed classifier is g(x) = argmax_c P(f(x + N(0, σ²I)) = c) for the base classifier f.
If p_A̲ is a lower confidence bound on the top class's probability, g is constant on the L2
ball of radius R = σ · Φ⁻¹(p_A̲) around x. ``certify`` estimates p_A̲ with a one-sided
Clopper–Pearson bound from ``n`` noisy samples (the class chosen on ``n0`` separate samples);
``predict`` abstains (returns -1) unless a two-sided binomial test at level ``alpha`` says the
top class beats the runner-up. Noise for many examples is drawn and classified in one batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..wrapper import ModelWrapper

ABSTAIN = -1


class GaussianNoise(torch.nn.Module):
    """``base(x + σ·ε)``, ε ~ N(0, I) drawn fresh on every call from its own generator (so a
    run is reproducible for a seed). No clipping: smoothing is defined on the raw noise."""

    def __init__(self, base: torch.nn.Module, sigma: float, seed: int = 0) -> None:
        super().__init__()
        self.base = base
        self.sigma = float(sigma)
        self.seed = seed
        self._gen: dict[str, torch.Generator] = {}

    def generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._gen:
            self._gen[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._gen[key]

    def reseed(self, seed: int) -> None:
        self.seed = seed
        self._gen.clear()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=self.generator(x.device), device=x.device, dtype=x.dtype)
        return self.base(x + self.sigma * noise)


@dataclass
class Certificate:
    """What ``certify`` found per example: ``prediction`` (-1 = abstain), certified L2
    ``radius`` (0 where abstaining), the lower bound ``p_lower`` and the top-class count."""

    prediction: torch.Tensor
    radius: torch.Tensor
    p_lower: torch.Tensor
    count: torch.Tensor

    def __iter__(self):  # prediction, radius = rs.certify(x)
        return iter((self.prediction, self.radius))


class RandomizedSmoothing:
    """The smoothed classifier of ``base`` (a white-box :class:`ModelWrapper`, owned by the
    defender) under Gaussian noise of standard deviation ``sigma`` (input units).

    ``predict(x)`` → labels, -1 where it abstains; ``certify(x)`` → (prediction, radius);
    both (and ``counts``) return CPU tensors, whatever the device of the base model, which
    draws and classifies the noise on its own device. ``noisy`` is a ModelWrapper of the
    randomized base classifier x ↦ f(x + σε): attack it with :class:`~maestro.attacks.EOT`
    to attack g (Salman et al. 2019).
    """

    def __init__(
        self,
        base: ModelWrapper,
        sigma: float,
        *,
        n0: int = 100,
        n: int = 1000,
        alpha: float = 0.001,
        batch_size: int = 1000,
        seed: int = 0,
    ) -> None:
        if not isinstance(base, ModelWrapper):
            raise TypeError(f"base: expected a maestro ModelWrapper, got {type(base).__name__}")
        if base.modality != "image":
            raise TypeError("randomized smoothing adds Gaussian noise to images; this is a text model")
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0:
            raise ValueError(f"sigma must be a positive number, got {sigma!r}")
        for arg, v in (("n0", n0), ("n", n), ("batch_size", batch_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{arg} must be a positive int, got {v!r}")
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
        self.base = base
        self.sigma = float(sigma)
        self.n0, self.n, self.alpha, self.batch_size = n0, n, float(alpha), batch_size
        self.seed = seed
        self._noise = GaussianNoise(base.model, self.sigma, seed)
        self.noisy = ModelWrapper(
            self._noise,
            modality="image",
            num_classes=base.num_classes,
            input_shape=base.input_shape,
            input_bounds=base.input_bounds,
            access=base.access,
            batch_size=batch_size,
            classes=base.classes,
            name=f"{base.name or 'model'} + N(0, {self.sigma:g}²)",
            info={**base.info, "defense": f"gaussian noise sigma={self.sigma:g}"},
        )

    @property
    def num_classes(self) -> int:
        return self.base.num_classes

    @property
    def queries(self) -> int:
        """Noisy samples classified so far."""
        return self.noisy.queries

    def __repr__(self) -> str:
        return (f"RandomizedSmoothing({self.base.name or 'model'}, sigma={self.sigma:g}, n0={self.n0}, "
                f"n={self.n}, alpha={self.alpha:g})")

    def reseed(self, seed: int) -> None:
        """Restart the noise stream from ``seed``."""
        self.seed = seed
        self._noise.reseed(seed)

    # -- sampling ------------------------------------------------------------------------
    def counts(self, x, num: int) -> torch.Tensor:
        """Class counts N×K of f(x_i + σε) over ``num`` noise draws per example, all examples'
        draws classified together in batches of ``batch_size``."""
        x = self.noisy.prepare_inputs(x)
        k = self.num_classes
        total = len(x) * num
        owner = torch.arange(len(x), device=x.device).repeat_interleave(num)
        out = torch.zeros(len(x) * k, dtype=torch.long, device=x.device)
        for start in range(0, total, self.batch_size):
            idx = owner[start : start + self.batch_size]
            pred = self.noisy.predict(x[idx])
            out.index_add_(0, idx * k + pred, torch.ones_like(pred))
        return out.view(len(x), k).cpu()

    # -- the two procedures of Cohen et al. ---------------------------------------------
    def predict(self, x, *, n: int | None = None, alpha: float | None = None) -> torch.Tensor:
        """g(x) with abstention: the top class of ``n`` noisy draws if a two-sided binomial
        test of its count against the runner-up's rejects equality at ``alpha``, else -1."""
        n = n or self.n
        alpha = self.alpha if alpha is None else alpha
        counts = self.counts(x, n)
        top2 = counts.topk(2, dim=1)
        n_a, n_b = top2.values[:, 0], top2.values[:, 1]
        p = _binom_two_sided_p(n_a, n_a + n_b)
        return torch.where(p <= alpha, top2.indices[:, 0], torch.full_like(n_a, ABSTAIN))

    def certify(self, x, *, n0: int | None = None, n: int | None = None,
                alpha: float | None = None) -> Certificate:
        """(prediction, radius): the class chosen on ``n0`` draws, and R = σ·Φ⁻¹(p_A̲) with
        p_A̲ the (1 − alpha) Clopper–Pearson lower bound from ``n`` fresh draws; -1 and 0
        where p_A̲ < ½."""
        n0, n = n0 or self.n0, n or self.n
        alpha = self.alpha if alpha is None else alpha
        guess = self.counts(x, n0).argmax(1)
        counts = self.counts(x, n)
        n_a = counts.gather(1, guess[:, None]).squeeze(1)
        p_lower = clopper_pearson_lower(n_a, n, alpha)
        ok = p_lower > 0.5
        normal = torch.distributions.Normal(0.0, 1.0)
        radius = torch.where(ok, self.sigma * normal.icdf(p_lower.clamp(0.5, 1 - 1e-12).double()).float(),
                             torch.zeros_like(p_lower))
        pred = torch.where(ok, guess, torch.full_like(guess, ABSTAIN))
        return Certificate(prediction=pred, radius=radius, p_lower=p_lower, count=n_a)


def clopper_pearson_lower(successes, trials: int, alpha: float) -> torch.Tensor:
    """One-sided (1 − alpha) lower confidence bound on a binomial proportion:
    the alpha quantile of Beta(k, n − k + 1) (0 when k = 0)."""
    from scipy.stats import beta

    k = torch.as_tensor(successes).double().cpu().numpy()
    lower = beta.ppf(alpha, k, trials - k + 1)
    lower = torch.from_numpy(lower).float()
    return torch.nan_to_num(torch.where(torch.as_tensor(k) == 0, torch.zeros_like(lower), lower), nan=0.0)


def _binom_two_sided_p(k: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Two-sided p-value of ``k`` (the larger of two counts) in ``n`` trials under p = ½, as
    scipy's ``binomtest``: the distribution is symmetric, so twice the upper tail."""
    from scipy.stats import binom

    k_np, n_np = k.double().cpu().numpy(), n.double().cpu().numpy()
    p = torch.from_numpy(2 * binom.sf(k_np - 1, n_np, 0.5)).clamp(max=1.0)
    return torch.where(torch.from_numpy(n_np) == 0, torch.ones_like(p), p)

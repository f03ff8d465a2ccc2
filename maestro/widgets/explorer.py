"""The perturbation explorer: an eps slider, an attack picker and an example slider over a batch
of images; shows the original, the adversarial image, the perturbation amplified to be visible,
and the model's class probabilities before and after.

The attack runs on the whole batch at once (batched tensors), once per (attack, eps): moving the
example slider or returning to an earlier setting reuses the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..threat import ThreatModel
from ._base import AttackWidget, check_model, pick_attacks, probabilities, split_data
from ._render import draw_image, esc, figure_png, new_figure

_NORM_NAMES = {"linf": "L∞", "l2": "L2"}
CLEAN, ADV = "#4c72b0", "#c44e52"


def _default_attacks(steps: int, seed: int):
    from ..attacks import FGSM, PGD, RandomNoise, SquareAttack

    return {
        "FGSM": (FGSM, lambda t: FGSM(t)),
        "PGD": (PGD, lambda t: PGD(t, steps=steps, seed=seed)),
        # score-based, for models offered at "scores" access (white-box models get PGD)
        "SquareAttack": (SquareAttack, lambda t: SquareAttack(t, max_queries=300, seed=seed)),
        "RandomNoise": (RandomNoise, lambda t: RandomNoise(t, seed=seed)),
    }


@dataclass
class _Run:
    x_adv: torch.Tensor
    probs: torch.Tensor
    result: object  # AttackResult, or None for eps = 0


def perturbation_figure(x, x_adv, p_clean, p_adv, classes=None, *, label=None, bounds=(0.0, 1.0),
                        amplify: float | None = None, top: int = 10, title: str | None = None):
    """One example as a matplotlib Figure: original, adversarial, the perturbation amplified
    (``amplify``; default: scaled so its largest pixel change spans half the range) and
    horizontal probability bars, original vs adversarial, for the ``top`` most likely classes.

    ``x``, ``x_adv``: C×H×W images; ``p_clean``, ``p_adv``: K class probabilities.
    """
    x, x_adv = x.detach().float().cpu(), x_adv.detach().float().cpu()
    if x.shape != x_adv.shape:
        raise ValueError(f"x and x_adv differ in shape: {tuple(x.shape)} vs {tuple(x_adv.shape)}")
    p_clean, p_adv = (torch.as_tensor(p).detach().float().cpu().flatten() for p in (p_clean, p_adv))
    k = len(p_clean)
    if len(p_adv) != k:
        raise ValueError(f"p_clean has {k} classes, p_adv {len(p_adv)}")
    classes = list(classes) if classes is not None else [str(i) for i in range(k)]
    lo, hi = (float(b) for b in bounds)
    pred, pred_adv = int(p_clean.argmax()), int(p_adv.argmax())

    fig = new_figure((10.0, 2.9))
    grid = fig.add_gridspec(1, 4, width_ratios=[1, 1, 1, 1.7])
    axes = [fig.add_subplot(grid[0, i]) for i in range(4)]
    draw_image(axes[0], x, (lo, hi), f"original\nread as {classes[pred]} ({p_clean[pred]:.0%})")
    fooled = pred_adv != (label if label is not None else pred)
    draw_image(axes[1], x_adv, (lo, hi), f"adversarial\n{'fooled: ' if fooled else ''}read as "
               f"{classes[pred_adv]} ({p_adv[pred_adv]:.0%})", color=ADV if fooled else "black")
    delta = x_adv - x
    biggest = float(delta.abs().max())
    if amplify is None:
        amplify = 0.5 * (hi - lo) / biggest if biggest > 0 else 1.0
    shown = (lo + hi) / 2 + amplify * delta
    draw_image(axes[2], shown.clamp(lo, hi), (lo, hi),
               f"perturbation ×{amplify:.3g}\n(grey = unchanged)" if biggest > 0 else "no perturbation")

    ax = axes[3]
    order = sorted(range(k), key=lambda i: -max(float(p_clean[i]), float(p_adv[i])))[:top]
    order.sort()
    pos = torch.arange(len(order), dtype=torch.float32).numpy()
    ax.barh(pos - 0.2, [float(p_clean[i]) for i in order], height=0.4, color=CLEAN, label="original")
    ax.barh(pos + 0.2, [float(p_adv[i]) for i in order], height=0.4, color=ADV, label="adversarial")
    ax.set_yticks(pos)
    ax.set_yticklabels([classes[i] + (" ✓" if label is not None and i == label else "") for i in order],
                       fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("predicted probability" + (" (✓ true class)" if label is not None else ""), fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


class PerturbationExplorer(AttackWidget):
    """An interactive view of adversarial examples for a batch of images.

    ``model``: an image ModelWrapper; ``x``: N×C×H×W images (or a Dataset) and ``y`` their labels
    (``None``: the model's predictions). ``attacks``: ``None`` (every default attack the model's
    access allows: FGSM, PGD, RandomNoise for white-box; SquareAttack, RandomNoise for scores),
    a list of default names, or a mapping ``name -> factory(ThreatModel) -> attack``.
    ``eps`` / ``eps_max``: the slider's start and end in input units of ``norm`` (``"linf"``
    or ``"l2"``). ``steps``, ``seed``: PGD's settings. Queries go through ``model``, so they
    count against its budget.

    ``widget`` is the ipywidgets box (shown when the explorer is the cell's value or passed
    to ``display``); ``attack_picker``, ``eps_slider`` and ``index_slider`` are its controls,
    ``image`` the picture; ``figure`` and ``current`` hold what is shown.
    """

    def __init__(self, model, x, y=None, *, attacks=None, eps: float | None = None,
                 eps_max: float | None = None, norm: str = "linf", index: int = 0, steps: int = 10,
                 seed: int = 0, amplify: float | None = None) -> None:
        import ipywidgets as W

        check_model(model, "image", "PerturbationExplorer", "TextAttackViewer")
        if norm not in _NORM_NAMES:
            raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
        self.model, self.norm, self.amplify = model, norm, amplify
        self.x, self.y, self.classes = split_data(model, x, y)
        n = len(self.x)
        lo, hi = model.input_bounds
        scale = (hi - lo) * (1.0 if norm == "linf" else float(self.x[0].numel()) ** 0.5)
        eps_max = float(eps_max) if eps_max is not None else (0.5 if norm == "linf" else 0.25) * scale
        eps = float(eps) if eps is not None else min((0.1 if norm == "linf" else 0.05) * scale, eps_max)
        if not 0 < eps_max or not 0 <= eps <= eps_max:
            raise ValueError(f"need 0 ≤ eps ≤ eps_max and eps_max > 0, got eps={eps}, eps_max={eps_max}")
        if not isinstance(index, int) or not 0 <= index < n:
            raise ValueError(f"index must be an int in [0, {n - 1}], got {index!r}")
        self.factories = pick_attacks(attacks, _default_attacks(steps, seed), model, norm)
        self._runs: dict[tuple[str, float], _Run] = {}
        self._p_clean = probabilities(model, self.x)

        self.attack_picker = W.Dropdown(options=list(self.factories), description="attack")
        self.eps_slider = W.FloatSlider(value=eps, min=0.0, max=eps_max, step=eps_max / 50,
                                        description=f"eps ({_NORM_NAMES[norm]})", readout_format=".3f",
                                        continuous_update=False, style={"description_width": "initial"})
        self.index_slider = W.IntSlider(value=index, min=0, max=max(n - 1, 1), description="example",
                                        continuous_update=False, disabled=n == 1)
        self.status = W.HTML()
        self.image = W.Image(format="png")
        self.widget = W.VBox([W.HBox([self.attack_picker, self.eps_slider, self.index_slider]),
                              self.status, self.image])
        self.widget.add_class("maestro-perturbation-explorer")
        self.figure = None
        self.update()  # the first view: errors raise here, later ones show in the widget
        for control in (self.attack_picker, self.eps_slider, self.index_slider):
            control.observe(self._on_change, names="value")

    @property
    def description(self) -> str:
        return f"{getattr(self.model, 'name', '') or 'model'}, {len(self.x)} images"

    def threat(self, eps: float) -> ThreatModel:
        return ThreatModel(self.norm, float(eps), bounds=tuple(self.model.input_bounds), access=self.model.access)

    def run(self, attack: str, eps: float) -> _Run:
        """The attack ``attack`` at ``eps`` on the whole batch (cached)."""
        key = (attack, round(float(eps), 10))
        if key not in self._runs:
            if key[1] == 0:
                self._runs[key] = _Run(self.x, self._p_clean, None)
            else:
                threat = self.threat(key[1])
                result = self.factories[attack](threat)(self.model, self.x, self.y)
                threat.check(self.x, result.x_adv)
                self._runs[key] = _Run(result.x_adv.detach(), probabilities(self.model, result.x_adv), result)
        return self._runs[key]

    @property
    def current(self) -> _Run:
        return self.run(self.attack_picker.value, self.eps_slider.value)

    def update(self) -> None:
        attack, eps, i = self.attack_picker.value, float(self.eps_slider.value), int(self.index_slider.value)
        i = min(i, len(self.x) - 1)
        run = self.run(attack, eps)
        label = int(self.y[i])
        self.figure = perturbation_figure(
            self.x[i], run.x_adv[i], self._p_clean[i], run.probs[i], self.classes, label=label,
            bounds=self.model.input_bounds, amplify=self.amplify)
        self.image.value = figure_png(self.figure)
        n = len(self.x)
        clean_ok = int((self._p_clean.argmax(1) == self.y).sum())
        adv_ok = int((run.probs.argmax(1) == self.y).sum())
        extra = f"; {run.result.queries} queries, {run.result.time:.2f} s" if run.result is not None else ""
        self.summary = (f"{attack} at eps = {eps:.4g} ({_NORM_NAMES[self.norm]}): accuracy on the batch of {n}: "
                        f"clean {clean_ok}/{n}, under attack {adv_ok}/{n}{extra}")
        self.status.value = f'<div class="maestro-status">{esc(self.summary)}</div>'

"""BadNets (Gu et al. 2017): a data-poisoning backdoor.

The attacker stamps a small trigger on a random subset of the training images that are *not*
of the target class and relabels them to the target class. A model trained on the poisoned
set keeps its clean accuracy but predicts the target class on any image carrying the
trigger::

    attack = BadNets("square", size=3, target_class=0, poison_rate=0.05, seed=0)
    poisoned, idx = attack.poison(train)          # Dataset, LongTensor of poisoned rows
    model = train_somehow(poisoned)               # the victim trains on it
    report = attack.evaluate(model, test, reference=clean_model)
    report.attack_success_rate, report.clean_accuracy, report.clean_accuracy_drop

This is a training-time attack, not an evasion attack: it does not subclass
:class:`~maestro.attacks.base.Attack`. ``evaluate`` needs only ``labels`` access and counts its
queries through the wrapper (it checks the budget before sending anything).

The backdoor unit's recipe lives here too, shared by its grader and its notebook:
:func:`train_victim` (a fresh zoo architecture trained with the zoo's recipe, seeded),
:func:`triggered` (stamp a pattern through a mask) and :func:`suspect_set` (a poisoned training
set with decoys, made like the grader's, for practising detection).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..datasets.base import Dataset
from ..errors import QueryBudgetExceeded

_POSITIONS = ("bottom-right", "bottom-left", "top-right", "top-left", "center")


@dataclass
class BackdoorReport:
    """How well a backdoor works on a model.

    ``clean_accuracy``: accuracy on the clean test set. ``attack_success_rate``: fraction of
    triggered test images whose true class is not the target that the model assigns to the
    target class. With a ``reference`` (a model trained on clean data) also its clean accuracy
    and its "success rate" on the same triggered images (the base rate a trigger reaches
    without any backdoor). Accuracies are fractions in [0, 1]; ``queries`` counts inputs sent.
    """

    clean_accuracy: float
    attack_success_rate: float
    target_class: int
    n_clean: int
    n_triggered: int
    queries: int
    reference_clean_accuracy: float | None = None
    reference_attack_success_rate: float | None = None
    info: dict = field(default_factory=dict)

    @property
    def clean_accuracy_drop(self) -> float | None:
        """Reference clean accuracy − backdoored clean accuracy, in percentage points."""
        if self.reference_clean_accuracy is None:
            return None
        return 100.0 * (self.reference_clean_accuracy - self.clean_accuracy)

    def __repr__(self) -> str:
        ref = ""
        if self.reference_clean_accuracy is not None:
            ref = (
                f", reference clean acc {self.reference_clean_accuracy:.1%} "
                f"(drop {self.clean_accuracy_drop:+.1f} pts), reference ASR "
                f"{self.reference_attack_success_rate:.1%}"
            )
        return (
            f"BackdoorReport(target {self.target_class}: ASR {self.attack_success_rate:.1%} on "
            f"{self.n_triggered} triggered, clean acc {self.clean_accuracy:.1%} on {self.n_clean}"
            f"{ref}, queries {self.queries})"
        )


class BadNets:
    """A BadNets trigger and poisoning recipe.

    Parameters
    ----------
    trigger: ``"square"`` (a solid patch of ``value``), ``"checkerboard"`` (alternating
        ``value`` / 0), or a pattern tensor (h×w, C×h×w, or the full C×H×W image size) whose
        values lie in [0, 1].
    mask: for a tensor trigger, where it is stamped (same shape as the pattern, values in
        [0, 1], 1 = replace the pixel); default: everywhere the pattern is.
    size: side of the square/checkerboard patch in pixels.
    position: ``"bottom-right"`` (default), ``"bottom-left"``, ``"top-right"``,
        ``"top-left"``, ``"center"``, or ``(row, col)`` of the patch's top-left corner.
    margin: pixels between the patch and the image border for the corner positions.
    target_class: the class triggered images are relabelled to.
    poison_rate: fraction of the *whole* training set to poison (taken from the examples
        whose class is not the target).
    value: the pixel value of the built-in triggers.
    seed: fixes which examples are poisoned.
    """

    name = "BadNets"

    def __init__(
        self,
        trigger: str | torch.Tensor = "square",
        *,
        mask: torch.Tensor | None = None,
        size: int = 3,
        position: str | tuple[int, int] = "bottom-right",
        margin: int = 0,
        target_class: int = 0,
        poison_rate: float = 0.1,
        value: float = 1.0,
        seed: int = 0,
    ) -> None:
        if isinstance(trigger, str):
            if trigger not in ("square", "checkerboard"):
                raise ValueError(f"trigger must be 'square', 'checkerboard' or a tensor, got {trigger!r}")
            if mask is not None:
                raise ValueError("mask= is only for a tensor trigger")
            if not isinstance(size, int) or size < 1:
                raise ValueError(f"size must be a positive int, got {size!r}")
        elif isinstance(trigger, torch.Tensor):
            if not trigger.is_floating_point() or trigger.dim() not in (2, 3):
                raise TypeError("a tensor trigger must be a float tensor h×w or C×h×w")
            if float(trigger.min()) < 0 or float(trigger.max()) > 1:
                raise ValueError("a tensor trigger's values must lie in [0, 1]")
            if mask is not None:
                mask = torch.as_tensor(mask, dtype=torch.float32)
                if mask.shape != trigger.shape:
                    raise ValueError(
                        f"mask shape {tuple(mask.shape)} does not match trigger shape {tuple(trigger.shape)}"
                    )
                if float(mask.min()) < 0 or float(mask.max()) > 1:
                    raise ValueError("mask values must lie in [0, 1]")
        else:
            raise TypeError(f"trigger: expected 'square', 'checkerboard' or a tensor, got {type(trigger).__name__}")
        if isinstance(position, str):
            if position not in _POSITIONS:
                raise ValueError(f"position must be one of {', '.join(_POSITIONS)} or (row, col); got {position!r}")
        elif not (isinstance(position, tuple) and len(position) == 2 and all(isinstance(p, int) for p in position)):
            raise TypeError(f"position: expected a name or a (row, col) tuple of ints, got {position!r}")
        if isinstance(target_class, bool) or not isinstance(target_class, int) or target_class < 0:
            raise ValueError(f"target_class must be a non-negative int, got {target_class!r}")
        if not 0.0 < float(poison_rate) < 1.0:
            raise ValueError(f"poison_rate must lie in (0, 1), got {poison_rate!r}")
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"value must lie in [0, 1], got {value!r}")
        if not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}")
        self.trigger = trigger
        self.mask = mask
        self.size = size
        self.position = position
        self.margin = int(margin)
        self.target_class = target_class
        self.poison_rate = float(poison_rate)
        self.value = float(value)
        self.seed = seed

    def __repr__(self) -> str:
        kind = self.trigger if isinstance(self.trigger, str) else f"tensor{tuple(self.trigger.shape)}"
        return (
            f"BadNets(trigger={kind}, size={self.size}, position={self.position!r}, "
            f"target_class={self.target_class}, poison_rate={self.poison_rate}, seed={self.seed})"
        )

    # -- the trigger -----------------------------------------------------------------------
    def pattern_and_mask(self, image_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """The full-size C×H×W pattern and mask stamped on images of ``image_shape``."""
        if len(image_shape) != 3:
            raise ValueError(f"image_shape must be C×H×W, got {tuple(image_shape)}")
        c, h, w = (int(s) for s in image_shape)
        if isinstance(self.trigger, str):
            s = self.size
            patch = torch.full((s, s), self.value)
            if self.trigger == "checkerboard":
                ii, jj = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
                patch = patch * ((ii + jj) % 2 == 0).float()
            patch = patch.expand(c, s, s)
            pmask = torch.ones(c, s, s)
        else:
            patch = self.trigger.float().cpu()
            if patch.dim() == 2:
                patch = patch.expand(c, *patch.shape)
            if self.mask is not None:
                pmask = self.mask.float().cpu()
                if pmask.dim() == 2:
                    pmask = pmask.expand(c, *pmask.shape)
            else:
                pmask = torch.ones_like(patch)
            if patch.shape[0] != c:
                raise ValueError(f"the trigger has {patch.shape[0]} channels but the images have {c}")
        ph, pw = patch.shape[1:]
        if ph > h or pw > w:
            raise ValueError(f"the {ph}×{pw} trigger does not fit in {h}×{w} images")
        top, left = self._corner(h, w, ph, pw)
        pattern = torch.zeros(c, h, w)
        mask = torch.zeros(c, h, w)
        pattern[:, top : top + ph, left : left + pw] = patch
        mask[:, top : top + ph, left : left + pw] = pmask
        return pattern, mask

    def _corner(self, h: int, w: int, ph: int, pw: int) -> tuple[int, int]:
        m = self.margin
        if isinstance(self.position, tuple):
            top, left = self.position
        elif self.position == "center":
            top, left = (h - ph) // 2, (w - pw) // 2
        else:
            vert, horiz = self.position.split("-")
            top = m if vert == "top" else h - ph - m
            left = m if horiz == "left" else w - pw - m
        if top < 0 or left < 0 or top + ph > h or left + pw > w:
            raise ValueError(f"a {ph}×{pw} trigger at (row {top}, col {left}) does not fit in {h}×{w} images")
        return top, left

    def apply(self, x: torch.Tensor | Dataset) -> torch.Tensor:
        """``x`` (N×C×H×W in [0, 1], or an image Dataset) with the trigger stamped on every image."""
        if isinstance(x, Dataset):
            if x.modality != "image":
                raise TypeError("BadNets stamps triggers on images; this is a text Dataset")
            x = x.x
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 4:
            raise TypeError("apply(x): expected a float tensor N×C×H×W")
        pattern, mask = self.pattern_and_mask(tuple(x.shape[1:]))
        pattern, mask = pattern.to(x.device, x.dtype), mask.to(x.device, x.dtype)
        return x * (1 - mask) + pattern * mask

    # -- poisoning -------------------------------------------------------------------------
    def poison(self, train: Dataset) -> tuple[Dataset, torch.Tensor]:
        """A copy of ``train`` with ``round(poison_rate · N)`` non-target examples triggered and
        relabelled to the target; returns ``(poisoned, poisoned_indices)`` (sorted LongTensor)."""
        self._check_dataset(train, "train")
        candidates = (train.y != self.target_class).nonzero().flatten()
        n_poison = round(self.poison_rate * len(train))
        if n_poison < 1:
            raise ValueError(f"poison_rate {self.poison_rate} of {len(train)} examples poisons nothing")
        if n_poison > len(candidates):
            raise ValueError(
                f"poison_rate {self.poison_rate} asks for {n_poison} examples but only "
                f"{len(candidates)} are outside the target class"
            )
        gen = torch.Generator().manual_seed(self.seed)
        chosen = candidates[torch.randperm(len(candidates), generator=gen)[:n_poison]]
        idx = chosen.sort().values
        x = train.x.clone()
        y = train.y.clone()
        x[idx] = self.apply(x[idx])
        y[idx] = self.target_class
        info = {
            **train.info,
            "backdoor": {
                "attack": repr(self),
                "target_class": self.target_class,
                "poison_rate": self.poison_rate,
                "n_poisoned": n_poison,
            },
        }
        return Dataset(x, y, list(train.classes), train.name, train.split, info), idx

    # -- evaluation ------------------------------------------------------------------------
    def evaluate(self, model, clean_test: Dataset, *, reference=None) -> BackdoorReport:
        """Clean accuracy on ``clean_test`` and attack success rate on its triggered non-target
        images; with ``reference`` (a wrapper of a clean-trained model) the same numbers for it.

        Uses ``model.predict`` (any access level). Queries: ``len(clean_test)`` plus the number
        of non-target test images, per model; checked against each budget before anything runs.
        """
        self._check_dataset(clean_test, "clean_test")
        keep = clean_test.y != self.target_class
        if not bool(keep.any()):
            raise ValueError("clean_test has no example outside the target class: no success rate to measure")
        x_trig = self.apply(clean_test.x[keep])
        need = len(clean_test) + len(x_trig)
        models = [("model", model)] + ([("reference", reference)] if reference is not None else [])
        for label, m in models:
            _check_model(m, label, clean_test)
            remaining = getattr(m, "remaining", None)
            if remaining is not None and remaining < need:
                raise QueryBudgetExceeded(
                    f"BadNets.evaluate needs {need} queries of {label} ({len(clean_test)} clean + "
                    f"{len(x_trig)} triggered) but its budget has {remaining} left; nothing was run"
                )

        def measure(m) -> tuple[float, float, int]:
            before = m.queries
            pred = m.predict(clean_test.x).cpu()
            acc = float((pred == clean_test.y).float().mean())
            asr = float((m.predict(x_trig).cpu() == self.target_class).float().mean())
            return acc, asr, m.queries - before

        acc, asr, queries = measure(model)
        ref_acc = ref_asr = None
        if reference is not None:
            ref_acc, ref_asr, _ = measure(reference)
        return BackdoorReport(
            clean_accuracy=acc,
            attack_success_rate=asr,
            target_class=self.target_class,
            n_clean=len(clean_test),
            n_triggered=len(x_trig),
            queries=queries,
            reference_clean_accuracy=ref_acc,
            reference_attack_success_rate=ref_asr,
            info={"attack": repr(self)},
        )

    def _check_dataset(self, data: Dataset, arg: str) -> None:
        if not isinstance(data, Dataset):
            raise TypeError(f"{arg}: expected a maestro Dataset, got {type(data).__name__}")
        if data.modality != "image":
            raise TypeError(f"{arg}: BadNets poisons image data; this Dataset holds text")
        if self.target_class >= data.num_classes:
            raise ValueError(f"target_class {self.target_class} is not one of the {data.num_classes} classes of {arg}")
        if len(data) == 0:
            raise ValueError(f"{arg} is empty")


def clean_accuracy_cost(backdoored, clean, test: Dataset) -> float:
    """Clean accuracy of ``clean`` minus that of ``backdoored`` on ``test``, in percentage points
    (positive: the backdoor cost accuracy). Both are model wrappers; uses ``predict``."""
    if not isinstance(test, Dataset):
        raise TypeError(f"test: expected a maestro Dataset, got {type(test).__name__}")
    accs = []
    for label, m in (("backdoored", backdoored), ("clean", clean)):
        _check_model(m, label, test)
        remaining = getattr(m, "remaining", None)
        if remaining is not None and remaining < len(test):
            raise QueryBudgetExceeded(
                f"clean_accuracy_cost needs {len(test)} queries of the {label} model but its budget "
                f"has {remaining} left; nothing was run"
            )
    for m in (backdoored, clean):
        accs.append(float((m.predict(test.x).cpu() == test.y).float().mean()))
    return 100.0 * (accs[1] - accs[0])


def _check_model(model, label: str, data: Dataset) -> None:
    if not all(hasattr(model, a) for a in ("predict", "queries", "num_classes")):
        raise TypeError(f"{label}: expected a maestro ModelWrapper, got {type(model).__name__}")
    if model.num_classes != data.num_classes:
        raise ValueError(f"{label} has {model.num_classes} classes but the data has {data.num_classes}")


# -- a backdoor course unit's recipe (assignment 07: the grader and the notebook share these) ---
SUSPECT_PATCH = 3  # side of the random trigger suspect_set poisons with


def train_victim(x, y, seed: int, *, model: str = "mlp-digits", epochs: int = 20, home=None):
    """A fresh ``model`` architecture (a zoo image model's) trained on ``(x, y)`` with the zoo's
    recipe for it (Adam, cosine schedule, its batch size, learning rate and weight decay) for
    ``epochs`` epochs; initialisation and batch order fixed by ``seed``; one torch thread.
    Returns the torch module in eval mode. The grader trains its victims with exactly this.
    The global torch RNG is left as it was (the seed is applied inside a forked RNG state)."""
    from .. import models
    from ..models.archs import build_arch
    from ..models.train import fit, num_threads, shuffled
    from ..models.zoo import ZOO

    entry = ZOO[model]
    info = models.info(model, home=home)
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).float()
    y = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y).long()
    t = entry.training
    with num_threads(1), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = build_arch(info["arch"], info["config"])
        fit(module, module,
            lambda epoch: ((x[i], y[i]) for i in shuffled(len(x), t["batch_size"], seed * 1000 + epoch)),
            epochs=epochs, lr=t["lr"], weight_decay=t["weight_decay"], progress=False)
    return module.eval()


def triggered(x: torch.Tensor, pattern: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x · (1 − mask) + pattern · mask``: the trigger stamped on every image of ``x``."""
    return x * (1 - mask) + pattern * mask


def suspect_set(train, gen: torch.Generator | int, *, poison: tuple[int, int] = (24, 40),
                label_noise: float = 0.05, pixel_noise: float = 0.03):
    """A poisoned training set made like the grader's (the defense's suspect set) from the
    Dataset ``train``: ``(x, y, poisoned, attack)`` — images and labels in a random order, the
    boolean mask of the rows carrying the trigger, and the :class:`maestro.attacks.BadNets`
    that planted it (a random binary 3×3 patch at a random place, a random target class,
    between ``poison[0]`` and ``poison[1]`` rows). A share ``label_noise`` of the other rows gets
    a random wrong label (decoys: mislabelled, not poisoned) and every row N(0, ``pixel_noise``²)
    noise. ``gen``: a torch.Generator or a seed; the grader's is drawn from the course secret,
    a notebook makes practice sets with its own seeds."""
    if isinstance(gen, int):
        gen = torch.Generator().manual_seed(gen)
    c, h, w = train.x.shape[1:]
    target = int(torch.randint(train.num_classes, (1,), generator=gen))
    n_poison = int(torch.randint(poison[0], poison[1] + 1, (1,), generator=gen))
    top = int(torch.randint(h - SUSPECT_PATCH + 1, (1,), generator=gen))
    left = int(torch.randint(w - SUSPECT_PATCH + 1, (1,), generator=gen))
    while True:
        patch = (torch.rand(SUSPECT_PATCH, SUSPECT_PATCH, generator=gen) > 0.5).float()
        if 3 <= int(patch.sum()) <= SUSPECT_PATCH * SUSPECT_PATCH - 2:
            break
    attack = BadNets(patch, position=(top, left), target_class=target, poison_rate=n_poison / len(train),
                     seed=int(torch.randint(2**31 - 1, (1,), generator=gen)))
    poisoned_set, idx = attack.poison(train)
    x, y = poisoned_set.x.clone(), poisoned_set.y.clone()
    poisoned = torch.zeros(len(train), dtype=torch.bool)
    poisoned[idx] = True
    others = (~poisoned).nonzero().flatten()
    noisy = others[torch.randperm(len(others), generator=gen)[: round(label_noise * len(train))]]
    y[noisy] = (y[noisy] + torch.randint(1, train.num_classes, (len(noisy),), generator=gen)) % train.num_classes
    if pixel_noise > 0:
        x = (x + pixel_noise * torch.randn(x.shape, generator=gen)).clamp(0.0, 1.0)
    order = torch.randperm(len(train), generator=gen)
    return x[order].contiguous(), y[order].contiguous(), poisoned[order].numpy(), attack

"""Adversarial training: min_θ E_(x,y) max_{‖δ‖ ≤ eps} L(f_θ(x + δ), y).

``method="pgd"`` (Madry et al. 2018): the inner max by ``steps`` steps of PGD from a random
start, step size 2.5·eps/steps by default. ``method="fgsm"`` ("fast is better than free",
Wong, Rice & Kolter 2020): one FGSM step of size 1.25·eps from a uniform random start in the
ball, then projection. The training loop is the defender's own code, so it runs plain torch
autograd on the module (attacks are crafted in eval mode, updates run in train mode) and
records, per epoch, the training loss and the clean and PGD accuracy on ``val`` (or on a
fixed slice of the training set).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from ..datasets.base import Dataset
from ..threat import ThreatModel

METHODS = ("pgd", "fgsm")


@dataclass
class EpochRecord:
    epoch: int
    loss: float
    clean_accuracy: float
    robust_accuracy: float
    seconds: float


@dataclass
class TrainingRecord:
    """What ``adversarial_training`` did: settings, one :class:`EpochRecord` per epoch (clean
    and robust accuracy measured on ``eval_on``), and the total time in seconds."""

    method: str
    threat: str
    epochs: int
    steps: int
    step_size: float
    lr: float
    batch_size: int
    seed: int
    eval_on: str
    eval_attack: str
    history: list[EpochRecord] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def clean_accuracy(self) -> float:
        return self.history[-1].clean_accuracy if self.history else float("nan")

    @property
    def robust_accuracy(self) -> float:
        return self.history[-1].robust_accuracy if self.history else float("nan")

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        head = (f"{self.method.upper()} adversarial training, {self.threat}; {self.epochs} epochs in "
                f"{self.seconds:.1f}s; accuracy on {self.eval_on} (robust: {self.eval_attack})")
        rows = [f"{'epoch':>5}  {'loss':>8}  {'clean':>7}  {'robust':>7}  {'time':>6}"]
        rows += [f"{r.epoch:>5}  {r.loss:>8.4f}  {r.clean_accuracy:>7.1%}  {r.robust_accuracy:>7.1%}  {r.seconds:>5.1f}s"
                 for r in self.history]
        return "\n".join([head, *rows])


def adversarial_training(
    module: torch.nn.Module,
    train: Dataset,
    *,
    threat: ThreatModel,
    method: str = "pgd",
    epochs: int = 10,
    steps: int = 7,
    step_size: float | None = None,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    val: Dataset | None = None,
    weight_decay: float = 0.0,
    eval_steps: int = 10,
    eval_size: int = 500,
    progress: bool = True,
) -> TrainingRecord:
    """Train ``module`` in place against ``threat`` (L∞ or L2 on images); Adam with ``lr`` and
    a cosine schedule. Deterministic for a ``seed`` (on one device and thread setting; on a GPU
    only as far as its kernels are: see ``torch.use_deterministic_algorithms``). The module stays
    on its device: batches go there, random starts are drawn there.

    Each epoch ends with clean and PGD-``eval_steps`` accuracy on ``val`` (or on the first
    ``eval_size`` training examples) at the same eps; the module is left in eval mode.
    """
    from tqdm.auto import tqdm

    _check(module, train, threat, method, epochs, steps, lr, batch_size, val)
    if method == "fgsm":
        alpha = 1.25 * threat.eps if step_size is None else float(step_size)
    else:
        alpha = 2.5 * threat.eps / steps if step_size is None else float(step_size)
    held = val if val is not None else train.take(min(eval_size, len(train)))
    record = TrainingRecord(
        method=method, threat=threat.describe(), epochs=epochs, steps=1 if method == "fgsm" else steps,
        step_size=alpha, lr=lr, batch_size=batch_size, seed=seed,
        eval_on="val" if val is not None else f"first {len(held)} training examples",
        eval_attack=f"PGD-{eval_steps}",
    )
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    gen = torch.Generator(device=device).manual_seed(seed)
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)  # dropout and any other global randomness in the module
        bar = tqdm(range(1, epochs + 1), desc=f"{method.upper()}-AT", disable=not progress, unit="epoch")
        for epoch in bar:
            t0 = time.perf_counter()
            total, count = 0.0, 0
            for x, y in train.batches(batch_size, shuffle=True, seed=seed * 100_003 + epoch):
                x, y = x.to(device), y.to(device)
                if method == "fgsm":
                    x_adv = perturb(module, x, y, threat, steps=1, step_size=alpha, gen=gen)
                else:
                    x_adv = perturb(module, x, y, threat, steps=steps, step_size=alpha, gen=gen)
                module.train()
                loss = F.cross_entropy(module(x_adv), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(y)
                count += len(y)
            sched.step()
            clean, robust = _accuracies(module, held, threat, eval_steps, seed, device)
            record.history.append(EpochRecord(epoch, total / max(count, 1), clean, robust,
                                              time.perf_counter() - t0))
            bar.set_postfix(loss=f"{total / max(count, 1):.3f}", clean=f"{clean:.1%}", robust=f"{robust:.1%}")
    module.eval()
    record.seconds = time.perf_counter() - start
    return record


def perturb(
    module: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    *,
    steps: int,
    step_size: float,
    gen: torch.Generator | None = None,
    random_start: bool = True,
) -> torch.Tensor:
    """The inner maximisation: ``steps`` signed (L∞) or normalised (L2) ascent steps on the
    cross-entropy from a random start in the ball, projected onto the ball and bounds after
    each step (one step of 1.25·eps is fast FGSM-AT). Crafted in eval mode, without touching
    parameter gradients."""
    from ..attacks.bpda import ascent_step
    from ..attacks.bpda import random_start as start_point

    was_training = module.training
    module.eval()
    try:
        cur = start_point(threat, x, gen) if random_start and threat.eps > 0 else x.clone()
        for _ in range(steps):
            cur = cur.detach().requires_grad_(True)
            with torch.enable_grad():
                loss = F.cross_entropy(module(cur), y, reduction="sum")
                (grad,) = torch.autograd.grad(loss, cur)
            cur = threat.project(x, ascent_step(threat, cur.detach(), grad, step_size))
    finally:
        module.train(was_training)
    return cur.detach()


def _accuracies(module, data: Dataset, threat, steps, seed, device, batch_size=500) -> tuple[float, float]:
    """Clean and PGD-``steps`` accuracy (random start, step 2.5·eps/steps) of ``module``."""
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    clean = robust = 0
    module.eval()
    for x, y in data.batches(batch_size):
        x, y = x.to(device), y.to(device)
        with torch.no_grad():
            clean += int((module(x).argmax(1) == y).sum())
        x_adv = perturb(module, x, y, threat, steps=steps, step_size=2.5 * threat.eps / steps, gen=gen)
        with torch.no_grad():
            robust += int((module(x_adv).argmax(1) == y).sum())
    return clean / len(data), robust / len(data)


def _check(module, train, threat, method, epochs, steps, lr, batch_size, val) -> None:
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module: expected a torch.nn.Module (the model to train), got {type(module).__name__}")
    for arg, d in (("train", train), ("val", val)):
        if d is None and arg == "val":
            continue
        if not isinstance(d, Dataset):
            raise TypeError(f"{arg}: expected a maestro Dataset, got {type(d).__name__}")
        if d.modality != "image":
            raise TypeError(f"adversarial_training works on image data; {arg} is {d.modality}")
        if len(d) == 0:
            raise ValueError(f"{arg} is empty")
    if not isinstance(threat, ThreatModel):
        raise TypeError(f"threat: expected a maestro.ThreatModel, got {type(threat).__name__}")
    if threat.norm not in ("linf", "l2"):
        raise ValueError(f"adversarial_training supports linf and l2 threat models, got {threat.norm!r}")
    threat.check_inputs(train.x, "train.x")
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    for arg, v in (("epochs", epochs), ("steps", steps), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{arg} must be a positive int, got {v!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")

"""What every attack shares: the result type and the checks run before and after an attack.

An attack is a class configured with a :class:`~maestro.threat.ThreatModel` and its own
settings, called on a :class:`~maestro.wrapper.ModelWrapper` (or anything with the same
methods, such as a remote client) with inputs and labels::

    result = PGD(ThreatModel("linf", 0.3), steps=20)(model, x, y)

Subclasses set ``requires`` (the access level needed), ``modalities`` and ``norms``, and
implement ``_run(model, x, y, target) -> (x_adv, success, info)``. The base class checks the
arguments, times the run, counts the queries spent through the wrapper's own counters and
validates ``x_adv`` with the one threat-model validator before returning.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..errors import AccessDenied
from ..threat import ThreatModel
from ..wrapper import _RANK


@dataclass
class AttackResult:
    """Adversarial inputs and what it took to find them.

    ``success[i]`` is True where ``x_adv[i]`` reaches the goal (misclassified, or classified as
    the target in targeted mode); ``norms`` are in the threat model's norm; ``queries`` counts
    inputs the attack sent forward; ``time`` is in seconds.

    Devices: an attack runs on the model's device, but an image ``x_adv`` comes back on the
    device of the ``x`` it was given (CPU for a NumPy array), so ``threat.check(x, x_adv)``
    works as it is; ``success``, ``norms`` and the tensors in ``info`` are on the CPU.
    """

    x_adv: torch.Tensor | list[str]
    success: torch.Tensor
    norms: torch.Tensor
    queries: int
    time: float
    attack: str = ""
    info: dict = field(default_factory=dict)

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean()) if len(self.success) else 0.0

    def __repr__(self) -> str:
        return (
            f"AttackResult({self.attack}: success {self.success_rate:.1%} of {len(self.success)}, "
            f"median norm {float(self.norms.median()) if len(self.norms) else 0:.4g}, "
            f"queries {self.queries}, {self.time:.2f}s)"
        )


class Attack:
    """Base class of all attacks; see the module docstring."""

    name = "attack"
    requires = "white-box"
    modalities: tuple[str, ...] = ("image",)
    norms: tuple[str, ...] = ("linf", "l2")

    def __init__(self, threat: ThreatModel, *, targeted: bool = False, seed: int = 0) -> None:
        if not isinstance(threat, ThreatModel):
            raise TypeError(f"threat: expected a maestro.ThreatModel, got {type(threat).__name__}")
        if threat.norm not in self.norms:
            raise ValueError(
                f"{self.name} supports norm {' or '.join(self.norms)}, but the threat model has {threat.norm!r}"
            )
        if not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}")
        self.threat = threat
        self.targeted = bool(targeted)
        self.seed = seed

    def __call__(self, model, x, y, *, target=None) -> AttackResult:
        home = x.device if isinstance(x, torch.Tensor) else torch.device("cpu")  # x_adv goes back there
        x, y, target = self._check_call(model, x, y, target)
        before = model.queries
        start = time.perf_counter()
        x_adv, success, info = self._run(model, x, y, target)
        elapsed = time.perf_counter() - start
        self.threat.check(x, x_adv)
        norms = self.threat.norms(x, x_adv).float().cpu()
        if isinstance(x_adv, torch.Tensor):
            x_adv = x_adv.to(home)
        return AttackResult(
            x_adv=x_adv,
            success=success.detach().cpu(),
            norms=norms,
            queries=model.queries - before,
            time=elapsed,
            attack=self.name,
            info=info,
        )

    def _run(self, model, x, y, target):
        raise NotImplementedError

    # -- checks shared by every attack -----------------------------------------------------
    def _check_call(self, model, x, y, target):
        """Validate one call's model, inputs, labels and targets; returns ``(x, y, target)``."""
        self._check_model(model)
        x = self._check_inputs(model, x)
        y = model.prepare_labels(y, len(x), "y")
        if self.targeted:
            if target is None:
                raise ValueError(f"{self.name}: targeted=True needs target=<target class, or one per example>")
            target = model.prepare_labels(target, len(x), "target")
        elif target is not None:
            raise ValueError(f"{self.name}: target= given but the attack is untargeted; pass targeted=True")
        return x, y, target

    def _check_model(self, model) -> None:
        access = getattr(model, "access", None)
        if access not in _RANK:
            raise TypeError(f"model: expected a maestro ModelWrapper (or remote client), got {type(model).__name__}")
        if _RANK[access] < _RANK[self.requires]:
            raise AccessDenied(
                f"{self.name} needs {self.requires!r} access, but the model offers {access!r}; "
                f"choose an attack for {access!r} access"
            )
        if _RANK[self.threat.access] < _RANK[self.requires]:
            raise AccessDenied(
                f"{self.name} needs {self.requires!r} access, but the threat model allows only {self.threat.access!r}"
            )
        if model.modality not in self.modalities:
            raise TypeError(f"{self.name} attacks {' or '.join(self.modalities)} models; this is a {model.modality} model")

    def _check_inputs(self, model, x):
        x = model.prepare_inputs(x, "x")
        if model.modality == "image":
            self.threat.check_inputs(x)
            if tuple(self.threat.bounds) != tuple(model.input_bounds):
                raise ValueError(
                    f"threat model bounds {self.threat.bounds} do not match the model's input_bounds "
                    f"{model.input_bounds}"
                )
        return x

    def _goal(self, logits: torch.Tensor, y: torch.Tensor, target) -> torch.Tensor:
        """Per-example success of ``logits``: misclassified, or the target class in targeted mode."""
        pred = logits.argmax(1)
        return pred == target if self.targeted else pred != y

    def _generator(self, device) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(self.seed)

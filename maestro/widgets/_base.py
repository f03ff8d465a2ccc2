"""What the attack widgets share: inputs and labels, the attack picker's factories, a cache of
attack runs per (attack, eps), callbacks that show their errors, and notebook display."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from ..wrapper import _RANK
from ._render import error_html

# a factory: ThreatModel -> attack (anything called as attack(model, x, y) -> AttackResult)
Factory = Callable[[object], object]


def check_model(model, modality: str, widget: str, other: str):
    if getattr(model, "access", None) not in _RANK or not hasattr(model, "modality"):
        raise TypeError(f"model: expected a maestro ModelWrapper, got {type(model).__name__}")
    if model.modality != modality:
        raise TypeError(f"{widget} shows {modality} models; this is a {model.modality} model — use {other}")


def split_data(model, x, y):
    """``(x, y, classes)`` from a Dataset or from inputs and labels (``y=None``: the model's own
    predictions, so the widget shows how to change them)."""
    classes = list(getattr(model, "classes", []) or [str(i) for i in range(model.num_classes)])
    if hasattr(x, "x") and hasattr(x, "y") and hasattr(x, "classes"):  # a maestro Dataset
        if y is not None:
            raise ValueError("pass either a Dataset or inputs with labels, not a Dataset and y")
        x, y = x.x, x.y
    if model.modality == "text":
        if isinstance(x, tuple):
            x = list(x)
        model.prepare_inputs(x, "x")  # validates; text widgets keep the strings themselves
    else:
        x = model.prepare_inputs(x, "x")
    n = len(x)
    if n == 0:
        raise ValueError("x is empty: give the widget at least one example")
    y = model.predict(x) if y is None else model.prepare_labels(y, n, "y")
    return x, y.detach().cpu(), classes


def pick_attacks(attacks, defaults: Mapping[str, tuple[type, Factory]], model, norm: str) -> dict[str, Factory]:
    """The attack picker's ``label -> factory``: ``None`` takes every default attack the model's
    access level and the norm allow; a list of names picks defaults; a mapping is used as given."""
    def fits(cls) -> bool:
        return _RANK[cls.requires] <= _RANK[model.access] and norm in getattr(cls, "norms", (norm,))

    if attacks is None:
        chosen = {k: f for k, (cls, f) in defaults.items() if fits(cls)}
        if not chosen:
            raise ValueError(f"no default attack works with {model.access!r} access and norm {norm!r}; "
                             "pass attacks={'name': lambda threat: MyAttack(threat)}")
        return chosen
    if isinstance(attacks, Mapping):
        out = dict(attacks)
    elif isinstance(attacks, Sequence) and not isinstance(attacks, str):
        unknown = [a for a in attacks if a not in defaults]
        if unknown:
            raise ValueError(f"unknown attack name(s) {unknown}; the defaults are {', '.join(defaults)} "
                             "(or pass a mapping name -> factory(threat))")
        out = {a: defaults[a][1] for a in attacks}
    else:
        raise TypeError("attacks: expected None, a list of default names, or a mapping name -> factory(threat)")
    if not out:
        raise ValueError("attacks is empty: the picker needs at least one attack")
    bad = [k for k, f in out.items() if not callable(f)]
    if bad:
        raise TypeError(f"attacks[{bad[0]!r}] must be callable: ThreatModel -> attack")
    return out


def probabilities(model, x) -> torch.Tensor:
    """Class probabilities N×K, or one-hot predictions for a labels-only model."""
    if _RANK[model.access] >= _RANK["scores"]:
        return model.predict_proba(x).detach().float().cpu()
    pred = model.predict(x).detach().cpu()
    return torch.nn.functional.one_hot(pred, model.num_classes).float()


class AttackWidget:
    """Base of the attack widgets: ``widget`` is the ipywidgets box shown in the notebook;
    ``error`` holds the last callback error (also shown in the widget), ``None`` if the last
    update worked."""

    widget = None
    status = None
    summary = ""  # what ``status`` says, as plain text
    error: BaseException | None = None

    def _on_change(self, _change=None) -> None:
        try:
            self.update()
            self.error = None
        except Exception as exc:  # shown in the widget: a callback's traceback is invisible in JupyterLab
            self.error = exc
            self.status.value = error_html(exc)

    def update(self) -> None:
        raise NotImplementedError

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({getattr(self, 'description', '')})"

"""The text attack viewer: the original and the adversarial sentence with the changed words
highlighted, the prediction before and after (a flip is marked), an attack picker, a token-budget
slider and an example slider. The attack runs on the whole batch, once per (attack, eps)."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

import torch

from ..threat import ThreatModel
from ._base import AttackWidget, check_model, pick_attacks, probabilities, split_data
from ._render import esc, prob_bars_html

# words (with inner apostrophes), single punctuation marks, and the whitespace between them:
# together they cover every character, so the pieces join back to the original string
_PIECES = re.compile(r"\w+(?:'\w+)*|[^\w\s]|\s+")
CLEAN, ADV = "#4c72b0", "#c44e52"


def word_diff(before: str, after: str) -> tuple[list[tuple[str, bool]], list[tuple[str, bool]]]:
    """Both strings as ``(piece, changed)`` lists: words and punctuation that the edit from
    ``before`` to ``after`` replaced, deleted or inserted are ``changed``; whitespace never is.
    ``"".join(p for p, _ in pieces)`` gives back each string exactly."""
    if not isinstance(before, str) or not isinstance(after, str):
        raise TypeError("word_diff compares two str")
    a, b = _PIECES.findall(before), _PIECES.findall(after)
    wa = [i for i, p in enumerate(a) if not p.isspace()]
    wb = [i for i, p in enumerate(b) if not p.isspace()]
    ca, cb = [False] * len(a), [False] * len(b)
    matcher = difflib.SequenceMatcher(None, [a[i] for i in wa], [b[i] for i in wb], autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op != "equal":
            for i in wa[i1:i2]:
                ca[i] = True
            for j in wb[j1:j2]:
                cb[j] = True
    return list(zip(a, ca)), list(zip(b, cb))


def _sentence(pieces, kind: str, color: str) -> str:
    out = []
    for piece, changed in pieces:
        if changed:
            out.append(f'<mark class="maestro-changed maestro-{kind}" style="background:{color};'
                       f'padding:0 2px;border-radius:3px">{esc(piece)}</mark>')
        else:
            out.append(esc(piece))
    return (f'<div class="maestro-sentence maestro-{"original" if kind == "removed" else "adversarial"}" '
            f'style="font-size:15px;margin:2px 0 8px 0">{"".join(out)}</div>')


def text_attack_html(before: str, after: str, p_before, p_after, classes, *, label: int | None = None) -> str:
    """The HTML the viewer shows for one example: both sentences with the changed words in
    ``<mark class="maestro-changed">``, the predictions, whether the prediction flipped, and
    probability bars. ``p_before``/``p_after`` are K class probabilities."""
    p_before = torch.as_tensor(p_before).detach().float().cpu().flatten()
    p_after = torch.as_tensor(p_after).detach().float().cpu().flatten()
    classes = list(classes)
    if not len(p_before) == len(p_after) == len(classes):
        raise ValueError(f"{len(classes)} classes but {len(p_before)} and {len(p_after)} probabilities")
    pa, pb = word_diff(before, after)
    changed = max(sum(c for _, c in pa), sum(c for _, c in pb))
    pred, pred_adv = int(p_before.argmax()), int(p_after.argmax())
    truth = f" · label <i>{esc(classes[label])}</i>" if label is not None else ""
    if pred_adv != pred:
        verdict = (f'<span class="maestro-flip" style="background:{ADV};color:white;padding:1px 6px;'
                   f'border-radius:3px">prediction flipped: {esc(classes[pred])} → {esc(classes[pred_adv])}</span>')
    else:
        verdict = '<span class="maestro-no-flip" style="color:#555">prediction unchanged</span>'
    bars = (
        '<div style="display:flex;gap:32px;margin-top:4px">'
        f'<div class="maestro-bars maestro-bars-original"><b style="font-size:12px">original</b>'
        f"{prob_bars_html(list(zip(classes, p_before.tolist())), CLEAN)}</div>"
        f'<div class="maestro-bars maestro-bars-adversarial"><b style="font-size:12px">adversarial</b>'
        f"{prob_bars_html(list(zip(classes, p_after.tolist())), ADV)}</div></div>"
    )
    return (
        '<div class="maestro-text-attack" style="font-family:sans-serif;line-height:1.5">'
        f'<div><b>original</b>{truth} · predicted <b>{esc(classes[pred])}</b> ({float(p_before[pred]):.0%})</div>'
        f"{_sentence(pa, 'removed', '#ffd6d6')}"
        f'<div><b>adversarial</b> · {changed} word{"s" * (changed != 1)} changed · predicted '
        f"<b>{esc(classes[pred_adv])}</b> ({float(p_after[pred_adv]):.0%}) {verdict}</div>"
        f"{_sentence(pb, 'added', '#ffe08a')}{bars}</div>"
    )


def _default_attacks(seed: int):
    from ..attacks import HotFlip, WordSubstitution

    return {
        "HotFlip": (HotFlip, lambda t: HotFlip(t, seed=seed)),
        "WordSubstitution": (WordSubstitution, lambda t: WordSubstitution(t, seed=seed)),
    }


@dataclass
class _Run:
    x_adv: list[str]
    probs: torch.Tensor
    result: object


class TextAttackViewer(AttackWidget):
    """An interactive view of a text attack on a batch of sentences.

    ``model``: a text ModelWrapper; ``texts``: a list of str (or a text Dataset) and ``labels``
    (``None``: the model's predictions). ``attacks``: ``None`` (the defaults the model's access
    allows: HotFlip for white-box, WordSubstitution for scores), a list of default names, or
    a mapping ``name -> factory(ThreatModel) -> attack``. ``eps``: tokens an attack may change
    (slider from 1 to ``eps_max``).

    ``widget`` is the ipywidgets box; ``attack_picker``, ``eps_slider``, ``index_slider`` its
    controls; ``view`` (an HTML widget) shows the sentences; ``html`` is its markup.
    """

    def __init__(self, model, texts, labels=None, *, attacks=None, eps: int = 2, eps_max: int = 5,
                 index: int = 0, seed: int = 0) -> None:
        import ipywidgets as W

        check_model(model, "text", "TextAttackViewer", "PerturbationExplorer")
        self.model = model
        self.x, self.y, self.classes = split_data(model, texts, labels)
        n = len(self.x)
        if not isinstance(eps_max, int) or eps_max < 1 or not isinstance(eps, int) or not 1 <= eps <= eps_max:
            raise ValueError(f"eps and eps_max are token counts with 1 ≤ eps ≤ eps_max, got {eps!r}, {eps_max!r}")
        if not isinstance(index, int) or not 0 <= index < n:
            raise ValueError(f"index must be an int in [0, {n - 1}], got {index!r}")
        self.factories = pick_attacks(attacks, _default_attacks(seed), model, "tokens")
        self._runs: dict[tuple[str, int], _Run] = {}
        self._p_clean = probabilities(model, self.x)

        self.attack_picker = W.Dropdown(options=list(self.factories), description="attack")
        self.eps_slider = W.IntSlider(value=eps, min=1, max=eps_max, description="tokens (eps)",
                                      continuous_update=False, style={"description_width": "initial"})
        self.index_slider = W.IntSlider(value=index, min=0, max=max(n - 1, 1), description="example",
                                        continuous_update=False, disabled=n == 1)
        self.status = W.HTML()
        self.view = W.HTML()
        self.widget = W.VBox([W.HBox([self.attack_picker, self.eps_slider, self.index_slider]),
                              self.status, self.view])
        self.widget.add_class("maestro-text-attack-viewer")
        self.update()
        for control in (self.attack_picker, self.eps_slider, self.index_slider):
            control.observe(self._on_change, names="value")

    @property
    def description(self) -> str:
        return f"{getattr(self.model, 'name', '') or 'model'}, {len(self.x)} texts"

    @property
    def html(self) -> str:
        return self.view.value

    def run(self, attack: str, eps: int) -> _Run:
        """The attack ``attack`` with ``eps`` tokens on the whole batch (cached)."""
        key = (attack, int(eps))
        if key not in self._runs:
            threat = ThreatModel("tokens", key[1], access=self.model.access)
            result = self.factories[attack](threat)(self.model, self.x, self.y)
            threat.check(self.x, result.x_adv)
            self._runs[key] = _Run(list(result.x_adv), probabilities(self.model, list(result.x_adv)), result)
        return self._runs[key]

    @property
    def current(self) -> _Run:
        return self.run(self.attack_picker.value, self.eps_slider.value)

    def update(self) -> None:
        attack, eps, i = self.attack_picker.value, int(self.eps_slider.value), int(self.index_slider.value)
        i = min(i, len(self.x) - 1)
        run = self.run(attack, eps)
        self.view.value = text_attack_html(self.x[i], run.x_adv[i], self._p_clean[i], run.probs[i],
                                           self.classes, label=int(self.y[i]))
        n = len(self.x)
        clean_ok = int((self._p_clean.argmax(1) == self.y).sum())
        adv_ok = int((run.probs.argmax(1) == self.y).sum())
        self.summary = (f"{attack}, at most {eps} token{'s' * (eps != 1)}: accuracy on the batch of {n}: "
                        f"clean {clean_ok}/{n}, under attack {adv_ok}/{n}; "
                        f"{run.result.queries} queries, {run.result.time:.2f} s")
        self.status.value = f'<div class="maestro-status">{esc(self.summary)}</div>'

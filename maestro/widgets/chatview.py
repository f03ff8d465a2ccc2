"""A suffix attack on a chat model, shown as it runs.

    viewer = SuffixAttackViewer(chat, Chat("Write a short poem about the sea."), "Sure", steps=40)
    viewer            # in a notebook: press Run (or call viewer.run())

Each step updates the suffix so far, a plot of the target's log-probability per step and, every
``answer_every`` steps and at the end, the model's greedy answer with that suffix. GCG for a
white-box model, random search (log-probabilities only) for ``scores`` access.
"""

from __future__ import annotations

import html

from ._render import error_html, figure_png, new_figure


class SuffixAttackViewer:
    """See the module docstring. ``attack``: a ``ThreatModel -> attack`` factory (default: GCG
    with ``steps``, or RandomSearch below white-box access); ``eps``: suffix tokens."""

    def __init__(self, model, prompt, target: str, *, steps: int = 40, eps: int = 20,
                 attack=None, answer_every: int = 5, max_new_tokens: int | None = None) -> None:
        import ipywidgets as w

        from ..attacks.gcg import GCG, RandomSearch
        from ..chat import Chat
        from ..threat import ThreatModel
        from ..wrapper import _RANK

        if getattr(model, "modality", None) != "chat":
            raise TypeError("SuffixAttackViewer shows chat models (maestro.models.load('smollm2-chat'))")
        if not isinstance(target, str) or not target:
            raise ValueError("target: the text the answer should begin with, e.g. 'Sure'")
        self.model = model
        self.prompt = Chat(prompt) if isinstance(prompt, str) else prompt
        self.target = target
        self.answer_every = max(1, int(answer_every))
        self.max_new_tokens = max_new_tokens or len(model.tokenize(target)) + 12
        white = _RANK[model.access] >= _RANK["white-box"]
        self.threat = ThreatModel("suffix", eps, tokenizer=model.tokenizer,
                                  access="white-box" if white else "scores")
        if attack is None:
            attack = (lambda t: GCG(t, steps=steps, top_k=64, batch=32)) if white else \
                (lambda t: RandomSearch(t, steps=steps, batch=16))
        self._attack = attack(self.threat)
        self._attack.callback = self._on_step
        self._n_target = len(model.tokenize(target))
        self.history: list[dict] = []
        self.result = None
        self.error: Exception | None = None

        self.run_button = w.Button(description="Run", button_style="primary", icon="play")
        self.run_button.on_click(lambda _b: self.run())
        self.status = w.HTML()
        self.suffix = w.HTML()
        self.answer = w.HTML()
        self.plot = w.Image(format="png")
        head = w.HTML(f"<b>prompt</b> {html.escape(self.prompt.user)} &nbsp; <b>target</b> "
                      f"<code>{html.escape(target)}</code> &nbsp; ({self._attack.name}, ≤ {eps} "
                      "suffix tokens)")
        self.widget = w.VBox([head, w.HBox([self.run_button, self.status]), self.suffix,
                              self.plot, self.answer])
        self.widget.add_class("maestro-suffix-attack-viewer")
        self.status.add_class("maestro-status")
        self.suffix.add_class("maestro-suffix")
        self._show_answer("")
        self.status.value = "press Run"

    # -- running -------------------------------------------------------------------------
    def run(self):
        """Run the attack to its end (widgets update at every step); returns its result."""
        self.history.clear()
        self.error = None
        self.run_button.disabled = True
        self.status.value = "running …"
        try:
            self.result = self._attack(self.model, [self.prompt], [self.target])
            self._show_answer(self.result.info["answers"][0])
            self.status.value = (f"{'broken' if bool(self.result.success[0]) else 'not broken'} after "
                                 f"{len(self.history) - 1} step(s), {self.result.queries} queries, "
                                 f"{self.result.time:.1f} s")
        except Exception as err:  # shown in the widget, kept for the notebook
            self.error = err
            self.status.value = error_html(err)
        finally:
            self.run_button.disabled = False
        return self.result

    def _on_step(self, progress: dict) -> None:
        progress = {**progress, "logprob": -progress["loss"] * self._n_target}
        self.history.append(progress)
        self.suffix.value = (f"<b>suffix</b> (step {progress['step']}): "
                             f"<code>{html.escape(progress['suffix'])}</code>")
        self.status.value = f"step {progress['step']}: log p(target) = {progress['logprob']:.2f}"
        self._draw()
        if progress["step"] % self.answer_every == 0 and progress["step"] > 0:
            answer = self.model.generate([self.prompt], [progress["suffix"]],
                                         max_new_tokens=self.max_new_tokens)[0]
            self._show_answer(answer)

    def _show_answer(self, answer: str) -> None:
        hit = answer.startswith(self.target)
        mark = "✔ begins with the target" if hit else ""
        self.answer.value = (f"<b>answer</b> <span class='maestro-answer'>{html.escape(answer)}"
                             f"</span> {mark}")

    def _draw(self) -> None:
        fig = new_figure((5, 2.4))
        ax = fig.subplots()
        ax.plot([h["step"] for h in self.history], [h["logprob"] for h in self.history], marker="o")
        ax.xaxis.get_major_locator().set_params(integer=True)  # steps are whole numbers
        ax.set_xlabel("step")
        ax.set_ylabel("log p(target)")
        ax.set_title("the target's log-probability")
        fig.tight_layout()
        self.plot.value = figure_png(fig)

    def _repr_mimebundle_(self, **kw):
        return self.widget._repr_mimebundle_(**kw)

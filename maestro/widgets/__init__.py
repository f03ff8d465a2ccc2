"""Interactive widgets and plots for notebooks (ipywidgets 8, matplotlib).

    from maestro.widgets import PerturbationExplorer, TextAttackViewer
    PerturbationExplorer(model, data.x[:8], data.y[:8])      # eps slider, attack picker, images, bars
    TextAttackViewer(clf, tweets.x[:8], tweets.y[:8])        # changed tokens highlighted, the flip
    SuffixAttackViewer(chat, "Write a poem.", "Sure")        # GCG as it runs: suffix, log p, answer

Plots return matplotlib Figures drawn on the Agg canvas (no display needed):
:func:`plot_robustness_curve`, :func:`plot_attack_comparison`; :func:`leaderboard_table` is an
HTML widget for a list of ``{"rank", "name", "score", ...}`` rows.

Names load on first use: ``import maestro.widgets`` imports neither ipywidgets nor matplotlib.
"""

from __future__ import annotations

from .._lazy import lazy_getattr

# name -> module (inside maestro.widgets) that defines it
_REGISTRY = {
    "PerturbationExplorer": "explorer",
    "perturbation_figure": "explorer",
    "TextAttackViewer": "textview",
    "SuffixAttackViewer": "chatview",
    "word_diff": "textview",
    "text_attack_html": "textview",
    "plot_robustness_curve": "plots",
    "plot_attack_comparison": "plots",
    "leaderboard_table": "leaderboard",
    "leaderboard_html": "leaderboard",
    "figure_png": "_render",
}

__all__ = list(_REGISTRY)


__getattr__ = lazy_getattr(__name__, _REGISTRY)

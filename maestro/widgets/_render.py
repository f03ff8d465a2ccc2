"""Shared drawing helpers: figures on the Agg canvas (no display, no pyplot state), PNG bytes,
images as arrays for ``imshow``, and small HTML pieces for the widgets."""

from __future__ import annotations

import html
import io

import torch


def new_figure(figsize: tuple[float, float], dpi: int = 100):
    """A matplotlib Figure with its own Agg canvas: no pyplot, no global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig, dpi: int | None = None) -> bytes:
    """The PNG bytes of a matplotlib Figure (for ``ipywidgets.Image`` or a file)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi or fig.dpi)
    return buf.getvalue()


def image_array(img: torch.Tensor, bounds: tuple[float, float]):
    """A C×H×W (or H×W) image tensor as a numpy array ``imshow`` draws in [0, 1]: H×W for one
    channel, H×W×3 for three; other channel counts show their mean."""
    lo, hi = bounds
    t = img.detach().float().cpu()
    if t.dim() == 3:
        t = t[0] if t.shape[0] == 1 else (t.permute(1, 2, 0) if t.shape[0] == 3 else t.mean(0))
    elif t.dim() != 2:
        raise ValueError(f"expected one C×H×W or H×W image, got shape {tuple(img.shape)}")
    return ((t - lo) / (hi - lo)).clamp(0, 1).numpy()


def draw_image(ax, img: torch.Tensor, bounds: tuple[float, float], title: str = "", color: str = "black"):
    arr = image_array(img, bounds)
    ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_title(title, fontsize=9, color=color)
    ax.set_xticks([])
    ax.set_yticks([])


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def error_html(exc: BaseException) -> str:
    """An error shown inside a widget (a callback's exception would otherwise only reach the
    browser's log console)."""
    return (f'<div class="maestro-error" style="color:#b00020;white-space:pre-wrap">'
            f"<b>{esc(type(exc).__name__)}</b>: {esc(exc)}</div>")


def prob_bars_html(probs: list[tuple[str, float]], color: str) -> str:
    """Horizontal probability bars in plain HTML (one row per class)."""
    rows = []
    for name, p in probs:
        width = max(0.0, min(1.0, float(p))) * 100
        rows.append(
            '<div class="maestro-bar-row" style="display:flex;align-items:center;gap:6px;font-size:12px">'
            f'<span style="width:7em;text-align:right">{esc(name)}</span>'
            '<span style="flex:0 0 160px;background:#eee;height:10px;position:relative">'
            f'<span class="maestro-bar" data-p="{float(p):.6f}" style="position:absolute;left:0;top:0;'
            f'height:10px;width:{width:.1f}%;background:{color}"></span></span>'
            f"<span>{float(p):.1%}</span></div>"
        )
    return "".join(rows)

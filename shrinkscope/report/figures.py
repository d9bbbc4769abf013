"""What every Display shares: the plotted-data record, colours, row sampling and the lazy matplotlib import.

Displays follow scikit-learn's pattern with one difference: ``from_*`` class methods only *compute* the data
(no matplotlib needed, so tests and notebooks can read it), and ``plot(ax=...)`` draws it, keeps the
artists as trailing-underscore attributes and returns the display.

Where no ``ax`` is passed, a display draws on a new ``matplotlib.figure.Figure``. shrinkscope never imports
pyplot itself; when the user has (a notebook, a script calling ``plt.show()``), the new figure comes from
pyplot so that it shows up where the user expects it.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import sys
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

__all__ = [
    "Series",
    "CODE_COLORS",
    "LATENT_COLOR",
    "detached",
    "empty_note",
    "new_axes",
    "new_figure",
    "panel_grid",
    "png_bytes",
    "sample_rows",
    "set_title",
]

CODE_COLORS: tuple[str, str] = ("#d55e00", "#0072b2")
"""Codes of one codebook (or of BEFORE) in vermillion, AFTER in blue: Okabe-Ito colours, safe for the
common colour-vision deficiencies."""
LATENT_COLOR = "0.55"
"""Latents (the encoder's outputs the codes should cover) in neutral grey."""


@dataclass(frozen=True, eq=False)
class Series:
    """One plotted data set: a line, a histogram sample or a point cloud.

    Attributes:
        label: legend text.
        values: the data exactly as drawn: ``(n,)`` for a curve over 1..n or a histogram sample,
            ``(n, 2)`` for points or ``(step, value)`` pairs.
        color: matplotlib colour.
        style: matplotlib line style of curves and histograms (``"-"``, ``"--"``, ``":"``).
        kind: what the values describe: ``"codes"`` or ``"latents"`` (drawn fainter, underneath).
    """

    label: str
    values: np.ndarray
    color: str
    style: str = "-"
    kind: str = "codes"


def _matplotlib() -> Any:
    try:
        import matplotlib
    except ModuleNotFoundError as exc:  # pragma: no cover - matplotlib is a dependency
        raise ModuleNotFoundError("shrinkscope plots need matplotlib: pip install matplotlib") from exc
    return matplotlib


_DETACHED = contextvars.ContextVar("shrinkscope_detached_figures", default=False)


@contextlib.contextmanager
def detached() -> Iterator[None]:
    """Inside this block new figures never come from pyplot (report writers: nothing piles up in pyplot's
    figure registry, and no window opens under an interactive backend)."""
    token = _DETACHED.set(True)
    try:
        yield
    finally:
        _DETACHED.reset(token)


def new_figure(size: tuple[float, float], *, dpi: int = 100) -> Any:
    """A new figure: from pyplot when the user imported it, else a plain ``Figure`` (no global state)."""
    _matplotlib()
    if "matplotlib.pyplot" in sys.modules and not _DETACHED.get():
        return sys.modules["matplotlib.pyplot"].figure(figsize=size, dpi=dpi)
    from matplotlib.figure import Figure

    return Figure(figsize=size, dpi=dpi)


def new_axes(ax: Any, size: tuple[float, float] = (6.0, 4.5)) -> tuple[Any, Any]:
    """``(figure, ax)``: the given axes and its figure, or one new axes on a new figure."""
    if ax is not None:
        return ax.figure, ax
    fig = new_figure(size)
    ax = fig.add_subplot()
    fig.subplots_adjust(left=0.13, right=0.97, top=0.9, bottom=0.13)
    return fig, ax


def panel_grid(axes: Any, n: int, *, cols: int, panel: tuple[float, float], top_in: float, bottom_in: float,
               title: str = "", title_size: int = 13, wspace: float = 0.3, hspace: float = 0.6) -> tuple[Any, Any]:
    """``(figure, flat axes)`` for ``n`` panels: the given axes, or a new figure of ``cols`` columns.

    A new figure gets fixed margins in inches (``top_in`` above the panels for the title, ``bottom_in`` below
    for a legend or tick labels), so they hold for any number of rows, instead of constrained layout, which
    measures every text box and cost ~0.5 s per figure.
    """
    if axes is not None:
        axes = np.asarray(axes, dtype=object).ravel()
        return axes[0].figure, axes
    rows = -(-max(1, n) // cols)
    fig = new_figure((panel[0] * cols, panel[1] * rows + top_in + bottom_in))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    h = fig.get_figheight()
    fig.subplots_adjust(left=0.08, right=0.98, top=1 - top_in / h, bottom=bottom_in / h, wspace=wspace,
                        hspace=hspace)
    if title:
        fig.suptitle(title, fontsize=title_size, y=1 - 0.15 / h, va="top")
    return fig, axes


def png_bytes(fig: Any) -> bytes:
    """The figure as PNG bytes (Agg), without touching the user's backend."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def sample_rows(x: torch.Tensor, n: int, *, seed: int = 0) -> torch.Tensor:
    """At most ``n`` rows of ``x`` (a seeded random subset when there are more), as float64 on the CPU."""
    x = x.detach().cpu()
    if x.shape[0] > n:
        g = torch.Generator().manual_seed(seed)
        x = x[torch.randperm(x.shape[0], generator=g)[:n]]
    return x.double()


def set_title(ax: Any, text: str) -> None:
    """Axes title at a fixed height: matplotlib's automatic placement measures every tick label of the
    axes for each title (about 0.15 s per panel on a busy 2-core machine)."""
    ax.set_title(text, y=1.0)


def empty_note(ax: Any, text: str) -> None:
    """Write why a panel is empty in its middle (instead of leaving a blank axes)."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.35", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])

"""``UsageDisplay``: how often each code is used, sorted from most to least used.

A healthy codebook is close to the flat line 1/K; dead codes show as the curve dropping off the log axis,
low utilization as a steep head.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..metrics import CodebookHealth
from .figures import CODE_COLORS, empty_note, new_axes, Series, set_title

__all__ = ["UsageDisplay"]

NO_USAGE = "no usage information\n(no usage buffer in the checkpoint;\npass --latents)"


class UsageDisplay:
    """Usage shares sorted in decreasing order, one step curve per codebook, with the uniform share 1/K.

    Attributes:
        series: one ``Series`` per codebook with usage; ``values`` ``(K,)`` are shares summing to 1, sorted
            in decreasing order.
        used: codes used at least once, per series.
        missing: labels of the codebooks that carry no usage information.
        ax_, figure_, lines_: set by ``plot``.
    """

    def __init__(self, series: list[Series], *, missing: list[str] | None = None) -> None:
        self.series = series
        self.missing = list(missing or [])
        self.used = [int((s.values > 0).sum()) for s in series]

    @classmethod
    def from_health(cls, health: CodebookHealth, *, label: str = "codes") -> UsageDisplay:
        """Usage of one codebook (``health.counts``, from a usage buffer or from assigning latents)."""
        return cls.from_healths({label: health})

    @classmethod
    def from_healths(cls, healths: Mapping[str, CodebookHealth]) -> UsageDisplay:
        """Usage of several codebooks on one axis, in the colours ``CODE_COLORS`` in this order."""
        series, missing = [], []
        for i, (label, h) in enumerate(healths.items()):
            c = h.counts
            if c is None or float(c.sum()) <= 0:
                missing.append(label)
                continue
            p = np.sort((c.double() / c.sum()).numpy())[::-1].copy()
            series.append(Series(label, p, CODE_COLORS[i % len(CODE_COLORS)]))
        return cls(series, missing=missing)

    def plot(self, *, ax: Any = None) -> UsageDisplay:
        """Draw on ``ax`` (a new figure when None); returns ``self`` with ``ax_``, ``figure_``, ``lines_``."""
        self.figure_, self.ax_ = new_axes(ax)
        ax = self.ax_
        set_title(ax, "Code usage, sorted by frequency")
        self.lines_ = []
        if not self.series:
            empty_note(ax, NO_USAGE)
            return self
        floor, sizes = 1.0, set()
        for s, used in zip(self.series, self.used):
            k = s.values.size
            x, y = np.arange(1, k + 1), np.clip(s.values, 1e-9, None)
            ax.fill_between(x, y, 1e-9, step="mid", color=s.color, alpha=0.25)
            self.lines_.append(
                ax.step(x, y, where="mid", color=s.color, lw=1.2, label=f"{s.label} ({used}/{k} used)")[0]
            )
            if k not in sizes:  # one reference line per codebook size
                ax.axhline(1.0 / k, color="0.3", ls=":", lw=1, label=f"uniform 1/K = {1.0 / k:.2g}")
                sizes.add(k)
            floor = min(floor, float(s.values[s.values > 0].min()))
        ax.set_xlabel("code rank (most used first)")
        ax.set_ylabel("share of assignments")
        ax.set_yscale("log")
        ax.set_ylim(bottom=max(1e-9, floor / 3))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        return self

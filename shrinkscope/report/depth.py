"""``DepthDisplay``: codebook health against depth, one panel per metric, for one residual or multi-scale quantizer.

The x axis is the residual stage (``stage 0`` first) or the scale of a multi-scale quantizer (``1x1`` first);
the panels are utilization (and the share of codes used), dead-code share, spread (spread ratio against the
latents and spread against k-means with the same K), effective rank and quantization error. Several runs of
the same quantizer (compare: before and after) are overlaid in the colours ``CODE_COLORS``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..stages import PANELS, StageGroup
from .figures import CODE_COLORS, Series, panel_grid, set_title

__all__ = ["DepthDisplay"]

_STYLE = {"codes_used": "--", "spread_vs_kmeans": "--"}  # the second metric of a panel is dashed
_LABEL = {"utilization": "utilization (perplexity / K)", "codes_used": "codes used", "spread_ratio":
          "spread / latents", "spread_vs_kmeans": "spread / k-means"}


class DepthDisplay:
    """Health metrics against stage or scale for one quantizer; one line per (run, metric).

    Attributes:
        panels: panel title -> ``Series`` whose ``values`` are ``(n, 2)`` ``(position, value)`` rows; a panel
            is present when some member measured one of its metrics.
        ticks: ``(position, label)`` of every stage or scale (``"0"``, ``"4x4"``).
        kind: ``"stage"`` or ``"scale"`` (the x axis).
        title: the figure's title.
        figure_, axes_: set by ``plot``.
    """

    def __init__(self, panels: dict[str, list[Series]], *, ticks: list[tuple[int, str]], kind: str = "stage",
                 title: str = "") -> None:
        self.panels, self.ticks, self.kind, self.title = panels, ticks, kind, title

    @classmethod
    def from_group(cls, group: StageGroup, *, title: str | None = None) -> DepthDisplay:
        """The stages (or scales) of one quantizer (``stages.stage_groups``)."""
        return cls.from_groups({"": group}, title=title)

    @classmethod
    def from_groups(cls, groups: Mapping[str, StageGroup], *, title: str | None = None) -> DepthDisplay:
        """The same quantizer in several runs (``{"before": g0, "after": g1}``), overlaid in ``CODE_COLORS``."""
        first = next(iter(groups.values()))
        ticks: dict[int, str] = {}
        for g in groups.values():
            for i, s in enumerate(g.stages):
                size = g.sizes[i] if i < len(g.sizes) else None
                ticks.setdefault(s, size or str(s))
        panels: dict[str, list[Series]] = {}
        for panel, keys in PANELS:
            lines = []
            for j, (run, g) in enumerate(groups.items()):
                color = CODE_COLORS[j % len(CODE_COLORS)] if len(groups) > 1 else "C0"
                for key in keys:
                    pts = g.values(key)
                    if pts:
                        label = " ".join(p for p in (run, _LABEL.get(key, key) if len(keys) > 1 else "") if p)
                        lines.append(Series(label or key, np.asarray(pts, dtype=float), color, _STYLE.get(key, "-")))
            if lines:
                panels[panel] = lines
        name = first.quantizer or ("multi-scale quantizer" if first.kind == "scale" else "residual quantizer")
        return cls(panels, ticks=sorted(ticks.items()), kind=first.kind,
                   title=title if title is not None else f"{name}: health by {first.kind}")

    def plot(self, *, axes: Any = None) -> DepthDisplay:
        """Draw one panel per metric on ``axes`` (a sequence with at least one axes per panel; a new figure
        in one row when None). Returns ``self`` with ``figure_`` and ``axes_`` set."""
        n = max(1, len(self.panels))
        fig, axes = panel_grid(axes, n, cols=min(n, 3), panel=(3.6, 2.7), top_in=0.6, bottom_in=0.6,
                               title=self.title, title_size=12, wspace=0.35, hspace=0.75)
        self.figure_, self.axes_ = fig, axes
        pos = [p for p, _ in self.ticks]
        many = len(pos) > 8
        for ax, (panel, lines) in zip(axes, self.panels.items()):
            for s in lines:
                ax.plot(s.values[:, 0], s.values[:, 1], s.style, color=s.color, lw=1.5, marker="o", ms=3.5,
                        label=s.label)
            set_title(ax, panel)
            ax.set_xticks(pos)
            ax.set_xticklabels([t for _, t in self.ticks], rotation=45 if many else 0, fontsize=8)
            ax.set_xlabel(self.kind)
            ax.grid(alpha=0.3)
            if any(s.label != panel for s in lines) and len(lines) > 1:
                ax.legend(fontsize=7, frameon=False)
        for ax in axes[len(self.panels):]:
            ax.set_visible(False)
        return self

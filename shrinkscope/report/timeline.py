"""``shrinkscope report RUN.jsonl``: metric-vs-step timelines from the JSONL log the training hooks write.

``read_timeline`` (``report.runlog``: one streaming pass, bounded memory) parses the log into a ``Timeline``;
``TimelineDisplay`` plots it; ``timeline_text`` sums it up for the terminal; the page is written by
``shrinkscope.report.timeline_page.write_timeline_report``.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from ..metrics import METRIC_KEYS
from .figures import Series, panel_grid, set_title
from .runlog import Timeline, TimelineError, read_timeline
from .text import format_rows

__all__ = ["PLOTTED", "SUMMARY", "Timeline", "TimelineDisplay", "TimelineError", "read_timeline", "timeline_text"]

# Metrics drawn when present (num_codes/dim are constant and stay out).
PLOTTED = tuple(k for k in METRIC_KEYS if k not in ("num_codes", "dim"))
SUMMARY = ("spread_ratio", "effective_rank", "utilization", "dead_code_ratio", "latent_coverage")


def timeline_text(tl: Timeline) -> str:
    """Terminal summary: first -> last value of the key metrics per codebook and scope."""
    header = ["codebook", "scope", "steps", *SUMMARY, "warnings (last)"]
    rows = []
    for (name, scope), series in tl.series.items():
        cells = []
        for m in SUMMARY:
            _, ys = tl.values((name, scope), m)
            cells.append(f"{ys[0]:.3g} -> {ys[-1]:.3g}" if ys else "-")
        warn = ",".join(w.get("code", "?") for w in series[-1].get("warnings", [])) or "ok"
        rows.append([name, scope, f"{series[0]['step']}..{series[-1]['step']}", *cells, warn])
    events = ", ".join(f"{e['event']}@{e['step']}" for e in tl.events[:10])
    extra = [f"events: {events}"] if events else []
    from ..stages import as_rows, stage_groups

    last = {name: recs[-1] for (name, scope), recs in tl.series.items() if scope == "window"}
    for (name, _), recs in tl.series.items():
        last.setdefault(name, recs[-1])
    extra += [f"{g.kind}s at the last logged step: {g.summary()}" for g in stage_groups(as_rows(list(last.values())))]
    if tl.thinned:
        extra.append(f"note: {tl.lines} metric lines; each series is drawn from its first and last records and "
                     "an evenly spaced subset of the others")
    if tl.events_dropped:
        extra.append(f"note: {tl.events_dropped} further event lines left out")
    if tl.skipped_last_line:
        extra.append("note: the last line was incomplete and was skipped (run still writing?)")
    return "\n".join(
        [f"shrinkscope report {tl.source}", "", format_rows(header, rows), *([""] + extra if extra else [])]
    )


class TimelineDisplay:
    """Every logged metric against the training step: one panel per metric, one line per (codebook, scope),
    events (e.g. a defer switch) as labelled vertical lines.

    Attributes:
        panels: metric -> ``Series`` whose ``values`` are ``(n, 2)`` ``(step, value)`` rows; ``style`` is
            ``"-"`` for the ``window`` scope and ``"--"`` for ``cumulative``.
        events: ``(step, name)`` of each event line.
        title: the figure's title.
        axes_ (flat array), figure_: set by ``plot``.
    """

    def __init__(
        self, panels: dict[str, list[Series]], *, events: list[tuple[int, str]] | None = None, title: str = ""
    ) -> None:
        self.panels, self.events, self.title = panels, list(events or []), title

    @classmethod
    def from_timeline(cls, tl: Timeline) -> TimelineDisplay:
        """Panels of every metric with at least one finite value in the log."""
        colors = {name: f"C{i % 10}" for i, name in enumerate(dict.fromkeys(n for n, _ in tl.series))}
        panels: dict[str, list[Series]] = {}
        for m in PLOTTED:
            lines = []
            for name, scope in tl.series:
                xs, ys = tl.values((name, scope), m)
                if xs:
                    lines.append(
                        Series(
                            f"{name} ({scope})",
                            np.column_stack([xs, ys]).astype(float),
                            colors[name],
                            "-" if scope == "window" else "--",
                        )
                    )
            if lines:
                panels[m] = lines
        events = [(int(e["step"]), str(e["event"])) for e in tl.events]
        return cls(
            panels, events=events, title=f"Codebook health over training: {os.path.basename(tl.source)}"
        )

    @classmethod
    def from_jsonl(cls, path: str) -> TimelineDisplay:
        """Read a ``shrinkscope.watch`` JSONL log (see ``read_timeline``) and build its panels."""
        return cls.from_timeline(read_timeline(path))

    def plot(self, *, axes: Any = None) -> TimelineDisplay:
        """Draw one panel per metric on ``axes`` (a sequence with at least one axes per panel; a new figure
        when None). Returns ``self`` with ``figure_`` and ``axes_`` set."""
        n = max(1, len(self.panels))
        cols = 3 if n > 4 else 2
        labels = list(dict.fromkeys(s.label for lines in self.panels.values() for s in lines))
        top_in, legend_in = 0.75, 0.45 + 0.22 * math.ceil(len(labels) / 4)  # inches above / below the panels
        fig, axes = panel_grid(axes, n, cols=cols, panel=(4.0, 2.9), top_in=top_in, bottom_in=legend_in,
                               title=self.title)
        self.figure_, self.axes_ = fig, axes
        for ax, (metric, lines) in zip(axes, self.panels.items()):
            for s in lines:
                ax.plot(
                    s.values[:, 0],
                    s.values[:, 1],
                    s.style,
                    color=s.color,
                    lw=1.5,
                    marker=".",
                    ms=4,
                    label=s.label,
                )
            for step, name in self.events:
                ax.axvline(step, color="0.3", ls=":", lw=1.2)
                ax.annotate(
                    name,
                    (step, 1),
                    xycoords=("data", "axes fraction"),
                    rotation=90,
                    va="top",
                    ha="right",
                    fontsize=7,
                    color="0.3",
                    xytext=(-2, -2),
                    textcoords="offset points",
                )
            set_title(ax, metric)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        for ax in axes[len(self.panels) :]:
            ax.set_visible(False)
        handles, labels = axes[0].get_legend_handles_labels()
        if handles and len(axes) > 1:
            fig.legend(
                handles,
                labels,
                loc="lower center",
                ncol=min(4, len(labels)),
                fontsize=9,
                frameon=False,
                bbox_to_anchor=(0.5, 0.0),
            )
        elif handles:
            axes[0].legend(fontsize=8)
        return self

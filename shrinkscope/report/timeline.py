"""``shrinkscope report RUN.jsonl``: metric-vs-step timelines from the JSONL log the training hooks write.

``read_timeline`` parses the log into a ``Timeline``; ``TimelineDisplay`` plots it; the page is written by
``shrinkscope.report.html.write_timeline_report``.

Line schema (written by ``shrinkscope.watch``'s JSONL sink): metric lines
``{"step", "time", "name", "scope": "window"|"cumulative", "num_codes", "dim", "metrics": {KEY: ...},
"warnings": [...]}`` and event lines ``{"step", "time", "event", ...}`` (drawn as vertical lines).
"""

from __future__ import annotations

from dataclasses import dataclass, field
import json
import math
import os
from typing import Any

import numpy as np

from ..formats import FormatError, jsonl_lines
from ..metrics import METRIC_KEYS
from .figures import panel_grid, Series, set_title
from .text import format_rows

# Metrics drawn when present (num_codes/dim are constant and stay out).
PLOTTED = tuple(k for k in METRIC_KEYS if k not in ("num_codes", "dim"))
SUMMARY = ("spread_ratio", "effective_rank", "utilization", "dead_code_ratio", "latent_coverage")


class TimelineError(ValueError):
    """A JSONL run log that cannot be read; the message is one line meant for the user."""


@dataclass
class Timeline:
    """Metric series keyed by (codebook name, scope) and the run's events."""

    source: str
    series: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    skipped_last_line: bool = False

    def values(self, key: tuple[str, str], metric: str) -> tuple[list[int], list[float]]:
        xs, ys = [], []
        for row in self.series[key]:
            v = row["metrics"].get(metric)
            if isinstance(v, (int, float)) and math.isfinite(v):
                xs.append(row["step"])
                ys.append(float(v))
        return xs, ys


def _number(v: object) -> float | int | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        f = float(v)
    except OverflowError:  # an integer beyond float range
        return None
    return v if math.isfinite(f) and abs(f) < 1e300 else None


def _clean_scale(scale: object) -> dict | None:
    """``{"index": int, "size": [h, w]}`` of a multi-scale quantizer's record, or None (absent or malformed)."""
    if not isinstance(scale, dict):
        return None
    index, size = scale.get("index"), scale.get("size")
    ints = isinstance(size, list) and len(size) == 2 and all(type(v) is int and 0 < v < 2**31 for v in size)
    if type(index) is not int or not 0 <= index < 2**31 or not ints:
        return None
    return {"index": index, "size": list(size)}


def _clean_row(row: object) -> dict:
    """A record with the types the report relies on (the file may come from anywhere): an integer step
    within float precision, string name/scope/event, numbers or None as metrics, warnings as
    ``{"code": str, "message": str}``.

    Raises:
        ValueError: not an object with an integer ``step``.
    """
    if not isinstance(row, dict) or isinstance(row.get("step"), bool) or not isinstance(row.get("step"), int) \
            or abs(row["step"]) >= 2**53:
        raise ValueError("not an object with an integer 'step'")
    if "event" in row:
        row["event"] = str(row["event"])[:200]
        return row
    if isinstance(row.get("metrics"), dict):
        row["metrics"] = {str(k): _number(v) for k, v in row["metrics"].items()}
        row["name"] = str(row.get("name", ""))[:200]
        row["scope"] = str(row.get("scope", "window"))[:40]
        warns = row.get("warnings")
        row["warnings"] = [{"code": str(w.get("code", "?")), "message": str(w.get("message", ""))}
                           for w in (warns if isinstance(warns, list) else []) if isinstance(w, dict)]
        if "scale" in row:
            row["scale"] = _clean_scale(row["scale"])
    return row


def read_timeline(path: str) -> Timeline:
    """Parse a JSONL run log; a damaged *last* line is skipped (the run may still be writing).

    Raises:
        TimelineError: missing path, directory, empty file, a damaged line before the last, no metric lines.
    """
    if not os.path.exists(path):
        raise TimelineError(f"{path}: no such file")
    if os.path.isdir(path):
        raise TimelineError(
            f"{path}: is a directory; pass the JSONL file written by shrinkscope.watch(log_to=...)"
        )
    try:
        lines = jsonl_lines(path)  # each line bounded before it is read whole
    except FormatError as exc:
        raise TimelineError(str(exc)) from None
    if not lines:
        raise TimelineError(f"{path}: is empty; no metric lines were logged yet")
    tl = Timeline(path)
    for i, line in enumerate(lines, 1):
        try:
            row = _clean_row(json.loads(line))
        except (ValueError, RecursionError) as exc:
            if i == len(lines):
                tl.skipped_last_line = True
                break
            raise TimelineError(
                f"{path}:{i}: not a shrinkscope JSONL line ({' '.join(str(exc).split())[:120]})"
            ) from None
        if "event" in row:
            tl.events.append(row)
        elif isinstance(row.get("metrics"), dict) and "name" in row:
            tl.series.setdefault((str(row["name"]), str(row.get("scope", "window"))), []).append(row)
    if not tl.series:
        raise TimelineError(
            f"{path}: holds no metric lines ({len(tl.events)} event lines); is it the JSONL log "
            "of shrinkscope.watch?"
        )
    for rows in tl.series.values():
        rows.sort(key=lambda r: r["step"])
    return tl


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

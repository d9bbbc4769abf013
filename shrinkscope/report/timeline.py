"""``shrinkscope report RUN.jsonl``: metric-vs-step timelines from the JSONL log the training hooks write.

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

from ..metrics import METRIC_KEYS
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
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [ln for ln in f.read().splitlines() if ln.strip()]
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
    if tl.skipped_last_line:
        extra.append("note: the last line was incomplete and was skipped (run still writing?)")
    return "\n".join(
        [f"shrinkscope report {tl.source}", "", format_rows(header, rows), *([""] + extra if extra else [])]
    )


def timeline_figure(tl: Timeline, path: str) -> str:
    """One panel per metric with data; one line per (codebook, scope); events as vertical lines."""
    from matplotlib.figure import Figure

    metrics = [m for m in PLOTTED if any(tl.values(k, m)[1] for k in tl.series)]
    cols = 3 if len(metrics) > 4 else 2
    rows = max(1, math.ceil(len(metrics) / cols))
    fig = Figure(figsize=(5.2 * cols, 3.4 * rows + 0.8), dpi=100, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    colors = {name: f"C{i % 10}" for i, name in enumerate(dict.fromkeys(n for n, _ in tl.series))}
    for ax, m in zip(axes, metrics):
        for name, scope in tl.series:
            xs, ys = tl.values((name, scope), m)
            if xs:
                ax.plot(
                    xs, ys, "-" if scope == "window" else "--", color=colors[name], lw=1.5, marker=".", ms=4,
                    label=f"{name} ({scope})"
                )
        for e in tl.events:
            ax.axvline(e["step"], color="0.3", ls=":", lw=1.2)
            ax.annotate(
                str(e["event"]), (e["step"], 1), xycoords=("data", "axes fraction"), rotation=90, va="top",
                ha="right", fontsize=7, color="0.3", xytext=(-2, -2), textcoords="offset points"
            )
        ax.set_title(m)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(4, len(labels)), fontsize=8)
    fig.suptitle(f"Codebook health over training: {os.path.basename(tl.source)}", fontsize=13)
    fig.savefig(path)
    return path


def write_timeline_report(tl: Timeline, out_dir: str) -> str:
    """Write ``timeline.png`` and a self-contained ``report.html``; returns the HTML path."""
    import html

    from .html import embed_png, page

    os.makedirs(out_dir, exist_ok=True)
    png = timeline_figure(tl, os.path.join(out_dir, "timeline.png"))
    body = (
        f"<p>Run log <code>{html.escape(tl.source)}</code>: "
        f"{sum(map(len, tl.series.values()))} metric lines, "
        f"{len(tl.events)} events.</p><pre>{html.escape(timeline_text(tl))}</pre>{embed_png(png, 'timeline')}"
    )
    path = os.path.join(out_dir, "report.html")
    with open(path, "w") as f:
        f.write(page("shrinkscope: codebook health over training", body))
    return path

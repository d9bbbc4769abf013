"""The report folder of a training run's JSONL log (``shrinkscope report RUN.jsonl``), in the layout of the others.

``write_timeline_report(read_timeline(path), out_dir)`` writes ``timeline.png`` and a self-contained
``report.html``: the verdict of each codebook and scope at its last logged step, health by depth for residual
stages and scales, the timeline plot, and each metric at the first and last logged step. The ``Timeline`` holds
a bounded subset of a long log (``report.runlog``); the page says how many lines the log had.
"""
from __future__ import annotations

import html
import os
from typing import TYPE_CHECKING, Any

from .figures import detached
from .html import _depth_section, _save, _write_page
from .layout import change_table, figure_html, page, section
from .verdict import verdict_card

if TYPE_CHECKING:
    from .timeline import Timeline

__all__ = ["write_timeline_report"]


def _timeline_depth_blocks(tl: Timeline) -> list[tuple[Any, list[str]]]:
    """Depth panels of a run log: the last record of each stage or scale (window scope, else cumulative)."""
    from ..stages import as_rows, stage_groups
    from .depth import DepthDisplay

    last = {name: rows[-1] for (name, scope), rows in tl.series.items() if scope == "window"}
    for (name, _), rows in tl.series.items():
        last.setdefault(name, rows[-1])
    blocks = []
    for g in stage_groups(as_rows(list(last.values()))):
        step = {int(last[h.name]["step"]) for h in g.healths}
        at = f" (step {min(step)})" if len(step) == 1 else f" (steps {min(step)}..{max(step)})"
        blocks.append((DepthDisplay.from_group(g, title=f"{g.quantizer or g.kind + 's'}: health by {g.kind}{at}"),
                       [g.summary() + at]))
    return blocks


@detached()
def write_timeline_report(tl: Timeline, out_dir: str) -> str:
    """Write ``timeline.png`` and ``report.html`` for a JSONL run log; returns the HTML path.

    Verdicts are those of the last logged step of each codebook and scope (records without a verdict show
    their warnings); the table gives each metric at the first and last logged step.
    """
    from .timeline import TimelineDisplay

    os.makedirs(out_dir, exist_ok=True)
    cards, tables = [], []
    for (name, scope), rows in tl.series.items():
        first, last = rows[0], rows[-1]
        label = f"{name} ({scope})"
        cards.append(
            verdict_card(
                label,
                last.get("verdict"),
                status="no_verdict",
                warnings=last.get("warnings") or [],
                caption=f"step {last['step']}",
            )
        )
        tables.append(
            f"<h3>{html.escape(label)}</h3>"
            + change_table(
                first.get("metrics") or {},
                last.get("metrics") or {},
                labels=(f"step {first['step']}", f"step {last['step']}"),
            )
        )
    fig = TimelineDisplay.from_timeline(tl).plot().figure_
    plot = figure_html(
        _save(fig, out_dir, "timeline.png"),
        "timeline",
        caption="Solid: window scope; dashed: cumulative; dotted vertical lines: events.",
    )
    events = ", ".join(f"{e['event']} at step {e['step']}" for e in tl.events[:10])
    meta = [
        f"Run log <code>{html.escape(tl.source)}</code>",
        f"{tl.lines} metric lines, {len(tl.events) + tl.events_dropped} events"
        + (f": {html.escape(events)}" if events else ""),
    ]
    if tl.thinned:
        meta.append("A long log: each series is drawn from its first and last records and an evenly spaced "
                    "subset of the others.")
    if tl.skipped_last_line:
        meta.append("The last line was incomplete and was skipped (run still writing?).")
    sections = [
        section(
            "Verdict at the last logged step", f"<div class='cards'>{''.join(cards)}</div>", anchor="verdict"
        ),
        _depth_section(_timeline_depth_blocks(tl), out_dir),
        section("Timeline", plot, anchor="timeline"),
        section("First and last logged values", "".join(tables), anchor="metrics"),
    ]
    return _write_page(out_dir, page("shrinkscope: codebook health over training", sections, meta=meta))

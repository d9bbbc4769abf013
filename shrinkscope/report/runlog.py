"""Reading a ``shrinkscope.watch`` JSONL run log in one streaming pass, in memory bounded by what is drawn.

A long run logs millions of lines (a report every few steps, two scopes per codebook, ten scales of VAR). The
report draws each (codebook, scope) series as one line per metric and shows the first and the last record in
full, so that is all ``read_timeline`` keeps: per series, the first and last record (by step) whole, and an
evenly spaced subset of the others (at most ``MAX_POINTS``, halved to every second kept record each time it
fills, so the kept records stay evenly spaced in the file however long it grows) with only their numeric
metrics. The file is read line by line; a line longer than ``MAX_LINE`` characters, more than ``MAX_SERIES``
series, or a damaged line before the last is an error with the line number (the CLI: one line, exit 2).
Memory is then bounded by ``MAX_SERIES x (MAX_POINTS slim records + 2 whole ones)`` plus ``MAX_EVENTS`` small
event records, whatever the file's length (a whole record is at most one ``MAX_LINE`` line, its metrics and
warnings capped by ``MAX_EXTRA_METRICS`` and ``MAX_WARNINGS``).

Line schema (written by ``shrinkscope.watch``'s JSONL sink): metric lines ``{"step", "time", "name", "scope":
"window"|"cumulative", "num_codes", "dim", "metrics": {KEY: ...}, "warnings": [...], "verdict"?, "scale"?}``
and event lines ``{"step", "time", "event", ...}`` (drawn as vertical lines).
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..formats import FormatError, iter_jsonl_lines
from ..metrics import METRIC_KEYS

__all__ = ["MAX_EVENTS", "MAX_LINE", "MAX_POINTS", "MAX_SERIES", "Timeline", "TimelineError", "read_timeline"]

MAX_POINTS = 2048
"""Records kept per series for the plots (the first and the last come on top): a panel is a few hundred
pixels wide, so more points draw the same line."""
MAX_SERIES = 256
"""(codebook, scope) series a log may hold: 128 codebooks in both scopes (VAR's ten scales use 20)."""
MAX_EVENTS = 1000
"""Event lines kept (the first ones; the rest are counted in ``Timeline.events_dropped``)."""
MAX_LINE = 1 << 18
"""Characters one line may have (256 Ki): a record is a few kilobytes."""
MAX_EXTRA_METRICS = 64
"""Metrics beyond ``METRIC_KEYS`` kept per record (a newer version's keys; the first ones in the line)."""
MAX_WARNINGS = 64
"""Warnings kept per record (each message cut at 1000 characters)."""
_KEPT = frozenset(METRIC_KEYS)


class TimelineError(ValueError):
    """A JSONL run log that cannot be read; the message is one line meant for the user."""


@dataclass
class Timeline:
    """Metric series keyed by (codebook name, scope) and the run's events.

    Attributes:
        series: per (name, scope), records sorted by step: the first and the last whole, the ones between a
            subset thinned evenly to at most ``MAX_POINTS`` with only their numeric ``METRIC_KEYS`` metrics.
        events: the event records (the first ``MAX_EVENTS``).
        lines: metric lines read, all of them (``series`` holds a subset when the log is long).
        thinned: True when some series kept only a subset of its records.
        events_dropped: event lines beyond ``MAX_EVENTS``, counted and left out.
    """

    source: str
    series: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    skipped_last_line: bool = False
    lines: int = 0
    thinned: bool = False
    events_dropped: int = 0

    def values(self, key: tuple[str, str], metric: str) -> tuple[list[int], list[float]]:
        """``(steps, values)`` of one metric of one series where it is a finite number."""
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
    """``{"index": int, "size": [h, w] | None}`` of a multi-scale quantizer's record, or None (absent or
    malformed)."""
    if not isinstance(scale, dict):
        return None
    index, size = scale.get("index"), scale.get("size")
    ints = isinstance(size, list) and len(size) == 2 and all(type(v) is int and 0 < v < 2**31 for v in size)
    if type(index) is not int or not 0 <= index < 2**31 or not (ints or size is None):
        return None
    return {"index": index, "size": list(size) if ints else None}


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
    if "event" in row:  # only what the plots and pages show
        ev = {"step": row["step"], "event": str(row["event"])[:200]}
        return {**ev, "time": row["time"]} if _number(row.get("time")) is not None else ev
    if isinstance(row.get("metrics"), dict):
        known = {k: _number(v) for k, v in row["metrics"].items() if k in _KEPT}
        extra = [(str(k)[:100], _number(v)) for k, v in row["metrics"].items() if k not in _KEPT]
        row["metrics"] = {**known, **dict(extra[:MAX_EXTRA_METRICS])}
        row["name"] = str(row.get("name", ""))[:200]
        row["scope"] = str(row.get("scope", "window"))[:40]
        warns = row.get("warnings")
        row["warnings"] = [{"code": str(w.get("code", "?"))[:100], "message": str(w.get("message", ""))[:1000]}
                           for w in (warns if isinstance(warns, list) else []) if isinstance(w, dict)][:MAX_WARNINGS]
        if "scale" in row:
            row["scale"] = _clean_scale(row["scale"])
    return row


class _Series:
    """One series while the file is read: first and last record whole, the others thinned evenly."""

    def __init__(self) -> None:
        self.kept: list[tuple[int, dict[str, Any]]] = []  # (arrival index, slim record)
        self.stride, self.count = 1, 0
        self.first: tuple[int, dict[str, Any]] | None = None
        self.last: tuple[int, dict[str, Any]] | None = None

    def add(self, row: dict[str, Any]) -> None:
        i, self.count = self.count, self.count + 1
        step = row["step"]
        if self.first is None or step < self.first[1]["step"]:
            self.first = (i, row)  # the earliest of the smallest step, as a stable sort puts first
        if self.last is None or step >= self.last[1]["step"]:
            self.last = (i, row)  # the latest of the largest step
        if i % self.stride == 0:
            self.kept.append((i, {"step": step, "metrics": {k: v for k, v in row["metrics"].items()
                                                            if v is not None and k in _KEPT}}))
            if len(self.kept) > MAX_POINTS:  # keep every second: indices stay multiples of the new stride
                self.kept = self.kept[::2]
                self.stride *= 2

    def rows(self) -> list[dict[str, Any]]:
        by_index = dict(self.kept)
        for i, row in (self.first, self.last):  # type: ignore[misc]
            by_index[i] = row
        return [r for _, r in sorted(by_index.items(), key=lambda it: (it[1]["step"], it[0]))]


def _lines(path: str) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of each non-blank line, one at a time: ``formats.iter_jsonl_lines`` (regular
    files only, a byte-order mark accepted, 16 MiB per line at most while reading) and ``MAX_LINE`` on top."""
    try:
        for n, line in iter_jsonl_lines(path):
            if len(line) > MAX_LINE:
                raise TimelineError(f"{path}:{n}: longer than {MAX_LINE:,} characters; not a shrinkscope JSONL line")
            yield n, line
    except FormatError as exc:
        raise TimelineError(str(exc)) from None


def read_timeline(path: str) -> Timeline:
    """Parse a JSONL run log in one streaming pass; a damaged *last* line is skipped (the run may still be
    writing). Memory does not grow with the number of lines (see the module docstring).

    Raises:
        TimelineError: missing path, directory, empty file, a damaged line before the last, a line longer
            than ``MAX_LINE``, more than ``MAX_SERIES`` series, no metric lines.
    """
    if not os.path.exists(path):
        raise TimelineError(f"{path}: no such file")
    if os.path.isdir(path):
        raise TimelineError(f"{path}: is a directory; pass the JSONL file written by shrinkscope.watch(log_to=...)")
    tl = Timeline(path)
    series: dict[tuple[str, str], _Series] = {}
    damaged: tuple[int, str] | None = None
    seen_any = False
    for n, line in _lines(path):
        seen_any = True
        if damaged is not None:  # a damaged line followed by more lines: not a run still writing
            raise TimelineError(f"{path}:{damaged[0]}: not a shrinkscope JSONL line ({damaged[1]})")
        try:
            row = _clean_row(json.loads(line))
        except (ValueError, RecursionError) as exc:
            damaged = (n, " ".join(str(exc).split())[:120])
            continue
        if "event" in row:
            if len(tl.events) < MAX_EVENTS:
                tl.events.append(row)
            else:
                tl.events_dropped += 1
        elif isinstance(row.get("metrics"), dict) and "name" in row:
            key = (str(row["name"]), str(row.get("scope", "window")))
            if key not in series and len(series) >= MAX_SERIES:
                raise TimelineError(f"{path}:{n}: more than {MAX_SERIES} (codebook, scope) series; a report "
                                    "draws at most that many: split the log by codebook")
            series.setdefault(key, _Series()).add(row)
            tl.lines += 1
    if not seen_any:
        raise TimelineError(f"{path}: is empty; no metric lines were logged yet")
    tl.skipped_last_line = damaged is not None
    if not series:
        raise TimelineError(f"{path}: holds no metric lines ({len(tl.events) + tl.events_dropped} event lines); "
                            "is it the JSONL log of shrinkscope.watch?")
    tl.series = {k: s.rows() for k, s in series.items()}
    tl.thinned = any(s.stride > 1 for s in series.values())
    return tl

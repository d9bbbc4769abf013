"""Residual stages and multi-scale token maps side by side: how codebook health changes with depth.

Residual quantizers (``ResidualVQ``, EnCodec/DAC/Mimi RVQ, SoundStream) chain codebooks: stage ``q`` quantizes
what stages ``0..q-1`` left. Multi-scale quantizers (VAR) share one codebook over a pyramid of token maps,
coarse to fine, each scale quantizing the residual of the coarser ones. Each stage or scale gets its own row
in every table; this module groups those rows by quantizer (``rvq.layers.0``, ``rvq.layers.1``, ... or the
watch names ``rvq/layers.0``; ``vae.quantize.scales.0``, ...) and sums up the trend in one sentence per
quantizer, e.g. "utilization 91% at stage 0 to 12% at stage 7 (lowest ...)", so a late stage that went dead
or a coarse scale that uses a handful of codes is read at a glance rather than found in row 7 of 10. The
report draws the same groups as one panel per quantizer (``report.depth.DepthDisplay``).

Groups are built from anything with ``name``, ``metrics`` and ``warnings`` (``CodebookHealth``, or the
records of a JSONL run log through ``as_rows``), so analyze, compare and the training timeline share them.
A note when reading scales: a coarse scale has few tokens per input (one at 1x1), so its usage over a data
set is bounded by the number of inputs, not only by the codebook's health.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .latents import RESIDUAL

__all__ = ["PANELS", "Row", "StageGroup", "as_rows", "depth_summary", "stage_groups"]

SCALE = re.compile(r"^(.*\bscales\.)(\d+)$")
"""Names of the scales of a multi-scale quantizer: ``quantize.scales.N``, ``quantize/scales.N``."""

TRENDS = (  # metric key, label, format, whether higher is better (the summary sentence)
    ("utilization", "utilization", "{:.0%}", True),
    ("dead_code_ratio", "dead codes", "{:.0%}", False),
    ("spread_ratio", "spread ratio", "{:.2f}", True),
    ("effective_rank", "effective rank", "{:.1f}", True),
)
PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (  # panel title, metric keys drawn in it (the plot)
    ("utilization", ("utilization", "codes_used")),
    ("dead_code_ratio", ("dead_code_ratio",)),
    ("spread", ("spread_ratio", "spread_vs_kmeans")),
    ("effective_rank", ("effective_rank",)),
    ("quantization_error", ("quantization_error",)),
)


class Row(NamedTuple):
    """One codebook's measurements, whatever produced them (a ``CodebookHealth`` or a JSONL record)."""

    name: str
    metrics: Mapping[str, Any]
    warnings: list[dict[str, Any]]
    scale: Mapping[str, Any] | None = None


def as_rows(records: Sequence[Any], scales: Mapping[str, Mapping[str, Any]] | None = None) -> list[Row]:
    """``Row`` per ``CodebookHealth`` or record dict (``{"name", "metrics", "warnings", "scale"?}``).

    Args:
        records: healths or dict records.
        scales: ``{name: {"index", "size"}}`` for healths (a dict record carries its own ``scale``).
    """
    out = []
    for r in records:
        if isinstance(r, Mapping):
            sc = r.get("scale")
            out.append(Row(str(r.get("name", "")), r.get("metrics") or {}, list(r.get("warnings") or []),
                           sc if isinstance(sc, Mapping) else None))
        else:
            out.append(Row(r.name, r.metrics, list(r.warnings), (scales or {}).get(r.name)))
    return out


def _size(row: Row) -> str | None:
    size = (row.scale or {}).get("size")
    if isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) for v in size):
        return f"{size[0]}x{size[1]}"
    return None


@dataclass
class StageGroup:
    """The stages (or scales) of one quantizer, in order.

    Attributes:
        quantizer: the name shared by its stages (``rvq``; ``""`` for a quantizer analysed on its own).
        stages: stage (or scale) numbers.
        healths: the measurements per stage: ``CodebookHealth`` or ``Row``.
        kind: ``"stage"`` (residual stages) or ``"scale"`` (a multi-scale quantizer's token maps).
        sizes: per stage, the token-map size (``"4x4"``) of a scale when known, else None.
    """

    quantizer: str
    stages: list[int]
    healths: list[Any]
    kind: str = "stage"
    sizes: list[str | None] = field(default_factory=list)

    def label(self, i: int) -> str:
        """Axis and sentence label of the ``i``-th member: ``stage 3``, ``scale 3 (4x4)``."""
        size = self.sizes[i] if i < len(self.sizes) else None
        return f"{self.kind} {self.stages[i]}" + (f" ({size})" if size else "")

    def values(self, key: str) -> list[tuple[int, float]]:
        """``(stage, value)`` of metric ``key`` where measured."""
        out = []
        for s, h in zip(self.stages, self.healths):
            v = h.metrics.get(key) if isinstance(h.metrics, Mapping) else None
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                out.append((s, float(v)))
        return out

    def rows(self) -> list[dict[str, Any]]:
        """One dict per stage: ``{"stage", "name", KEY: value for the TRENDS keys, "warnings": [codes]}``."""
        return [{"stage": s, "name": h.name, **{k: h.metrics.get(k) for k, *_ in TRENDS},
                 "warnings": [w.get("code", "?") for w in h.warnings], **({"size": z} if z else {})}
                for s, h, z in zip(self.stages, self.healths, self.sizes or [None] * len(self.stages))]

    def summary(self) -> str:
        """One sentence: each metric from the first to the last stage, its worst stage, the first warning."""
        label = self.quantizer or ("multi-scale quantizer" if self.kind == "scale" else "residual quantizer")
        at = {s: self.label(i) for i, s in enumerate(self.stages)}
        parts = []
        for key, name, fmt, higher in TRENDS:
            pts = self.values(key)
            if len(pts) < 2:
                continue
            (s0, v0), (s1, v1) = pts[0], pts[-1]
            worst = (min if higher else max)(pts, key=lambda p: p[1])
            text = f"{name} {fmt.format(v0)} at {at[s0]} to {fmt.format(v1)} at {at[s1]}"
            if (worst[1] < min(v0, v1)) if higher else (worst[1] > max(v0, v1)):
                text += f" ({'lowest' if higher else 'highest'} {fmt.format(worst[1])} at {at[worst[0]]})"
            parts.append(text)
        warned = [(s, h) for s, h in zip(self.stages, self.healths) if h.warnings]
        kinds = f"{self.kind}s"
        if warned:
            s, h = warned[0]
            parts.append(f"first warning at {at[s]} ({', '.join(w.get('code', '?') for w in h.warnings)}); "
                         f"{len(warned)} of {len(self.stages)} {kinds} warn")
        else:
            parts.append(f"no {self.kind} warns")
        return f"{label} ({len(self.stages)} {kinds}): " + "; ".join(parts)


def _groups(healths: Sequence[Any], pattern: re.Pattern[str], kind: str) -> list[StageGroup]:
    groups: dict[str, list[tuple[int, Any]]] = {}
    for h in healths:
        m = pattern.match(h.name)
        if m:
            groups.setdefault(m.group(1), []).append((int(m.group(2)), h))
    out = []
    for prefix, items in groups.items():
        if len(items) < 2:
            continue
        items.sort(key=lambda p: p[0])
        cut = max(prefix.rfind(w) for w in ("layers.", "quantizers.", "scales."))
        hs = [h for _, h in items]
        sizes = [_size(h) if isinstance(h, Row) else None for h in hs]
        out.append(StageGroup(prefix[:cut].rstrip("./"), [s for s, _ in items], hs, kind, sizes))
    return out


def stage_groups(healths: Sequence[Any], *, scales: Mapping[str, Mapping[str, Any]] | None = None
                 ) -> list[StageGroup]:
    """Group codebooks named like residual stages (``...layers.N`` / ``...quantizers.N``) or like scales
    (``...scales.N``); two members or more.

    Args:
        healths: ``CodebookHealth`` objects (e.g. ``AnalysisResult.codebooks`` or ``Monitor.report()``) or ``Row``s.
        scales: ``{name: {"index", "size": [h, w]}}``: token-map sizes of scales, for their labels.

    Returns:
        One ``StageGroup`` per quantizer, residual groups first, each in order of first appearance; members
        sorted.
    """
    if scales:
        healths = as_rows(healths, scales)
    return _groups(healths, RESIDUAL, "stage") + _groups(healths, SCALE, "scale")


def depth_summary(healths: Sequence[Any], *, scales: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
    """``StageGroup.summary()`` of every residual or multi-scale quantizer among ``healths`` (empty when none)."""
    return [g.summary() for g in stage_groups(healths, scales=scales)]

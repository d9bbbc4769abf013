"""Residual stages side by side: how codebook health changes with depth.

Residual quantizers (``ResidualVQ``, EnCodec/DAC/Mimi RVQ, SoundStream) chain codebooks: stage ``q`` quantizes
what stages ``0..q-1`` left. Each stage already gets its own row in every table; this module groups those rows
by quantizer (``rvq.layers.0``, ``rvq.layers.1``, ... or the watch names ``rvq/layers.0``, ...) and sums up the
trend in one sentence per quantizer, e.g. "utilization 91% at stage 0 to 12% at stage 7 (lowest ...)", so a
late stage that went dead or shrank is read at a glance rather than found in row 7 of 8.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .analyze import _RESIDUAL

__all__ = ["StageGroup", "depth_summary", "stage_groups"]

TRENDS = (  # metric key, label, format, whether higher is better
    ("utilization", "utilization", "{:.0%}", True),
    ("dead_code_ratio", "dead codes", "{:.0%}", False),
    ("spread_ratio", "spread ratio", "{:.2f}", True),
    ("effective_rank", "effective rank", "{:.1f}", True),
)


@dataclass
class StageGroup:
    """The stages of one residual quantizer, in stage order.

    Attributes:
        quantizer: the name shared by its stages (``rvq``; ``""`` for a quantizer analysed on its own).
        stages: stage numbers.
        healths: ``CodebookHealth`` per stage.
    """

    quantizer: str
    stages: list[int]
    healths: list[Any]

    def rows(self) -> list[dict[str, Any]]:
        """One dict per stage: ``{"stage", "name", KEY: value for the TRENDS keys, "warnings": [codes]}``."""
        return [{"stage": s, "name": h.name, **{k: h.metrics[k] for k, *_ in TRENDS},
                 "warnings": [w["code"] for w in h.warnings]} for s, h in zip(self.stages, self.healths)]

    def summary(self) -> str:
        """One sentence: each metric from the first to the last stage, its worst stage, the first warning."""
        label = self.quantizer or "residual quantizer"
        parts = []
        for key, name, fmt, higher in TRENDS:
            pts = [(s, h.metrics[key]) for s, h in zip(self.stages, self.healths) if h.metrics[key] is not None]
            if len(pts) < 2:
                continue
            (s0, v0), (s1, v1) = pts[0], pts[-1]
            worst = (min if higher else max)(pts, key=lambda p: p[1])
            text = f"{name} {fmt.format(v0)} at stage {s0} to {fmt.format(v1)} at stage {s1}"
            if (worst[1] < min(v0, v1)) if higher else (worst[1] > max(v0, v1)):
                text += f" ({'lowest' if higher else 'highest'} {fmt.format(worst[1])} at stage {worst[0]})"
            parts.append(text)
        warned = [(s, h) for s, h in zip(self.stages, self.healths) if h.warnings]
        if warned:
            s, h = warned[0]
            parts.append(f"first warning at stage {s} ({', '.join(w['code'] for w in h.warnings)}); "
                         f"{len(warned)} of {len(self.stages)} stages warn")
        else:
            parts.append("no stage warns")
        return f"{label} ({len(self.stages)} stages): " + "; ".join(parts)


def stage_groups(healths: Sequence[Any]) -> list[StageGroup]:
    """Group codebooks named like residual stages (``...layers.N`` / ``...quantizers.N``); two stages or more.

    Args:
        healths: ``CodebookHealth`` objects (e.g. ``AnalysisResult.codebooks`` or ``Monitor.report()``).

    Returns:
        One ``StageGroup`` per residual quantizer, in order of first appearance; stages sorted.
    """
    groups: dict[str, list[tuple[int, Any]]] = {}
    for h in healths:
        m = _RESIDUAL.match(h.name)
        if m:
            groups.setdefault(m.group(1), []).append((int(m.group(2)), h))
    out = []
    for prefix, items in groups.items():
        if len(items) < 2:
            continue
        items.sort(key=lambda p: p[0])
        name = prefix[: prefix.rfind("layers.") if "layers." in prefix else prefix.rfind("quantizers.")]
        out.append(StageGroup(name.rstrip("./"), [s for s, _ in items], [h for _, h in items]))
    return out


def depth_summary(healths: Sequence[Any]) -> list[str]:
    """``StageGroup.summary()`` of every residual quantizer among ``healths`` (empty when there is none)."""
    return [g.summary() for g in stage_groups(healths)]

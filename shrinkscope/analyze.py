"""``analyze`` / ``compare``: a checkpoint in, codebook health and a plain-words verdict out.

The CLI (``shrinkscope analyze|compare``) is a thin layer over these two functions; reports
(``shrinkscope.report``) draw from the ``AnalysisResult`` they return.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from ._progress import progress_iter
from .checkpoint import Checkpoint, CheckpointError, from_state_dict, load_arrays, load_checkpoint
from .discovery import FoundCodebook, find_codebooks
from .latents import (  # noqa: F401 - REFERENCE_FORMAT, SAVED_LATENTS_KEY: public here since 0.1
    REFERENCE_FORMAT,
    SAVED_LATENTS_KEY,
    _labels_for,
    _latents_per_codebook,
    load_labels,
    _rows_for,
    _saved_latents,
)
from .metrics import METRIC_KEYS, CodebookHealth, HealthThresholds, codebook_geometry, codebook_health
from .metrics.verdict import Verdict, verdict_line
from .scale_rows import split_scales

__all__ = ["AnalysisResult", "ComparisonResult", "Entry", "analyze", "compare", "status_of"]

EMA_DEAD_SHARE = 0.01
"""With EMA usage buffers a code counts as dead below this fraction of the uniform share 1/K: EMA counts
of unused codes decay towards zero but never reach it (Moshi uses a similar relative threshold)."""
ANALYZE_MAX_POINTS = 4096
"""Rows up to which ``analyze`` computes pairwise spreads exactly. Above it a random subset of this many rows
gives an unbiased estimate (standard error well under 1% of the mean, see metrics/geometry.py) in a
second instead of ~20 s for a 16384-code codebook on one CPU core."""
_SEVERE = {"shrinkage", "dimensional_collapse", "poor_coverage"}


def _finite(d: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN/Inf: a non-finite metric becomes null, like a metric that could not be computed."""
    d["metrics"] = {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d["metrics"].items()
    }
    return d


def _codebook_dict(e: Entry) -> dict[str, Any]:
    d = _finite(e.health.to_dict())
    if e.scale is not None:  # size: null when unknown (a VAR checkpoint read without scales=)
        size = e.scale.get("size")
        d["scale"] = {"index": int(e.scale["index"]), "size": None if size is None else [int(v) for v in size]}
    return d


def status_of(health: CodebookHealth) -> str:
    """One word for a codebook: its verdict's status (``shrunk``, ``underused``, ``healthy``, ``cannot_tell``),
    with ``uninitialised`` spelled as the reports always have."""
    if health.verdict is not None:
        return "uninitialised" if health.verdict.status == "uninitialized" else health.verdict.status
    codes = {w["code"] for w in health.warnings}
    if "uninitialized" in codes:
        return "uninitialised"
    if codes & _SEVERE:
        return "shrunk"
    return "underused" if codes else "healthy"


@dataclass
class Entry:
    """One analysed codebook: its health, where it came from, and the latents it was measured against.

    Attributes:
        scale: ``{"index", "size": [h, w]}`` when the codebook is one scale of a multi-scale quantizer (VAR).
        labels: ``(N,)`` data-mode ids of the latent rows, when the mode metrics were measured on them.
    """

    health: CodebookHealth
    found: FoundCodebook
    latents: torch.Tensor | None = None
    notes: list[str] = field(default_factory=list)
    scale: dict[str, Any] | None = None
    labels: torch.Tensor | None = None

    @property
    def status(self) -> str:
        return status_of(self.health)


@dataclass
class AnalysisResult:
    """Every codebook of one checkpoint. ``to_dict()`` is the ``--json`` contract."""

    source: str
    entries: list[Entry]
    latents_source: str | None = None

    @property
    def codebooks(self) -> list[CodebookHealth]:
        return [e.health for e in self.entries]

    def to_dict(self) -> dict[str, Any]:
        """``{"source": PATH, "codebooks": [codebook_health(...).to_dict(), ...]}``; a codebook that is one scale
        of a multi-scale quantizer also has ``"scale": {"index": i, "size": [h, w]}``."""
        return {"source": self.source, "codebooks": [_codebook_dict(e) for e in self.entries]}

    @property
    def healthy(self) -> bool:
        return all(e.status == "healthy" for e in self.entries)

    def verdict(self) -> str:
        """The verdict in plain words: one line per codebook (status, evidence, the deciding measurements),
        then what to pass to learn more. Identical codebook verdicts are grouped."""
        lines: list[str] = []
        for e in self.entries:
            v = e.health.verdict
            if v is None:
                continue
            lines.append(verdict_line(e.health.name, v))
        missing = {m["input"]: m for e in self.entries if e.health.verdict for m in e.health.verdict.missing}
        for key in ("latents", "usage", "labels"):
            if key in missing:
                lines.append(f"Missing {key}: {missing[key]['why']}; {missing[key]['how']}.")
        return "\n".join(lines)


def _open(source: Any, trust: bool) -> Checkpoint:
    if isinstance(source, (str, os.PathLike)):
        return load_checkpoint(source, trust=trust)
    if isinstance(source, (Mapping, torch.nn.Module)):
        return from_state_dict(source)
    raise TypeError(f"analyze: expected a path, a state dict or an nn.Module, got {type(source).__name__}")


def analyze(
    source: Any, data: Any = None, *, latents: Any = None, labels: Any = None, keys: list[str] | None = None,
    trust_checkpoint: bool = False,
    include_embeddings: bool = False, l2_normalize: bool | None = None,
    thresholds: HealthThresholds | None = None, max_latents: int | None = 20_000,
    max_points: int | None = ANALYZE_MAX_POINTS, progress: bool | None = None, seed: int = 0,
    scales: Any = None, **live: Any
) -> AnalysisResult:
    """Find every codebook in a checkpoint and measure its health.

    Args:
        source: checkpoint path (``.pt/.pth/.ckpt/.bin/.safetensors/.npy/.npz``), a (nested) state dict,
            or an ``nn.Module``.
        data: with an ``nn.Module`` source: run the model over this data (a ``DataLoader``, an iterable of
            batches, or a tensor/array) under the watch hooks to get its latents and exact usage
            (``shrinkscope.live.analyze_model``; its options ``forward``, ``batch_size``, ``max_batches``,
            ``device``, ``eval_mode``, ``adapter``, ``scales``, ``process_group`` go in ``**live``).
        latents: optional pre-quantization encoder outputs: a path (``.npy/.npz/.pt/.safetensors``) or a
            tensor/array, ``(N, D)`` or channel-first maps ``(B, D, ...)``. Enable spread ratio, coverage,
            quantization error, and usage counts when the checkpoint stores none.
        labels: optional data-mode ids of the latents (a path to a ``.npy/.pt`` of ints, or an array): one per
            latent row, or one per map of ``(B, D, ...)`` latents. Enable the mode-level metrics. With ``data``:
            one id per input row in data order, or ``True`` to take ``y`` from ``(x, y)`` batches.
        keys: explicit codebook keys (disables automatic discovery).
        trust_checkpoint: allow unsafe unpickling of a torch file (only for files you trust).
        include_embeddings: also report token-embedding tables of language models.
        l2_normalize: force/forbid l2-normalising codebooks before measuring (None: follow the convention).
        thresholds: warning cut-offs (``HealthThresholds()`` by default).
        max_latents: random subset of latents used per codebook (None: all).
        max_points: pairwise spreads are exact up to this many rows and averaged over a random subset of
            this many rows above (an unbiased estimate; None: always exact, O(K^2 D) time).
        progress: tqdm progress bar on stderr (None: only when stderr is a terminal); it appears once the
            work has taken a second.
        seed: seed of every subsample.
        scales: token-map sizes of a multi-scale quantizer, coarse to fine (patch numbers such as
            ``(1, 2, 4, 8)`` or ``(h, w)`` pairs). A VAR checkpoint is read as one codebook per scale from its
            per-scale usage buffer (``quantize.scales.N``); the sizes label those rows (a checkpoint does not
            store them: ``"size"`` is null without this). With ``data``: the ``scales`` option of
            ``analyze_model`` (your own multi-scale quantizer, docs/hooks.md).

    Returns:
        An ``AnalysisResult`` (``.codebooks``: list of ``CodebookHealth``; ``.verdict()``; ``.to_dict()``).

    Raises:
        CheckpointError (a ValueError): unreadable/unsafe file, no codebook, NaN/Inf codebook, bad latents.

    Example:
        >>> from vector_quantize_pytorch import VectorQuantize  # doctest: +SKIP
        >>> analyze(VectorQuantize(dim=16, codebook_size=64)).codebooks[0].num_codes  # doctest: +SKIP
        64
    """
    _check_options(max_latents=max_latents, max_points=max_points, seed=seed)
    if scales is not None and (data is not None or live):
        live["scales"] = scales
    if data is not None or live:
        if data is None or not isinstance(source, torch.nn.Module) or latents is not None or keys:
            raise TypeError("analyze: data=... (and its options) needs an nn.Module source, and replaces "
                            "latents= and keys=")
        from .live import analyze_model

        return analyze_model(source, data, thresholds=thresholds, max_latents=max_latents, max_points=max_points,
                             progress=progress, seed=seed, labels=labels, **live)
    ckpt = _open(source, trust_checkpoint)
    found = find_codebooks(ckpt, keys=keys, include_embeddings=include_embeddings, l2_normalize=l2_normalize)
    latents_note = None
    if latents is None:
        z, latents_source, latents_note = _saved_latents(ckpt, max_latents, seed)
    elif isinstance(latents, (str, os.PathLike)):
        # read only a bounded subset: memory follows max_latents, not the file (the same rows per codebook);
        # with labels every row is read, since labels are aligned with the file's rows
        cap = max_latents if labels is None else None
        z, latents_source = load_arrays(latents, max_rows=cap, seed=seed), os.fspath(latents)
    else:
        z = torch.as_tensor(np.asarray(latents)) if not isinstance(latents, torch.Tensor) else latents
        latents_source = "<tensor>"
    if isinstance(z, dict):
        z = {k: v.detach().cpu() for k, v in z.items()}
        bad = [k for k, v in z.items() if not bool(torch.isfinite(v).all())]
        if bad:
            raise CheckpointError(f"latents: arrays {', '.join(bad)} contain NaN/Inf values")
    elif z is not None:
        z = z.detach().cpu()
        if not z.is_floating_point() or z.dim() < 2 or z.shape[0] < 2:
            raise CheckpointError(f"latents: expected a float array (N, D) or (B, D, ...) with N >= 2, got "
                                  f"{z.dtype} of shape {list(z.shape)}")
        if not bool(torch.isfinite(z).all()):
            raise CheckpointError(f"latents: contain {int((~torch.isfinite(z)).sum())} NaN/Inf values")
        if all(_rows_for(fc, z, ckpt.tensors) is None for fc in found):
            dims = sorted({fc.codebook.shape[1] for fc in found})
            how = next((n for fc in found for n in fc.notes if "project_in" in n), "")
            raise CheckpointError(
                f"latents of shape {list(z.shape)} match no codebook dimension (D = {dims}); "
                "pass encoder outputs in the codebook's space (after any projection)" + (f": {how}" if how else "")
            )
    lab = load_labels(labels)
    if lab is not None and z is None:
        raise CheckpointError("labels: --labels describe latent rows; pass --latents FILE with them")
    if lab is not None and isinstance(z, dict):
        raise CheckpointError("labels: a latents file of several named arrays has no single row order; "
                              "pass one (N, D) array with --labels")
    pairs = split_scales(found, ckpt.tensors, scales=scales, latents=z is not None)
    found, scale_of = [fc for fc, _ in pairs], [sc for _, sc in pairs]
    # a scale row is measured without the latents given (they are encoder outputs, not its residual)
    whole = [fc for fc, sc in pairs if sc is None]
    sampled = iter(_latents_per_codebook(whole, z, max_latents, seed, ckpt.tensors))
    per_cb = [(None, []) if sc is not None else next(sampled) for sc in scale_of]
    t = thresholds or HealthThresholds()
    entries = []
    shared: dict[tuple[int, float], tuple] = {}  # the scales of one quantizer share its codebook: geometry once
    for fc, (x, notes), sc in progress_iter(
        zip(found, per_cb, scale_of), desc="measuring", unit="codebook", enabled=progress,
        label=lambda it: it[0].name
    ):
        counts, tt = fc.counts, t
        if counts is not None and float(counts.sum()) <= 0:
            counts = None
        if counts is not None:
            counts = counts / counts.sum()
            if fc.ema_counts:
                tt = replace(t, max_dead_usage=max(t.max_dead_usage, EMA_DEAD_SHARE / counts.numel()))
        is_residual = any("residual" in n for n in notes)  # residual stages: rows are not the labelled ones'
        scale = _scale_of(fc.codebook, x)
        row_labels = None if is_residual else _labels_for(lab, z, x, max_latents, seed)
        cached = shared.get((id(fc.codebook), scale))
        if cached is None:  # the tensor is kept with its geometry, so its id cannot be reused meanwhile
            cb = fc.codebook * scale
            cached = shared[(id(fc.codebook), scale)] = (fc.codebook, cb, codebook_geometry(
                cb, max_points=max_points, seed=seed))
        h = codebook_health(
            cached[1], latents=None if x is None else x * scale, counts=counts, name=fc.name,
            thresholds=tt, seed=seed, max_points=max_points, labels=row_labels, geometry=cached[2]
        )
        if scale != 1.0:
            _unscale(h, scale)
            fc.notes.append(f"measured after scaling by 2^{int(math.log2(scale))} (exact) so that squared "
                            "distances stay inside float range; lengths are reported unscaled")
        if sc is not None and h.verdict is not None:
            h.verdict = _scale_hint(h.verdict)
        extra = [latents_note] if latents_note else []
        if x is not None and counts is None:
            extra.append("usage from assigning the latents to their nearest code")
        entries.append(Entry(h, fc, x, fc.notes + notes + extra, scale=sc, labels=row_labels))
    return AnalysisResult(ckpt.source, entries, latents_source)


_SCALE_HOW = ("run the model over data (analyze(model, data), CLI --model/--data): it replays each scale's "
              "residual; a checkpoint holds no scale's residual, and --latents are encoder outputs")


def _scale_hint(v: Verdict) -> Verdict:
    """The verdict of one scale of a VAR checkpoint, with the way to its latents that works for a scale."""
    missing = tuple({**m, "how": _SCALE_HOW} if m.get("input") in ("latents", "usage") else m for m in v.missing)
    return replace(v, summary=v.summary.replace("pass --latents FILE", "run the model over data (--model/--data)"),
                   missing=missing)


def _check_options(*, max_latents: Any, max_points: Any, seed: Any) -> None:
    for name, v, low in (("max_latents", max_latents, 1), ("max_points", max_points, 2)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < low):
            raise ValueError(f"analyze: {name} must be None or an integer >= {low}, got {v!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"analyze: seed must be an integer >= 0, got {seed!r}")


_FAR = 2.0 ** 40  # magnitudes beyond which float32 squared distances overflow or underflow in sums


def _scale_of(codebook: torch.Tensor, x: torch.Tensor | None) -> float:
    """A power of two that brings the largest magnitude near 1 when it is extreme (1.0 otherwise).

    Why: values near 1e19 square to ~1e38 and overflow float32; values near 1e-25 square to 0. Every
    metric except lengths is scale-invariant, and a power of two scales exactly, so verdicts cannot flip.
    """
    peak = float(codebook.abs().max()) if codebook.numel() else 0.0
    if x is not None and x.numel():
        peak = max(peak, float(x.abs().max()))
    if peak == 0.0 or 1.0 / _FAR <= peak <= _FAR:
        return 1.0
    return 2.0 ** -math.floor(math.log2(peak))


def _unscale(h: CodebookHealth, scale: float) -> None:
    """Lengths back in the caller's units (ratios, ranks, shares and usage do not depend on scale)."""
    if h.spread_euclidean is not None:
        h.spread_euclidean = h.spread_euclidean / scale
    for attr in ("singular_values", "latent_singular_values"):
        v = getattr(h, attr, None)
        if isinstance(v, torch.Tensor):
            setattr(h, attr, v / scale)


def _delta(before: CodebookHealth, after: CodebookHealth) -> dict[str, Any]:
    m_b, m_a = before.metrics, after.metrics
    return {
        "name": after.name, "before_name": before.name,
        "metrics": {k: (None if m_b[k] is None or m_a[k] is None else m_a[k] - m_b[k]) for k in METRIC_KEYS}
    }


@dataclass
class ComparisonResult:
    """Two analyses and the per-codebook deltas (after - before) of codebooks paired by name."""

    before: AnalysisResult
    after: AnalysisResult
    pairs: list[tuple[Entry, Entry]]

    def to_dict(self) -> dict[str, Any]:
        """``{"before", "after", "delta": [{"name", "before_name", "metrics": {KEY: after - before}}]}``."""
        return {
            "before": self.before.to_dict(), "after": self.after.to_dict(),
            "delta": [_delta(b.health, a.health) for b, a in self.pairs]
        }

    def verdict(self) -> str:
        """Which side is healthier, codebook by codebook, in plain words."""
        rank = {"healthy": 0, "cannot_tell": 1, "underused": 1, "uninitialised": 2, "shrunk": 3}
        lines = []
        for b, a in self.pairs:
            sb, sa = b.status, a.status
            rb_, ra_ = rank.get(sb, 1), rank.get(sa, 1)
            trend = "better" if ra_ < rb_ else "worse" if ra_ > rb_ else "same status"
            detail = []
            for key in ("spread_ratio", "effective_rank", "utilization", "latent_coverage"):
                vb, va = b.health.metrics[key], a.health.metrics[key]
                if vb is not None and va is not None:
                    detail.append(f"{key} {vb:.3g} -> {va:.3g}")
            lines.append(f"{a.health.name}: {sb} -> {sa} ({trend}); " + ", ".join(detail))
        unpaired = len(self.after.entries) - len(self.pairs)
        if unpaired:
            lines.append(f"{unpaired} codebook(s) of AFTER have no counterpart of the same name in BEFORE.")
        return "\n".join(lines) or "No codebooks could be paired by name."


def compare(before: Any, after: Any, *, latents: Any = None, **kwargs: Any) -> ComparisonResult:
    """Analyse two checkpoints with the same latents and pair their codebooks by name.

    Args:
        before, after: anything ``analyze`` accepts.
        latents: shared latents (path or tensor); reference checkpoints bring their own when None.
        **kwargs: passed to ``analyze`` (``keys``, ``trust_checkpoint``, ``thresholds``, ...).

    Returns:
        A ``ComparisonResult``; ``to_dict()`` is the ``compare --json`` contract.
    """
    rb = analyze(before, latents=latents, **kwargs)
    ra = analyze(after, latents=latents, **kwargs)
    by_name = {e.health.name: e for e in rb.entries}
    pairs = []
    for e in ra.entries:
        b = by_name.get(e.health.name)
        if b is None and e.scale is not None:
            # a VAR checkpoint whose hit buffer was not written yet (early in training) is one row: each scale
            # of the later checkpoint is compared with it (same codes, no usage before)
            b = by_name.get(e.health.name.rsplit(".scales.", 1)[0])
        if b is not None:
            pairs.append((b, e))
    if not pairs and len(rb.entries) == len(ra.entries):
        pairs = list(zip(rb.entries, ra.entries))  # same structure under different names: pair by position
    return ComparisonResult(rb, ra, pairs)

"""A VAR checkpoint read scale by scale: one codebook row per scale, as ``watch`` gives them live.

VAR's ``VectorQuantizer2`` keeps one shared codebook and, per scale, an EMA of how often each code was hit
(``ema_vocab_hit_SV``, shape ``(S, V)``; VAR updates row ``si`` from the ids of scale ``si`` during training).
Summed over scales, a coarse scale that uses a handful of codes hides behind the fine scales that use many,
so ``analyze`` splits a VAR codebook into the codebooks ``<quantizer>.scales.{si}`` (the names ``analyze(model,
data)`` gives): the same codes, that scale's hits as usage, ``"scale": {"index": si, "size": [h, w]}``.

What a checkpoint cannot tell:

- the token-map sizes: VAR takes ``v_patch_nums`` as a constructor argument and stores nothing of it (its
  256 and 512 pixel models both have ten scales, of different sizes). ``size`` is null unless the caller
  gives the sizes (``analyze(..., scales=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16))``, CLI ``--scales``).
- each scale's latents: scale ``si`` quantizes the residual that the coarser scales' codes, upsampled and
  passed through ``quant_resi``, left of the encoder output; latents given to ``analyze`` are encoder
  outputs, so they are measured against the whole codebook (the row named after the quantizer, usage summed
  over scales, as before), and the scale rows carry usage and the codes' geometry only. For each scale's
  residual run the model: ``analyze(model, data)`` (CLI ``--model/--data``) replays it.

The scale rows share one codebook tensor, so ``analyze`` measures its geometry once (``codebook_geometry``).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from .checkpoint import CheckpointError
from .discovery import MAX_CODEBOOKS, FoundCodebook
from .families.scales import VarScales, scale_sizes

__all__ = ["split_scales"]


def split_scales(found: list[FoundCodebook], tensors: Mapping[str, Any], *,
                 scales: Sequence[int | Sequence[int]] | None = None, latents: bool = False,
                 ) -> list[tuple[FoundCodebook, dict[str, Any] | None]]:
    """Each VAR codebook with per-scale usage replaced by one codebook per scale.

    Args:
        found: from ``find_codebooks``.
        tensors: the checkpoint's tensors (``Checkpoint.tensors``).
        scales: token-map sizes, coarse to fine (patch numbers or ``(h, w)`` pairs), one per scale of the
            usage buffer; None: sizes unknown (``"size": null``).
        latents: latents were given: keep the whole-codebook row too (it is measured against them).

    Returns:
        ``(codebook, scale)`` pairs in discovery order; ``scale`` is ``{"index", "size": [h, w] | None}`` for a
        scale row, None for any other codebook.

    Raises:
        CheckpointError: ``scales`` given but no codebook has per-scale usage, or a different number of scales;
            NaN/Inf/negative hits; more than ``MAX_CODEBOOKS`` rows after the split.
    """
    sizes = None if scales is None else scale_sizes(scales)
    out: list[tuple[FoundCodebook, dict[str, Any] | None]] = []
    split_any = False
    for fc in found:
        hits = VarScales.stored_scale_usage(fc.key, tensors) if fc.family == "var" else None
        if hits is None or hits.shape[1] != fc.codebook.shape[0] or fc.counts is None:
            out.append((fc, None))  # no per-scale usage (or the buffer was never written): one row
            continue
        bad = int((~hits.isfinite()).sum()) + int((hits < 0).sum())
        if bad:  # what codebook_health would refuse, said once for the buffer
            raise CheckpointError(f"{fc.key}: its ema_vocab_hit_SV buffer holds {bad} NaN, Inf or negative values "
                                  "(hit counts are >= 0); the file is damaged")
        if sizes is not None and len(sizes) != hits.shape[0]:
            raise CheckpointError(f"scales: {len(sizes)} sizes given, but {fc.key} has {hits.shape[0]} scales "
                                  f"(ema_vocab_hit_SV is {list(hits.shape)}); give one size per scale")
        split_any = True
        if latents:
            whole = (f"all {hits.shape[0]} scales together, against the latents given (encoder outputs); the rows "
                     f"{fc.name}.scales.N give each scale's usage")
            out.append((replace(fc, notes=[*fc.notes, whole]), None))
        for si in range(hits.shape[0]):
            size = sizes[si] if sizes is not None else None
            where = f"{size[0]}x{size[1]} tokens per input" if size else "size unknown: pass --scales"
            notes = [n for n in fc.notes if not n.startswith("usage from the")]
            notes.append(f"scale {si} ({where}) of a multi-scale quantizer: usage from row {si} of the "
                         "ema_vocab_hit_SV buffer (EMA)")
            if float(hits[si].sum()) <= 0:
                notes.append(f"row {si} of ema_vocab_hit_SV holds no hits: usage unknown for this scale")
            if latents:
                notes.append("the latents given are encoder outputs, not this scale's residual: measured "
                             "without them (analyze(model, data) replays each scale's residual)")
            row = hits[si]
            out.append((replace(fc, name=f"{fc.name}.scales.{si}", counts=row if float(row.sum()) > 0 else None,
                                notes=notes, usage_source="ema_vocab_hit_SV" if float(row.sum()) > 0 else None),
                        {"index": si, "size": None if size is None else [int(size[0]), int(size[1])]}))
    if len(out) > MAX_CODEBOOKS:  # the limit discovery applies, counted after the split
        raise CheckpointError(f"{len(out):,} codebooks once VAR's scales are split, more than {MAX_CODEBOOKS:,}; "
                              "name the ones to measure with --key KEY")
    if sizes is not None and not split_any:
        raise CheckpointError("scales: no codebook of this checkpoint has per-scale usage (VAR's "
                              "ema_vocab_hit_SV); --scales applies to VAR checkpoints")
    return out

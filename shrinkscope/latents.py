"""Latents for a checkpoint's codebooks: from a file, a tensor or the checkpoint itself, row by row.

``analyze(ckpt, latents=...)`` measures each codebook against the latents it quantizes. This module turns what
the user gives into those rows: ``(N, D)`` or channel-first/-last maps in the family's declared layout, mapped
into the codebook's lookup space, a bounded random subset, per-codebook arrays matched by name, the residual
left by earlier stages for residual stages, and mode labels aligned with the kept rows.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, take_rows
from .discovery import FoundCodebook, family_named
from .metrics import assign

__all__ = ["REFERENCE_FORMAT", "RESIDUAL", "SAVED_LATENTS_KEY", "load_labels"]

REFERENCE_FORMAT = "shrinkscope.reference.tokenizer/1"
SAVED_LATENTS_KEY = "encoder_latents"
"""Top-level checkpoint entry holding a bounded ``(N, D)`` sample of encoder latents (the reference
checkpoints write one), used when no ``--latents`` are given."""
RESIDUAL = re.compile(r"^(.*\b(?:layers|quantizers)\.)(\d+)$")
"""Names of residual stages: ``rvq.layers.N``, ``quantizers.N`` (group 1: the quantizer prefix, 2: the stage)."""


def _as_rows(x: torch.Tensor, d: int, layout: str | None = None) -> torch.Tensor | None:
    """(N, D) rows from (N, D) or channel-first / channel-last maps (only the family's ``latent_layout``
    when it declares one); None when no such axis has size D.

    Raises:
        CheckpointError: with no declared layout, an image-like map (4-D or more) whose axis 1 is not D but
            whose last axis is: reading it channels-last could take a spatial axis for the code axis.
    """
    if x.dim() == 2:
        return x if x.shape[1] == d else None
    if x.dim() > 2 and x.shape[1] == d and layout != "channels_last":
        return x.movedim(1, -1).reshape(-1, d)
    if x.dim() > 3 and x.shape[-1] == d and layout is None:
        raise CheckpointError(
            f"latents of shape {list(x.shape)} are ambiguous for a codebook of dimension D={d}: axis 1 "
            f"({x.shape[1]}) is not D, and a last axis of size {d} may be a spatial axis; pass rows (N, D) "
            "in the codebook's space, e.g. z.movedim(1, -1).reshape(-1, D) of the tensor the quantizer "
            "receives (after quant_conv / project_in)")
    if x.dim() > 2 and x.shape[-1] == d and layout != "channels_first":
        return x.reshape(-1, d)
    return None


def _rows_for(fc: FoundCodebook, x: torch.Tensor, tensors: Mapping[str, Any]) -> torch.Tensor | None:
    """Latents for one found codebook, in the layout and space its family looks codes up in (l2-normalised
    like the codebook when the lookup normalises, so spread and coverage compare like with like)."""
    fam = family_named(fc.family)
    rows = _as_rows(x, fc.codebook.shape[1], fam.latent_layout)
    if rows is None:
        return None
    rows = fam.checkpoint_latents(rows, fc.key, tensors)
    return torch.nn.functional.normalize(rows.float(), dim=-1) if fc.l2_normalized else rows


def _saved_latents(ckpt: Checkpoint, max_latents: int | None, seed: int
                   ) -> tuple[torch.Tensor | None, str | None, str | None]:
    """``(latents, source, note)`` from what a checkpoint carries (``SAVED_LATENTS_KEY``, ``(N, D)``),
    read through its bounded reference (a stride-0 view there is refused like any other tensor)."""
    raw = ckpt.raw if isinstance(ckpt.raw, Mapping) else {}
    ref, reference = ckpt.tensors.get(SAVED_LATENTS_KEY), raw.get("format") == REFERENCE_FORMAT
    if ref is not None and isinstance(raw.get(SAVED_LATENTS_KEY), torch.Tensor):
        return take_rows(ref, max_latents, seed), ("reference model" if reference else "checkpoint"), \
            "latents saved with the checkpoint (encoder outputs on held-out data)"
    return None, None, ("this reference checkpoint predates saved latents: re-save it with "
                        "shrinkscope.reference.train.save_checkpoint, or pass --latents FILE") if reference else None


def _subsample(x: torch.Tensor, n: int | None, seed: int) -> torch.Tensor:
    if n is None or x.shape[0] <= n:
        return x
    g = torch.Generator().manual_seed(seed)
    return x[torch.randperm(x.shape[0], generator=g)[:n]]


def _norm_name(name: str) -> str:
    return name.replace("/", ".").strip(".")


def _named_latents(
    found: list[FoundCodebook], z: dict[str, torch.Tensor], max_latents: int | None, seed: int,
    tensors: Mapping[str, Any]
) -> list[tuple[torch.Tensor | None, list[str]]]:
    """Per-codebook latents from a file of named arrays: a codebook takes the array whose name ends like its own
    (``rvq/layers.0`` from ``Monitor.save_latents`` serves the codebook ``rvq.layers.0`` or ``model.rvq.layers.0``)."""
    out: list[tuple[torch.Tensor | None, list[str]]] = []
    for fc in found:
        name = _norm_name(fc.name)

        def like(k: str, name: str = name) -> bool:
            k = _norm_name(k)
            return name == k or name.endswith("." + k) or k.endswith("." + name)

        match = [k for k in z if like(k)]
        if not match:  # a quantizer watched on its own is named by its class: match the codebook part
            match = [k for k in z if "/" in k and like(k.split("/", 1)[1])]
        rows = _rows_for(fc, z[match[0]], tensors) if len(match) == 1 else None
        if rows is None:
            why = "no array named like it" if not match else (
                f"several arrays match ({', '.join(match)})" if len(match) > 1 else f"{match[0]} has no axis of "
                f"size D={fc.codebook.shape[1]}")
            out.append((None, [f"latents: {why} in the latents file: not used here"]))
            continue
        out.append((_subsample(rows.float(), max_latents, seed), [f"latents: array {match[0]}"]))
    return out


def _latents_per_codebook(
    found: list[FoundCodebook], z: torch.Tensor | dict[str, torch.Tensor] | None, max_latents: int | None,
    seed: int, tensors: Mapping[str, Any]
) -> list[tuple[torch.Tensor | None, list[str]]]:
    """Latents for each codebook; residual stages (``layers.1``, ...) get the residual of earlier stages."""
    out: list[tuple[torch.Tensor | None, list[str]]] = [(None, []) for _ in found]
    if z is None:
        return out
    if isinstance(z, dict):
        return _named_latents(found, z, max_latents, seed, tensors)
    residual: dict[str, tuple[int, torch.Tensor]] = {}
    for i, fc in enumerate(found):
        d = fc.codebook.shape[1]
        m = RESIDUAL.match(fc.name)
        group = m.group(1) if m and "/" not in fc.name else None
        stage = int(m.group(2)) if group else 0
        if (
            group is not None
            and group in residual
            and residual[group][0] == stage - 1
            and residual[group][1].shape[1] == d
        ):
            x = residual[group][1]
            note = [
                f"latents: residual left by stages 0..{stage - 1} of {group.rstrip('.') or 'the quantizer'}"
            ]
        elif group is not None and stage > 0:
            # the encoder output is not what stage N sees: its input is the residual of stages 0..N-1
            why = (f"latents: stage {stage} of {group.rstrip('.') or 'the quantizer'} quantizes the residual "
                   f"left by stages 0..{stage - 1}, which these latents do not give here; pass per-stage "
                   "latents (Monitor.save_latents writes them)")
            out[i] = (None, [why])
            continue
        else:
            rows = _rows_for(fc, z, tensors)
            if rows is None:
                out[i] = (
                    None, [f"latents of shape {list(z.shape)} have no axis of size D={d}: not used here"]
                )
                continue
            x = _subsample(rows.float(), max_latents, seed)
            note = []
        if group is not None and (group not in residual or residual[group][0] == stage - 1):
            idx, _ = assign(fc.codebook, x)
            residual[group] = (stage, x - fc.codebook.to(x.dtype)[idx])
        out[i] = (x, note)
    return out


def _labels_for(labels: torch.Tensor | None, z: Any, x: torch.Tensor | None, max_latents: int | None,
                seed: int) -> torch.Tensor | None:
    """Labels aligned with a codebook's latent rows: the same rows ``_subsample`` kept; one label per map
    (``(B,)`` for ``(B, D, ...)`` latents) is repeated over the map's positions."""
    if labels is None or x is None or not isinstance(z, torch.Tensor):
        return None
    n_rows = z.numel() // x.shape[1]
    lab = labels.reshape(-1)
    if lab.numel() == z.shape[0] and n_rows != z.shape[0]:
        lab = lab.repeat_interleave(n_rows // z.shape[0])
    if lab.numel() != n_rows:
        raise CheckpointError(f"labels: expected one label per latent row ({n_rows}) or per map ({z.shape[0]}), "
                              f"got {lab.numel()}")
    lab = _subsample(lab, max_latents, seed)
    return lab if lab.numel() == x.shape[0] else None


def load_labels(labels: Any) -> torch.Tensor | None:
    if labels is None:
        return None
    if isinstance(labels, (str, os.PathLike)):
        refs = list(load_checkpoint(labels).tensors.values())
        named = [r for r in refs if r.key.split(".")[-1] in ("labels", "modes", "y")]
        pick = named[:1] or (refs if len(refs) == 1 else [])
        if not pick:
            raise CheckpointError(f"labels: {os.fspath(labels)}: expected one integer array (or one named 'labels'), "
                                  f"found {len(refs)}: {', '.join(r.key for r in refs[:6]) or 'none'}")
        arr = pick[0].load()
    else:
        arr = labels if isinstance(labels, torch.Tensor) else torch.as_tensor(np.asarray(labels))
    if arr.is_floating_point() or arr.is_complex() or arr.dtype == torch.bool:
        raise CheckpointError(f"labels: expected integer mode ids (one per latent row), got {arr.dtype}")
    return arr.detach().cpu().long()

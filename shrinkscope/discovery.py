"""Codebook discovery in loaded checkpoints: which tensors are codebooks, of which family, with what usage.

``find_codebooks(checkpoint)`` asks every family of ``shrinkscope.families`` whether it stores a codebook
under each floating 2-D/3-D key (``Family.claims``: the library's key conventions, research/ecosystem.md
sections 1 and 1.3), turns the stored tensor into the *effective* ``(K, D)`` codebook (``Family.effective``,
l2-normalised where the library looks codes up normalised) and reads the usage buffer beside it
(``Family.stored_usage``). What is not a library's convention lives here: wrapper/container names,
statistics buffers that are never codebooks, init flags, language-model token tables and display names.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .checkpoint import Checkpoint, CheckpointError
from .families import FAMILIES, Family
from .families.base import INIT_FLAGS, join
from .families.generic import LM_TABLE

__all__ = ["FoundCodebook", "family_named", "find_codebooks"]

_WRAPPERS = {"module", "_orig_mod", "wrapped"}  # DDP, torch.compile, shrinkscope.defer
_CONTAINERS = {
    "state_dict", "model", "ema", "best_state", "params_ema", "params", "net", "model_state_dict",
    "state_dict_ema", "ema_state_dict", "model_ema", "first_stage_model"
}
_STATS = {
    "cluster_size", "embed_avg", "initted", "inited", "_initialized", "initialized", "cluster_usage",
    "codebook_used", "ema_vocab_hit_SV", "usage_ema", "usage", "counts", "active"
}
_EMA_SOURCES = ("cluster_size", "cluster_usage", "ema_vocab_hit_SV", "usage_ema")
_BY_NAME = {f.name: f for f in reversed(FAMILIES)}  # first family of a name wins
_PLAIN = Family()  # keys named explicitly, numpy arrays, token tables: no convention applies


def family_named(name: str) -> Family:
    """The family behind a ``FoundCodebook.family`` name (a plain ``Family`` for ``explicit``, ``array``,
    ``token-embedding``: no library convention applies)."""
    return _BY_NAME.get(name, _PLAIN)


@dataclass
class FoundCodebook:
    """One effective codebook found in a checkpoint.

    Attributes:
        name: display name (module path without wrappers; ``/headN`` for separate heads).
        codebook: ``(K, D)`` float tensor, the space the lookup happens in.
        counts: ``(K,)`` usage (shares or counts) from a buffer, or None.
        family: family name (the vocabulary of ``shrinkscope.families``: ``lucidrains.vq``, ``taming``,
            ``taming.ema``, ``llamagen``, ``dac.vq``, ...) or ``generic``, ``token-embedding``, ``array``,
            ``explicit``.
        key: state-dict key the codebook came from.
        notes: plain-words remarks (normalisation applied, usage source, caveats).
        usage_source: buffer the counts came from, or None.
        ema_counts: True when counts are an EMA (dead codes decay towards zero without reaching it).
        l2_normalized: True when the codebook was l2-normalised to its lookup's space; latents measured
            against it are normalised likewise.
    """

    name: str
    codebook: torch.Tensor
    counts: torch.Tensor | None
    family: str
    key: str
    notes: list[str] = field(default_factory=list)
    usage_source: str | None = None
    ema_counts: bool = False
    l2_normalized: bool = False


def _still_initial(source: str, key: str, tensors: Mapping[str, Any]) -> bool:
    """True when the usage buffer ``source`` beside ``key`` holds one repeated value: its initial fill (all
    ones for vector-quantize-pytorch's ``cluster_size`` and Mimi's ``cluster_usage``, all zeros for
    LlamaGen's ``codebook_used`` FIFO in an EMA copy or an untrained model), which no training run leaves
    behind, so it is no evidence of use."""
    seg = key.split(".")
    for depth in (1, 2):
        buf_key = join(".".join(seg[:-depth]), source)
        if buf_key in tensors:
            flat = tensors[buf_key].load().reshape(-1)
            return flat.numel() == 0 or bool((flat == flat[0]).all())
    return False


def _module_of(key: str) -> str:
    """Quantizer module path of a codebook key (``quantize.embedding.weight`` -> ``quantize``)."""
    if "." not in key:
        return key
    seg = key.split(".")[:-1]
    if key.endswith(".weight") and seg and seg[-1] in ("embedding", "embed", "codebook"):
        seg = seg[:-1]
    elif seg and seg[-1] in ("_codebook", "codebook"):
        seg = seg[:-1]
    return ".".join(seg)


def _display(path: str, *, keep_containers: bool = False) -> str:
    seg = [s for s in path.split(".") if s and s not in _WRAPPERS]
    while not keep_containers and seg and seg[0] in _CONTAINERS:
        seg = seg[1:]
    if not keep_containers:
        seg = [s for s in seg if s != "first_stage_model"]
    return ".".join(seg) or "codebook"


def _config_flag(obj: Any, name: str, depth: int = 0) -> bool | None:
    if not isinstance(obj, Mapping) or depth > 4:
        return None
    if isinstance(obj.get(name), bool):
        return obj[name]
    for v in obj.values():
        hit = _config_flag(v, name, depth + 1)
        if hit is not None:
            return hit
    return None


def _classify(key: str, shape: tuple[int, ...], floating: bool, tensors: Mapping[str, Any],
              include_embeddings: bool) -> str | None:
    """The family name that stores a codebook at ``key``, ``"token-embedding"``, or None."""
    seg = key.split(".")
    if not floating or len(shape) not in (2, 3) or seg[-1] in _STATS:
        return None
    for f in FAMILIES:
        if f.claims(seg, shape, tensors):
            return f.name
    if include_embeddings and len(shape) == 2 and (
            any(LM_TABLE.match(s) for s in seg) or any("emb" in s.lower() for s in seg[-2:])):
        return "token-embedding"
    return None


def _candidate_keys(ckpt: Checkpoint, keys: list[str]) -> list[tuple[str, str]]:
    out = []
    for want in keys:
        hits = [k for k in ckpt.tensors if want in (k, _display(k), k.removesuffix(".weight"))
                or k.endswith(("." + want, "." + want + ".weight"))]
        if not hits:
            raise CheckpointError(f"{ckpt.source}: key '{want}' not found; run without --key to list the "
                                  "codebooks shrinkscope finds")
        ref = ckpt.tensors[hits[0]]
        if not ref.floating or len(ref.shape) not in (2, 3):
            raise CheckpointError(f"{ckpt.source}: key '{hits[0]}' has shape {list(ref.shape)}; a codebook "
                                  "is a 2-D (K, D) or 3-D (heads, K, D) float tensor")
        out.append((hits[0], "explicit"))
    return out


def _discover(ckpt: Checkpoint, *, keys: list[str] | None, include_embeddings: bool,
              l2_normalize: bool | None) -> list[FoundCodebook]:
    tensors = ckpt.tensors
    if keys:
        picked = _candidate_keys(ckpt, keys)
    else:
        picked = [(k, f) for k, r in tensors.items()
                  if (f := _classify(k, r.shape, r.floating, tensors, include_embeddings))]
        if not picked and ckpt.kind == "numpy":
            picked = [(k, "array") for k, r in tensors.items() if r.floating and len(r.shape) == 2]
    raw = ckpt.raw if isinstance(ckpt.raw, Mapping) else {}
    is_reference = str(raw.get("format", "")).startswith("shrinkscope.reference")
    ref_l2 = _config_flag(raw.get("config"), "l2_normalize") if is_reference else None
    found: list[FoundCodebook] = []
    seen: set[tuple] = set()
    for key, name in picked:
        fam = family_named(name)
        loaded = tensors[key].load().detach()
        cb, notes = fam.effective(loaded, key, tensors)
        cb = cb.to(torch.float64 if cb.dtype == torch.float64 else torch.float32)
        ident = (cb.untyped_storage().data_ptr(), cb.storage_offset(), tuple(cb.shape))
        if tensors[key].origin is not None and cb.untyped_storage().data_ptr() == loaded.untyped_storage().data_ptr():
            ident = (tensors[key].origin, tuple(cb.shape))  # loads are copies: compare where they sit in the file
        if ckpt.kind != "safetensors" and ident in seen:
            continue  # the same tensor under two keys (ResidualVQ shared_codebook)
        seen.add(ident)
        heads = cb if cb.dim() == 3 else cb.unsqueeze(0)
        k = heads.shape[1]
        par = key.rsplit(".", 1)[0] if "." in key else ""
        counts, source = fam.stored_usage(key, k, tensors) if fam.usage_written else (None, None)
        if source is not None and _still_initial(source, key, tensors):
            notes.append(f"the {source} buffer still holds its initial value (training never wrote it): "
                         "usage unknown")
            counts, source = None, None
        flag = next((tensors[join(par, f)] for f in INIT_FLAGS if join(par, f) in tensors), None)
        if flag is not None and not bool(flag.load().any()):
            counts, source = None, None
            notes.append("not initialised yet (k-means init pending): usage buffers ignored")
        active = tensors.get(join(par, "active"))
        if active is not None and active.shape == () and not bool(active.load()):
            notes.append("quantization not switched on yet (deferred phase)")
        normalised = l2_normalize if l2_normalize is not None else (bool(fam.checkpoint_normalized) or bool(ref_l2))
        if normalised:
            heads = torch.nn.functional.normalize(heads, dim=-1)
            why = f" ({fam.checkpoint_normalized})" if fam.checkpoint_normalized else ""
            notes.append("measured the l2-normalised codebook" + why)
        if counts is not None:
            counts = counts.reshape(heads.shape[0], -1) if counts.numel() == heads.shape[0] * k else None
        base = _module_of(key)
        ema = source in _EMA_SOURCES
        for h in range(heads.shape[0]):
            c = counts[h] if counts is not None else None
            extra = [f"usage from the {source} buffer" + (" (EMA)" if ema else "")] if c is not None else []
            found.append(FoundCodebook(
                name=base + (f"/head{h}" if heads.shape[0] > 1 else ""), codebook=heads[h].contiguous(),
                counts=c, family=name, key=key, notes=notes + extra,
                usage_source=source if c is not None else None, ema_counts=ema and c is not None,
                l2_normalized=bool(normalised)))
    names = [_display(f.name) for f in found]
    for f, n in zip(found, names):
        f.name = n if names.count(n) == 1 else _display(f.name, keep_containers=True)
    return found


MAX_CODEBOOKS = 4096
"""Codebooks (heads and residual stages counted separately) one checkpoint may hold: a 2 MB file can
otherwise declare 100,000 heads, and measuring each takes time."""


def _check_count(ckpt: Checkpoint, keys: list[str] | None, include_embeddings: bool) -> None:
    """Refuse, before discovery builds them, more codebooks than ``MAX_CODEBOOKS`` (from shapes only)."""
    total = 0
    for k, r in ckpt.tensors.items():
        if not r.floating or len(r.shape) not in (2, 3):
            continue
        wanted = any(k == w or k.endswith(("." + w, "." + w + ".weight", w)) for w in keys) if keys \
            else _classify(k, r.shape, r.floating, ckpt.tensors, include_embeddings) is not None
        total += (r.shape[0] if len(r.shape) == 3 else 1) if wanted else 0
    if total > MAX_CODEBOOKS:
        raise CheckpointError(f"{ckpt.source}: holds {total:,} codebooks (heads and stages counted), more than "
                              f"{MAX_CODEBOOKS:,}; name the ones to measure with --key KEY")


def find_codebooks(ckpt: Checkpoint, *, keys: list[str] | None = None, include_embeddings: bool = False,
                   l2_normalize: bool | None = None) -> list[FoundCodebook]:
    """Find every codebook of a checkpoint by key name and shape (conventions: docs/cli.md).

    Args:
        ckpt: from ``load_checkpoint`` or ``from_state_dict``.
        keys: explicit codebook keys (full, without wrappers, or a suffix); disables automatic discovery.
        include_embeddings: also report token-embedding tables of language models.
        l2_normalize: force (True) or forbid (False) l2-normalising codebooks; None follows the convention.

    Returns:
        One ``FoundCodebook`` per codebook (heads and residual layers separately), in key order.

    Raises:
        CheckpointError: no codebook found, a named key missing, NaN/Inf in a codebook.
    """
    _check_count(ckpt, keys, include_embeddings)
    found = _discover(ckpt, keys=keys, include_embeddings=include_embeddings, l2_normalize=l2_normalize)
    if not found:
        floats = sorted((r for r in ckpt.tensors.values() if r.floating and len(r.shape) == 2),
                        key=lambda r: -int(np.prod(r.shape)))[:5]
        hint = ", ".join(f"{r.key} {list(r.shape)}" for r in floats) or "none"
        raise CheckpointError(f"{ckpt.source}: no codebook found among {len(ckpt.tensors)} tensors; name one "
                              f"with --key KEY (largest 2-D float tensors: {hint})")
    for fc in found:
        if fc.codebook.dim() != 2 or fc.codebook.shape[0] < 1 or fc.codebook.shape[1] < 1:
            raise CheckpointError(f"{ckpt.source}: codebook {fc.key} has shape {list(fc.codebook.shape)}; a "
                                  "codebook needs at least one code of at least one dimension (K, D >= 1)")
        bad = ~torch.isfinite(fc.codebook)
        if bool(bad.any()):
            n_nan = int(torch.isnan(fc.codebook).sum())
            raise CheckpointError(f"{ckpt.source}: codebook {fc.key} contains {n_nan} NaN and "
                                  f"{int(bad.sum()) - n_nan} Inf values; the training run diverged or the "
                                  "file is damaged")
    return found

"""taming-transformers and its descendants: ``VectorQuantizer2`` / ``VectorQuantizer`` /
``EMAVectorQuantizer`` / ``GumbelQuantize`` (taming), LlamaGen ``VectorQuantizer`` (l2-normalised
lookup), diffusers ``VectorQuantizer`` and VAR's ``VectorQuantizer2`` (checkpoints only).

Facts used (research/ecosystem.md §1): all take ``z`` as ``(B, C, H, W)``, keep the codebook in
``embedding.weight`` ``(K, C)`` (Gumbel: ``embed.weight``), and return ``(z_q, loss, info)`` where
``info[2]`` holds the ids (flat ``(B*H*W,)``, ``(B*H*W, 1)`` or ``(B, H, W)``). LlamaGen with ``l2_norm``
compares normalised ``z`` with normalised codes (Open-MAGVIT2's taming fork calls the flag
``l2_normalize``). With ``remap`` the ids live in a remapped space, so the monitor drops them and lets the
report assign the sampled latents instead. In checkpoints the codebook is ``<quant...>.embedding.weight``;
a ``codebook_used`` FIFO marks LlamaGen, ``ema_vocab_hit_SV`` marks VAR, ``embedding.cluster_size`` taming's
EMA quantizer.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .base import (Capture, Family, Fitted, Passed, as_index_tensor, channels_last, class_name, copy_into,
                   first_arg, join, l2norm, nearest, own_codebook, per_step, write_ema, zero_loss)

__all__ = ["DiffusersVQ", "LlamaGenVQ", "TamingEMAVQ", "TamingGumbel", "TamingLegacyVQ", "TamingVQ", "VarVQ"]

_NAMES = ("VectorQuantizer2", "VectorQuantizer", "EMAVectorQuantizer")
_QUANTISH = re.compile(r"quant|vq|codebook", re.IGNORECASE)


def _embedding_weight(module: nn.Module) -> torch.Tensor | None:
    emb = getattr(module, "embedding", None)
    w = getattr(emb, "weight", None)
    return w if isinstance(w, torch.Tensor) and w.ndim == 2 else None


def _info_indices(output: Any) -> torch.Tensor | None:
    if not isinstance(output, tuple) or len(output) < 3:
        return None
    info = output[2]
    if isinstance(info, (tuple, list)) and info:
        return as_index_tensor(info[-1])
    return as_index_tensor(info)  # GumbelQuantize(use_vqinterface=False) returns the ids directly


def _grid_rows(z: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B*H*W, C)``."""
    return z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1])


def _one_hot_perplexity(idx: torch.Tensor, k: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``(one-hot encodings (N, K), perplexity)`` as taming's legacy and EMA quantizers return them."""
    one_hot = F.one_hot(idx, k).to(dtype)
    p = one_hot.mean(0)
    return one_hot, torch.exp(-(p * torch.log(p + 1e-10)).sum())


def _key_kind(seg: list[str], tensors: Mapping[str, Any]) -> str | None:
    """Which family stores a ``<quant...>.embedding.weight`` / ``.embed.weight`` key (one decision, so the
    families below claim disjoint keys)."""
    if len(seg) < 3 or seg[-1] != "weight" or seg[-2] not in ("embedding", "embed") \
            or not any(_QUANTISH.search(s) for s in seg[:-2]):
        return None
    par, gpar = ".".join(seg[:-1]), ".".join(seg[:-2])
    if join(gpar, "codebook_used") in tensors:
        return "llamagen"
    if join(gpar, "ema_vocab_hit_SV") in tensors:
        return "var"
    if join(par, "cluster_size") in tensors:
        return "taming.ema"
    return "taming.gumbel" if seg[-2] == "embed" else "taming"


class TamingVQ(Family):
    """taming ``VectorQuantizer2`` (``remap``, ``sane_index_shape``); the base of its descendants below.

    Output ``(z_q, loss, (perplexity=None, min_encodings=None, indices))``; codebook ``embedding.weight``.
    """

    name = "taming"

    def matches(self, module: nn.Module) -> bool:
        return class_name(module) in _NAMES and _embedding_weight(module) is not None and not any(
            f.matches(module) for f in (_LLAMAGEN, _DIFFUSERS, _LEGACY, _EMA))

    def is_normalized(self, module: nn.Module) -> bool:
        return bool(getattr(module, "l2_normalize", False) or getattr(module, "l2_norm", False))

    def codebooks(self, module: nn.Module) -> dict[str, torch.Tensor]:
        return {"": own_codebook(_embedding_weight(module), self.is_normalized(module))}

    def extract(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> list[Capture]:
        z = first_arg(args, kwargs, "z")
        if not isinstance(z, torch.Tensor) or z.ndim < 3:
            return []
        idx = _info_indices(output)
        if getattr(module, "remap", None) is not None:
            idx = None  # ids index the remapped subset, not the codebook rows
        return [Capture("", idx, channels_last(z, 1), None, l2norm if self.is_normalized(module) else None)]

    def claims(self, seg: list[str], shape: tuple[int, ...], tensors: Mapping[str, Any]) -> bool:
        # legacy/diffusers keys look like taming's: _key_kind never names them, discovery says "taming"
        return len(shape) == 2 and _key_kind(seg, tensors) == self.name

    # deferral
    def _rows(self, module: nn.Module, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rows in lookup space, nearest ids)`` of a ``(B, C, H, W)`` input."""
        rows = _grid_rows(z)
        if self.is_normalized(module):
            rows = l2norm(rows)
        return rows, nearest(self.codebooks(module)[""], rows)

    def passthrough(self, module: nn.Module, args: tuple, kwargs: dict) -> Passed:
        z = args[0] if args else kwargs["z"]
        rows, idx = self._rows(module, z)
        if getattr(module, "remap", None) is not None:
            idx = module.remap_to_used(idx.reshape(z.shape[0], -1)).reshape(-1, 1)
        if getattr(module, "sane_index_shape", False):
            idx = idx.reshape(z.shape[0], z.shape[2], z.shape[3])
        loss = zero_loss(module, z.new_zeros(()))
        return (z, loss, (None, None, idx)), {"": rows}

    def write(self, module: nn.Module, fitted: Fitted, *, tokens_per_step: float) -> None:
        copy_into(module.embedding.weight, fitted[""][0])

    def stored_usage(self, key: str, k: int, tensors: Mapping[str, Any]) -> tuple[torch.Tensor | None, str | None]:
        counts, source = super().stored_usage(key, k, tensors)
        quantizer = key.rsplit(".", 2)[0]
        if counts is None and join(quantizer, "usage_ema") in tensors:  # Paper B's taming-derived quantizer
            return tensors[join(quantizer, "usage_ema")].load().double(), "usage_ema"
        return counts, source


class TamingLegacyVQ(TamingVQ):
    """taming's original ``VectorQuantizer(n_e, e_dim, beta)``.

    Output ``(z_q, loss, (perplexity, one-hots (N, K), ids (N, 1)))``.
    """

    name = "taming.legacy"

    def matches(self, module: nn.Module) -> bool:
        return (class_name(module) == "VectorQuantizer" and _embedding_weight(module) is not None
                and all(hasattr(module, a) for a in ("n_e", "e_dim", "beta"))
                and not any(hasattr(module, a) for a in ("legacy", "l2_norm", "vq_embed_dim")))

    def passthrough(self, module: nn.Module, args: tuple, kwargs: dict) -> Passed:
        z = args[0] if args else kwargs["z"]
        rows, idx = self._rows(module, z)
        one_hot, perplexity = _one_hot_perplexity(idx, module.n_e, z.dtype)
        return (z, zero_loss(module, z.new_zeros(())), (perplexity, one_hot, idx[:, None])), {"": rows}


class TamingEMAVQ(TamingVQ):
    """taming ``EMAVectorQuantizer`` with ``EmbeddingEMA`` (``weight``, ``cluster_size``, ``embed_avg``).

    Output ``(z_q, loss, (perplexity, one-hot encodings, indices))``.
    """

    name = "taming.ema"

    def matches(self, module: nn.Module) -> bool:
        emb = getattr(module, "embedding", None)
        return (class_name(module) == "EMAVectorQuantizer" and emb is not None
                and all(isinstance(getattr(emb, a, None), torch.Tensor)
                        for a in ("weight", "cluster_size", "embed_avg")))

    def passthrough(self, module: nn.Module, args: tuple, kwargs: dict) -> Passed:
        z = args[0] if args else kwargs["z"]
        rows, idx = self._rows(module, z)
        encodings, perplexity = _one_hot_perplexity(idx, module.embedding.weight.shape[0], z.dtype)
        return (z, zero_loss(module, z.new_zeros(())), (perplexity, encodings, idx)), {"": rows}

    def write(self, module: nn.Module, fitted: Fitted, *, tokens_per_step: float) -> None:
        centers, counts = fitted[""]
        emb = module.embedding
        write_ema(emb.weight, emb.cluster_size, emb.embed_avg, centers, per_step(counts, tokens_per_step))


class LlamaGenVQ(TamingVQ):
    """LlamaGen ``VectorQuantizer`` (``l2_norm``, ``show_usage``, ``entropy_loss_ratio``).

    Output ``(z_q, (vq_loss, commit_loss, entropy_loss, codebook_usage), (None, None, indices))``; the
    three losses are tensors in training mode and ``None`` in eval mode, as in the original. Its
    ``codebook_used`` FIFO of recent ids is the usage a checkpoint stores.
    """

    name = "llamagen"
    checkpoint_normalized = "LlamaGen looks codes up l2-normalised (codebook_l2_norm)"

    def matches(self, module: nn.Module) -> bool:
        return class_name(module) == "VectorQuantizer" and hasattr(module, "l2_norm") \
            and hasattr(module, "show_usage") and _embedding_weight(module) is not None

    def stored_usage(self, key: str, k: int, tensors: Mapping[str, Any]) -> tuple[torch.Tensor | None, str | None]:
        buf = tensors[join(key.rsplit(".", 2)[0], "codebook_used")].load().reshape(-1).long()
        buf = buf[(buf >= 0) & (buf < k)]
        return torch.bincount(buf, minlength=k).double(), "codebook_used"

    def passthrough(self, module: nn.Module, args: tuple, kwargs: dict) -> Passed:
        z = args[0] if args else kwargs["z"]
        rows, idx = self._rows(module, z)
        usage: float = 0
        if module.show_usage and module.training:
            # report the usage of the FIFO as it stands; it is not advanced before the switch
            usage = len(torch.unique(module.codebook_used)) / module.n_e
        if module.training:
            losses: tuple = (zero_loss(module, z.new_zeros(())), z.new_zeros(()), z.new_zeros(()))
        else:
            losses = (None, None, None)
        return (z, (*losses, usage), (None, None, idx)), {"": rows}


class DiffusersVQ(TamingVQ):
    """diffusers ``VectorQuantizer`` (hook ``model.quantize``: ``VQModel`` quantizes in ``decode``);
    a port of taming's ``VectorQuantizer2`` that names the code dimension ``vq_embed_dim``."""

    name = "diffusers"

    def matches(self, module: nn.Module) -> bool:
        return class_name(module) == "VectorQuantizer" and hasattr(module, "vq_embed_dim") \
            and _embedding_weight(module) is not None


class VarVQ(Family):
    """VAR (FoundationVision) multi-scale ``VectorQuantizer2``: checkpoints only (``ema_vocab_hit_SV``
    holds per-scale EMA hit counts; their sum over scales is the usage)."""

    name = "var"
    claims = TamingVQ.claims

    def stored_usage(self, key: str, k: int, tensors: Mapping[str, Any]) -> tuple[torch.Tensor | None, str | None]:
        hits = tensors[join(key.rsplit(".", 2)[0], "ema_vocab_hit_SV")].load().double()
        return (hits.sum(0) if hits.dim() == 2 else hits.reshape(-1)), "ema_vocab_hit_SV"


class TamingGumbel(Family):
    """taming ``GumbelQuantize``: codes in ``embed.weight``; ids from the sampled argmax.

    Its input is the encoder feature before the ``proj`` logits, not a vector in codebook space, so no
    latents are sampled: usage and codebook geometry only.
    """

    name = "taming.gumbel"

    def matches(self, module: nn.Module) -> bool:
        w = getattr(getattr(module, "embed", None), "weight", None)
        return class_name(module) == "GumbelQuantize" and isinstance(w, torch.Tensor) and w.ndim == 2

    def codebooks(self, module: nn.Module) -> dict[str, torch.Tensor]:
        return {"": own_codebook(module.embed.weight)}

    def extract(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> list[Capture]:
        idx = _info_indices(output)
        if getattr(module, "remap", None) is not None:
            idx = None
        return [Capture("", idx, None)] if idx is not None else []

    claims = TamingVQ.claims


_LLAMAGEN, _DIFFUSERS, _LEGACY, _EMA = LlamaGenVQ(), DiffusersVQ(), TamingLegacyVQ(), TamingEMAVQ()

"""taming-transformers and its descendants: ``VectorQuantizer2`` / ``VectorQuantizer`` /
``EMAVectorQuantizer`` / ``GumbelQuantize`` (taming), LlamaGen ``VectorQuantizer`` (l2-normalised lookup)
and diffusers ``VectorQuantizer``.

Facts used (research/ecosystem.md §1): all take ``z`` as ``(B, C, H, W)``, keep the codebook in
``embedding.weight`` ``(K, C)`` (Gumbel: ``embed.weight``), and return ``(z_q, loss, info)`` where
``info[2]`` holds the ids (flat ``(B*H*W,)``, ``(B*H*W, 1)`` or ``(B, H, W)``). LlamaGen with ``l2_norm``
compares normalised ``z`` with normalised codes. With ``remap`` the ids live in a remapped space, so we
drop them and let the report assign the sampled latents instead.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import Adapter, Capture, as_index_tensor, channels_last, class_name, first_arg, l2norm

_NAMES = ("VectorQuantizer2", "VectorQuantizer", "EMAVectorQuantizer")


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


class TamingAdapter(Adapter):
    """taming ``VectorQuantizer2`` / legacy ``VectorQuantizer`` / ``EMAVectorQuantizer``."""

    family = "taming"

    def matches(self, module: nn.Module) -> bool:
        return (class_name(module) in _NAMES and _embedding_weight(module) is not None
                and not LlamaGenAdapter.is_llamagen(module) and not DiffusersAdapter.is_diffusers(module))

    def _l2(self, module: nn.Module) -> bool:
        # Open-MAGVIT2's taming fork calls the flag ``l2_normalize``; LlamaGen calls it ``l2_norm``.
        return bool(getattr(module, "l2_normalize", False) or getattr(module, "l2_norm", False))

    def codebooks(self, module: nn.Module) -> dict[str, torch.Tensor]:
        w = _embedding_weight(module).detach().float()
        return {"": (l2norm(w) if self._l2(module) else w).clone()}

    def extract(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> list[Capture]:
        z = first_arg(args, kwargs, "z")
        if not isinstance(z, torch.Tensor) or z.ndim < 3:
            return []
        idx = _info_indices(output)
        if getattr(module, "remap", None) is not None:
            idx = None  # ids index the remapped subset, not the codebook rows
        return [Capture("", idx, channels_last(z, 1), None, l2norm if self._l2(module) else None)]


class LlamaGenAdapter(TamingAdapter):
    """LlamaGen ``VectorQuantizer`` (``codebook_l2_norm``: effective codebook = normalised rows)."""

    family = "llamagen"

    @staticmethod
    def is_llamagen(module: nn.Module) -> bool:
        return hasattr(module, "l2_norm") and hasattr(module, "show_usage")

    def matches(self, module: nn.Module) -> bool:
        return class_name(module) == "VectorQuantizer" and self.is_llamagen(module) \
            and _embedding_weight(module) is not None


class DiffusersAdapter(TamingAdapter):
    """diffusers ``VectorQuantizer`` (hook ``model.quantize``: ``VQModel`` quantizes in ``decode``)."""

    family = "diffusers"

    @staticmethod
    def is_diffusers(module: nn.Module) -> bool:
        return hasattr(module, "vq_embed_dim")

    def matches(self, module: nn.Module) -> bool:
        return class_name(module) == "VectorQuantizer" and self.is_diffusers(module) \
            and _embedding_weight(module) is not None


class GumbelAdapter(Adapter):
    """taming ``GumbelQuantize``: codes in ``embed.weight``; ids from the sampled argmax.

    Its input is the encoder feature before the ``proj`` logits, not a vector in codebook space, so no
    latents are sampled: usage and codebook geometry only.
    """

    family = "taming.gumbel"

    def matches(self, module: nn.Module) -> bool:
        w = getattr(getattr(module, "embed", None), "weight", None)
        return class_name(module) == "GumbelQuantize" and isinstance(w, torch.Tensor) and w.ndim == 2

    def codebooks(self, module: nn.Module) -> dict[str, torch.Tensor]:
        return {"": module.embed.weight.detach().float().clone()}

    def extract(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> list[Capture]:
        idx = _info_indices(output)
        if getattr(module, "remap", None) is not None:
            idx = None
        return [Capture("", idx, None)] if idx is not None else []

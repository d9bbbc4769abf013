"""transformers' image VQ-VAEs: the quantizers of Chameleon, Janus, GLM-Image and Emu3.

Facts used (the installed transformers, 5.x): ``{Chameleon,Janus,GlmImage}VQVAEVectorQuantizer`` keep the
codebook in ``embedding`` (an ``nn.Embedding`` ``(K, D)``), take ``(B, D, H, W)`` and return
``(quantized, loss, ids (B*H*W,))`` with a straight-through quantized tensor; GLM-Image's lookup compares
l2-normalised latents with l2-normalised codes. ``Emu3VQVAEVectorQuantizer`` takes ``(B, T, D, H, W)`` (the
code axis is 2) and returns only the ids ``(B, T, H, W)``: an inference port with no straight-through path and
no loss. Their checkpoints (``...quantize.embedding.weight``) read as taming's, whose keys they share.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import Capture, Passed, as_index_tensor, channels_last, class_name, first_arg, l2norm, zero_loss
from .taming import TamingVQ, _embedding_weight

__all__ = ["HfEmu3VQ", "HfImageVQ"]


class HfImageVQ(TamingVQ):
    """Chameleon / Janus / GLM-Image ``...VQVAEVectorQuantizer``: read, watched and deferred."""

    name = "transformers.vqvae"
    _classes = ("ChameleonVQVAEVectorQuantizer", "JanusVQVAEVectorQuantizer", "GlmImageVQVAEVectorQuantizer")

    def matches(self, module: nn.Module) -> bool:
        return class_name(module) in self._classes and _embedding_weight(module) is not None

    def is_normalized(self, module: nn.Module) -> bool:
        return class_name(module) == "GlmImageVQVAEVectorQuantizer"

    def extract(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> list[Capture]:
        z = first_arg(args, kwargs, "hidden_state")
        if not isinstance(z, torch.Tensor) or z.ndim != 4 or not isinstance(output, tuple) or len(output) < 3:
            return []
        return [Capture("", as_index_tensor(output[2]), channels_last(z, 1), None,
                        l2norm if self.is_normalized(module) else None)]

    def claims(self, seg: list[str], shape: tuple[int, ...], tensors: Any) -> bool:
        return False  # its keys are taming's; the taming family reads them

    def passthrough(self, module: nn.Module, args: tuple, kwargs: dict) -> Passed:
        z = args[0] if args else kwargs["hidden_state"]
        rows, idx = self._rows(module, z)
        return (z, zero_loss(module, z.new_zeros(())), idx), {"": rows}


class HfEmu3VQ(HfImageVQ):
    """Emu3 ``Emu3VQVAEVectorQuantizer``: read and watched (code axis 2); not deferrable."""

    name = "transformers.emu3"
    _classes = ("Emu3VQVAEVectorQuantizer",)
    why_no_defer = ("transformers' Emu3 quantizer returns only code ids, with no straight-through output and "
                    "no codebook loss, so there is no continuous warm-up to defer")

    def is_normalized(self, module: nn.Module) -> bool:
        return False

    def extract(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> list[Capture]:
        z = first_arg(args, kwargs, "hidden_state")
        idx = as_index_tensor(output)
        if not isinstance(z, torch.Tensor) or z.ndim != 5 or idx is None:
            return []
        return [Capture("", idx, channels_last(z, 2))]

    def can_defer(self, module: nn.Module) -> bool:
        return False

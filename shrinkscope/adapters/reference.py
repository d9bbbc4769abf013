"""shrinkscope's own ``EMAQuantizer`` (shrinkscope/reference/quantizer.py), recognised by its
``shrinkscope_family = "reference"`` class attribute rather than by import, so the adapter also reads
faithful copies of it.

Its ``forward(z (B, D, H, W))`` returns ``QuantizerOutput(quantized, indices (B, H, W), loss)``; before
activation (deferred quantization) ids are a no-grad nearest-code lookup, or all ``-1`` before k-means
initialisation, which usage counting ignores.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import Adapter, Capture, as_index_tensor, channels_last, first_arg, l2norm


class ReferenceAdapter(Adapter):
    """The reference ``EMAQuantizer`` (contract 1 of the design)."""

    family = "reference"

    def matches(self, module: nn.Module) -> bool:
        return getattr(type(module), "shrinkscope_family", None) == "reference"

    def codebooks(self, module: nn.Module) -> dict[str, torch.Tensor]:
        return {"": module.effective_codebook().detach().float()}

    def extract(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> list[Capture]:
        z = first_arg(args, kwargs, "z")
        if not isinstance(z, torch.Tensor) or z.ndim != 4:
            return []
        idx = getattr(output, "indices", None)
        if idx is None and isinstance(output, tuple) and len(output) >= 2:
            idx = output[1]
        return [Capture("", as_index_tensor(idx), channels_last(z, 1), None,
                        l2norm if getattr(module, "l2_normalize", False) else None)]

"""shrinkscope's own ``EMAQuantizer`` (shrinkscope/reference/quantizer.py), recognised by its
``shrinkscope_family = "reference"`` class attribute rather than by import (families sit below the demo
package), so faithful copies of it are read too.

Its ``forward(z (B, D, H, W))`` returns ``QuantizerOutput(quantized, indices (B, H, W), loss)``; before
activation (its own pass-through phase) ids are a no-grad nearest-code lookup, or all ``-1`` before
k-means initialisation, which usage counting ignores. Its cluster sizes are shares of a batch. In
checkpoints it is an EMA codebook (``quantizer.embed`` beside ``cluster_size``): discovery reports it as
``ema``, and the reference checkpoint's config says whether it is l2-normalised.
"""
from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn

from .base import (Capture, Family, Fitted, Passed, as_index_tensor, channels_last, first_arg, l2norm,
                   nearest, write_ema, zero_loss)

__all__ = ["Reference"]


class Reference(Family):
    """The reference ``EMAQuantizer`` (contract 1 of the design)."""

    name = "reference"

    def matches(self, module: nn.Module) -> bool:
        return getattr(type(module), "shrinkscope_family", None) == "reference"

    def is_normalized(self, module: nn.Module) -> bool:
        return bool(getattr(module, "l2_normalize", False))

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
                        l2norm if self.is_normalized(module) else None)]

    def initted(self, module: nn.Module) -> bool:
        return bool(module.initted)

    def passthrough(self, module: nn.Module, args: tuple, kwargs: dict) -> Passed:
        z = args[0] if args else kwargs["z"]
        with torch.no_grad():
            rows = module.flat_latents(z.detach())
        b, _, h, w = z.shape
        if self.initted(module):
            idx = nearest(self.codebooks(module)[""], rows).reshape(b, h, w)
        else:
            idx = torch.full((b, h, w), -1, dtype=torch.long, device=z.device)
        output_type = getattr(sys.modules.get(type(module).__module__), "QuantizerOutput", None) or tuple
        loss = zero_loss(module, z.new_zeros(()))
        fields = (z, idx, loss)
        return (output_type(*fields) if output_type is not tuple else fields), {"": rows}

    def write(self, module: nn.Module, fitted: Fitted, *, tokens_per_step: float) -> None:
        centers, counts = fitted[""]
        share = counts / counts.sum().clamp_min(1)
        write_ema(module.embed, module.cluster_size, module.embed_avg, centers, share)
        module.initted.data.fill_(True)
        module.active.data.fill_(True)  # its own pass-through flag: from now on it quantizes

"""``shrinkscope.defer``'s ``DeferredQuantizer``: read it through the family of the quantizer it wraps.

Recognised by class name and its ``wrapped`` attribute (not by import: families sit below ``defer``).
Before the switch the wrapper returns the wrapped family's own output structure (latents passed through,
ids from a no-grad nearest-code lookup), so the inner family's ``extract`` reads it unchanged; the
monitor therefore follows the latents maturing during the warm-up, and the codebook from the switch on.
The quantizer keeps its own name in reports (``quantizer``, not ``quantizer.wrapped``).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import Capture, Family

__all__ = ["Deferred"]


class Deferred(Family):
    """Delegates to the family of ``module.wrapped``, chosen among ``inner`` families."""

    name = "deferred"

    def __init__(self, inner: tuple[Family, ...] = ()):
        self.inner = inner

    def matches(self, module: nn.Module) -> bool:
        return type(module).__name__ == "DeferredQuantizer" and isinstance(getattr(module, "wrapped", None),
                                                                           nn.Module)

    def _inner(self, module: nn.Module) -> Family:
        for f in self.inner:
            if f.matches(module.wrapped):
                return f
        raise ValueError(f"no family reads the quantizer wrapped by defer: {type(module.wrapped).__name__}")

    def codebooks(self, module: nn.Module) -> dict[str, torch.Tensor]:
        return self._inner(module).codebooks(module.wrapped)

    def num_codes(self, module: nn.Module) -> dict[str, int]:
        return self._inner(module).num_codes(module.wrapped)

    def taps(self, module: nn.Module) -> dict[str, nn.Module]:
        # Residual stages only run after the switch; before it the outer call carries the latents.
        return {}

    def extract(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> list[Capture]:
        inner = self._inner(module)
        if inner.taps(module.wrapped):
            return []  # residual quantizers are read per stage; stage inputs are not visible here
        return inner.extract(module.wrapped, args, kwargs, output)

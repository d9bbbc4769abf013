"""``shrinkscope.defer``'s ``DeferredQuantizer``: read it through the family of the quantizer it wraps.

Recognised by class name and its ``wrapped`` attribute (not by import: families sit below ``defer``).
Before the switch the wrapper returns the wrapped family's own output structure (latents passed through,
ids from a no-grad nearest-code lookup), so the inner family's ``extract`` reads it unchanged; the
monitor therefore follows the latents maturing during the warm-up, and the codebook from the switch on. A
residual quantizer is read per stage from the switch on; during the warm-up its records carry no data.
The quantizer keeps its own name in reports (``quantizer``, not ``quantizer.wrapped``).
"""
from __future__ import annotations

import weakref
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
        # residual stages hooked through a wrapper -> the family that reads them; wrapper -> its first codebook
        self._stage_owner: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._first_codebook: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

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
        # A residual quantizer is read per stage, and its stages run only from the switch on: hook them now
        # (they stay silent during the warm-up), plus the wrapper itself (prefix ""), whose calls during the
        # warm-up say the quantizer is alive, so watch does not report it as yielding nothing.
        inner = self._inner(module)
        stages = inner.taps(module.wrapped)
        if not stages:
            return {}
        for stage in stages.values():
            self._stage_owner[stage] = inner
        self._first_codebook[module] = next(iter(inner.num_codes(module.wrapped)))
        return {"": module, **stages}

    def extract_tap(self, prefix: str, submodule: nn.Module, args: tuple, kwargs: dict,
                    output: Any) -> list[Capture]:
        if prefix == "":
            if getattr(submodule, "switched", True):
                return []
            return [Capture(self._first_codebook[submodule], None, None)]  # warming up: no ids, no stage latents
        return self._stage_owner[submodule].extract_tap(prefix, submodule, args, kwargs, output)

    def extract(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> list[Capture]:
        inner = self._inner(module)
        if inner.taps(module.wrapped):
            return []  # residual quantizers are read per stage; stage inputs are not visible here
        return inner.extract(module.wrapped, args, kwargs, output)

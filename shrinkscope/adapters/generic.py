"""Fallback for quantizers no family adapter knows: a module whose class name mentions "quant" or
"codebook", that holds a 2-D floating codebook (a direct parameter/buffer named ``embed``, ``embedding``,
``codebook`` or ``codebooks``, or the ``weight`` of a child ``nn.Embedding`` with one of those names), and
whose output carries an integer tensor of code ids.

Latents are the first input when its last axis (or its axis 1, channels-first) has the codebook's width;
they are used as they come (no projection/normalisation is known), so give a dedicated adapter when the
lookup happens in another space. Ids outside ``[0, K)`` are counted apart and disable the codebook at
report time (the integer tensor found was not a tensor of code ids).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import Adapter, Capture, as_index_tensor, class_name, first_arg

_NAMES = ("embed", "embedding", "codebook", "codebooks")


def find_codebook_tensor(module: nn.Module) -> torch.Tensor | None:
    """The module's own 2-D floating codebook tensor, or None."""
    own = dict(module.named_parameters(recurse=False))
    own.update(dict(module.named_buffers(recurse=False)))
    for n in _NAMES:
        t = own.get(n)
        if isinstance(t, torch.Tensor) and t.ndim == 2 and t.is_floating_point():
            return t
    for n in _NAMES:
        child = getattr(module, n, None)
        w = getattr(child, "weight", None)
        if isinstance(child, nn.Module) and isinstance(w, torch.Tensor) and w.ndim == 2 and w.is_floating_point():
            return w
    return None


def find_index_tensor(output: Any, depth: int = 0) -> torch.Tensor | None:
    """The first integer tensor in a (nested) tuple/list/dict/NamedTuple output."""
    idx = as_index_tensor(output)
    if idx is not None or depth > 3:
        return idx
    if isinstance(output, dict):
        output = list(output.values())
    elif hasattr(output, "__dataclass_fields__"):
        output = [getattr(output, f) for f in output.__dataclass_fields__]
    if isinstance(output, (tuple, list)):
        for item in output:
            found = find_index_tensor(item, depth + 1)
            if found is not None:
                return found
    return None


class GenericAdapter(Adapter):
    """Any quantizer-like module with a 2-D codebook and integer ids in its output."""

    family = "generic"

    def __init__(self, *, strict_name: bool = True):
        # ``watch(module, adapter="generic")`` drops the class-name condition: the user pointed at it.
        self.strict_name = strict_name

    def matches(self, module: nn.Module) -> bool:
        name = class_name(module).lower()
        if self.strict_name and "quant" not in name and "codebook" not in name:
            return False
        return find_codebook_tensor(module) is not None

    def codebooks(self, module: nn.Module) -> dict[str, torch.Tensor]:
        cb = find_codebook_tensor(module)
        if cb is None:
            raise ValueError(f"generic adapter: {class_name(module)} holds no 2-D codebook named one of {_NAMES}")
        return {"": cb.detach().float().clone()}

    def extract(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> list[Capture]:
        cb = find_codebook_tensor(module)
        idx = find_index_tensor(output)
        if cb is None or idx is None:
            return []
        d = cb.shape[1]
        x = first_arg(args, kwargs, "x", "z", "input")
        lat = None
        if isinstance(x, torch.Tensor) and x.is_floating_point() and x.ndim >= 2:
            if x.shape[-1] == d:
                lat = x.detach()
            elif x.shape[1] == d:
                lat = x.detach().movedim(1, -1)
        return [Capture("", idx, lat)]

"""Adapters: how shrinkscope finds quantizers inside any ``nn.Module`` and reads them.

``find_quantizers(model)`` walks the model and returns the outermost quantizers with the adapter that
reads each (a ``ResidualVQ`` is one quantizer with several codebooks). ``get_adapter`` picks an adapter
for a module or by family name. Write your own by subclassing ``Adapter`` (docs/hooks.md).
"""
from __future__ import annotations

from torch import nn

from .audio import (
    DACRVQAdapter,
    DACVQAdapter,
    EncodecRVQAdapter,
    EncodecRVQWrapperAdapter,
    EncodecVQAdapter,
    EuclideanCodebookAdapter,
)
from .base import Adapter, Capture
from .deferred import DeferredAdapter
from .generic import GenericAdapter
from .lucidrains import (
    FSQAdapter,
    GroupedResidualVQAdapter,
    LFQAdapter,
    ResidualVQAdapter,
    SimVQAdapter,
    VectorQuantizeAdapter,
)
from .reference import ReferenceAdapter
from .taming import DiffusersAdapter, GumbelAdapter, LlamaGenAdapter, TamingAdapter

_FAMILIES: tuple[Adapter, ...] = (
    ReferenceAdapter(),
    GroupedResidualVQAdapter(), ResidualVQAdapter(), VectorQuantizeAdapter(), SimVQAdapter(),
    FSQAdapter(), LFQAdapter(),
    LlamaGenAdapter(), DiffusersAdapter(), TamingAdapter(), GumbelAdapter(),
    EncodecRVQWrapperAdapter(), EncodecRVQAdapter(), EncodecVQAdapter(), EuclideanCodebookAdapter(),
    DACRVQAdapter(), DACVQAdapter(),
    GenericAdapter(),
)
ADAPTERS: tuple[Adapter, ...] = (DeferredAdapter(_FAMILIES), *_FAMILIES)
"""Every built-in adapter, most specific first (the generic fallback last)."""


def _by_family() -> dict[str, Adapter]:
    out: dict[str, Adapter] = {}
    for a in ADAPTERS:
        out.setdefault(a.family, a)
    return out


def get_adapter(module_or_name: nn.Module | str) -> Adapter:
    """The adapter for a module (first built-in adapter that matches) or for a family name.

    Args:
        module_or_name: an ``nn.Module`` or a family id such as ``"lucidrains.vq"``, ``"taming"``,
            ``"generic"`` (``"generic"`` by name also accepts modules whose class name does not mention
            quantization).

    Returns:
        An ``Adapter``.

    Raises:
        ValueError: no adapter matches the module, or the family name is unknown.
        TypeError: neither a module nor a string.
    """
    if isinstance(module_or_name, str):
        if module_or_name == "generic":
            return GenericAdapter(strict_name=False)
        families = _by_family()
        if module_or_name not in families:
            raise ValueError(f"unknown adapter family {module_or_name!r}; known: {sorted(families)}")
        return families[module_or_name]
    if not isinstance(module_or_name, nn.Module):
        raise TypeError(f"get_adapter: expected an nn.Module or a family name, got {type(module_or_name).__name__}")
    for a in ADAPTERS:
        if a.matches(module_or_name):
            return a
    raise ValueError(f"no shrinkscope adapter recognises {type(module_or_name).__name__}; pass adapter=... "
                     "(an Adapter instance or 'generic') or write one (docs/hooks.md, 'Writing an adapter')")


def find_quantizers(model: nn.Module, *, adapters: tuple[Adapter, ...] | None = None
                    ) -> list[tuple[str, nn.Module, Adapter]]:
    """The outermost quantizers inside ``model``, in module order.

    Args:
        model: any ``nn.Module`` (the model itself may be the quantizer).
        adapters: adapters to try, most specific first; default ``ADAPTERS``.

    Returns:
        ``[(qualified_name, module, adapter), ...]``; ``qualified_name`` is ``""`` for the model itself.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"find_quantizers: expected an nn.Module, got {type(model).__name__}")
    adapters = ADAPTERS if adapters is None else adapters
    found: list[tuple[str, nn.Module, Adapter]] = []
    for name, module in model.named_modules():
        if any(name == f or name.startswith(f + ".") or f == "" for f, _, _ in found):
            continue  # inside a quantizer already found: its stages/codebooks belong to it
        for a in adapters:
            if a.matches(module):
                found.append((name, module, a))
                break
    return found


__all__ = [
    "ADAPTERS", "Adapter", "Capture", "DACRVQAdapter", "DeferredAdapter", "DACVQAdapter", "DiffusersAdapter", "EncodecRVQAdapter",
    "EncodecRVQWrapperAdapter", "EncodecVQAdapter", "EuclideanCodebookAdapter", "FSQAdapter", "GenericAdapter",
    "GroupedResidualVQAdapter", "GumbelAdapter", "LFQAdapter", "LlamaGenAdapter", "ReferenceAdapter",
    "ResidualVQAdapter", "SimVQAdapter", "TamingAdapter", "VectorQuantizeAdapter", "find_quantizers", "get_adapter",
]

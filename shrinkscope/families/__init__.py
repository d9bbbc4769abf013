"""Families: everything shrinkscope knows about each VQ library, one module per library (the contract:
``base.Family``). ``watch``, ``defer``, ``analyze`` and the reports all ask the one registry ``FAMILIES``;
adding a library is one new module here plus its tests (docs/adding-a-library.md).

``find_quantizers(model)`` walks a model and returns the outermost quantizers with their family (a
``ResidualVQ`` is one quantizer with several codebooks); ``get_family`` picks one for a module or by name;
``deferral_family`` picks the one that defers a module.
"""
from __future__ import annotations

from torch import nn

from .audio import (
    DacRVQ,
    DacVQ,
    EncodecCodebook,
    EncodecRVQ,
    EncodecRVQWrapper,
    EncodecVQ,
    HfCodecQuantizersRVQ,
    HfCodecRVQ,
    HfCodecVQ,
)
from .base import Capture, Family
from .deferred import Deferred
from .diveq import Diveq
from .generic import EMACodebook, Generic
from .hf_vqvae import HfEmu3VQ, HfImageVQ
from .lucidrains import LucidSimVQ, LucidVQ
from .lucidrains_fixed import HfFSQ, LucidFSQ, LucidLatentQuantize, LucidLFQ, LucidRandomProjection
from .lucidrains_residual import LucidGroupedRVQ, LucidResidualVQ
from .moshi import MoshiCodebook, MoshiRVQ, MoshiVQ
from .reference import Reference
from .scales import MultiScale, ScaleTap, VarScales
from .taming import DiffusersVQ, LlamaGenVQ, TamingEMAVQ, TamingGumbel, TamingLegacyVQ, TamingVQ

__all__ = ["FAMILIES", "Capture", "Family", "MultiScale", "ScaleTap", "deferral_family", "find_quantizers", "get_family"]

_LIBRARIES: tuple[Family, ...] = (
    Reference(),
    LucidGroupedRVQ(), LucidResidualVQ(), LucidRandomProjection(), LucidVQ(), LucidSimVQ(),
    LucidFSQ(), LucidLFQ(), LucidLatentQuantize(), HfFSQ(),
    VarScales(),  # before taming's: VAR's quantizer is also a ``VectorQuantizer2`` with an ``embedding``
    LlamaGenVQ(), DiffusersVQ(), TamingLegacyVQ(), TamingEMAVQ(), TamingVQ(), TamingGumbel(),
    EncodecRVQWrapper(), EncodecRVQ(), EncodecVQ(), EncodecCodebook(), MoshiRVQ(), MoshiVQ(), MoshiCodebook(),
    HfCodecRVQ(), HfCodecQuantizersRVQ(), HfCodecVQ(), DacRVQ(), DacVQ(), HfImageVQ(), HfEmu3VQ(),
    Diveq(), EMACodebook(),
)
FAMILIES: tuple[Family, ...] = (Deferred(_LIBRARIES), *_LIBRARIES, Generic())
"""Every built-in family, most specific first; the generic fallback last (for modules and for keys)."""


def get_family(module_or_name: nn.Module | str) -> Family:
    """The family of a module (first built-in family that matches) or of a family name.

    Args:
        module_or_name: an ``nn.Module`` or a family name such as ``"lucidrains.vq"``, ``"taming"``,
            ``"generic"`` (``"generic"`` by name also accepts modules whose class name does not mention
            quantization).

    Returns:
        A ``Family``.

    Raises:
        ValueError: no family matches the module, or the name is unknown.
        TypeError: neither a module nor a string.
    """
    if isinstance(module_or_name, str):
        if module_or_name == "generic":
            return Generic(strict_name=False)
        by_name: dict[str, Family] = {}
        for f in FAMILIES:
            if type(f).matches is not Family.matches:  # checkpoint-only families read no module
                by_name.setdefault(f.name, f)
        if module_or_name not in by_name:
            raise ValueError(f"unknown adapter family {module_or_name!r}; known: {sorted(by_name)}")
        return by_name[module_or_name]
    if not isinstance(module_or_name, nn.Module):
        raise TypeError(f"get_family: expected an nn.Module or a family name, got {type(module_or_name).__name__}")
    for f in FAMILIES:
        if f.matches(module_or_name):
            return f
    raise ValueError(f"no shrinkscope family recognises {type(module_or_name).__name__}; pass adapter=... "
                     "(a Family instance or 'generic') or write one (docs/adding-a-library.md)")


def find_quantizers(model: nn.Module, *, families: tuple[Family, ...] | None = None
                    ) -> list[tuple[str, nn.Module, Family]]:
    """The outermost quantizers inside ``model``, in module order.

    Args:
        model: any ``nn.Module`` (the model itself may be the quantizer).
        families: families to try, most specific first; default ``FAMILIES``.

    Returns:
        ``[(qualified_name, module, family), ...]``; ``qualified_name`` is ``""`` for the model itself.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"find_quantizers: expected an nn.Module, got {type(model).__name__}")
    families = FAMILIES if families is None else families
    found: list[tuple[str, nn.Module, Family]] = []
    for name, module in model.named_modules():
        if any(name == f or name.startswith(f + ".") or f == "" for f, _, _ in found):
            continue  # inside a quantizer already found: its stages/codebooks belong to it
        for f in families:
            if f.matches(module):
                found.append((name, module, f))
                break
    return found


def deferral_family(module: nn.Module) -> Family:
    """The family that defers ``module`` (``shrinkscope.defer``).

    Raises:
        TypeError: no family defers the module (the message lists the supported classes).
    """
    read_as = None
    for f in FAMILIES[1:]:
        if f.matches(module):
            if f.can_defer(module):
                return f
            read_as = read_as or f
    extra = f" (shrinkscope reads it as {read_as.name!r}, but cannot defer it)" if read_as else ""
    if read_as is not None and read_as.why_no_defer:
        extra += f": {read_as.why_no_defer}"
    supported = sorted({f.name for f in FAMILIES if type(f).passthrough is not Family.passthrough})
    raise TypeError(f"defer: no deferral support for {type(module).__module__}.{type(module).__name__}{extra}. "
                    f"Families that defer: {', '.join(supported)} (docs/defer.md). Wrap the quantizer module "
                    "itself, not the whole model.")

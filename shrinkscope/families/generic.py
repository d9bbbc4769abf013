"""Fallbacks for quantizers no library family knows.

Modules: a class named like "quant"/"codebook" holding a 2-D float codebook (parameter/buffer ``embed``,
``embedding``, ``codebook`` or ``codebooks``, or such a child ``nn.Embedding``) whose output carries integer
code ids. Latents are the first input when its last axis (or axis 1) has the codebook's width, used as they
come (write a family when the lookup happens in another space); ids outside ``[0, K)`` disable the codebook
at report time. Checkpoints: an ``embed`` beside EMA statistics (``ema``), or a key naming a codebook, or an
``embed``/``embedding``/``codes`` table under a quantizer-like name (``generic``); never token tables.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .base import Capture, Family, as_index_tensor, class_name, ema_embed_key, first_arg, join, own_codebook

__all__ = ["LM_TABLE", "EMACodebook", "Generic"]

_NAMES = ("embed", "embedding", "codebook", "codebooks")
_QUANTISH = re.compile(r"quant|vq|codebook", re.IGNORECASE)
LM_TABLE = re.compile(r"^(tok_embeddings|wte|wpe|embed_tokens|word_embeddings|token_embedding|tok_emb|"
                      r"token_emb|embed_positions|position_embedding|pos_emb|pos_embed|shared|lm_head)$")
"""Key segments of language models' token/position tables: never codebooks unless asked for."""


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


class Generic(Family):
    """Any quantizer-like module with a 2-D codebook and integer ids in its output."""

    name = "generic"

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
            raise ValueError(f"generic family: {class_name(module)} holds no 2-D codebook named one of {_NAMES}")
        return {"": own_codebook(cb)}

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

    def claims(self, seg: list[str], shape: tuple[int, ...], tensors: Mapping[str, Any]) -> bool:
        if any(LM_TABLE.match(s) for s in seg) or len(shape) < 2 or shape[-2] < 2:
            return False  # a table of one row is a statistic (a running mean), not a codebook
        if _beside_an_ema_codebook(seg, tensors):
            return False
        return any("codebook" in s.lower() for s in seg) or (
            any(s in ("embed", "embedding", "embeddings", "codes") for s in seg[-2:])
            and any(_QUANTISH.search(s) for s in seg))


def _beside_an_ema_codebook(seg: list[str], tensors: Mapping[str, Any]) -> bool:
    """True when the key lies in a module that already holds an EMA codebook (``embed`` beside
    ``cluster_size`` / ``embed_avg``): its other tensors are that codebook's statistics or helpers
    (vector-quantize-pytorch's ``affine_param`` means and variances, a ``vq_bridge``), never more codebooks."""
    for i in range(len(seg) - 1, 0, -1):
        owner = ".".join(seg[:i])
        if join(owner, "embed") != ".".join(seg) and join(owner, "embed") in tensors and (
                join(owner, "cluster_size") in tensors or join(owner, "embed_avg") in tensors):
            return True
    return False


class EMACodebook(Family):
    """Checkpoints only: a 2-D ``embed`` stored beside its EMA statistics (``cluster_size``,
    ``embed_avg``, an init flag) outside a ``_codebook`` container: the reference quantizer, an EnCodec
    ``EuclideanCodebook`` saved on its own, and home-made EMA quantizers."""

    name = "ema"

    def claims(self, seg: list[str], shape: tuple[int, ...], tensors: Mapping[str, Any]) -> bool:
        return len(shape) == 2 and seg[-2:-1] not in (["_codebook"], ["codebook"]) and ema_embed_key(seg, tensors)

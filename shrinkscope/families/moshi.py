"""Moshi (kyutai-labs/moshi, ``moshi.quantization``): its residual quantizers, live and in checkpoints.

Facts used (the public layout of ``moshi/quantization/core_vq.py`` and ``vq.py``): ``EuclideanCodebook``
keeps buffers ``embedding_sum (K, D)``, ``cluster_usage (K,)`` (ones at first), ``_initialized`` and a
non-persistent cache ``_embedding``; the codebook is ``embedding_sum / cluster_usage.clamp(min=epsilon)``,
and its ``embedding`` property *registers* that cache when read, so it is computed here instead.
``VectorQuantization.forward(x (B, D, T), initialize=True)`` returns ``(quantized, codes (B, T), loss,
metrics)`` and looks ``x`` up as it is (its ``project_in`` is used by ``encode`` only, and is an identity
in every moshi configuration); ``ResidualVectorQuantization`` holds stages in ``layers``;
``ResidualVectorQuantizer`` wraps it as ``vq`` behind a 1x1 ``input_proj``; ``SplitResidualVectorQuantizer``
runs two of them on the *same* input: ``rvq_first`` (semantic, distilled) and ``rvq_rest`` (acoustic).

moshi requires torch<2.10, so the tier tests these families on a look-alike written from that layout
(tests/real/test_real_lookalikes.py). Deferral is refused, with the reason (``why_no_defer``).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .base import (
    Capture,
    Family,
    Staged,
    as_index_tensor,
    channels_last,
    class_name,
    first_arg,
    join,
    own_codebook,
)

__all__ = ["MoshiCodebook", "MoshiRVQ", "MoshiVQ"]


def _book_tensors(book: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(embedding_sum, cluster_usage)`` of a moshi ``EuclideanCodebook``, read from its buffers (never
    through the caching ``embedding`` property), or None."""
    bufs = book._buffers
    esum, usage = bufs.get("embedding_sum"), bufs.get("cluster_usage")
    if isinstance(esum, torch.Tensor) and esum.ndim == 2 and isinstance(usage, torch.Tensor):
        return esum, usage
    return None


class MoshiVQ(Family):
    """moshi ``VectorQuantization``: one codebook ``_codebook``, latents = the stage input (a residual after
    stage 0)."""

    name = "moshi.vq"
    latent_layout = "channels_first"
    why_no_defer = ("a moshi VectorQuantization is one stage of a residual stack; shrinkscope does not defer "
                    "moshi's residual quantizers (see MoshiRVQ)")

    def matches(self, module: nn.Module) -> bool:
        book = module._modules.get("_codebook")
        return class_name(module) == "VectorQuantization" and book is not None and _book_tensors(book) is not None

    def codebooks(self, module: nn.Module) -> dict[str, torch.Tensor]:
        book = module._codebook
        esum, usage = _book_tensors(book)
        eps = float(getattr(book, "epsilon", 1e-5))
        return {"": own_codebook(esum / usage.clamp(min=eps)[:, None])}

    def extract(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> list[Capture]:
        x = first_arg(args, kwargs, "x")
        if not isinstance(x, torch.Tensor) or x.ndim != 3 or not isinstance(output, tuple) or len(output) < 2:
            return []
        return [Capture("", as_index_tensor(output[1]), channels_last(x, 1))]


class MoshiRVQ(Staged):
    """moshi ``SplitResidualVectorQuantizer`` (stages ``rvq_first.vq.layers.{i}`` and
    ``rvq_rest.vq.layers.{i}``), ``ResidualVectorQuantizer`` (``vq.layers.{i}``) and
    ``ResidualVectorQuantization`` (``layers.{i}``), read stage by stage through forward hooks."""

    name = "moshi.rvq"
    _stage = MoshiVQ()
    why_no_defer = (
        "moshi's residual quantizers initialise each stage by k-means on its first training batch, gated by "
        "the stage before it, and the split quantizer runs two residual stacks with their own projections on "
        "the same input; shrinkscope has no stage-wise deferral for this layout (untestable here: moshi needs "
        "torch<2.10). Use the library's own k-means init, or defer a supported quantizer (docs/defer.md)")

    def _prefixes(self, module: nn.Module) -> dict[str, nn.Module] | None:
        """``{prefix: ResidualVectorQuantization}`` of the stacks inside ``module``, or None."""
        name = class_name(module)
        if name == "SplitResidualVectorQuantizer":
            halves = {h: module._modules.get(h) for h in ("rvq_first", "rvq_rest")}
            if all(h is not None for h in halves.values()):
                found = {f"{h}.vq": getattr(m, "_modules", {}).get("vq") for h, m in halves.items()}
                return found if all(self._stack(m) for m in found.values()) else None
            return None
        if name == "ResidualVectorQuantizer":
            vq = module._modules.get("vq")
            return {"vq": vq} if self._stack(vq) else None
        return {"": module} if self._stack(module) else None

    def _stack(self, module: nn.Module | None) -> bool:
        layers = getattr(module, "_modules", {}).get("layers") if module is not None else None
        return (class_name(module) == "ResidualVectorQuantization" and isinstance(layers, nn.ModuleList)
                and len(layers) > 0 and all(self._stage.matches(s) for s in layers))

    def matches(self, module: nn.Module) -> bool:
        return class_name(module) in ("SplitResidualVectorQuantizer", "ResidualVectorQuantizer",
                                      "ResidualVectorQuantization") and self._prefixes(module) is not None

    def _stages(self, module: nn.Module) -> dict[str, nn.Module]:
        return {join(prefix, f"layers.{i}"): s for prefix, stack in self._prefixes(module).items()
                for i, s in enumerate(stack.layers)}

    def _stage_family(self, stage: nn.Module) -> Family:
        return self._stage


class MoshiCodebook(Family):
    """Moshi/Mimi ``EuclideanCodebook`` in checkpoints: codebook = ``embedding_sum / cluster_usage``."""

    name = "moshi"

    def claims(self, seg: list[str], shape: tuple[int, ...], tensors: Mapping[str, Any]) -> bool:
        return seg[-1] in ("embedding_sum", "embed_sum") and len(shape) == 2 \
            and join(".".join(seg[:-1]), "cluster_usage") in tensors

    def effective(self, cb: torch.Tensor, key: str, tensors: Mapping[str, Any]) -> tuple[torch.Tensor, list[str]]:
        usage = tensors[join(key.rsplit(".", 1)[0] if "." in key else "", "cluster_usage")].load().to(cb.dtype)
        return cb / usage.clamp(min=1e-5)[:, None], ["codebook derived as embedding_sum / cluster_usage (Moshi/Mimi)"]

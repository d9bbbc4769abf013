"""vector-quantize-pytorch (lucidrains) quantizers whose codes k-means cannot set: the implicit grids of
``FSQ``, ``LFQ`` (with ``spherical=True``: BSQ) and ``LatentQuantize``, read for usage only, and the frozen
random codebooks of ``RandomProjectionQuantizer``.

Facts used (the installed library, 1.32): ``FSQ`` keeps its grid in the non-persistent buffer
``implicit_codebook`` ``(prod(levels), d)``; ``LFQ`` keeps its ``2^d`` sign codes in the non-persistent
buffer ``codebook``; ``LatentQuantize`` keeps ``implicit_codebook`` ``(prod(levels), d)`` built from its
initial levels, while its per-dimension values (``values_per_latent``) may be learned. All three return
``(quantized, ids, ...)`` and store nothing a checkpoint could be read from, so ``analyze`` of a saved file
finds no codebook for them. ``RandomProjectionQuantizer`` (BEST-RQ) maps ``LayerNorm(x)`` through the
frozen buffer ``rand_projs`` ``(H, dim, e)`` into an inner cosine ``VectorQuantize`` with one codebook per
head, which it switches to ``eval()`` on every call, and returns only the ids ``(B, N, H)``. transformers'
ports of ``FSQ`` (``NeuCodecFiniteScalarQuantization``, ``Xcodec2FiniteScalarQuantization``) keep the grid in
the non-persistent buffer ``codebook`` ``(prod(levels), d)`` and return ``(codes, ids)``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import Capture, Family, as_index_tensor, class_name, first_arg
from .lucidrains import LucidVQ, _is_lucid_vq

__all__ = ["HfFSQ", "LucidFSQ", "LucidLFQ", "LucidLatentQuantize", "LucidRandomProjection"]


class _ImplicitCodebook(Family):
    """Codebook-free quantizers: the grid of codes is fixed, so only usage is meaningful."""

    usage_only = True
    why_no_defer = "its codes are a fixed grid, not a learned codebook a k-means start could set"
    _names: tuple[str, ...] = ()
    _buffer = ""

    def matches(self, module: nn.Module) -> bool:
        return class_name(module) in self._names and hasattr(module, "codebook_size")

    def codebooks(self, module: nn.Module) -> dict[str, torch.Tensor]:
        # The implicit grid, so callers know K and D; geometry on it says nothing about training.
        grid = getattr(module, self._buffer, None)
        if isinstance(grid, torch.Tensor) and grid.ndim == 2:
            return {"": grid.detach().float()}
        return {}

    def num_codes(self, module: nn.Module) -> dict[str, int]:
        return {"": int(module.codebook_size)}

    def extract(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> list[Capture]:
        if not isinstance(output, tuple) or len(output) < 2:
            return []
        return [Capture("", as_index_tensor(output[1]), None)]


class LucidFSQ(_ImplicitCodebook):
    """``FSQ``: implicit grid ``prod(levels)`` codes; usage only."""

    name = "lucidrains.fsq"
    _names = ("FSQ",)
    _buffer = "implicit_codebook"


class LucidLFQ(_ImplicitCodebook):
    """``LFQ`` (and BSQ, its ``spherical=True`` form): implicit ``2^d`` sign codes; usage only."""

    name = "lucidrains.lfq"
    _names = ("LFQ",)
    _buffer = "codebook"


class HfFSQ(_ImplicitCodebook):
    """transformers' ports of ``FSQ`` in NeuCodec and Xcodec2: usage only."""

    name = "transformers.fsq"
    _names = ("NeuCodecFiniteScalarQuantization", "Xcodec2FiniteScalarQuantization")
    _buffer = "codebook"

    def matches(self, module: nn.Module) -> bool:
        grid = getattr(module, self._buffer, None)
        return class_name(module) in self._names and isinstance(grid, torch.Tensor) and grid.ndim == 2

    def num_codes(self, module: nn.Module) -> dict[str, int]:
        return {"": int(module.codebook.shape[0])}


class LucidLatentQuantize(_ImplicitCodebook):
    """``LatentQuantize``: a grid of ``prod(levels)`` codes, the product of per-dimension values; usage only.

    Its values may be learned (``optimize_values``), so the grid can move; only usage is read, and K and D
    come from the grid of the initial levels.
    """

    name = "lucidrains.latent_quantize"
    _names = ("LatentQuantize",)
    _buffer = "implicit_codebook"
    why_no_defer = ("its codes are the product grid of per-dimension values, not a list of codes a k-means "
                    "start could set")


class LucidRandomProjection(Family):
    """``RandomProjectionQuantizer`` (BEST-RQ): frozen random codebooks behind a frozen random projection.

    The codebooks never train, by design; reading them shows how the (trained) input uses a fixed random
    vocabulary. The outer module is hooked, because the inner ``VectorQuantize`` is put in ``eval()`` on
    every call (a ``collect="train"`` watch would skip it).
    """

    name = "lucidrains.random_projection"
    why_no_defer = ("its codebooks are random and frozen by design (BEST-RQ's targets): they never train, so "
                    "there is no warm-up to defer")
    _vq = LucidVQ()

    def matches(self, module: nn.Module) -> bool:
        return (class_name(module) == "RandomProjectionQuantizer" and _is_lucid_vq(getattr(module, "vq", None))
                and isinstance(getattr(module, "rand_projs", None), torch.Tensor))

    def is_normalized(self, module: nn.Module) -> bool:
        return self._vq.is_normalized(module.vq)

    def codebooks(self, module: nn.Module) -> dict[str, torch.Tensor]:
        return self._vq.codebooks(module.vq)

    def extract(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> list[Capture]:
        x = first_arg(args, kwargs, "x")
        given = kwargs.get("indices", args[1] if len(args) > 1 else None)
        if given is not None or not isinstance(x, torch.Tensor) or x.ndim != 3:
            return []  # cross-entropy mode: the caller supplied the ids and gets a loss back
        idx = as_index_tensor(output)
        if idx is None:
            return []
        vq, names = module.vq, list(self.codebooks(module))

        def to_codebook_space(rows: torch.Tensor, head: int) -> torch.Tensor:
            # forward's path: LayerNorm, the random projection per head, heads packed, then the inner lookup's
            z = torch.einsum("nd,hde->nhe", module.norm(rows), module.rand_projs).reshape(rows.shape[0], -1)
            z = vq.project_in(z).reshape(rows.shape[0], vq.heads, -1)[:, head]
            return vq._codebook.transform_input(z)

        rows = x.detach()
        if len(names) == 1:
            ids = idx if idx.ndim == 2 else idx[..., 0]
            return [Capture(names[0], ids, rows, None, lambda r: to_codebook_space(r, 0))]
        return [Capture(n, idx[..., h], rows, None, lambda r, h=h: to_codebook_space(r, h))
                for h, n in enumerate(names)]

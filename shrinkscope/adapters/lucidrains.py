"""vector-quantize-pytorch (lucidrains): ``VectorQuantize``, ``ResidualVQ``, ``GroupedResidualVQ``,
``SimVQ`` and the codebook-free ``FSQ`` / ``LFQ`` (usage only).

Facts used (research/ecosystem.md §1): ``VectorQuantize`` stores ``_codebook.embed`` as ``(H, K, D)``
(H > 1 only with ``separate_codebook_per_head``) in ``codebook_dim`` space; the lookup runs on
``project_in(x)`` split into heads and l2-normalised when ``use_cosine_sim``; forward returns
``(quantized, indices, loss[, breakdown])`` with ``-1`` for masked positions. Residual stages are
``layers.{q}`` (grouped: ``rvqs.{g}.layers.{q}``); each stage sees the residual, so we hook the stages.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import Adapter, Capture, as_index_tensor, channels_last, class_name, first_arg, l2norm


def _is_lucid_vq(m: nn.Module) -> bool:
    cb = getattr(m, "_codebook", None)
    return (class_name(m) == "VectorQuantize" and cb is not None
            and isinstance(getattr(cb, "embed", None), torch.Tensor) and cb.embed.ndim == 3)


class VectorQuantizeAdapter(Adapter):
    """``vector_quantize_pytorch.VectorQuantize`` (heads, cosine codebooks, ``codebook_dim`` projection)."""

    family = "lucidrains.vq"

    def matches(self, module: nn.Module) -> bool:
        return _is_lucid_vq(module)

    def codebooks(self, module: nn.Module) -> dict[str, torch.Tensor]:
        embed = module._codebook.embed.detach().float()
        if getattr(module._codebook, "use_cosine_sim", False) or getattr(module, "use_cosine_sim", False):
            embed = l2norm(embed)
        if getattr(module, "separate_codebook_per_head", False) and embed.shape[0] > 1:
            return {f"head{h}": embed[h].clone() for h in range(embed.shape[0])}
        return {"": embed[0].clone()}

    def num_codes(self, module: nn.Module) -> dict[str, int]:
        k = int(module._codebook.embed.shape[1])
        return {name: k for name in self.codebooks(module)}

    def extract(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> list[Capture]:
        x = first_arg(args, kwargs, "x")
        if not isinstance(x, torch.Tensor) or not isinstance(output, tuple) or len(output) < 2:
            return []
        idx = as_index_tensor(output[1])
        if "indices" in kwargs and kwargs["indices"] is not None:
            return []  # cross-entropy mode: the caller supplied the ids, nothing was looked up
        # Re-create the layout the module uses internally: rows of ``dim`` features.
        if x.ndim == 2:
            rows = x.detach()
        elif getattr(module, "accept_image_fmap", False) or getattr(module, "accept_3d_fmap", False) or not getattr(module, "channel_last", True):
            rows = channels_last(x, 1)
        else:
            rows = x.detach()
        valid = None
        mask, lens = kwargs.get("mask"), kwargs.get("lens")
        if lens is not None and x.ndim == 3:
            n = x.shape[1] if getattr(module, "channel_last", True) else x.shape[2]
            mask = torch.arange(n, device=x.device)[None, :] < lens[:, None]
        if mask is not None:
            valid = mask.detach().reshape(-1)
        heads = int(getattr(module, "heads", 1))
        project_in, transform_input = module.project_in, module._codebook.transform_input
        separate = getattr(module, "separate_codebook_per_head", False) and heads > 1

        def to_codebook_space(r: torch.Tensor, head: int | None = None) -> torch.Tensor:
            r = project_in(r)
            if heads > 1:
                r = r.reshape(r.shape[0], heads, -1)
                r = r[:, head] if head is not None else r.reshape(-1, r.shape[-1])
            return transform_input(r)

        if separate:
            return [Capture(f"head{h}", None if idx is None else idx[..., h], rows, valid,
                            lambda r, h=h: to_codebook_space(r, h)) for h in range(heads)]
        if heads > 1:
            # One shared codebook for every head: each token gives ``heads`` latents. Rare; computed eagerly.
            with torch.no_grad():
                lat = to_codebook_space(rows.reshape(-1, rows.shape[-1]))
            v = None if valid is None else valid.repeat_interleave(heads)
            return [Capture("", idx, lat, v)]
        return [Capture("", idx, rows, valid, to_codebook_space)]


def _prefixed(prefix: str, caps: list[Capture]) -> list[Capture]:
    return [c._replace(codebook=prefix if not c.codebook else f"{prefix}/{c.codebook}") for c in caps]


class ResidualVQAdapter(Adapter):
    """``ResidualVQ``: one codebook per stage, named ``layers.{q}``; stages are hooked one by one."""

    family = "lucidrains.rvq"
    _inner = VectorQuantizeAdapter()

    def matches(self, module: nn.Module) -> bool:
        layers = getattr(module, "layers", None)
        return (class_name(module) in ("ResidualVQ", "ResidualSimVQ") and isinstance(layers, nn.ModuleList)
                and len(layers) > 0 and all(_is_lucid_vq(v) or class_name(v) == "SimVQ" for v in layers))

    def _stages(self, module: nn.Module) -> dict[str, nn.Module]:
        return {f"layers.{q}": layer for q, layer in enumerate(module.layers)}

    def _adapter_for(self, stage: nn.Module) -> Adapter:
        return self._inner if _is_lucid_vq(stage) else SimVQAdapter()

    def codebooks(self, module: nn.Module) -> dict[str, torch.Tensor]:
        out = {}
        for prefix, stage in self._stages(module).items():
            for name, cb in self._adapter_for(stage).codebooks(stage).items():
                out[prefix if not name else f"{prefix}/{name}"] = cb
        return out

    def taps(self, module: nn.Module) -> dict[str, nn.Module]:
        return self._stages(module)

    def extract(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> list[Capture]:
        return []  # everything comes from the stage taps

    def extract_tap(self, prefix: str, submodule: nn.Module, args: tuple, kwargs: dict,
                    output: Any) -> list[Capture]:
        return _prefixed(prefix, self._adapter_for(submodule).extract(submodule, args, kwargs, output))


class GroupedResidualVQAdapter(ResidualVQAdapter):
    """``GroupedResidualVQ``: codebooks ``rvqs.{g}.layers.{q}``."""

    family = "lucidrains.grouped_rvq"

    def matches(self, module: nn.Module) -> bool:
        rvqs = getattr(module, "rvqs", None)
        return (class_name(module) == "GroupedResidualVQ" and isinstance(rvqs, nn.ModuleList)
                and all(ResidualVQAdapter.matches(self, r) for r in rvqs))

    def _stages(self, module: nn.Module) -> dict[str, nn.Module]:
        return {f"rvqs.{g}.layers.{q}": layer for g, rvq in enumerate(module.rvqs)
                for q, layer in enumerate(rvq.layers)}


class SimVQAdapter(Adapter):
    """``SimVQ``: effective codebook = ``code_transform(frozen_codebook)``."""

    family = "lucidrains.simvq"

    def matches(self, module: nn.Module) -> bool:
        return (class_name(module) == "SimVQ" and isinstance(getattr(module, "frozen_codebook", None), torch.Tensor)
                and hasattr(module, "code_transform"))

    @torch.no_grad()
    def codebooks(self, module: nn.Module) -> dict[str, torch.Tensor]:
        return {"": module.code_transform(module.frozen_codebook).detach().float().clone()}

    def num_codes(self, module: nn.Module) -> dict[str, int]:
        return {"": int(module.frozen_codebook.shape[0])}

    def extract(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> list[Capture]:
        x = first_arg(args, kwargs, "x")
        if not isinstance(x, torch.Tensor) or not isinstance(output, tuple) or len(output) < 2:
            return []
        rows = channels_last(x, 1) if getattr(module, "channel_first", False) else x.detach()
        return [Capture("", as_index_tensor(output[1]), rows)]


class _ImplicitCodebookAdapter(Adapter):
    """Codebook-free quantizers: the grid of codes is fixed, so only usage is meaningful."""

    usage_only = True
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


class FSQAdapter(_ImplicitCodebookAdapter):
    """``FSQ``: implicit grid ``prod(levels)`` codes; usage only."""

    family = "lucidrains.fsq"
    _names = ("FSQ",)
    _buffer = "implicit_codebook"


class LFQAdapter(_ImplicitCodebookAdapter):
    """``LFQ``: implicit ``2^d`` sign codes; usage only."""

    family = "lucidrains.lfq"
    _names = ("LFQ",)
    _buffer = "codebook"

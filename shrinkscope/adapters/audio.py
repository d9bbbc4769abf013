"""Audio-codec residual quantizers: EnCodec-style ``EuclideanCodebook`` / ``VectorQuantization`` /
``ResidualVectorQuantization`` (facebookresearch/encodec, audiocraft) and DAC ``VectorQuantize`` /
``ResidualVectorQuantize`` (descript-audio-codec).

Facts used (research/ecosystem.md §1): EnCodec's ``VectorQuantization.forward(x (B, D, T))`` moves
channels last, applies ``project_in`` and looks up ``_codebook.embed (K, D)``; it returns
``(quantize, embed_ind (B, T), loss)``; the residual wrapper holds stages in ``layers``. DAC's
``VectorQuantize.forward(z)`` returns ``(z_q, commitment_loss, codebook_loss, indices (B, T), z_e)`` where
``z_e = in_proj(z)`` (``(B, d, T)``) is compared with ``codebook.weight`` after l2-normalising both; the
residual wrapper holds stages in ``quantizers``. In DAC training every stage runs on every sample and
dropout masks the sum, so per-stage usage includes samples whose stage was dropped.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import Adapter, Capture, as_index_tensor, channels_last, class_name, first_arg, l2norm


def _encodec_stage(m: nn.Module) -> bool:
    cb = getattr(m, "_codebook", None)
    embed = getattr(cb, "embed", None)
    return (class_name(m) == "VectorQuantization" and isinstance(embed, torch.Tensor) and embed.ndim == 2
            and hasattr(m, "project_in"))


def _dac_stage(m: nn.Module) -> bool:
    w = getattr(getattr(m, "codebook", None), "weight", None)
    return class_name(m) == "VectorQuantize" and isinstance(w, torch.Tensor) and w.ndim == 2 \
        and hasattr(m, "in_proj")


class EuclideanCodebookAdapter(Adapter):
    """EnCodec ``EuclideanCodebook`` used on its own: ``forward(x (..., D)) -> (quantize, embed_ind)``."""

    family = "encodec.codebook"

    def matches(self, module: nn.Module) -> bool:
        embed = getattr(module, "embed", None)
        return class_name(module) == "EuclideanCodebook" and isinstance(embed, torch.Tensor) and embed.ndim == 2

    def codebooks(self, module: nn.Module) -> dict[str, torch.Tensor]:
        return {"": module.embed.detach().float().clone()}

    def extract(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> list[Capture]:
        x = first_arg(args, kwargs, "x")
        if not isinstance(x, torch.Tensor) or not isinstance(output, tuple) or len(output) < 2:
            return []
        return [Capture("", as_index_tensor(output[1]), x.detach())]


class EncodecVQAdapter(Adapter):
    """EnCodec ``VectorQuantization`` (one codebook, optional ``project_in``)."""

    family = "encodec.vq"

    def matches(self, module: nn.Module) -> bool:
        return _encodec_stage(module)

    def codebooks(self, module: nn.Module) -> dict[str, torch.Tensor]:
        return {"": module._codebook.embed.detach().float().clone()}

    def extract(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> list[Capture]:
        x = first_arg(args, kwargs, "x")
        if not isinstance(x, torch.Tensor) or not isinstance(output, tuple) or len(output) < 2:
            return []
        return [Capture("", as_index_tensor(output[1]), channels_last(x, 1), None, module.project_in)]


class DACVQAdapter(Adapter):
    """DAC ``VectorQuantize``: effective codebook = l2-normalised ``codebook.weight``; latents = ``z_e``."""

    family = "dac.vq"

    def matches(self, module: nn.Module) -> bool:
        return _dac_stage(module)

    def codebooks(self, module: nn.Module) -> dict[str, torch.Tensor]:
        return {"": l2norm(module.codebook.weight.detach().float()).clone()}

    def extract(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> list[Capture]:
        if not isinstance(output, tuple) or len(output) < 5 or not isinstance(output[4], torch.Tensor):
            return []
        return [Capture("", as_index_tensor(output[3]), channels_last(output[4], 1), None, l2norm)]


class _StagedAdapter(Adapter):
    """A residual wrapper whose stages (one codebook each) are hooked one by one."""

    _stage_adapter: Adapter
    _attr = "layers"
    _names: tuple[str, ...] = ()

    def _stages(self, module: nn.Module) -> dict[str, nn.Module]:
        return {f"{self._attr}.{i}": s for i, s in enumerate(getattr(module, self._attr))}

    def matches(self, module: nn.Module) -> bool:
        stages = getattr(module, self._attr, None)
        return (class_name(module) in self._names and isinstance(stages, nn.ModuleList) and len(stages) > 0
                and all(self._stage_adapter.matches(s) for s in stages))

    def codebooks(self, module: nn.Module) -> dict[str, torch.Tensor]:
        return {p: self._stage_adapter.codebooks(s)[""] for p, s in self._stages(module).items()}

    def taps(self, module: nn.Module) -> dict[str, nn.Module]:
        return self._stages(module)

    def extract(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> list[Capture]:
        return []

    def extract_tap(self, prefix: str, submodule: nn.Module, args: tuple, kwargs: dict,
                    output: Any) -> list[Capture]:
        return [c._replace(codebook=prefix) for c in self._stage_adapter.extract(submodule, args, kwargs, output)]


class EncodecRVQAdapter(_StagedAdapter):
    """EnCodec ``ResidualVectorQuantization``: codebooks ``layers.{i}``."""

    family = "encodec.rvq"
    _stage_adapter = EncodecVQAdapter()
    _names = ("ResidualVectorQuantization",)


class EncodecRVQWrapperAdapter(_StagedAdapter):
    """EnCodec ``ResidualVectorQuantizer`` (the outer wrapper holding ``vq``): codebooks ``vq.layers.{i}``."""

    family = "encodec.rvq"
    _stage_adapter = EncodecVQAdapter()

    def matches(self, module: nn.Module) -> bool:
        return class_name(module) == "ResidualVectorQuantizer" and EncodecRVQAdapter().matches(
            getattr(module, "vq", nn.Module()))

    def _stages(self, module: nn.Module) -> dict[str, nn.Module]:
        return {f"vq.layers.{i}": s for i, s in enumerate(module.vq.layers)}


class DACRVQAdapter(_StagedAdapter):
    """DAC ``ResidualVectorQuantize``: codebooks ``quantizers.{i}``."""

    family = "dac.rvq"
    _stage_adapter = DACVQAdapter()
    _attr = "quantizers"
    _names = ("ResidualVectorQuantize",)

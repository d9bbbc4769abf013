"""Audio-codec residual quantizers: EnCodec-style ``EuclideanCodebook`` / ``VectorQuantization`` /
``ResidualVectorQuantization`` (facebookresearch/encodec, audiocraft), DAC ``VectorQuantize`` /
``ResidualVectorQuantize`` (descript-audio-codec), Moshi/Mimi codebooks (checkpoints) and transformers'
Encodec/Mimi quantizers (read through ``.encode()``). moshi's own quantizers live in ``moshi.py``.

Facts used (research/ecosystem.md §1): EnCodec's ``VectorQuantization.forward(x (B, D, T))`` moves
channels last, applies ``project_in`` and looks up ``_codebook.embed (K, D)``; it returns
``(quantize, embed_ind (B, T), loss)``; the residual wrapper holds stages in ``layers``; the codebook keeps
``embed_avg``, ``cluster_size`` and ``inited`` (k-means on the first training batch). DAC's
``VectorQuantize.forward(z)`` returns ``(z_q, commitment_loss, codebook_loss, indices (B, T), z_e)`` where
``z_e = in_proj(z)`` (``(B, d, T)``) is compared with ``codebook.weight`` after l2-normalising both; the
residual wrapper holds stages in ``quantizers``. In DAC training every stage runs on every sample and
dropout masks the sum, so per-stage usage includes samples whose stage was dropped. Moshi stores
``embedding_sum`` and ``cluster_usage``; the codebook is their ratio. transformers' ``EncodecModel`` and
``MimiModel`` never call their quantizers' ``forward``: the model calls ``quantizer.encode(embeddings)``,
which runs each stage's ``encode(residual (B, D, T)) -> ids (B, T)`` then ``decode``.
"""
from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .base import (Capture, Family, Fitted, Passed, Staged, as_index_tensor, channels_last, class_name, copy_into,
                   ema_embed_key, first_arg, fit_codes, fit_residual, join, l2norm, nearest, own_codebook, per_step,
                   write_ema, zero_loss)

__all__ = ["DacRVQ", "DacVQ", "EncodecCodebook", "EncodecRVQ", "EncodecRVQWrapper", "EncodecVQ", "HfCodecRVQ",
           "HfCodecVQ"]


class EncodecCodebook(Family):
    """EnCodec ``EuclideanCodebook`` used on its own: ``forward(x (..., D)) -> (quantize, embed_ind (...))``."""

    name = "encodec.codebook"

    def matches(self, module: nn.Module) -> bool:
        embed = getattr(module, "embed", None)
        return class_name(module) == "EuclideanCodebook" and isinstance(embed, torch.Tensor) and embed.ndim == 2

    def _book(self, module: nn.Module) -> nn.Module:
        return module

    def codebooks(self, module: nn.Module) -> dict[str, torch.Tensor]:
        return {"": own_codebook(self._book(module).embed)}

    def extract(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> list[Capture]:
        x = first_arg(args, kwargs, "x")
        if not isinstance(x, torch.Tensor) or not isinstance(output, tuple) or len(output) < 2:
            return []
        return [Capture("", as_index_tensor(output[1]), x.detach())]

    # deferral
    def can_defer(self, module: nn.Module) -> bool:
        book = self._book(module)
        return all(isinstance(getattr(book, a, None), torch.Tensor) for a in ("embed_avg", "cluster_size", "inited"))

    def initted(self, module: nn.Module) -> bool:
        return bool(self._book(module).inited.reshape(-1)[0])

    def _ids(self, module: nn.Module, rows: torch.Tensor) -> torch.Tensor:
        if not self.initted(module):
            return torch.full((rows.shape[0],), -1, dtype=torch.long, device=rows.device)
        return nearest(self._book(module).embed, rows)

    def passthrough(self, module: nn.Module, args: tuple, kwargs: dict) -> Passed:
        x = args[0] if args else kwargs["x"]
        rows = x.detach().reshape(-1, x.shape[-1])
        return (x, self._ids(module, rows).reshape(x.shape[:-1])), {"": rows}

    def write(self, module: nn.Module, fitted: Fitted, *, tokens_per_step: float) -> None:
        centers, counts = fitted[""]
        book = self._book(module)
        write_ema(book.embed, book.cluster_size, book.embed_avg, centers, per_step(counts, tokens_per_step))
        book.inited.data.fill_(1)


class EncodecVQ(EncodecCodebook):
    """EnCodec ``VectorQuantization``: ``forward(x (B, D, N)) -> (quantize, embed_ind (B, N), loss (1,))``,
    one codebook behind an optional ``project_in``."""

    name = "encodec.vq"

    def matches(self, module: nn.Module) -> bool:
        embed = getattr(getattr(module, "_codebook", None), "embed", None)
        return (class_name(module) == "VectorQuantization" and isinstance(embed, torch.Tensor) and embed.ndim == 2
                and hasattr(module, "project_in"))

    def _book(self, module: nn.Module) -> nn.Module:
        return module._codebook

    def extract(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> list[Capture]:
        x = first_arg(args, kwargs, "x")
        if not isinstance(x, torch.Tensor) or not isinstance(output, tuple) or len(output) < 2:
            return []
        return [Capture("", as_index_tensor(output[1]), channels_last(x, 1), None, module.project_in)]

    # checkpoints: ``..._codebook.embed (K, D)``
    def claims(self, seg: list[str], shape: tuple[int, ...], tensors: Mapping[str, Any]) -> bool:
        return len(shape) == 2 and seg[-2:-1] in (["_codebook"], ["codebook"]) and ema_embed_key(seg, tensors)

    def passthrough(self, module: nn.Module, args: tuple, kwargs: dict) -> Passed:
        x = args[0] if args else kwargs["x"]
        with torch.no_grad():
            rows = module.project_in(x.detach().transpose(1, 2))
        b, n = rows.shape[0], rows.shape[1]
        rows = rows.reshape(-1, rows.shape[-1])
        ids = self._ids(module, rows).reshape(b, n)
        loss = zero_loss(module, torch.zeros(1, device=x.device))
        return (x, ids, loss), {"": rows}


class DacVQ(Family):
    """DAC ``VectorQuantize`` and its ports: effective codebook = l2-normalised ``codebook.weight``.

    descript-audio-codec's and transformers' ``DacVectorQuantize`` return ``(z_q, commitment_loss,
    codebook_loss, indices, z_e)``: latents are ``z_e``. snac's ``VectorQuantize`` returns ``(z_q, indices)``
    after average-pooling its input by ``stride``: latents are the pooled input, mapped by ``in_proj`` (a
    1x1 convolution) only for the rows the reservoir keeps.
    """

    name = "dac.vq"
    checkpoint_normalized = "DAC looks codes up l2-normalised"

    def matches(self, module: nn.Module) -> bool:
        w = getattr(getattr(module, "codebook", None), "weight", None)
        return class_name(module) in ("VectorQuantize", "DacVectorQuantize") and isinstance(w, torch.Tensor) \
            and w.ndim == 2 and hasattr(module, "in_proj")

    def is_normalized(self, module: nn.Module) -> bool:
        return True

    def codebooks(self, module: nn.Module) -> dict[str, torch.Tensor]:
        return {"": own_codebook(module.codebook.weight, normalized=True)}

    def extract(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> list[Capture]:
        if isinstance(output, tuple) and len(output) >= 5 and isinstance(output[4], torch.Tensor):
            return [Capture("", as_index_tensor(output[3]), channels_last(output[4], 1), None, l2norm)]
        z = first_arg(args, kwargs, "z")
        if not (isinstance(output, tuple) and len(output) == 2 and isinstance(z, torch.Tensor) and z.ndim == 3):
            return []
        stride = int(getattr(module, "stride", 1) or 1)
        if stride > 1:  # snac pools before the lookup; O(batch) like the forward itself, no host sync
            z = nn.functional.avg_pool1d(z.detach(), stride, stride)
        in_proj = module.in_proj

        def to_codebook_space(rows: torch.Tensor) -> torch.Tensor:  # (R, C) -> (R, d), then normalised
            return l2norm(in_proj(rows.t()[None])[0].t())

        return [Capture("", as_index_tensor(output[1]), channels_last(z, 1), None, to_codebook_space)]

    # checkpoints: ``quantizers.{i}.codebook.weight (K, d)``
    def claims(self, seg: list[str], shape: tuple[int, ...], tensors: Mapping[str, Any]) -> bool:
        return len(shape) == 2 and ".".join(seg).endswith("codebook.weight")


class _Staged(Staged):
    """A residual wrapper holding one-codebook stages of one family in ``module.<_attr>``."""

    _stage: Family
    _attr = "layers"
    _names: tuple[str, ...] = ()

    def _stages(self, module: nn.Module) -> dict[str, nn.Module]:
        return {f"{self._attr}.{i}": s for i, s in enumerate(getattr(module, self._attr))}

    def _stage_family(self, stage: nn.Module) -> Family:
        return self._stage

    def matches(self, module: nn.Module) -> bool:
        stages = getattr(module, self._attr, None)
        return (class_name(module) in self._names and isinstance(stages, nn.ModuleList) and len(stages) > 0
                and all(self._stage.matches(s) for s in stages))


class EncodecRVQ(_Staged):
    """EnCodec ``ResidualVectorQuantization``: codebooks ``layers.{i}``.

    Deferred as a whole: before the switch ``forward(x (B, D, T), n_q)`` returns ``(x, ids (n_q, B, T),
    zeros (n_q, 1))`` (ids ``-1`` while the stages are not initialised); the reservoir keeps ``x`` as rows;
    at the switch stage q is fitted by k-means on the residuals left by the fitted stages 0..q-1 and gets the
    EMA state and ``inited`` flag of a single EnCodec codebook.
    """

    name = "encodec.rvq"
    _stage = EncodecVQ()
    _names = ("ResidualVectorQuantization",)

    def _stack(self, module: nn.Module) -> nn.Module:
        return module

    def _prefix(self) -> str:
        return ""

    def check(self, module: nn.Module) -> None:
        if not all(isinstance(s.project_in, nn.Identity) for s in self._stack(module).layers):
            raise ValueError("defer: EnCodec stages with a codebook_dim projection are not supported (the residual "
                             "lives in the input space, the codes in the projected one); build them without "
                             "codebook_dim")

    def can_defer(self, module: nn.Module) -> bool:
        return all(self._stage.can_defer(s) for s in self._stack(module).layers)

    def streams(self, module: nn.Module) -> dict[str, int]:
        return {"": int(self._stack(module).layers[0]._codebook.embed.shape[1])}

    def _ids(self, module: nn.Module, x: torch.Tensor, n_q: int) -> torch.Tensor:
        """``(n_q, B, T)`` greedy ids of ``x (B, D, T)`` on the current codebooks (``-1`` before init)."""
        rows = x.detach().transpose(1, 2).reshape(-1, x.shape[1])
        ids, res = [], rows
        for stage in self._stack(module).layers[:n_q]:
            if self._stage.initted(stage):
                cb = stage._codebook.embed.to(res)
                i = nearest(cb, res)
                res = res - cb[i]
            else:
                i = torch.full((rows.shape[0],), -1, dtype=torch.long, device=rows.device)
            ids.append(i.reshape(x.shape[0], x.shape[2]))
        return torch.stack(ids)

    def passthrough(self, module: nn.Module, args: tuple, kwargs: dict) -> Passed:
        x = first_arg(args, kwargs, "x")
        n_q = (args[1] if len(args) > 1 else kwargs.get("n_q")) or len(module.layers)
        losses = zero_loss(module, torch.zeros(n_q, 1, device=x.device))
        return (x, self._ids(module, x, n_q), losses), {"": x.detach().transpose(1, 2).reshape(-1, x.shape[1])}

    def fit(self, module: nn.Module, reservoirs: dict[str, torch.Tensor], *, iters: int, seed: int) -> Fitted:
        layers = self._stack(module).layers
        fitted = fit_residual(reservoirs[""], [int(s._codebook.embed.shape[0]) for s in layers], False,
                              iters=iters, seed=seed)
        return {join(self._prefix(), f"layers.{i}"): f for i, f in enumerate(fitted)}

    def write(self, module: nn.Module, fitted: Fitted, *, tokens_per_step: float) -> None:
        for i, stage in enumerate(self._stack(module).layers):
            self._stage.write(stage, {"": fitted[join(self._prefix(), f"layers.{i}")]},
                              tokens_per_step=tokens_per_step)


class EncodecRVQWrapper(EncodecRVQ):
    """EnCodec ``ResidualVectorQuantizer`` (the outer wrapper holding ``vq``): codebooks ``vq.layers.{i}``.

    Deferred as a whole: before the switch ``forward(x, sample_rate, bandwidth)`` returns the library's
    ``QuantizedResult(x, ids (n_q, B, T), bandwidth, penalty=0)`` with ``n_q`` from the bandwidth, as its own
    forward computes it; the switch is the one of ``ResidualVectorQuantization``.
    """

    def matches(self, module: nn.Module) -> bool:
        return class_name(module) == "ResidualVectorQuantizer" and EncodecRVQ().matches(
            getattr(module, "vq", nn.Module()))

    def _stages(self, module: nn.Module) -> dict[str, nn.Module]:
        return {f"vq.layers.{i}": s for i, s in enumerate(module.vq.layers)}

    def _stack(self, module: nn.Module) -> nn.Module:
        return module.vq

    def _prefix(self) -> str:
        return "vq"

    def check(self, module: nn.Module) -> None:
        super().check(module)
        if getattr(sys.modules.get(type(module).__module__), "QuantizedResult", None) is None:
            raise ValueError(f"defer: cannot find EnCodec's QuantizedResult next to {type(module).__name__}")

    def passthrough(self, module: nn.Module, args: tuple, kwargs: dict) -> Passed:
        x = first_arg(args, kwargs, "x")
        sample_rate = args[1] if len(args) > 1 else kwargs["sample_rate"]
        bandwidth = args[2] if len(args) > 2 else kwargs.get("bandwidth")
        n_q = module.get_num_quantizers_for_bandwidth(sample_rate, bandwidth)
        bw = torch.tensor(n_q * module.get_bandwidth_per_quantizer(sample_rate)).to(x)
        penalty = zero_loss(module, torch.zeros((), device=x.device))
        result = sys.modules[type(module).__module__].QuantizedResult
        rows = x.detach().transpose(1, 2).reshape(-1, x.shape[1])
        return result(x, self._ids(module, x, n_q), bw, penalty=penalty), {"": rows}


class DacRVQ(_Staged):
    """DAC ``ResidualVectorQuantize`` (descript-audio-codec, snac) and transformers'
    ``DacResidualVectorQuantizer``: codebooks ``quantizers.{i}``.

    transformers' class is deferred as a whole. Before the switch each stage runs with its lookup skipped:
    ``z_e = in_proj(residual)`` goes straight to ``out_proj``, under the library's own quantizer dropout
    (same global-RNG draws), so the projections and the encoder train and the decoder sees what it will
    see after the switch, less the quantization. The reservoir keeps the stage-0 input; at the switch stage
    q is fitted on the residuals left by the fitted stages 0..q-1: spherical k-means on the l2-normalised
    ``z_e`` (the lookup DAC does), each centre scaled to the mean length of the ``z_e`` it holds, because
    DAC decodes the raw ``codebook.weight`` row (the lookup ignores the length, the decoder does not).
    """

    name = "dac.rvq"
    _stage = DacVQ()
    _attr = "quantizers"
    _names = ("ResidualVectorQuantize", "DacResidualVectorQuantize", "DacResidualVectorQuantizer")
    why_no_defer = (
        "only transformers' DacResidualVectorQuantizer is deferred. snac's stages average-pool their input "
        "by a stride, so a later stage's residual needs whole sequences, not the rows a reservoir keeps, and "
        "its forward returns no codebook loss to train a codebook with; descript-audio-codec does not install "
        "next to this project's pins, so its ResidualVectorQuantize is untested")

    # deferral (transformers' DacResidualVectorQuantizer only)
    def can_defer(self, module: nn.Module) -> bool:
        return class_name(module) == "DacResidualVectorQuantizer" and self.matches(module)

    def is_normalized(self, module: nn.Module) -> bool:
        return True

    def streams(self, module: nn.Module) -> dict[str, int]:
        return {"": int(module.quantizers[0].in_proj.in_channels)}

    def _dropout(self, module: nn.Module, z: torch.Tensor, n_quantizers: Any) -> Any:
        """Per-sample stage counts as the library draws them in training (one ``torch.randint``)."""
        n = module.n_codebooks
        if not module.training:
            return n_quantizers if n_quantizers is not None else n
        counts = torch.full((z.shape[0],), float(n + 1))
        draws = torch.randint(1, n + 1, (z.shape[0],))
        n_drop = int(z.shape[0] * module.quantizer_dropout)
        counts[:n_drop] = draws[:n_drop].float()
        return counts.to(z.device)

    def passthrough(self, module: nn.Module, args: tuple, kwargs: dict) -> Passed:
        z = first_arg(args, kwargs, "hidden_state")
        n_q = self._dropout(module, z, args[1] if len(args) > 1 else kwargs.get("n_quantizers"))
        out, residual, codes, latents = torch.zeros_like(z), z, [], []
        for i, stage in enumerate(module.quantizers):
            if not module.training and i >= n_q:
                break
            z_e = stage.in_proj(residual)
            z_q = stage.out_proj(z_e)
            keep = torch.full((z.shape[0],), i, device=z.device, dtype=torch.long) < n_q
            out = out + z_q * keep[:, None, None]
            residual = residual - z_q
            with torch.no_grad():
                rows = l2norm(z_e.detach().transpose(1, 2).reshape(-1, z_e.shape[1]))
                codes.append(nearest(l2norm(stage.codebook.weight), rows).reshape(z.shape[0], -1))
            latents.append(z_e)
        loss = zero_loss(module, torch.zeros(z.shape[0], device=z.device))
        pooled = z.detach().transpose(1, 2).reshape(-1, z.shape[1])
        return (out, torch.stack(codes, 1), torch.cat(latents, 1), loss, loss.clone()), {"": pooled}

    @torch.no_grad()
    def fit(self, module: nn.Module, reservoirs: dict[str, torch.Tensor], *, iters: int, seed: int) -> Fitted:
        res, out = reservoirs[""], {}
        for i, stage in enumerate(module.quantizers):
            z_e = _conv_rows(stage.in_proj, res)
            centers, counts, idx = fit_codes(l2norm(z_e), int(stage.codebook.weight.shape[0]), True,
                                             iters=iters, seed=seed + i)
            idx = idx.to(z_e.device)
            length = torch.zeros(centers.shape[0], device=z_e.device).index_add_(0, idx, z_e.norm(dim=1))
            length = torch.where(counts > 0, length / counts.clamp_min(1).to(length), z_e.norm(dim=1).mean())
            rows = centers * length[:, None].to(centers)
            out[f"quantizers.{i}"] = (rows, counts)
            res = res - _conv_rows(stage.out_proj, rows[idx].to(res))
        return out

    def write(self, module: nn.Module, fitted: Fitted, *, tokens_per_step: float) -> None:
        for i, stage in enumerate(module.quantizers):
            copy_into(stage.codebook.weight, fitted[f"quantizers.{i}"][0])


def _conv_rows(conv: nn.Module, rows: torch.Tensor) -> torch.Tensor:
    """A 1x1 ``Conv1d`` applied to rows ``(N, C_in) -> (N, C_out)`` (its weight-norm parametrisation too)."""
    return conv(rows.t()[None].to(next(conv.parameters()).dtype))[0].t()


def _hf_embed(book: nn.Module) -> torch.Tensor:
    """The codebook a transformers Encodec/Mimi stage looks up, computed here: Mimi's ``embed`` property
    caches its first value, so reading it early would freeze a codebook the model later reloads."""
    embed_sum = getattr(book, "embed_sum", None)
    if isinstance(embed_sum, torch.Tensor):
        eps = float(getattr(book, "epsilon", 1e-5))
        return embed_sum / book.cluster_usage.clamp(min=eps)[:, None]
    return book.embed


class HfCodecVQ(Family):
    """transformers' ``EncodecVectorQuantization`` / ``MimiVectorQuantization``, read through
    ``encode(hidden (B, D, T)) -> ids (B, T)``; codebook ``codebook.embed`` (Mimi: ``embed_sum /
    cluster_usage``). Latents are the stage input (after Mimi's ``input_proj``; a residual after stage 0)."""

    name = "transformers.codec_vq"
    hook_method = "encode"
    why_no_defer = (
        "transformers' Encodec, Mimi, Xcodec, WavTokenizer and HiggsAudio v2 quantize in .encode() to integer codes that .decode() turns back into "
        "vectors, with no straight-through path: the encoder gets no gradient through the quantizer and the "
        "codebooks are buffers no training step updates, so there is no continuous warm-up to defer (these "
        "ports are for inference; train with the original encodec or moshi code)")
    _classes = ("EncodecVectorQuantization", "MimiVectorQuantization", "XcodecVectorQuantization",
                "WavTokenizerVectorQuantization", "HiggsAudioV2TokenizerVectorQuantization")  # the same port

    def matches(self, module: nn.Module) -> bool:
        book = getattr(module, "codebook", None)
        if class_name(module) not in self._classes or not isinstance(book, nn.Module):
            return False
        bufs = dict(book.named_buffers(recurse=False))
        cb = bufs.get("embed_sum", bufs.get("embed"))
        return isinstance(cb, torch.Tensor) and cb.ndim == 2

    def codebooks(self, module: nn.Module) -> dict[str, torch.Tensor]:
        return {"": own_codebook(_hf_embed(module.codebook))}

    def extract(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> list[Capture]:
        x = first_arg(args, kwargs, "hidden_states")
        if not isinstance(x, torch.Tensor) or x.ndim != 3:
            return []
        return [Capture("", as_index_tensor(output), channels_last(x, 1))]


class HfCodecRVQ(_Staged):
    """transformers' ``EncodecResidualVectorQuantizer`` / ``MimiResidualVectorQuantizer`` (stages
    ``layers.{i}``) and ``MimiSplitResidualVectorQuantizer`` (stages
    ``{semantic,acoustic}_residual_vector_quantizer.layers.{i}``), all read through ``.encode()``. Stages
    past the bandwidth/``num_quantizers`` of a call see no data in it."""

    name = "transformers.codec_rvq"
    hook_method = "encode"
    why_no_defer = HfCodecVQ.why_no_defer
    _stage = HfCodecVQ()
    _names = ("EncodecResidualVectorQuantizer", "MimiResidualVectorQuantizer")
    _halves = ("semantic_residual_vector_quantizer", "acoustic_residual_vector_quantizer")

    def matches(self, module: nn.Module) -> bool:
        if class_name(module) == "MimiSplitResidualVectorQuantizer":
            return all(super(HfCodecRVQ, self).matches(getattr(module, h, nn.Module())) for h in self._halves)
        return super().matches(module)

    def _stages(self, module: nn.Module) -> dict[str, nn.Module]:
        if class_name(module) == "MimiSplitResidualVectorQuantizer":
            return {f"{h}.layers.{i}": s for h in self._halves for i, s in enumerate(getattr(module, h).layers)}
        return super()._stages(module)


class HfCodecQuantizersRVQ(HfCodecRVQ):
    """transformers' Xcodec / HiggsAudio v2 residual quantizers: the Encodec port with its stages in
    ``quantizers.{i}``, read through ``.encode()`` the same way."""

    _attr = "quantizers"
    _names = ("XcodecResidualVectorQuantization", "HiggsAudioV2TokenizerResidualVectorQuantization")

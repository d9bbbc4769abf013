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

``ResidualVectorQuantizer.forward(x (B, C, T), frame_rate)`` returns a ``QuantizedResult(x, codes (B, Q, T),
bandwidth, penalty, metrics)`` dataclass defined in ``moshi.quantization.base``; its ``no_quantization_rate``
path, which the library itself uses to train without quantizing, returns ``output_proj(input_proj(x))``.

moshi requires torch<2.10, so the tier tests these families on a look-alike written from that layout
(tests/real/test_real_lookalikes.py).
"""
from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .base import (
    UNCHOSEN_COUNT,
    Capture,
    Family,
    Fitted,
    Passed,
    Staged,
    as_index_tensor,
    channels_last,
    class_name,
    copy_into,
    first_arg,
    fit_residual,
    join,
    nearest,
    own_codebook,
    per_step,
    zero_loss,
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
    why_no_defer = ("a moshi VectorQuantization is one stage of a residual stack (deferring it alone would leave "
                    "the stages after it a pass-through residual); defer the ResidualVectorQuantizer or "
                    "SplitResidualVectorQuantizer that holds it")

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
    ``ResidualVectorQuantization`` (``layers.{i}``), read stage by stage through forward hooks.

    The first two are deferred as a whole. Before the switch each residual stack returns what moshi's own
    ``no_quantization_rate`` path returns, ``output_proj(input_proj(x))`` (the split quantizer sums its two
    stacks, as its forward does), with ids from a no-grad greedy lookup (``-1`` while a stage is not
    initialised), the bandwidth of all ``n_q`` stages and a zero penalty. The reservoir keeps each stack's
    input after ``input_proj``; at the switch stage q of a stack is fitted by k-means on the residuals left by
    its fitted stages 0..q-1, and ``embedding_sum``, ``cluster_usage`` and ``_initialized`` are written as
    moshi's own first-batch init writes them.
    """

    name = "moshi.rvq"
    _stage = MoshiVQ()
    why_no_defer = ("a bare moshi ResidualVectorQuantization returns moshi's private _VQForwardResult; defer "
                    "the ResidualVectorQuantizer or SplitResidualVectorQuantizer that holds it")

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

    # deferral: ``SplitResidualVectorQuantizer`` and ``ResidualVectorQuantizer``
    def _quantizers(self, module: nn.Module) -> dict[str, nn.Module]:
        """``{stream: ResidualVectorQuantizer}``: the split quantizer's two halves, or the quantizer itself."""
        if class_name(module) == "SplitResidualVectorQuantizer":
            return {"rvq_first": module.rvq_first, "rvq_rest": module.rvq_rest}
        return {"": module}

    def can_defer(self, module: nn.Module) -> bool:
        return class_name(module) in ("SplitResidualVectorQuantizer", "ResidualVectorQuantizer")

    def check(self, module: nn.Module) -> None:
        if getattr(sys.modules.get(type(module).__module__), "QuantizedResult", None) is None:
            raise ValueError(f"defer: cannot find moshi's QuantizedResult next to {type(module).__name__} "
                             f"(module {type(module).__module__}); the pass-through must return it")

    def streams(self, module: nn.Module) -> dict[str, int]:
        return {name: int(q.vq.layers[0]._codebook.embedding_sum.shape[1])
                for name, q in self._quantizers(module).items()}

    def _half(self, q: nn.Module, x: torch.Tensor, frame_rate: Any) -> tuple[torch.Tensor, torch.Tensor,
                                                                              torch.Tensor, torch.Tensor]:
        """``(output, codes (B, Q, T), bandwidth, stack input rows (B*T, D))`` of one quantizer, unquantized.

        Quantizer dropout is drawn as moshi's forward draws it (``rng_dropout.randint(1, n_q)`` in training),
        so the codes and bandwidth cover the drawn stages and the RNG stays where the library expects it.
        """
        n_q = q.n_q
        z = q.input_proj(x)
        if q.training and getattr(q, "q_dropout", False) and n_q > 0:
            n_q = q.rng_dropout.randint(1, q.n_q)
        rows = z.detach().transpose(1, 2).reshape(-1, z.shape[1])
        codes, res = [], rows
        for stage in q.vq.layers[:n_q]:
            book = stage._codebook
            if bool(book._initialized.reshape(-1)[0]):
                cb = self._stage.codebooks(stage)[""].to(res)
                ids = nearest(cb, res)
                res = res - cb[ids]
            else:
                ids = torch.full((rows.shape[0],), -1, dtype=torch.long, device=rows.device)
            codes.append(ids.reshape(z.shape[0], z.shape[2]))
        bandwidth = torch.tensor(n_q * math.log2(q.bins) * frame_rate / 1000).to(z)
        stacked = torch.stack(codes, 1) if codes else torch.empty(z.shape[0], 0, z.shape[2], dtype=torch.long,
                                                                   device=z.device)
        return q.output_proj(z), stacked, bandwidth, rows

    def passthrough(self, module: nn.Module, args: tuple, kwargs: dict) -> Passed:
        x = first_arg(args, kwargs, "x")
        frame_rate = args[1] if len(args) > 1 else kwargs["frame_rate"]
        result = sys.modules[type(module).__module__].QuantizedResult
        parts = {n: self._half(q, x, frame_rate) for n, q in self._quantizers(module).items()}
        # a half set to 0 codebooks (``set_num_codebooks``) is left out of the output, as moshi's forward does,
        # but its reservoir still fills: every stream needs K rows before the switch
        used = [p for n, p in parts.items() if self._quantizers(module)[n].n_q > 0] or list(parts.values())
        out = sum(p[0] for p in used)
        codes = torch.cat([p[1] for p in used], 1)
        bandwidth = sum(p[2] for p in used)
        penalty = zero_loss(module, torch.zeros((), device=x.device))
        return result(out, codes, bandwidth, penalty=penalty, metrics={}), {n: p[3] for n, p in parts.items()}

    def fit(self, module: nn.Module, reservoirs: dict[str, torch.Tensor], *, iters: int, seed: int) -> Fitted:
        out: Fitted = {}
        for name, q in self._quantizers(module).items():
            if name in reservoirs:
                sizes = [int(s._codebook.embedding_sum.shape[0]) for s in q.vq.layers]
                fitted = fit_residual(reservoirs[name], sizes, False, iters=iters, seed=seed)
                out.update({join(name, f"vq.layers.{i}"): f for i, f in enumerate(fitted)})
        return out

    def write(self, module: nn.Module, fitted: Fitted, *, tokens_per_step: float) -> None:
        for name, q in self._quantizers(module).items():
            for i, stage in enumerate(q.vq.layers):
                centers, counts = fitted[join(name, f"vq.layers.{i}")]
                book = stage._codebook
                size = per_step(counts, tokens_per_step).to(book.cluster_usage).clamp_min(UNCHOSEN_COUNT)
                copy_into(book.cluster_usage, size)
                copy_into(book.embedding_sum, centers.to(size) * size[:, None])
                book._initialized.data.fill_(1)
                book._buffers["_embedding"] = None  # moshi's cached codebook, recomputed on the next read


class MoshiCodebook(Family):
    """Moshi/Mimi ``EuclideanCodebook`` in checkpoints: codebook = ``embedding_sum / cluster_usage``."""

    name = "moshi"

    def claims(self, seg: list[str], shape: tuple[int, ...], tensors: Mapping[str, Any]) -> bool:
        return seg[-1] in ("embedding_sum", "embed_sum") and len(shape) == 2 \
            and join(".".join(seg[:-1]), "cluster_usage") in tensors

    def effective(self, cb: torch.Tensor, key: str, tensors: Mapping[str, Any]) -> tuple[torch.Tensor, list[str]]:
        usage = tensors[join(key.rsplit(".", 1)[0] if "." in key else "", "cluster_usage")].load().to(cb.dtype)
        return cb / usage.clamp(min=1e-5)[:, None], ["codebook derived as embedding_sum / cluster_usage (Moshi/Mimi)"]

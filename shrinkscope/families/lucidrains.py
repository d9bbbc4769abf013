"""vector-quantize-pytorch (lucidrains): ``VectorQuantize``, ``ResidualVQ``, ``GroupedResidualVQ``,
``SimVQ`` and the codebook-free ``FSQ`` / ``LFQ`` (usage only).

Facts used (research/ecosystem.md §1): ``VectorQuantize`` stores ``_codebook.embed`` as ``(H, K, D)``
(H > 1 only with ``separate_codebook_per_head``) in ``codebook_dim`` space, with ``cluster_size``,
``embed_avg`` and ``initted`` beside it; the lookup runs on ``project_in(x)`` split into heads and
l2-normalised when ``use_cosine_sim``; forward returns ``(quantized, indices, loss[, breakdown])`` with
``-1`` for masked positions. Residual stages are ``layers.{q}`` (grouped: ``rvqs.{g}.layers.{q}``); each
stage sees the residual, so we hook the stages. ``VectorQuantize`` and ``ResidualVQ`` can be deferred.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from .base import (Capture, Family, Fitted, Passed, Staged, as_index_tensor, channels_last, class_name, ema_embed_key,
                   first_arg, fit_residual, join, l2norm, nearest, own_codebook, per_step, write_ema, zero_loss)

__all__ = ["LucidFSQ", "LucidGroupedRVQ", "LucidLFQ", "LucidResidualVQ", "LucidSimVQ", "LucidVQ"]


def _is_lucid_vq(m: nn.Module) -> bool:
    cb = getattr(m, "_codebook", None)
    return (class_name(m) == "VectorQuantize" and cb is not None
            and isinstance(getattr(cb, "embed", None), torch.Tensor) and cb.embed.ndim == 3)


def _loss_breakdown_type(module: nn.Module) -> Callable[..., Any] | None:
    return getattr(sys.modules.get(type(module).__module__), "LossBreakdown", None)


class LucidVQ(Family):
    """``vector_quantize_pytorch.VectorQuantize`` (heads, cosine codebooks, ``codebook_dim`` projection)."""

    name = "lucidrains.vq"

    def matches(self, module: nn.Module) -> bool:
        return _is_lucid_vq(module)

    def is_normalized(self, module: nn.Module) -> bool:
        return bool(getattr(module._codebook, "use_cosine_sim", False) or getattr(module, "use_cosine_sim", False))

    def _separate(self, module: nn.Module) -> bool:
        return bool(getattr(module, "separate_codebook_per_head", False)) and int(getattr(module, "heads", 1)) > 1

    def codebooks(self, module: nn.Module) -> dict[str, torch.Tensor]:
        embed = own_codebook(module._codebook.embed, self.is_normalized(module))
        if self._separate(module) and embed.shape[0] > 1:
            return {f"head{h}": embed[h] for h in range(embed.shape[0])}
        return {"": embed[0]}

    def _mask(self, module: nn.Module, x: torch.Tensor, kwargs: dict) -> torch.Tensor | None:
        """The ``(B, N)`` validity mask from ``mask=`` or ``lens=`` (sequences only)."""
        mask, lens = kwargs.get("mask"), kwargs.get("lens")
        if lens is not None and x.ndim == 3:
            n = x.shape[1] if getattr(module, "channel_last", True) else x.shape[2]
            mask = torch.arange(n, device=x.device)[None, :] < lens.to(x.device)[:, None]
        return mask

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
        mask = self._mask(module, x, kwargs)
        valid = None if mask is None else mask.detach().reshape(-1)
        heads = int(getattr(module, "heads", 1))
        project_in, transform_input = module.project_in, module._codebook.transform_input

        def to_codebook_space(r: torch.Tensor, head: int | None = None) -> torch.Tensor:
            r = project_in(r)
            if heads > 1:
                r = r.reshape(r.shape[0], heads, -1)
                r = r[:, head] if head is not None else r.reshape(-1, r.shape[-1])
            return transform_input(r)

        if self._separate(module):
            return [Capture(f"head{h}", None if idx is None else idx[..., h], rows, valid,
                            lambda r, h=h: to_codebook_space(r, h)) for h in range(heads)]
        if heads > 1:
            # One shared codebook for every head: each token gives ``heads`` latents. Rare; computed eagerly.
            with torch.no_grad():
                lat = to_codebook_space(rows.reshape(-1, rows.shape[-1]))
            v = None if valid is None else valid.repeat_interleave(heads)
            return [Capture("", idx, lat, v)]
        return [Capture("", idx, rows, valid, to_codebook_space)]

    # checkpoints: ``..._codebook.embed (H, K, D)``
    def claims(self, seg: list[str], shape: tuple[int, ...], tensors: Mapping[str, Any]) -> bool:
        return len(shape) == 3 and ema_embed_key(seg, tensors)

    def effective(self, cb: torch.Tensor, key: str, tensors: Mapping[str, Any]) -> tuple[torch.Tensor, list[str]]:
        vq_module = key.rsplit(".", 2)[0] if key.count(".") >= 2 else ""
        w = tensors.get(join(vq_module, "project_in.weight"))
        if w is not None and len(w.shape) == 2:
            out_dim, in_dim = int(w.shape[0]), int(w.shape[1])
            heads = max(1, out_dim // int(cb.shape[-1]))
            split = f", then split into {heads} heads of D={cb.shape[-1]}" if heads > 1 else ""
            name = join(vq_module, "project_in") or "project_in"
            note = f"codes live in the projected space: latents must come after {name} ({in_dim} -> {out_dim}){split}"
            return cb, [note]
        return cb, []

    # deferral
    def check(self, module: nn.Module) -> None:
        cb = module._codebook
        if getattr(cb, "affine_param", False):
            raise ValueError("defer: VectorQuantize(affine_param=True) keeps batch statistics that a k-means "
                             "start cannot set consistently; construct it without affine_param to defer it")
        if getattr(cb, "vq_bridge", None) is not None:
            raise ValueError("defer: VectorQuantize(vq_bridge=...) transforms the codebook before the "
                             "lookup; deferral supports plain stored codebooks only")

    def initted(self, module: nn.Module) -> bool:
        return bool(module._codebook.initted)

    def _split(self, module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Input -> ``(C, B', N, d)`` rows in codebook space, laid out as ``VectorQuantize.forward`` does."""
        info: dict[str, Any] = {"only_one": x.ndim == 2}
        if info["only_one"]:
            x = x[:, None, :]
        elif module.accept_image_fmap or module.accept_3d_fmap:
            info["spatial"] = tuple(x.shape[2:])
            x = x.flatten(2).transpose(1, 2)
        elif not module.channel_last:
            x = x.transpose(1, 2)
        b, n = x.shape[0], x.shape[1]
        x = module.project_in(x)
        h = module.heads
        if h == 1:
            x = x[None]
        elif self._separate(module):
            x = x.reshape(b, n, h, -1).permute(2, 0, 1, 3)
        else:
            x = x.reshape(b, n, h, -1).permute(0, 2, 1, 3).reshape(b * h, n, -1)[None]
        info.update(b=b, n=n)
        return module._codebook.transform_input(x), info

    def _merge(self, module: nn.Module, rows: torch.Tensor, info: dict) -> torch.Tensor:
        """``(C, B', N, d)`` rows in codebook space back to the input's layout through ``project_out``: the
        inverse of ``_split``, as ``VectorQuantize.forward`` lays out its quantized output."""
        b, n, h = info["b"], info["n"], module.heads
        if h == 1:
            y = rows[0]
        elif self._separate(module):
            y = rows.permute(1, 2, 0, 3).reshape(b, n, -1)
        else:
            y = rows[0].reshape(b, h, n, -1).permute(0, 2, 1, 3).reshape(b, n, -1)
        y = module.project_out(y)
        if info["only_one"]:
            return y[:, 0]
        if "spatial" in info:
            return y.transpose(1, 2).reshape(b, -1, *info["spatial"])
        return y if module.channel_last else y.transpose(1, 2)

    def passthrough(self, module: nn.Module, args: tuple, kwargs: dict) -> Passed:
        for unsupported in ("indices", "topk", "codebook_transform_fn"):
            if kwargs.get(unsupported) is not None:
                raise ValueError(f"defer: VectorQuantize.forward({unsupported}=...) is not supported before "
                                 "the switch (there is no trained codebook to score against yet)")
        x = args[0] if args else kwargs["x"]
        mask = self._mask(module, x, kwargs)
        # The pass-through goes through the module's own transforms (project_in, cosine normalisation,
        # project_out), so the decoder sees the same path before and after the switch and the projections
        # train during the warm-up; without them the output jumps at the switch.
        transforms = self.is_normalized(module) or not (
            isinstance(module.project_in, nn.Identity) and isinstance(module.project_out, nn.Identity))
        with torch.set_grad_enabled(transforms and torch.is_grad_enabled()):
            rows_grad, info = self._split(module, x if transforms else x.detach())
        rows = rows_grad.detach()
        c, bp, n, d = rows.shape
        cbs = self.codebooks(module)
        ids = torch.full((c, bp, n), -1, dtype=torch.long, device=x.device)
        if self.initted(module):
            for i, cb in enumerate(cbs.values()):
                ids[i] = nearest(cb, rows[i].reshape(-1, d)).reshape(bp, n)
        b, h = info["b"], module.heads
        if h == 1:
            ind = ids[0]
        elif self._separate(module):
            ind = ids.permute(1, 2, 0)
        else:
            ind = ids[0].reshape(b, h, n).permute(0, 2, 1)
        # latents for the reservoir: valid rows only, one stream per codebook
        if mask is not None:
            if h == 1 or self._separate(module):
                lat = {name: rows[i][mask] for i, name in enumerate(cbs)}
            else:
                m = mask[:, None, :].expand(b, h, n).reshape(b * h, n)
                lat = {"": rows[0][m]}
            ind = ind.masked_fill(~(mask[..., None] if ind.ndim == 3 else mask), -1)
        else:
            lat = {name: rows[i].reshape(-1, d) for i, name in enumerate(cbs)}
        if "spatial" in info:
            ind = ind.reshape(b, *info["spatial"], *ind.shape[2:])
        if info["only_one"]:
            ind = ind[:, 0]
        quantized = self._merge(module, rows_grad, info) if transforms else x
        if mask is not None:
            fill = torch.zeros_like(quantized) if module.return_zeros_for_masked_padding else quantized
            m = mask[..., None] if module.channel_last else mask[:, None, :]
            quantized = torch.where(m, quantized, fill)
        like = getattr(module, "zero", None)
        like = like if isinstance(like, torch.Tensor) else x.new_zeros((), dtype=torch.float32)
        loss = zero_loss(module, like)
        if kwargs.get("return_loss_breakdown"):
            breakdown = _loss_breakdown_type(module)
            zeros = [torch.zeros_like(like) for _ in range(4)]
            return (quantized, ind, loss, breakdown(*zeros) if breakdown else tuple(zeros)), lat
        return (quantized, ind, loss), lat

    def write(self, module: nn.Module, fitted: Fitted, *, tokens_per_step: float) -> None:
        cb = module._codebook
        for i, name in enumerate(self.codebooks(module)):
            centers, counts = fitted[name]
            write_ema(cb.embed[i], cb.cluster_size[i], cb.embed_avg[i], centers, per_step(counts, tokens_per_step))
        cb.initted.data.fill_(True)


class LucidSimVQ(Family):
    """``SimVQ``: effective codebook = ``code_transform(frozen_codebook)``."""

    name = "lucidrains.simvq"

    def matches(self, module: nn.Module) -> bool:
        return (class_name(module) == "SimVQ" and isinstance(getattr(module, "frozen_codebook", None), torch.Tensor)
                and hasattr(module, "code_transform"))

    @torch.no_grad()
    def codebooks(self, module: nn.Module) -> dict[str, torch.Tensor]:
        return {"": own_codebook(module.code_transform(module.frozen_codebook))}

    def extract(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> list[Capture]:
        x = first_arg(args, kwargs, "x")
        if not isinstance(x, torch.Tensor) or not isinstance(output, tuple) or len(output) < 2:
            return []
        rows = channels_last(x, 1) if getattr(module, "channel_first", False) else x.detach()
        return [Capture("", as_index_tensor(output[1]), rows)]

    def claims(self, seg: list[str], shape: tuple[int, ...], tensors: Mapping[str, Any]) -> bool:
        return seg[-1] == "frozen_codebook" and len(shape) == 2

    def effective(self, cb: torch.Tensor, key: str, tensors: Mapping[str, Any]) -> tuple[torch.Tensor, list[str]]:
        par = key.rsplit(".", 1)[0] if "." in key else ""
        w, b = tensors.get(join(par, "code_transform.weight")), tensors.get(join(par, "code_transform.bias"))
        if w is not None and len(w.shape) == 2 and w.shape[1] == cb.shape[1]:
            cb = cb.float() @ w.load().float().t() + (b.load().float() if b is not None else 0.0)
            return cb, ["SimVQ: effective codebook = code_transform(frozen_codebook)"]
        return cb, ["SimVQ code_transform is not a single Linear: measured the frozen basis"]


class LucidResidualVQ(Staged):
    """``ResidualVQ``: one codebook per stage, named ``layers.{q}``; stages are hooked one by one.

    Deferred as a whole and initialised stage by stage: the reservoir keeps the stage-0 input
    (``project_in(x)``); at the switch stage q is fitted by k-means on the residuals left by the already
    fitted stages 0..q-1, the greedy order its own forward uses.
    """

    name = "lucidrains.rvq"
    _vq, _simvq = LucidVQ(), LucidSimVQ()

    def matches(self, module: nn.Module) -> bool:
        layers = getattr(module, "layers", None)
        return (class_name(module) in ("ResidualVQ", "ResidualSimVQ") and isinstance(layers, nn.ModuleList)
                and len(layers) > 0 and all(_is_lucid_vq(v) or class_name(v) == "SimVQ" for v in layers))

    def _stages(self, module: nn.Module) -> dict[str, nn.Module]:
        return {f"layers.{q}": layer for q, layer in enumerate(module.layers)}

    def _stage_family(self, stage: nn.Module) -> Family:
        return self._vq if _is_lucid_vq(stage) else self._simvq

    # deferral
    def can_defer(self, module: nn.Module) -> bool:
        return class_name(module) == "ResidualVQ" and all(_is_lucid_vq(v) for v in module.layers)

    def check(self, module: nn.Module) -> None:
        problems = [flag for flag in ("accept_image_fmap", "implicit_neural_codebook", "shared_codebook")
                    if getattr(module, flag, False)]
        if getattr(module, "beam_size", None):
            problems.append("beam_size")
        if any(not v.channel_last or v.heads > 1 for v in module.layers):
            problems.append("channel-first or multi-head stages")
        if problems:
            raise ValueError(f"defer: ResidualVQ with {', '.join(problems)} is not supported; deferral "
                             "handles channel-last ResidualVQ with separate stages (turn these options off)")
        for v in module.layers:
            self._vq.check(v)

    def is_normalized(self, module: nn.Module) -> bool:
        return self._vq.is_normalized(module.layers[0])

    def initted(self, module: nn.Module) -> bool:
        return all(self._vq.initted(v) for v in module.layers)

    def streams(self, module: nn.Module) -> dict[str, int]:
        return {"": int(module.layers[0]._codebook.embed.shape[-1])}

    def passthrough(self, module: nn.Module, args: tuple, kwargs: dict) -> Passed:
        if kwargs.get("indices") is not None:
            raise ValueError("defer: ResidualVQ.forward(indices=...) is not supported before the switch")
        x = args[0] if args else kwargs["x"]
        mask = kwargs.get("mask")
        with torch.no_grad():
            r = module.project_in(x.detach())
        flat = r.reshape(-1, r.shape[-1])
        q_count = len(module.layers)
        ids = torch.full((flat.shape[0], q_count), -1, dtype=torch.long, device=x.device)
        if self.initted(module):
            res = flat
            for q, cb in enumerate(self.codebooks(module).values()):
                look = l2norm(res) if self.is_normalized(module) else res
                ids[:, q] = nearest(cb, look)
                res = res - cb[ids[:, q]].to(res)
        ind = ids.reshape(*x.shape[:-1], q_count)
        lat = flat if mask is None else r[mask]
        quantized = x
        if mask is not None:
            ind = ind.masked_fill(~mask[..., None], -1)
            fill = torch.zeros_like(x) if module.return_zeros_for_masked_padding else x
            quantized = torch.where(mask[..., None], x, fill)
        losses = zero_loss(module, torch.zeros(q_count, device=x.device, dtype=torch.float32))
        out: tuple = (quantized, ind, losses)
        if kwargs.get("return_all_codes"):
            out = (*out, module.get_codes_from_indices(ind))
        return out, {"": lat}

    def fit(self, module: nn.Module, reservoirs: dict[str, torch.Tensor], *, iters: int, seed: int) -> Fitted:
        fitted = fit_residual(reservoirs[""], [int(v.codebook_size) for v in module.layers],
                              self.is_normalized(module), iters=iters, seed=seed)
        return {f"layers.{q}": f for q, f in enumerate(fitted)}

    def write(self, module: nn.Module, fitted: Fitted, *, tokens_per_step: float) -> None:
        for q, layer in enumerate(module.layers):
            self._vq.write(layer, {"": fitted[f"layers.{q}"]}, tokens_per_step=tokens_per_step)


class LucidGroupedRVQ(LucidResidualVQ):
    """``GroupedResidualVQ``: codebooks ``rvqs.{g}.layers.{q}``."""

    name = "lucidrains.grouped_rvq"

    def matches(self, module: nn.Module) -> bool:
        rvqs = getattr(module, "rvqs", None)
        return (class_name(module) == "GroupedResidualVQ" and isinstance(rvqs, nn.ModuleList)
                and all(LucidResidualVQ.matches(self, r) for r in rvqs))

    def _stages(self, module: nn.Module) -> dict[str, nn.Module]:
        return {f"rvqs.{g}.layers.{q}": layer for g, rvq in enumerate(module.rvqs)
                for q, layer in enumerate(rvq.layers)}

    passthrough = Family.passthrough  # not deferrable: only whole ResidualVQs are


class _ImplicitCodebook(Family):
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


class LucidFSQ(_ImplicitCodebook):
    """``FSQ``: implicit grid ``prod(levels)`` codes; usage only."""

    name = "lucidrains.fsq"
    _names = ("FSQ",)
    _buffer = "implicit_codebook"


class LucidLFQ(_ImplicitCodebook):
    """``LFQ``: implicit ``2^d`` sign codes; usage only."""

    name = "lucidrains.lfq"
    _names = ("LFQ",)
    _buffer = "codebook"

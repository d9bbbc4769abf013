"""vector-quantize-pytorch (lucidrains): ``VectorQuantize`` and ``SimVQ`` (their residual stacks:
lucidrains_residual.py; the codebook-free ones and ``RandomProjectionQuantizer``: lucidrains_fixed.py).

Facts used (research/ecosystem.md §1): ``VectorQuantize`` stores ``_codebook.embed`` as ``(H, K, D)``
(H > 1 only with ``separate_codebook_per_head``) in ``codebook_dim`` space, with ``cluster_size``,
``embed_avg`` and ``initted`` beside it; the lookup runs on ``project_in(x)`` split into heads and
l2-normalised when ``use_cosine_sim``; forward returns ``(quantized, indices, loss[, breakdown])`` with
``-1`` for masked positions. Residual stages are ``layers.{q}`` (grouped: ``rvqs.{g}.layers.{q}``); each
stage sees the residual, so we hook the stages. ``VectorQuantize``, ``ResidualVQ`` and ``GroupedResidualVQ``
(each group a ``ResidualVQ`` on its slice of the features) can be deferred.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from .base import (Capture, Family, Fitted, Passed, as_index_tensor, channels_last, class_name, ema_embed_key,
                   first_arg, join, nearest, own_codebook, per_step, write_ema, zero_loss)

__all__ = ["LucidSimVQ", "LucidVQ"]


def _is_lucid_vq(m: nn.Module) -> bool:
    cb = getattr(m, "_codebook", None)
    return (class_name(m) == "VectorQuantize" and cb is not None
            and isinstance(getattr(cb, "embed", None), torch.Tensor) and cb.embed.ndim == 3)


def _affine(embed: torch.Tensor, codebook_mean: torch.Tensor, codebook_variance: torch.Tensor,
            batch_mean: torch.Tensor, batch_variance: torch.Tensor) -> torch.Tensor:
    """``affine_param``'s codebook as the lookup sees it: the codes moved from the codebook's running
    statistics to the batches' (``(H, K, D)`` with ``(H, 1, D)`` statistics)."""
    scale = batch_variance.clamp(min=1e-5).sqrt() / codebook_variance.clamp(min=1e-5).sqrt()
    return (embed - codebook_mean.to(embed)) * scale.to(embed) + batch_mean.to(embed)


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

    @torch.no_grad()
    def codebooks(self, module: nn.Module) -> dict[str, torch.Tensor]:
        cb = module._codebook
        embed = cb.embed.detach().float()
        bridge = getattr(cb, "vq_bridge", None)
        if isinstance(bridge, nn.Module):  # the lookup compares vq_bridge(embed), not embed
            embed = bridge(embed.to(cb.embed.dtype)).float()
        if getattr(cb, "affine_param", False) and isinstance(getattr(cb, "batch_mean", None), torch.Tensor):
            embed = _affine(embed, cb.codebook_mean, cb.codebook_variance, cb.batch_mean, cb.batch_variance)
        embed = own_codebook(embed, self.is_normalized(module))
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
        if kwargs.get("codebook_transform_fn") is not None:
            # ResidualVQ(implicit_neural_codebook=True) (QINCo): this stage looks up MLP(codebook, quantized so
            # far), a codebook per token; the stored one is only the MLP's input, so only the ids are read
            return [Capture(name, idx if idx is None or len(self.codebooks(module)) == 1 else idx[..., h], None)
                    for h, name in enumerate(self.codebooks(module))]
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
        book = key.rsplit(".", 1)[0] if "." in key else ""
        stats = [tensors.get(join(book, n)) for n in ("codebook_mean", "codebook_variance", "batch_mean", "batch_variance")]
        notes = []
        if all(t is not None for t in stats):  # affine_param: the lookup moves the codes by batch statistics
            cb = _affine(cb.float(), *(t.load().float() for t in stats))
            notes.append("affine_param: codebook moved by the stored batch and codebook statistics, as the lookup does")
        if any(k.startswith(join(book, "vq_bridge") + ".") for k in tensors):
            notes.append("vq_bridge: the lookup compares vq_bridge(codebook), a module a checkpoint cannot run; "
                         "measured the stored codebook (watch the live model for the bridged one)")
        cb, more = self._projected(cb, vq_module, key, tensors)
        return cb, notes + more

    def _projected(self, cb: torch.Tensor, vq_module: str, key: str,
                   tensors: Mapping[str, Any]) -> tuple[torch.Tensor, list[str]]:
        parts = vq_module.split(".")
        stage = int(parts[-1]) if len(parts) >= 2 and parts[-2] == "layers" and parts[-1].isdigit() else 0
        if stage > 0 and join(".".join(parts[:-2]), f"mlps.{stage - 1}.proj_in.weight") in tensors:
            return cb, ["implicit neural codebook (QINCo): this stage looks up MLP(codebook, quantized so far), a "
                        "codebook per token; the geometry here is the stored codebook's, the MLP's input"]
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
    why_no_defer = ("its codes are code_transform(frozen_codebook), a learned map of a frozen random basis, "
                    "and a k-means codebook cannot be written into that form")

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


# The residual stacks and the codebook-free quantizers moved to their own modules; the old import path stays.
from .lucidrains_fixed import LucidFSQ, LucidLFQ  # noqa: F401
from .lucidrains_residual import LucidGroupedRVQ, LucidResidualVQ  # noqa: F401

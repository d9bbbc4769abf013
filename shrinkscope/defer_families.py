"""Per-family code behind ``shrinkscope.defer``: pass-through outputs and codebook writes.

Each family answers four questions about one quantizer class, without ever calling its ``forward``
before the switch (so its EMA statistics, dead-code counters and built-in k-means init stay untouched):

- ``passthrough``: the output the wrapped module would return, in exactly its structure, with the
  input latents in place of the quantized tensor, ids from a no-grad nearest-code lookup (``-1`` while
  the codebook is uninitialised) and zero losses; plus the latents in codebook space for the reservoir;
- ``codebooks``: the effective codebooks the lookup uses (``{name: (K, D)}``; names follow the adapters:
  ``""``, ``"head1"``, ``"layers.0"``);
- ``fit``: k-means on the reservoir (stage-wise for residual quantizers);
- ``write``: centroids into the codebook together with the EMA state the family keeps.

Facts about each library come from research/ecosystem.md (section 1) and the libraries' sources.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .adapters.base import l2norm
from .kmeans import kmeans
from .metrics.usage import assign

Fitted = dict[str, tuple[torch.Tensor, torch.Tensor]]  # codebook name -> (centroids (K, D), counts (K,))
Passed = tuple[Any, dict[str, torch.Tensor]]  # (the output, {reservoir stream: (N, D) latents})


def _nearest(codebook: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``(N,)`` int64 nearest-code ids on ``rows``' device (chunked, no grad)."""
    if rows.shape[0] == 0:
        return torch.empty(0, dtype=torch.long, device=rows.device)
    idx, _ = assign(codebook.detach(), rows.detach())
    return idx.to(rows.device)


def zero_loss(module: nn.Module, like: torch.Tensor) -> torch.Tensor:
    """Zeros shaped like ``like``, tied to the module's trainable parameters with weight 0.

    The tie keeps every parameter in the autograd graph (gradient exactly 0), so DistributedDataParallel
    does not stop on parameters the pass-through never used (``project_in``, a learnable codebook).
    """
    z = torch.zeros_like(like)
    if torch.is_grad_enabled() and module.training:
        for p in module.parameters():
            if p.requires_grad:
                z = z + p.sum() * 0
    return z


class Family:
    """One quantizer family. Subclasses override what differs."""

    name = "base"
    normalized = False  # lookup on l2-normalised latents and codes

    def matches(self, module: nn.Module) -> bool:
        return False

    def check(self, module: nn.Module) -> None:
        """Raise ValueError for configurations deferral cannot handle."""

    def is_normalized(self, module: nn.Module) -> bool:
        return self.normalized

    def codebooks(self, module: nn.Module) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def initted(self, module: nn.Module) -> bool:
        return True

    def streams(self, module: nn.Module) -> dict[str, int]:
        """Reservoir streams ``{name: D}``; one per codebook unless a family needs fewer."""
        return {n: int(cb.shape[1]) for n, cb in self.codebooks(module).items()}

    def passthrough(self, module: nn.Module, args: tuple, kwargs: dict) -> Passed:
        raise NotImplementedError

    @torch.no_grad()
    def fit(self, module: nn.Module, reservoirs: dict[str, torch.Tensor], *, iters: int, seed: int) -> Fitted:
        out: Fitted = {}
        sizes = {n: int(cb.shape[0]) for n, cb in self.codebooks(module).items()}
        for name, rows in reservoirs.items():
            centers = kmeans(rows, sizes[name], iters=iters, seed=seed)
            if self.is_normalized(module):
                centers = l2norm(centers)
            idx, _ = assign(centers, rows)
            out[name] = (centers, torch.bincount(idx, minlength=sizes[name]).to(centers.dtype))
        return out

    def write(self, module: nn.Module, fitted: Fitted, *, tokens_per_step: float) -> None:
        raise NotImplementedError


def _per_step(counts: torch.Tensor, tokens_per_step: float) -> torch.Tensor:
    # EMA cluster sizes of these families are per-step token counts: scale the reservoir shares to that
    return counts / counts.sum().clamp_min(1) * tokens_per_step


def _copy(dst: torch.Tensor, src: torch.Tensor) -> None:
    dst.data.copy_(src.to(device=dst.device, dtype=dst.dtype))


def _write_ema(embed: torch.Tensor, cluster_size: torch.Tensor, embed_avg: torch.Tensor,
               centers: torch.Tensor, size: torch.Tensor) -> None:
    """Codes plus EMA statistics with ``embed == embed_avg / cluster_size``, as an EMA step expects."""
    size = size.to(cluster_size)
    _copy(embed, centers)
    _copy(cluster_size, size)
    _copy(embed_avg, centers.to(size) * size[:, None])


# vector-quantize-pytorch ---------------------------------------------------------------------------


def _loss_breakdown_type(module: nn.Module) -> Callable[..., Any] | None:
    return getattr(sys.modules.get(type(module).__module__), "LossBreakdown", None)


class LucidVQ(Family):
    """``vector_quantize_pytorch.VectorQuantize`` (heads, cosine codebooks, ``codebook_dim`` projection)."""

    name = "lucidrains.vq"

    def matches(self, module: nn.Module) -> bool:
        cb = getattr(module, "_codebook", None)
        return (type(module).__name__ == "VectorQuantize" and cb is not None
                and isinstance(getattr(cb, "embed", None), torch.Tensor) and cb.embed.ndim == 3)

    def check(self, module: nn.Module) -> None:
        cb = module._codebook
        if getattr(cb, "affine_param", False):
            raise ValueError("defer: VectorQuantize(affine_param=True) keeps batch statistics that a k-means "
                             "start cannot set consistently; construct it without affine_param to defer it")
        if getattr(cb, "vq_bridge", None) is not None:
            raise ValueError("defer: VectorQuantize(vq_bridge=...) transforms the codebook before the "
                             "lookup; deferral supports plain stored codebooks only")

    def is_normalized(self, module: nn.Module) -> bool:
        return bool(getattr(module, "use_cosine_sim", False))

    def _separate(self, module: nn.Module) -> bool:
        return bool(module.separate_codebook_per_head) and module.heads > 1

    def codebooks(self, module: nn.Module) -> dict[str, torch.Tensor]:
        embed = module._codebook.embed.detach()
        if self.is_normalized(module):
            embed = l2norm(embed)
        if self._separate(module):
            return {f"head{h}": embed[h] for h in range(embed.shape[0])}
        return {"": embed[0]}

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

    def _mask(self, module: nn.Module, x: torch.Tensor, kwargs: dict) -> torch.Tensor | None:
        mask, lens = kwargs.get("mask"), kwargs.get("lens")
        if lens is not None:
            n = x.shape[1] if module.channel_last else x.shape[2]
            mask = torch.arange(n, device=x.device)[None, :] < lens.to(x.device)[:, None]
        return mask

    def passthrough(self, module: nn.Module, args: tuple, kwargs: dict) -> Passed:
        for unsupported in ("indices", "topk", "codebook_transform_fn"):
            if kwargs.get(unsupported) is not None:
                raise ValueError(f"defer: VectorQuantize.forward({unsupported}=...) is not supported before "
                                 "the switch (there is no trained codebook to score against yet)")
        x = args[0] if args else kwargs["x"]
        mask = self._mask(module, x, kwargs)
        with torch.no_grad():
            rows, info = self._split(module, x.detach())
        c, bp, n, d = rows.shape
        cbs = list(self.codebooks(module).values())
        ready = self.initted(module)
        ids = torch.full((c, bp, n), -1, dtype=torch.long, device=x.device)
        if ready:
            for i in range(c):
                ids[i] = _nearest(cbs[i], rows[i].reshape(-1, d)).reshape(bp, n)
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
                lat = {name: rows[i][mask] for i, name in enumerate(self.codebooks(module))}
            else:
                m = mask[:, None, :].expand(b, h, n).reshape(b * h, n)
                lat = {"": rows[0][m]}
            ind = ind.masked_fill(~(mask[..., None] if ind.ndim == 3 else mask), -1)
        else:
            lat = {name: rows[i].reshape(-1, d) for i, name in enumerate(self.codebooks(module))}
        if "spatial" in info:
            ind = ind.reshape(b, *info["spatial"], *ind.shape[2:])
        if info["only_one"]:
            ind = ind[:, 0]
        quantized = x
        if mask is not None:
            fill = torch.zeros_like(x) if module.return_zeros_for_masked_padding else x
            m = mask[..., None] if module.channel_last else mask[:, None, :]
            quantized = torch.where(m, x, fill)
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
            size = _per_step(counts, tokens_per_step)
            _write_ema(cb.embed[i], cb.cluster_size[i], cb.embed_avg[i], centers, size)
        cb.initted.data.fill_(True)


class LucidResidualVQ(Family):
    """``vector_quantize_pytorch.ResidualVQ``: deferred as a whole, initialised stage by stage.

    The reservoir keeps the stage-0 input (``project_in(x)``); at the switch stage q is fitted by k-means
    on the residuals left by the already fitted stages 0..q-1, the greedy order its own forward uses.
    """

    name = "lucidrains.rvq"
    _vq = LucidVQ()

    def matches(self, module: nn.Module) -> bool:
        layers = getattr(module, "layers", None)
        return (type(module).__name__ == "ResidualVQ" and isinstance(layers, nn.ModuleList)
                and len(layers) > 0 and all(self._vq.matches(v) for v in layers))

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

    def codebooks(self, module: nn.Module) -> dict[str, torch.Tensor]:
        return {f"layers.{q}": self._vq.codebooks(v)[""] for q, v in enumerate(module.layers)}

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
                ids[:, q] = _nearest(cb, look)
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

    @torch.no_grad()
    def fit(self, module: nn.Module, reservoirs: dict[str, torch.Tensor], *, iters: int, seed: int) -> Fitted:
        res = reservoirs[""]
        out: Fitted = {}
        for q, layer in enumerate(module.layers):
            look = l2norm(res) if self.is_normalized(module) else res
            centers = kmeans(look, int(layer.codebook_size), iters=iters, seed=seed + q)
            if self.is_normalized(module):
                centers = l2norm(centers)
            idx, _ = assign(centers, look)
            counts = torch.bincount(idx, minlength=int(layer.codebook_size)).to(centers.dtype)
            out[f"layers.{q}"] = (centers, counts)
            res = res - centers[idx.to(centers.device)].to(res)
        return out

    def write(self, module: nn.Module, fitted: Fitted, *, tokens_per_step: float) -> None:
        for q, layer in enumerate(module.layers):
            self._vq.write(layer, {"": fitted[f"layers.{q}"]}, tokens_per_step=tokens_per_step)


# taming-transformers / diffusers / LlamaGen --------------------------------------------------------


def _grid_rows(z: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B*H*W, C)``."""
    return z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1])


class TamingVQ(Family):
    """taming ``VectorQuantizer2`` and its diffusers port ``VectorQuantizer`` (``remap``, sane index shape).

    Output ``(z_q, loss, (perplexity=None, min_encodings=None, indices))``; codebook ``embedding.weight``.
    """

    name = "taming"

    def matches(self, module: nn.Module) -> bool:
        # diffusers names the code dimension ``vq_embed_dim``, taming ``e_dim``
        return (isinstance(getattr(module, "embedding", None), nn.Embedding) and hasattr(module, "legacy")
                and (hasattr(module, "e_dim") or hasattr(module, "vq_embed_dim")) and hasattr(module, "n_e"))

    def codebooks(self, module: nn.Module) -> dict[str, torch.Tensor]:
        return {"": module.embedding.weight.detach()}

    def passthrough(self, module: nn.Module, args: tuple, kwargs: dict) -> Passed:
        z = args[0] if args else kwargs["z"]
        rows = _grid_rows(z)
        idx = _nearest(module.embedding.weight, rows)
        if getattr(module, "remap", None) is not None:
            idx = module.remap_to_used(idx.reshape(z.shape[0], -1)).reshape(-1, 1)
        if getattr(module, "sane_index_shape", False):
            idx = idx.reshape(z.shape[0], z.shape[2], z.shape[3])
        loss = zero_loss(module, z.new_zeros(()))
        return (z, loss, (None, None, idx)), {"": rows}

    def write(self, module: nn.Module, fitted: Fitted, *, tokens_per_step: float) -> None:
        _copy(module.embedding.weight, fitted[""][0])


class TamingLegacyVQ(TamingVQ):
    """taming's original ``VectorQuantizer(n_e, e_dim, beta)``.

    Output ``(z_q, loss, (perplexity, one-hots (N, K), ids (N, 1)))``.
    """

    name = "taming.legacy"

    def matches(self, module: nn.Module) -> bool:
        return (type(module).__name__ == "VectorQuantizer"
                and isinstance(getattr(module, "embedding", None), nn.Embedding)
                and all(hasattr(module, a) for a in ("n_e", "e_dim", "beta"))
                and not any(hasattr(module, a) for a in ("legacy", "l2_norm")))

    def passthrough(self, module: nn.Module, args: tuple, kwargs: dict) -> Passed:
        z = args[0] if args else kwargs["z"]
        rows = _grid_rows(z)
        idx = _nearest(module.embedding.weight, rows)[:, None]
        one_hot = torch.zeros(idx.shape[0], module.n_e, device=z.device, dtype=z.dtype).scatter_(1, idx, 1)
        p = one_hot.mean(0)
        perplexity = torch.exp(-(p * torch.log(p + 1e-10)).sum())
        return (z, zero_loss(module, z.new_zeros(())), (perplexity, one_hot, idx)), {"": rows}


class TamingEMAVQ(TamingVQ):
    """taming ``EMAVectorQuantizer`` with ``EmbeddingEMA`` (``weight``, ``cluster_size``, ``embed_avg``).

    Output ``(z_q, loss, (perplexity, one-hot encodings, indices))``.
    """

    name = "taming.ema"

    def matches(self, module: nn.Module) -> bool:
        emb = getattr(module, "embedding", None)
        return (type(module).__name__ == "EMAVectorQuantizer" and emb is not None
                and all(isinstance(getattr(emb, a, None), torch.Tensor)
                        for a in ("weight", "cluster_size", "embed_avg")))

    def passthrough(self, module: nn.Module, args: tuple, kwargs: dict) -> Passed:
        z = args[0] if args else kwargs["z"]
        rows = _grid_rows(z)
        idx = _nearest(module.embedding.weight, rows)
        k = module.embedding.weight.shape[0]
        encodings = F.one_hot(idx, k).to(z.dtype)
        avg = encodings.mean(0)
        perplexity = torch.exp(-torch.sum(avg * torch.log(avg + 1e-10)))
        loss = zero_loss(module, z.new_zeros(()))
        return (z, loss, (perplexity, encodings, idx)), {"": rows}

    def write(self, module: nn.Module, fitted: Fitted, *, tokens_per_step: float) -> None:
        centers, counts = fitted[""]
        emb = module.embedding
        _write_ema(emb.weight, emb.cluster_size, emb.embed_avg, centers, _per_step(counts, tokens_per_step))


class LlamaGenVQ(TamingVQ):
    """LlamaGen ``VectorQuantizer`` (``l2_norm``, ``show_usage``, ``entropy_loss_ratio``).

    Output ``(z_q, (vq_loss, commit_loss, entropy_loss, codebook_usage), (None, None, indices))``; the
    three losses are tensors in training mode and ``None`` in eval mode, as in the original.
    """

    name = "llamagen"

    def matches(self, module: nn.Module) -> bool:
        return (isinstance(getattr(module, "embedding", None), nn.Embedding) and hasattr(module, "l2_norm")
                and hasattr(module, "show_usage") and hasattr(module, "e_dim"))

    def is_normalized(self, module: nn.Module) -> bool:
        return bool(module.l2_norm)

    def codebooks(self, module: nn.Module) -> dict[str, torch.Tensor]:
        w = module.embedding.weight.detach()
        return {"": l2norm(w) if module.l2_norm else w}

    def passthrough(self, module: nn.Module, args: tuple, kwargs: dict) -> Passed:
        z = args[0] if args else kwargs["z"]
        rows = _grid_rows(z)
        if module.l2_norm:
            rows = l2norm(rows)
        idx = _nearest(self.codebooks(module)[""], rows)
        usage: float = 0
        if module.show_usage and module.training:
            # report the usage of the FIFO as it stands; it is not advanced before the switch
            usage = len(torch.unique(module.codebook_used)) / module.n_e
        if module.training:
            losses: tuple = (zero_loss(module, z.new_zeros(())), z.new_zeros(()), z.new_zeros(()))
        else:
            losses = (None, None, None)
        return (z, (*losses, usage), (None, None, idx)), {"": rows}


# EnCodec-style ------------------------------------------------------------------------------------


def _encodec_codebook(module: nn.Module) -> bool:
    names = ("inited", "embed", "embed_avg", "cluster_size")
    return all(isinstance(getattr(module, a, None), torch.Tensor) for a in names)


class EncodecCodebook(Family):
    """EnCodec ``EuclideanCodebook``: ``forward(x (..., D)) -> (quantize, embed_ind (...))``; buffers
    ``embed``, ``embed_avg``, ``cluster_size``, ``inited`` (k-means on the first training batch)."""

    name = "encodec.codebook"

    def matches(self, module: nn.Module) -> bool:
        return type(module).__name__ == "EuclideanCodebook" and _encodec_codebook(module)

    def codebooks(self, module: nn.Module) -> dict[str, torch.Tensor]:
        return {"": module.embed.detach()}

    def initted(self, module: nn.Module) -> bool:
        return bool(module.inited.reshape(-1)[0])

    @staticmethod
    def _ids(module: nn.Module, rows: torch.Tensor) -> torch.Tensor:
        if not bool(module.inited.reshape(-1)[0]):
            return torch.full((rows.shape[0],), -1, dtype=torch.long, device=rows.device)
        return _nearest(module.embed, rows)

    def passthrough(self, module: nn.Module, args: tuple, kwargs: dict) -> Passed:
        x = args[0] if args else kwargs["x"]
        rows = x.detach().reshape(-1, x.shape[-1])
        return (x, self._ids(module, rows).reshape(x.shape[:-1])), {"": rows}

    def write(self, module: nn.Module, fitted: Fitted, *, tokens_per_step: float) -> None:
        centers, counts = fitted[""]
        size = _per_step(counts, tokens_per_step)
        _write_ema(module.embed, module.cluster_size, module.embed_avg, centers, size)
        module.inited.data.fill_(1)


class EncodecVQ(EncodecCodebook):
    """EnCodec ``VectorQuantization``: ``forward(x (B, D, N)) -> (quantize, embed_ind (B, N), loss (1,))``."""

    name = "encodec.vq"

    def matches(self, module: nn.Module) -> bool:
        cb = getattr(module, "_codebook", None)
        return type(module).__name__ == "VectorQuantization" and cb is not None and _encodec_codebook(cb)

    def codebooks(self, module: nn.Module) -> dict[str, torch.Tensor]:
        return {"": module._codebook.embed.detach()}

    def initted(self, module: nn.Module) -> bool:
        return bool(module._codebook.inited.reshape(-1)[0])

    def passthrough(self, module: nn.Module, args: tuple, kwargs: dict) -> Passed:
        x = args[0] if args else kwargs["x"]
        with torch.no_grad():
            rows = module.project_in(x.detach().transpose(1, 2))
        b, n = rows.shape[0], rows.shape[1]
        rows = rows.reshape(-1, rows.shape[-1])
        ids = self._ids(module._codebook, rows).reshape(b, n)
        loss = zero_loss(module, torch.zeros(1, device=x.device))
        return (x, ids, loss), {"": rows}

    def write(self, module: nn.Module, fitted: Fitted, *, tokens_per_step: float) -> None:
        super().write(module._codebook, fitted, tokens_per_step=tokens_per_step)


# shrinkscope's reference quantizer ------------------------------------------------------------------


class Reference(Family):
    """``shrinkscope.reference.EMAQuantizer`` (contract 1). Its cluster sizes are shares of a batch."""

    name = "reference"

    def matches(self, module: nn.Module) -> bool:
        return getattr(type(module), "shrinkscope_family", None) == "reference"

    def is_normalized(self, module: nn.Module) -> bool:
        return bool(module.l2_normalize)

    def codebooks(self, module: nn.Module) -> dict[str, torch.Tensor]:
        return {"": module.effective_codebook()}

    def initted(self, module: nn.Module) -> bool:
        return bool(module.initted)

    def passthrough(self, module: nn.Module, args: tuple, kwargs: dict) -> Passed:
        z = args[0] if args else kwargs["z"]
        with torch.no_grad():
            rows = module.flat_latents(z.detach())
        b, _, h, w = z.shape
        if self.initted(module):
            idx = _nearest(self.codebooks(module)[""], rows).reshape(b, h, w)
        else:
            idx = torch.full((b, h, w), -1, dtype=torch.long, device=z.device)
        output_type = getattr(sys.modules.get(type(module).__module__), "QuantizerOutput", None) or tuple
        loss = zero_loss(module, z.new_zeros(()))
        fields = (z, idx, loss)
        return (output_type(*fields) if output_type is not tuple else fields), {"": rows}

    def write(self, module: nn.Module, fitted: Fitted, *, tokens_per_step: float) -> None:
        centers, counts = fitted[""]
        share = counts / counts.sum().clamp_min(1)
        _write_ema(module.embed, module.cluster_size, module.embed_avg, centers, share)
        module.initted.data.fill_(True)
        module.active.data.fill_(True)  # its own pass-through flag: from now on it quantizes

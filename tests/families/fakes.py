"""Faithful minimal stand-ins for quantizers of libraries that are not installed here.

Each class keeps the real class name, attribute names, forward signature and return structure of its
original (read from the public sources named in each docstring) and does the same computation in a
short, independent implementation, so the families are exercised on what real models hand to hooks.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# ---- taming-transformers: taming/modules/vqvae/quantize.py ----------------------------------------

class VectorQuantizer2(nn.Module):
    """taming ``VectorQuantizer2``: ``forward(z, temp=None, rescale_logits=False, return_logits=False)``
    -> ``(z_q, loss, (None, None, indices (B*H*W,) or (B, H, W) when sane_index_shape))``."""

    def __init__(self, n_e, e_dim, beta, remap=None, unknown_index="random", sane_index_shape=False, legacy=True):
        super().__init__()
        self.n_e, self.e_dim, self.beta, self.legacy = n_e, e_dim, beta, legacy
        self.embedding = nn.Embedding(n_e, e_dim)
        self.embedding.weight.data.uniform_(-1.0 / n_e, 1.0 / n_e)
        self.remap = remap
        self.re_embed = n_e
        self.sane_index_shape = sane_index_shape

    def forward(self, z, temp=None, rescale_logits=False, return_logits=False):
        z = z.permute(0, 2, 3, 1).contiguous()
        flat = z.view(-1, self.e_dim)
        w = self.embedding.weight
        d = flat.pow(2).sum(1, keepdim=True) + w.pow(2).sum(1) - 2 * flat @ w.t()
        idx = d.argmin(1)
        z_q = self.embedding(idx).view(z.shape)
        if self.legacy:
            loss = ((z_q.detach() - z) ** 2).mean() + self.beta * ((z_q - z.detach()) ** 2).mean()
        else:
            loss = self.beta * ((z_q.detach() - z) ** 2).mean() + ((z_q - z.detach()) ** 2).mean()
        z_q = z + (z_q - z).detach()
        z_q = z_q.permute(0, 3, 1, 2).contiguous()
        if self.sane_index_shape:
            idx = idx.reshape(z_q.shape[0], z_q.shape[2], z_q.shape[3])
        return z_q, loss, (None, None, idx)


class VectorQuantizer(nn.Module):
    """taming legacy ``VectorQuantizer(n_e, e_dim, beta)``: ids returned as ``(N, 1)`` with one-hots."""

    def __init__(self, n_e, e_dim, beta):
        super().__init__()
        self.n_e, self.e_dim, self.beta = n_e, e_dim, beta
        self.embedding = nn.Embedding(n_e, e_dim)
        self.embedding.weight.data.uniform_(-1.0 / n_e, 1.0 / n_e)

    def forward(self, z):
        z = z.permute(0, 2, 3, 1).contiguous()
        flat = z.view(-1, self.e_dim)
        w = self.embedding.weight
        d = flat.pow(2).sum(1, keepdim=True) + w.pow(2).sum(1) - 2 * flat @ w.t()
        idx = d.argmin(1).unsqueeze(1)
        one_hot = torch.zeros(idx.shape[0], self.n_e, device=z.device, dtype=z.dtype).scatter_(1, idx, 1)
        z_q = (one_hot @ w).view(z.shape)
        loss = ((z_q.detach() - z) ** 2).mean() + self.beta * ((z_q - z.detach()) ** 2).mean()
        z_q = z + (z_q - z).detach()
        p = one_hot.mean(0)
        perplexity = torch.exp(-(p * torch.log(p + 1e-10)).sum())
        return z_q.permute(0, 3, 1, 2).contiguous(), loss, (perplexity, one_hot, idx)


class EmbeddingEMA(nn.Module):
    """taming ``EmbeddingEMA``: ``weight``, ``cluster_size`` and ``embed_avg`` are all Parameters with
    requires_grad=False, as upstream (so they sit in ``parameters()`` and in an optimizer built from it)."""

    def __init__(self, num_tokens, codebook_dim, decay=0.99, eps=1e-5):
        super().__init__()
        self.decay, self.eps = decay, eps
        weight = torch.randn(num_tokens, codebook_dim)
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.cluster_size = nn.Parameter(torch.zeros(num_tokens), requires_grad=False)
        self.embed_avg = nn.Parameter(weight.clone(), requires_grad=False)
        self.update = True

    def forward(self, embed_id):
        return F.embedding(embed_id, self.weight)


class EMAVectorQuantizer(nn.Module):
    """taming ``EMAVectorQuantizer(n_embed, embedding_dim, beta, decay, eps)``:
    ``(z_q, loss, (perplexity, encodings, encoding_indices))``."""

    def __init__(self, n_embed, embedding_dim, beta, decay=0.99, eps=1e-5, remap=None, unknown_index="random"):
        super().__init__()
        self.codebook_dim, self.num_tokens, self.beta = embedding_dim, n_embed, beta
        self.embedding = EmbeddingEMA(n_embed, embedding_dim, decay, eps)
        self.remap = remap

    def forward(self, z):
        z = z.permute(0, 2, 3, 1)
        flat = z.reshape(-1, self.codebook_dim)
        w = self.embedding.weight
        d = flat.pow(2).sum(1, keepdim=True) + w.pow(2).sum(1) - 2 * flat @ w.t()
        idx = d.argmin(1)
        z_q = self.embedding(idx).view(z.shape)
        enc = F.one_hot(idx, self.num_tokens).type(z.dtype)
        p = enc.mean(0)
        perplexity = torch.exp(-(p * torch.log(p + 1e-10)).sum())
        if self.training and self.embedding.update:
            e = self.embedding
            e.cluster_size.data.mul_(e.decay).add_(enc.sum(0), alpha=1 - e.decay)
            e.embed_avg.data.mul_(e.decay).add_(enc.t() @ flat.detach(), alpha=1 - e.decay)
            n = e.cluster_size.sum()
            smoothed = (e.cluster_size + e.eps) / (n + self.num_tokens * e.eps) * n
            e.weight.data.copy_(e.embed_avg / smoothed.unsqueeze(1))
        loss = self.beta * F.mse_loss(z_q.detach(), z)
        z_q = z + (z_q - z).detach()
        return z_q.permute(0, 3, 1, 2), loss, (perplexity, enc, idx)


class GumbelQuantize(nn.Module):
    """taming ``GumbelQuantize(num_hiddens, embedding_dim, n_embed, ...)``: logits from a 1x1 ``proj``,
    gumbel-softmax over codes, ``(z_q, kl, (None, None, ind (B, H, W)))``."""

    def __init__(self, num_hiddens, embedding_dim, n_embed, straight_through=True, kl_weight=5e-4,
                 temp_init=1.0, use_vqinterface=True, remap=None, unknown_index="random"):
        super().__init__()
        self.embedding_dim, self.n_embed = embedding_dim, n_embed
        self.straight_through, self.temperature, self.kl_weight = straight_through, temp_init, kl_weight
        self.proj = nn.Conv2d(num_hiddens, n_embed, 1)
        self.embed = nn.Embedding(n_embed, embedding_dim)
        self.use_vqinterface = use_vqinterface
        self.remap = remap

    def forward(self, z, temp=None, return_logits=False):
        hard = self.straight_through if self.training else True
        temp = self.temperature if temp is None else temp
        logits = self.proj(z)
        soft = F.gumbel_softmax(logits, tau=temp, dim=1, hard=hard)
        z_q = torch.einsum("bnhw,nd->bdhw", soft, self.embed.weight)
        qy = F.softmax(logits, dim=1)
        diff = self.kl_weight * (qy * torch.log(qy * self.n_embed + 1e-10)).sum(1).mean()
        ind = soft.argmax(dim=1)
        if self.use_vqinterface:
            return z_q, diff, (None, None, ind)
        return z_q, diff, ind


# ---- LlamaGen: tokenizer/tokenizer_image/vq_model.py ------------------------------------------------

class LlamaGenVectorQuantizer(nn.Module):
    """LlamaGen ``VectorQuantizer(n_e, e_dim, beta, entropy_loss_ratio, l2_norm, show_usage)``:
    ``(z_q, (vq_loss, commit_loss, entropy_loss, codebook_usage), (perplexity, min_encodings, indices))``."""

    def __init__(self, n_e, e_dim, beta, entropy_loss_ratio, l2_norm, show_usage):
        super().__init__()
        self.n_e, self.e_dim, self.beta = n_e, e_dim, beta
        self.entropy_loss_ratio, self.l2_norm, self.show_usage = entropy_loss_ratio, l2_norm, show_usage
        self.embedding = nn.Embedding(n_e, e_dim)
        self.embedding.weight.data.uniform_(-1.0 / n_e, 1.0 / n_e)
        if l2_norm:
            self.embedding.weight.data = F.normalize(self.embedding.weight.data, p=2, dim=-1)
        if show_usage:
            self.register_buffer("codebook_used", torch.zeros(65536))

    def forward(self, z):
        z = z.permute(0, 2, 3, 1).contiguous()
        flat = z.view(-1, self.e_dim)
        if self.l2_norm:
            z = F.normalize(z, p=2, dim=-1)
            flat = F.normalize(flat, p=2, dim=-1)
            emb = F.normalize(self.embedding.weight, p=2, dim=-1)
        else:
            emb = self.embedding.weight
        d = flat.pow(2).sum(1, keepdim=True) + emb.pow(2).sum(1) - 2 * flat @ emb.t()
        idx = d.argmin(1)
        z_q = emb[idx].view(z.shape)
        vq_loss = commit_loss = entropy_loss = None
        usage = 0
        if self.show_usage and self.training:
            n = idx.shape[0]
            self.codebook_used[:-n] = self.codebook_used[n:].clone()
            self.codebook_used[-n:] = idx.float()
            usage = len(torch.unique(self.codebook_used)) / self.n_e
        if self.training:
            vq_loss = ((z_q - z.detach()) ** 2).mean()
            commit_loss = self.beta * ((z_q.detach() - z) ** 2).mean()
            probs = F.softmax(-d, dim=-1)
            entropy_loss = self.entropy_loss_ratio * (-(probs * torch.log(probs + 1e-5)).sum(-1).mean())
        z_q = z + (z_q - z).detach()
        return z_q.permute(0, 3, 1, 2), (vq_loss, commit_loss, entropy_loss, usage), (None, None, idx)


LlamaGenVectorQuantizer.__name__ = "VectorQuantizer"  # the real class name; the alias avoids a clash here


# ---- diffusers: src/diffusers/models/autoencoders/vae.py --------------------------------------------

class DiffusersVectorQuantizer(nn.Module):
    """diffusers ``VectorQuantizer(n_e, vq_embed_dim, beta, remap, unknown_index, sane_index_shape, legacy)``:
    argmin of ``torch.cdist``; ``(z_q, loss, (None, None, indices))``."""

    def __init__(self, n_e, vq_embed_dim, beta, remap=None, unknown_index="random", sane_index_shape=False,
                 legacy=True):
        super().__init__()
        self.n_e, self.vq_embed_dim, self.beta, self.legacy = n_e, vq_embed_dim, beta, legacy
        self.embedding = nn.Embedding(n_e, vq_embed_dim)
        self.embedding.weight.data.uniform_(-1.0 / n_e, 1.0 / n_e)
        self.remap = remap
        self.sane_index_shape = sane_index_shape

    def forward(self, z):
        z = z.permute(0, 2, 3, 1).contiguous()
        flat = z.view(-1, self.vq_embed_dim)
        idx = torch.argmin(torch.cdist(flat, self.embedding.weight), dim=1)
        z_q = self.embedding(idx).view(z.shape)
        loss = ((z_q.detach() - z) ** 2).mean() + self.beta * ((z_q - z.detach()) ** 2).mean()
        z_q = z + (z_q - z).detach()
        z_q = z_q.permute(0, 3, 1, 2).contiguous()
        if self.sane_index_shape:
            idx = idx.reshape(z_q.shape[0], z_q.shape[2], z_q.shape[3])
        return z_q, loss, (None, None, idx)


DiffusersVectorQuantizer.__name__ = "VectorQuantizer"


# ---- EnCodec: encodec/quantization/core_vq.py --------------------------------------------------------

class EuclideanCodebook(nn.Module):
    """EnCodec ``EuclideanCodebook``: buffers ``inited``, ``cluster_size``, ``embed``, ``embed_avg``;
    ``forward(x (..., D)) -> (quantize, embed_ind (...))`` with EMA updates in training."""

    def __init__(self, dim, codebook_size, kmeans_init=False, kmeans_iters=10, decay=0.99, epsilon=1e-5,
                 threshold_ema_dead_code=2):
        super().__init__()
        self.decay, self.epsilon, self.codebook_size = decay, epsilon, codebook_size
        embed = torch.randn(codebook_size, dim)
        self.register_buffer("inited", torch.Tensor([not kmeans_init]))
        self.register_buffer("cluster_size", torch.zeros(codebook_size))
        self.register_buffer("embed", embed)
        self.register_buffer("embed_avg", embed.clone())

    def forward(self, x):
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        e = self.embed.t()
        dist = -(flat.pow(2).sum(1, keepdim=True) - 2 * flat @ e + e.pow(2).sum(0, keepdim=True))
        ind = dist.max(dim=-1).indices
        quantize = F.embedding(ind, self.embed).view(shape)
        if self.training:
            onehot = F.one_hot(ind, self.codebook_size).type(x.dtype)
            self.cluster_size.data.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
            self.embed_avg.data.mul_(self.decay).add_((flat.t() @ onehot).t(), alpha=1 - self.decay)
            n = self.cluster_size.sum()
            cs = (self.cluster_size + self.epsilon) / (n + self.codebook_size * self.epsilon) * n
            self.embed.data.copy_(self.embed_avg / cs.unsqueeze(1))
        return quantize, ind.view(shape[:-1])


class VectorQuantization(nn.Module):
    """EnCodec ``VectorQuantization``: ``forward(x (B, D, N)) -> (quantize (B, D, N), embed_ind (B, N), loss)``."""

    def __init__(self, dim, codebook_size, codebook_dim=None, decay=0.99, epsilon=1e-5, kmeans_init=True,
                 kmeans_iters=50, threshold_ema_dead_code=2, commitment_weight=1.0):
        super().__init__()
        cd = codebook_dim or dim
        self.project_in = nn.Linear(dim, cd) if cd != dim else nn.Identity()
        self.project_out = nn.Linear(cd, dim) if cd != dim else nn.Identity()
        self.epsilon, self.commitment_weight, self.codebook_size = epsilon, commitment_weight, codebook_size
        self._codebook = EuclideanCodebook(cd, codebook_size, decay=decay, epsilon=epsilon)

    def forward(self, x):
        x = x.transpose(1, 2)
        x = self.project_in(x)
        quantize, embed_ind = self._codebook(x)
        if self.training:
            quantize = x + (quantize - x).detach()
        loss = torch.tensor([0.0], device=x.device, requires_grad=self.training)
        if self.training and self.commitment_weight > 0:
            loss = loss + F.mse_loss(quantize.detach(), x) * self.commitment_weight
        quantize = self.project_out(quantize).transpose(1, 2)
        return quantize, embed_ind, loss


class ResidualVectorQuantization(nn.Module):
    """EnCodec ``ResidualVectorQuantization(num_quantizers, **kwargs)``: ``forward(x, n_q=None)`` ->
    ``(quantized_out, indices (Q, B, N), losses (Q, 1))``."""

    def __init__(self, *, num_quantizers, **kwargs):
        super().__init__()
        self.layers = nn.ModuleList([VectorQuantization(**kwargs) for _ in range(num_quantizers)])

    def forward(self, x, n_q=None):
        out, residual, losses, indices = 0.0, x, [], []
        for layer in self.layers[: n_q or len(self.layers)]:
            q, ind, loss = layer(residual)
            residual = residual - q
            out = out + q
            indices.append(ind)
            losses.append(loss)
        return out, torch.stack(indices), torch.stack(losses)


# ---- DAC: dac/nn/quantize.py ----------------------------------------------------------------------

class DACVectorQuantize(nn.Module):
    """DAC ``VectorQuantize(input_dim, codebook_size, codebook_dim)``: factorised, l2-normalised lookup;
    ``(z_q, commitment_loss, codebook_loss, indices (B, T), z_e (B, d, T))``. (Weight-norm omitted.)"""

    def __init__(self, input_dim, codebook_size, codebook_dim):
        super().__init__()
        self.codebook_size, self.codebook_dim = codebook_size, codebook_dim
        self.in_proj = nn.Conv1d(input_dim, codebook_dim, 1)
        self.out_proj = nn.Conv1d(codebook_dim, input_dim, 1)
        self.codebook = nn.Embedding(codebook_size, codebook_dim)

    def forward(self, z):
        z_e = self.in_proj(z)
        enc = F.normalize(z_e.transpose(1, 2).reshape(-1, z_e.shape[1]))
        cb = F.normalize(self.codebook.weight)
        dist = enc.pow(2).sum(1, keepdim=True) - 2 * enc @ cb.t() + cb.pow(2).sum(1, keepdim=True).t()
        indices = (-dist).max(1)[1].reshape(z_e.shape[0], -1)
        z_q = F.embedding(indices, self.codebook.weight).transpose(1, 2)
        commitment_loss = F.mse_loss(z_e, z_q.detach(), reduction="none").mean([1, 2])
        codebook_loss = F.mse_loss(z_q, z_e.detach(), reduction="none").mean([1, 2])
        z_q = z_e + (z_q - z_e).detach()
        return self.out_proj(z_q), commitment_loss, codebook_loss, indices, z_e


DACVectorQuantize.__name__ = "VectorQuantize"


class ResidualVectorQuantize(nn.Module):
    """DAC ``ResidualVectorQuantize``: stages in ``quantizers``; returns a dict with ``z``, ``codes`` (B, N, T),
    ``latents``, ``vq/commitment_loss``, ``vq/codebook_loss``; quantizer dropout as a per-sample mask."""

    def __init__(self, input_dim=512, n_codebooks=9, codebook_size=1024, codebook_dim=8, quantizer_dropout=0.0):
        super().__init__()
        self.n_codebooks, self.codebook_size, self.quantizer_dropout = n_codebooks, codebook_size, quantizer_dropout
        self.quantizers = nn.ModuleList([DACVectorQuantize(input_dim, codebook_size, codebook_dim)
                                         for _ in range(n_codebooks)])

    def forward(self, z, n_quantizers=None):
        z_q, residual, commit, cbl, codes, latents = 0, z, 0, 0, [], []
        n_quantizers = self.n_codebooks if n_quantizers is None else n_quantizers
        if self.training:
            n_quantizers = torch.ones((z.shape[0],)) * self.n_codebooks + 1
            dropout = torch.randint(1, self.n_codebooks + 1, (z.shape[0],))
            n_drop = int(z.shape[0] * self.quantizer_dropout)
            n_quantizers[:n_drop] = dropout[:n_drop]
            n_quantizers = n_quantizers.to(z.device)
        for i, q in enumerate(self.quantizers):
            if self.training is False and i >= n_quantizers:
                break
            z_q_i, c_i, b_i, ind_i, z_e_i = q(residual)
            mask = torch.full((z.shape[0],), fill_value=i, device=z.device) < n_quantizers
            z_q = z_q + z_q_i * mask[:, None, None]
            residual = residual - z_q_i
            commit = commit + (c_i * mask).mean()
            cbl = cbl + (b_i * mask).mean()
            codes.append(ind_i)
            latents.append(z_e_i)
        return {"z": z_q, "codes": torch.stack(codes, dim=1), "latents": torch.cat(latents, dim=1),
                "vq/commitment_loss": commit, "vq/codebook_loss": cbl}

"""The reference vector quantizer: nearest-code lookup, EMA codebook updates, commitment loss.

As in VQ-VAE (van den Oord et al. 2017, appendix on EMA): the codebook is not trained by gradients; each
code moves to the exponential moving average of the latents assigned to it, with Laplace-smoothed
cluster sizes. The encoder gets the straight-through gradient plus ``beta * ||z - sg[q]||^2``.

The quantizer can be *inactive*: it then passes latents through unchanged (the continuous phase of
deferred quantization) while still reporting the indices a nearest-code lookup would give, so
``shrinkscope.watch`` sees the same kind of output in both phases. ``init_codebook`` runs k-means on
latents (``shrinkscope.kmeans``) and resets the EMA state; switching ``active`` on is the caller's move
(``shrinkscope.defer`` does both: the reference training loop defers through it and nothing else).

Dead-code expiry (``dead_code_threshold > 0``) is the common fix people reach for before deferral: a code whose
EMA usage falls below the threshold (expected hits per batch, as ``threshold_ema_dead_code`` in
vector-quantize-pytorch) is moved onto a random latent of the current batch.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import nn

from ..kmeans import kmeans
from ..metrics.usage import assign


class QuantizerOutput(NamedTuple):
    """What ``EMAQuantizer.forward`` returns.

    Attributes:
        quantized: ``(B, D, H, W)`` quantized latents with straight-through gradients (``z`` itself when inactive).
        indices: ``(B, H, W)`` int64 code indices (-1 everywhere before the codebook is initialised).
        loss: scalar commitment loss ``beta * ||z - sg[q]||^2`` (0 when inactive).
    """

    quantized: torch.Tensor
    indices: torch.Tensor
    loss: torch.Tensor


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    # under DDP every rank must apply the same EMA step, so the statistics are summed over ranks
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t


class EMAQuantizer(nn.Module):
    """Vector quantizer with an EMA-updated codebook.

    Args:
        num_codes: K, the codebook size.
        dim: D, the code dimension (channels of the latent grid).
        decay: EMA decay of cluster sizes and code sums.
        beta: commitment-loss weight.
        l2_normalize: look up (and return) l2-normalised codes and latents (cosine-similarity VQ).
        dead_code_threshold: expire codes whose EMA usage is below this many hits per batch (0: never).
        eps: Laplace smoothing of cluster sizes, in hits per batch (as in VQ-VAE / vector-quantize-pytorch).

    Example:
        >>> q = EMAQuantizer(16, 4)
        >>> q.init_codebook(torch.randn(100, 4))
        >>> q.active.fill_(True)
        >>> out = q(torch.randn(2, 4, 3, 3))
        >>> out.indices.shape
        torch.Size([2, 3, 3])
    """

    shrinkscope_family = "reference"

    def __init__(self, num_codes: int, dim: int, *, decay: float = 0.99, beta: float = 0.25,
                 l2_normalize: bool = False, dead_code_threshold: float = 0.0, eps: float = 1e-5):
        super().__init__()
        if num_codes < 2 or dim < 1:
            raise ValueError(f"EMAQuantizer: expected num_codes >= 2 and dim >= 1, got {num_codes}, {dim}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMAQuantizer: expected 0 <= decay < 1, got {decay}")
        if not dead_code_threshold >= 0:
            raise ValueError(f"EMAQuantizer: expected dead_code_threshold >= 0, got {dead_code_threshold}")
        self.dead_code_threshold = float(dead_code_threshold)
        self.num_codes, self.dim = num_codes, dim
        self.decay, self.beta, self.l2_normalize, self.eps = decay, beta, l2_normalize, eps
        self.register_buffer("embed", torch.randn(num_codes, dim))
        self.register_buffer("cluster_size", torch.zeros(num_codes))
        self.register_buffer("embed_avg", self.embed.clone())
        self.register_buffer("initted", torch.tensor(False))
        self.register_buffer("active", torch.tensor(False))

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(x, dim=-1) if self.l2_normalize else x

    def effective_codebook(self) -> torch.Tensor:
        """``(K, D)`` detached codebook as used by the lookup (unit rows if ``l2_normalize``)."""
        return self._norm(self.embed.detach()).clone()

    def flat_latents(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, D, H, W)`` -> ``(B*H*W, D)`` pre-quantization latents as the lookup sees them."""
        if z.dim() != 4 or z.shape[1] != self.dim:
            raise ValueError(f"EMAQuantizer: expected z of shape (B, {self.dim}, H, W), got {tuple(z.shape)}")
        return self._norm(z.permute(0, 2, 3, 1).reshape(-1, self.dim))

    @torch.no_grad()
    def init_codebook(self, latents: torch.Tensor, *, seed: int = 0, iters: int = 20) -> None:
        """k-means-initialise the codebook on ``(N, D)`` latents and reset the EMA state.

        Under DDP rank 0's centroids are broadcast, so every rank starts from the same codebook.
        The cluster sizes start at the k-means shares scaled to one batch's worth of mass, so the first
        EMA steps neither erase nor freeze the initial codes.
        """
        x = self._norm(latents.detach().reshape(-1, self.dim).float())
        centers = kmeans(x, self.num_codes, iters=iters, seed=seed).to(self.embed)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.broadcast(centers, 0)
        idx, _ = assign(centers, x)
        counts = torch.bincount(idx, minlength=self.num_codes).to(self.embed)
        self.embed.copy_(centers)
        self.cluster_size.copy_(counts / counts.sum().clamp_min(1))
        self.embed_avg.copy_(centers * self.cluster_size[:, None])
        self.initted.fill_(True)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, idx: torch.Tensor) -> None:
        onehot_sum = torch.zeros(self.num_codes, device=flat.device, dtype=flat.dtype).index_add_(
            0, idx, torch.ones_like(idx, dtype=flat.dtype))
        embed_sum = torch.zeros_like(self.embed).index_add_(0, idx, flat.to(self.embed.dtype))
        n_local = torch.tensor([float(flat.shape[0])], device=flat.device)
        _all_reduce_sum(onehot_sum), _all_reduce_sum(embed_sum), _all_reduce_sum(n_local)
        # statistics are kept as shares of a batch, so decay means the same at any batch size
        self.cluster_size.mul_(self.decay).add_(onehot_sum / n_local, alpha=1 - self.decay)
        self.embed_avg.mul_(self.decay).add_(embed_sum / n_local, alpha=1 - self.decay)
        total = self.cluster_size.sum()
        # eps is in hits per batch, like the count-based EMA it comes from; added to shares unscaled it would
        # outweigh a rarely hit code's share at large K and drag that code towards the origin within a few
        # hundred steps (measured: every arm collapsed at K = 16,384 before this scaling)
        eps = self.eps / n_local
        smoothed = (self.cluster_size + eps) / (total + self.num_codes * eps) * total
        self.embed.copy_(self.embed_avg / smoothed[:, None])
        if self.dead_code_threshold > 0:
            self._expire(flat, float(n_local))

    @torch.no_grad()
    def _expire(self, flat: torch.Tensor, n: float) -> None:
        # a where() over all K rows instead of indexing the dead ones: no host sync per step
        dead = self.cluster_size * n < self.dead_code_threshold
        pick = torch.randint(0, flat.shape[0], (self.num_codes,), device=flat.device)
        fresh = flat[pick].to(self.embed.dtype)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.broadcast(fresh, 0)  # the dead mask agrees on every rank (summed statistics); the rows must too
        size = torch.full_like(self.cluster_size, self.dead_code_threshold / n)
        self.embed.copy_(torch.where(dead[:, None], fresh, self.embed))
        self.cluster_size.copy_(torch.where(dead, size, self.cluster_size))
        self.embed_avg.copy_(torch.where(dead[:, None], fresh * size[:, None], self.embed_avg))

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """Quantize a latent grid.

        Args:
            z: ``(B, D, H, W)`` encoder output.

        Returns:
            ``QuantizerOutput(quantized (B, D, H, W), indices (B, H, W) int64, loss scalar)``.
        """
        flat = self.flat_latents(z)
        b, _, h, w = z.shape
        if not bool(self.initted):
            idx = torch.full((b, h, w), -1, dtype=torch.long, device=z.device)
            return QuantizerOutput(z, idx, z.new_zeros(()))
        codebook = self._norm(self.embed)
        idx, _ = assign(codebook.detach(), flat.detach())
        idx = idx.to(z.device)
        grid_idx = idx.reshape(b, h, w)
        if not bool(self.active):
            return QuantizerOutput(z, grid_idx, z.new_zeros(()))
        if self.training:
            self._ema_update(flat.detach(), idx)
            codebook = self._norm(self.embed)
        q_flat = codebook[idx].to(flat.dtype)
        loss = self.beta * (flat - q_flat.detach()).pow(2).mean()
        q_flat = flat + (q_flat - flat).detach()  # straight-through estimator
        quantized = q_flat.reshape(b, h, w, self.dim).permute(0, 3, 1, 2).contiguous()
        return QuantizerOutput(quantized, grid_idx, loss)

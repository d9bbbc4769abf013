"""k-NN coverage and precision of a codebook over the latent cloud (Naeem et al. 2020, "PRDC").

Each latent owns a ball whose radius is the distance to its k-th nearest neighbour among the latents.
``latent_coverage`` is the share of latents whose ball holds at least one code; ``codebook_precision``
is the share of codes inside at least one latent's ball. Both are computed chunk by chunk: memory
is O(chunk * N), never N x N. Comparisons are strict (``<``), as in the ``prdc`` package.
"""
from __future__ import annotations

from typing import Any

import torch

from ._validate import as_float, common, row_chunk, same_dim


def _sq_dists(a: torch.Tensor, b: torch.Tensor, b_sq: torch.Tensor) -> torch.Tensor:
    return ((a * a).sum(1, keepdim=True) + b_sq[None, :] - 2.0 * (a @ b.t())).clamp_min_(0)


@torch.no_grad()
def knn_radii(x: Any, *, k: int = 5, name: str = "latents") -> torch.Tensor:
    """Distance from every row to its k-th nearest other row (float64, ``(N,)``)."""
    t = as_float(x, name, min_rows=k + 1).double()
    if k < 1:
        raise ValueError(f"k: expected k >= 1, got {k}")
    n = t.shape[0]
    sq = (t * t).sum(1)
    out = torch.empty(n, dtype=torch.float64, device=t.device)
    step = row_chunk(n)
    for s in range(0, n, step):
        d2 = _sq_dists(t[s:s + step], t, sq)
        rows = torch.arange(d2.shape[0], device=t.device)
        d2[rows, rows + s] = 0  # self-distance: exactly 0, like prdc's partition includes it at index 0
        out[s:s + step] = torch.topk(d2, k + 1, dim=1, largest=False).values[:, k].sqrt()
    return out


def _check(codebook: Any, latents: Any, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    cb = as_float(codebook, "codebook", min_rows=1)
    x = as_float(latents, "latents")
    if x.shape[0] < k + 1:
        raise ValueError(f"latents: k-NN balls with k={k} need at least {k + 1} latents, got {x.shape[0]}")
    same_dim(cb, x)
    cb, x = common(cb, x)
    return cb.double(), x.double()


@torch.no_grad()
def latent_coverage(codebook: Any, latents: Any, *, k: int = 5, radii: torch.Tensor | None = None) -> float:
    """Share of latents whose k-NN ball (among latents) holds at least one code; higher is better.

    Args:
        codebook: ``(K, D)`` codes.
        latents: ``(N, D)`` latents, N > k.
        k: neighbour rank defining the balls.
        radii: precomputed ``knn_radii(latents, k=k)`` to reuse.

    Returns:
        A float in ``[0, 1]``.
    """
    cb, x = _check(codebook, latents, k)
    r = knn_radii(x, k=k) if radii is None else radii.to(x.device, torch.float64)
    cb_sq = (cb * cb).sum(1)
    covered = 0
    step = row_chunk(cb.shape[0])
    for s in range(0, x.shape[0], step):
        nearest = _sq_dists(x[s:s + step], cb, cb_sq).min(1).values.sqrt()
        covered += int((nearest < r[s:s + step]).sum())
    return covered / x.shape[0]


@torch.no_grad()
def codebook_precision(codebook: Any, latents: Any, *, k: int = 5, radii: torch.Tensor | None = None) -> float:
    """Share of codes inside at least one latent's k-NN ball; higher is better.

    Args:
        codebook: ``(K, D)`` codes.
        latents: ``(N, D)`` latents, N > k.
        k: neighbour rank defining the balls.
        radii: precomputed ``knn_radii(latents, k=k)`` to reuse.
    """
    cb, x = _check(codebook, latents, k)
    r = knn_radii(x, k=k) if radii is None else radii.to(x.device, torch.float64)
    x_sq = (x * x).sum(1)
    inside = 0
    step = row_chunk(x.shape[0])
    for s in range(0, cb.shape[0], step):
        d = _sq_dists(cb[s:s + step], x, x_sq).sqrt()
        inside += int((d < r[None, :]).any(1).sum())
    return inside / cb.shape[0]

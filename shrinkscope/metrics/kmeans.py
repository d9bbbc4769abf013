"""k-means with k-means++ seeding, chunked and on the data's own device.

Used to initialise codebooks: by the reference tokenizer (on the untrained encoder for the early
baseline, on the mature encoder for deferred quantization) and by ``shrinkscope.defer`` at the switch.
"""
from __future__ import annotations

from typing import Any

import torch

from ._validate import as_float
from .usage import _assign

__all__ = ["kmeans", "kmeans_plusplus"]


@torch.no_grad()
def kmeans_plusplus(x: torch.Tensor, k: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each new centre drawn with probability ~ D(x)^2.

    Args:
        x: ``(N, D)`` float points, N >= k.
        k: number of centres.
        generator: CPU generator for reproducibility.

    Returns:
        ``(k, D)`` initial centres (rows of ``x``).
    """
    n = x.shape[0]
    first = int(torch.randint(0, n, (1,), generator=generator))
    centers = torch.empty(k, x.shape[1], dtype=x.dtype, device=x.device)
    centers[0] = x[first]
    d2 = (x - x[first]).pow(2).sum(1).double()
    for i in range(1, k):
        total = d2.sum()
        if float(total) <= 0:  # fewer distinct points than k: repeat points (caller handles empties)
            pick = int(torch.randint(0, n, (1,), generator=generator))
        else:
            u = torch.rand((), generator=generator, dtype=torch.float64).item() * float(total)
            pick = int(torch.searchsorted(torch.cumsum(d2, 0), torch.tensor([u], dtype=torch.float64,
                                                                              device=d2.device)).clamp_max(n - 1))
        centers[i] = x[pick]
        d2 = torch.minimum(d2, (x - x[pick]).pow(2).sum(1).double())
    return centers


@torch.no_grad()
def kmeans(x: Any, k: int, *, iters: int = 20, seed: int = 0, tol: float = 1e-6,
           init: str = "kmeans++") -> torch.Tensor:
    """Lloyd's k-means; empty clusters are re-seeded at the worst-fit points.

    Args:
        x: ``(N, D)`` points (torch or numpy), N >= k.
        k: number of clusters.
        iters: maximum Lloyd iterations.
        seed: seed of the initial draw.
        tol: stop when the relative drop of the mean squared error falls below this.
        init: ``"kmeans++"`` (Arthur & Vassilvitskii 2007; k sequential steps) or ``"random"``: k distinct
            rows drawn uniformly, the seeding of Zhao, Karagodin et al.'s final runs. ``"random"`` costs one
            draw instead of k passes over the data, which matters for K in the thousands.

    Returns:
        ``(k, D)`` centroids in ``x``'s dtype and device (half precision comes back as float32).

    Raises:
        ValueError: fewer points than clusters, NaN/Inf, wrong shape.

    Example:
        >>> pts = torch.cat([torch.zeros(50, 2), torch.ones(50, 2) * 10])
        >>> c = kmeans(pts, 2)
        >>> sorted(c[:, 0].round().tolist())
        [0.0, 10.0]
    """
    pts = as_float(x, "x")
    if k < 1:
        raise ValueError(f"k: expected k >= 1, got {k}")
    if pts.shape[0] < k:
        raise ValueError(f"x: k-means with k={k} needs at least {k} points, got {pts.shape[0]}; "
                         "collect more latents (a larger reservoir) or use a smaller codebook")
    g = torch.Generator().manual_seed(seed)
    if init == "kmeans++":
        centers = kmeans_plusplus(pts, k, generator=g)
    elif init == "random":
        centers = pts[torch.randperm(pts.shape[0], generator=g)[:k].to(pts.device)].clone()
    else:
        raise ValueError(f"init: expected 'kmeans++' or 'random', got {init!r}")
    prev = float("inf")
    # Validated once above; the loop calls the unchecked search and reuses one float64 copy for the sums.
    pts64 = pts if pts.dtype == torch.float64 else pts.double()
    for _ in range(iters):
        idx, d2 = _assign(centers, pts)
        sums = torch.zeros_like(centers, dtype=torch.float64).index_add_(0, idx, pts64)
        counts = torch.bincount(idx, minlength=k)
        empty = (counts == 0).nonzero().flatten()
        new = (sums / counts.clamp_min(1)[:, None]).to(pts.dtype)
        if empty.numel():
            # re-seed empty clusters at the points currently worst served
            worst = torch.topk(d2, min(empty.numel(), pts.shape[0])).indices
            new[empty[: worst.numel()]] = pts[worst]
        centers = new
        mse = float(d2.mean())
        if prev < float("inf") and prev - mse <= tol * max(prev, 1e-300):
            break
        prev = mse
    return centers

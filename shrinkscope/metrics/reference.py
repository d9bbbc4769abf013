"""The optimal-quantizer reference: k-means with the same K on the user's own latents.

A codebook's spread, rank, coverage and distortion mean little on their own: a good codebook of 16 codes
spans less of the latent cloud than one of 4096, and a codebook of K codes in D dimensions cannot have a
centred effective rank above K - 1. So ``codebook_health`` fits k-means with the codebook's K on a bounded
subsample of the latents (the quantizer that minimises distortion, what a well-placed codebook of that K
reaches) and expresses the codebook against it. The verdict then compares ratios with 1 instead of raw
numbers with constants that ignore K and D.

Subsamples, all drawn from one seeded permutation of the latents (``seed``), so nothing here depends on
the order of the latents and every number is reproducible:

- held-out rows ``perm[:n_eval]``, ``n_eval = min(8192, N // 2, N - 2K)``: the distortion and per-mode
  comparisons. They are also the head of ``codebook_health``'s coverage subset (``perm[:coverage_max_latents]``);
- fit rows ``perm[n_eval:n_eval + n_fit]``, disjoint from the held-out ones: k-means never sees the rows its
  distortion is measured on, so it is not flattered by over-fitting (with ``n_fit`` near K it would be).
  Coverage subset rows beyond ``n_eval`` may be among the fit rows; coverage asks whether a code lies in a
  latent's k-NN ball, which a centroid (a mean of many rows) is not helped into by having seen that row.

``n_fit = max(2K, min(POINTS_PER_CODE * K, ITER_WORK // (K * D)))`` rows, then Lloyd iterations from a
random-sample seeding (as in Zhao, Karagodin et al.'s final runs; k-means++ costs K sequential passes)
until ``TOTAL_WORK`` multiply-adds are spent (between ``MIN_ITERS`` and ``MAX_ITERS``). At K=16384, D=256
that is 32,768 rows and 2 iterations (about 7 s on 2 CPU cores); at K <= 1024, D <= 64 it is 16 points per
code and 20 iterations. With too few latents for both (``N - 2K < min(256, N / 4)``), the fit uses all rows
(in-sample) and ``excess_distortion`` is ``None``. With fewer than K latents
there is no reference.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .coverage import latent_coverage
from .geometry import spread_euclidean
from .kmeans import kmeans
from .spectrum import _effective_rank_from, singular_spectrum
from .usage import assign

__all__ = ["KMeansReference", "fit_size", "kmeans_reference", "reference_coverage"]

POINTS_PER_CODE = 16
"""k-means fit rows per code when affordable (``n_fit`` is capped by ``ITER_WORK``)."""
ITER_WORK = 1 << 34
"""Multiply-adds of one Lloyd iteration (n_fit * K * D) above which ``n_fit`` stops growing (floor: 2K rows)."""
TOTAL_WORK = 1 << 38
"""Multiply-adds of all Lloyd iterations together (about 7 s of float32 BLAS on 2 cores of this project's VM)."""
MIN_ITERS, MAX_ITERS = 2, 20
EVAL_MAX = 8192
"""Held-out rows on which the distortions (and per-mode usage) of codebook and reference are compared."""
MIN_EVAL = 256
"""Fewer held-out rows than this (or than N/4) after leaving 2K rows to the fit: fit in-sample instead."""
SPREAD_MAX_POINTS = 4096
"""The reference's spread is averaged over this many of its codes (an unbiased estimate; docs/metrics.md)."""


@dataclass(frozen=True)
class KMeansReference:
    """k-means with the codebook's K on the latents, and the measurements the codebook is compared with.

    Attributes:
        centroids: ``(K, D)`` the k-means codebook.
        spread_euclidean: its mean pairwise distance.
        effective_rank: its centred effective rank.
        eval_index: ``(n_eval,)`` rows of the latents held out from the fit (distortion, modes).
        eval_assign: ``(n_eval,)`` nearest k-means code of each held-out row.
        distortion: mean squared distance of the held-out rows to their nearest k-means code (``None``
            when the fit had to use the held-out rows too).
        n_fit: rows the k-means was fitted on; iters: Lloyd iterations run at most.
    """

    centroids: torch.Tensor
    spread_euclidean: float
    effective_rank: float
    eval_index: torch.Tensor
    eval_assign: torch.Tensor
    distortion: float | None
    n_fit: int
    iters: int


def fit_size(num_codes: int, dim: int, available: int) -> tuple[int, int]:
    """``(n_fit, iters)`` for K codes in D dimensions with ``available`` rows (see the module docstring)."""
    k, d = num_codes, max(1, dim)
    n_fit = max(2 * k, min(POINTS_PER_CODE * k, ITER_WORK // (k * d)))
    n_fit = min(n_fit, available)
    iters = int(min(MAX_ITERS, max(MIN_ITERS, TOTAL_WORK // max(1, n_fit * k * d))))
    return n_fit, iters


@torch.no_grad()
def kmeans_reference(latents: torch.Tensor, num_codes: int, *, perm: torch.Tensor, seed: int = 0) -> KMeansReference | None:
    """Fit the reference on ``latents`` (validated ``(N, D)``) with ``perm`` a seeded permutation of its rows.

    Args:
        latents: ``(N, D)`` float latents.
        num_codes: K.
        perm: ``(N,)`` permutation of the rows (the caller's, so coverage and fit subsets agree).
        seed: seed of the k-means initial draw.

    Returns:
        A ``KMeansReference``, or ``None`` when there are fewer than K latents.
    """
    n, d = latents.shape
    k = num_codes
    if n < k or k < 2:
        return None
    n_eval = min(EVAL_MAX, n // 2, n - 2 * k)
    if n_eval >= max(1, min(MIN_EVAL, n // 4)):
        n_fit, iters = fit_size(k, d, n - n_eval)
        fit_rows = perm[n_eval:n_eval + n_fit]
        disjoint = True
    else:  # too few latents for a disjoint fit: fit in-sample, skip the distortion comparison
        n_eval = min(EVAL_MAX, n)
        n_fit, iters = fit_size(k, d, n)
        fit_rows = perm[:n_fit]
        disjoint = False
    fit_rows = fit_rows.to(latents.device)
    centroids = kmeans(latents[fit_rows], k, iters=iters, seed=seed, init="random")
    eval_index = perm[:n_eval].to(latents.device)
    eval_assign, d2 = assign(centroids, latents[eval_index])
    return KMeansReference(
        centroids=centroids,
        spread_euclidean=spread_euclidean(centroids, max_points=SPREAD_MAX_POINTS, seed=seed),
        effective_rank=_effective_rank_from(singular_spectrum(centroids)),
        eval_index=eval_index,
        eval_assign=eval_assign,
        distortion=float(d2.mean()) if disjoint else None,
        n_fit=int(fit_rows.numel()),
        iters=iters,
    )


def reference_coverage(ref: KMeansReference, latents_subset: torch.Tensor, radii: torch.Tensor, *,
                       k: int = 5) -> float:
    """Coverage of the reference codebook over the coverage subset, with the balls the codebook was judged on."""
    return latent_coverage(ref.centroids, latents_subset, k=k, radii=radii)

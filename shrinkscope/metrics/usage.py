"""Code usage: nearest-code assignment, histograms, perplexity, utilization and dead codes.

``assign`` is the workhorse behind counts, coverage and quantization error: a chunked nearest-code
search that never holds more than a (chunk, K) block of distances.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from ._validate import as_counts, as_float, common, row_chunk, same_dim, to_tensor


@torch.no_grad()
def assign(codebook: Any, latents: Any, *, chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest code (squared Euclidean distance) for every latent.

    Args:
        codebook: ``(K, D)`` codes.
        latents: ``(N, D)`` vectors to assign.
        chunk_size: latents per block; by default a block of distances holds about 32M elements.

    The search runs in the inputs' dtype (float32 stays float32, the speed of a BLAS matmul); ties
    closer than float32 round-off may pick either code. The returned distance of the chosen code is
    always recomputed in float64.

    Returns:
        ``(indices, sq_distances)``: ``(N,)`` int64 nearest-code ids and ``(N,)`` float64 squared distances.

    Raises:
        ValueError: shapes, NaN/Inf or D mismatch. TypeError: non-floating inputs.

    Example:
        >>> idx, d2 = assign(torch.eye(3), torch.tensor([[0.9, 0.1, 0.0]]))
        >>> int(idx[0])
        0
    """
    cb = as_float(codebook, "codebook", min_rows=1)
    x = as_float(latents, "latents")
    same_dim(cb, x)
    cb, x = common(cb, x)
    return _assign(cb, x, chunk_size=chunk_size)


def _assign(cb: torch.Tensor, x: torch.Tensor, *, chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``assign`` on inputs already validated and put on one device and dtype (inner loops, e.g. Lloyd's).

    Skipping the checks matters there: the NaN/Inf scan reads every value and, on a GPU, waits for the
    device on every call.
    """
    n = x.shape[0]
    idx = torch.empty(n, dtype=torch.long, device=x.device)
    d2 = torch.empty(n, dtype=torch.float64, device=x.device)
    if n == 0:
        return idx, d2
    # Centring on the codebook mean keeps the expanded form below well conditioned when codes and
    # latents sit far from the origin (distances, hence the argmin, do not change).
    origin = cb.mean(0)
    cbc = cb - origin
    c_sq = (cbc * cbc).sum(1)
    step = chunk_size or row_chunk(cb.shape[0], budget=1 << 25)  # big blocks: BLAS runs near peak
    cbt = cbc.t().contiguous()
    buf = torch.empty(min(step, n), cb.shape[0], dtype=cb.dtype, device=cb.device)  # reused: no page faults
    for s in range(0, n, step):
        xb = x[s:s + step]
        # ||x-c||^2 = ||x||^2 + ||c||^2 - 2 x.c ; the ||x||^2 term does not change the argmin.
        scores = torch.addmm(c_sq, xb - origin, cbt, alpha=-2.0, out=buf[: xb.shape[0]])
        arg = scores.argmin(1)
        idx[s:s + step] = arg
        # Recompute the winning distance directly in float64 (no cancellation of the expanded form).
        d2[s:s + step] = (xb.double() - cb[arg].double()).pow(2).sum(1)
    return idx, d2


def code_counts(indices: Any, num_codes: int) -> torch.Tensor:
    """Usage histogram of code ids; negative ids (``-1`` = masked/dropped) are ignored.

    Args:
        indices: integer tensor of any shape with values in ``[-1, num_codes)``.
        num_codes: K.

    Returns:
        ``(K,)`` int64 counts on the indices' own device.

    Raises:
        TypeError: floating indices. ValueError: an index >= K.
    """
    t = to_tensor(indices, "indices")
    if t.is_floating_point() or t.is_complex():
        raise TypeError(f"indices: expected an integer tensor, got {t.dtype}")
    if num_codes < 1:
        raise ValueError(f"num_codes: expected K >= 1, got {num_codes}")
    flat = t.reshape(-1).long()
    flat = flat[flat >= 0]
    if flat.numel() and int(flat.max()) >= num_codes:
        raise ValueError(f"indices: max id {int(flat.max())} is out of range for a codebook of K={num_codes}")
    return torch.bincount(flat, minlength=num_codes)


def _probs(counts: torch.Tensor) -> torch.Tensor:
    total = counts.sum()
    if float(total) <= 0:
        raise ValueError("counts: all counts are zero; usage metrics need at least one assignment")
    return counts / total


def utilization_perplexity(counts: Any) -> float:
    """exp(entropy) of code usage: the number of equally used codes that would give the same entropy.

    Args:
        counts: ``(K,)`` non-negative usage counts (or shares).

    Returns:
        A float in ``[1, K]``; higher is better.

    Example:
        >>> round(utilization_perplexity(torch.ones(8)), 9)
        8.0
    """
    p = _probs(as_counts(counts))
    nz = p[p > 0]
    return float(math.exp(float(-(nz * nz.log()).sum())))


def utilization(counts: Any) -> float:
    """``utilization_perplexity / K`` in ``(0, 1]``; higher is better."""
    c = as_counts(counts)
    return utilization_perplexity(c) / c.numel()


def dead_code_ratio(counts: Any, *, threshold: float = 0.0) -> float:
    """Share of codes whose usage is at or below ``threshold`` (default: never used).

    Args:
        counts: ``(K,)`` usage counts.
        threshold: a code with ``count <= threshold`` is dead. Counts are used as given (raw counts
            or shares), so choose the threshold in the same unit.

    Returns:
        A float in ``[0, 1]``; lower is better.
    """
    c = as_counts(counts)
    return float((c <= threshold).double().mean())


def expected_uniform_usage(num_codes: int, tokens: float) -> tuple[float, float]:
    """What ideal usage reaches on a finite sample: every code equally likely, ``tokens`` ids drawn.

    The reference of the usage verdict of implicit codebooks (FSQ, LFQ, BSQ): a window of N ids cannot use
    more than N codes, and chance leaves codes unseen and makes the plug-in perplexity fall short of K, so
    measured usage is compared with what a perfectly uniform quantizer would show on the same N.

    Args:
        num_codes: K.
        tokens: N, the number of ids counted.

    Returns:
        ``(codes_used, utilization)``: the expected share of codes seen at least once, ``1 - (1 - 1/K)^N``,
        and ``exp(E[H]) / K`` with ``E[H]`` the expected plug-in entropy (nats) of the N ids' histogram,
        ``log N - (K / N) E[c log c]`` with ``c ~ Binomial(N, 1/K)`` (summed over the binomial's mass).
        ``(0.0, 0.0)`` when ``tokens <= 0``.

    Example:
        >>> used, util = expected_uniform_usage(1024, 1024)
        >>> round(used, 3)
        0.632
    """
    k, n = int(num_codes), float(tokens)
    if k < 1:
        raise ValueError(f"num_codes: expected K >= 1, got {num_codes}")
    if n <= 0:
        return 0.0, 0.0
    used = -math.expm1(n * math.log1p(-1.0 / k)) if k > 1 else 1.0
    if k == 1:
        return used, 1.0
    p, lam = 1.0 / k, n / k
    sd = math.sqrt(lam * (1 - p))
    lo, hi = max(1, math.floor(lam - 12 * sd - 2)), min(int(n), math.ceil(lam + 12 * sd + 30))
    c = torch.arange(lo, hi + 1, dtype=torch.float64)
    # log pmf of Binomial(N, 1/K); the mass outside [lo, hi] is below 1e-30 (12 sd plus slack)
    logpmf = (math.lgamma(n + 1) - torch.lgamma(c + 1) - torch.lgamma(n - c + 1)
              + c * math.log(p) + (n - c) * math.log1p(-p))
    e_clogc = float((logpmf.exp() * c * c.log()).sum())
    h = math.log(n) - k * e_clogc / n
    return used, min(1.0, math.exp(h) / k)

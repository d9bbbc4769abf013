"""Usage of implicit codebooks too large to count code by code (LFQ / BSQ / FSQ with 2^23 codes and more).

Codebook-free quantizers name a code by an integer id; its usage is a histogram over K ids. Up to
``EXACT_COUNT_LIMIT`` codes (2^22: 32 MiB of int64 counts on the device, as much on the host) the monitor
counts every code exactly, as for any codebook. Above that a histogram no longer fits comfortably, and
``BitUsageStream`` keeps, per window, the statistics of the id's ``b = ceil(log2 K)`` bits instead:

- ``ones[i]``: ids whose bit ``i`` is 1;  ``pair[i, j]``: ids whose bits ``i`` and ``j`` are both 1;

``b + b^2`` numbers, updated on the device with one ``(N, b)^T (N, b)`` matmul per call and no host sync.

What they give (``bit_usage_estimates``), all in nats:

- per-bit entropies ``H(bit_i)``; a bit that is (almost) always 0 or 1 halves the usable codebook (LFQ and
  BSQ collapse shows up as such constant bits);
- ``sum_i H(bit_i)``, an upper bound on the entropy of the ids (independence maximises entropy);
- the Chow-Liu bound ``H_T = sum_i H(bit_i) - sum_{(i,j) in T} I(bit_i; bit_j)`` over the maximum spanning tree
  ``T`` of pairwise mutual information. It is the entropy of the best tree-shaped approximation of the bits'
  joint distribution with the same pairwise marginals, and ``H_T - H(ids) = KL(P || P_T) >= 0`` (Chow & Liu
  1968), so it is also an upper bound, and a tighter one. This holds exactly for the empirical distribution of
  the window, so ``exp(H_T)`` never understates the measured usage perplexity.

Because both are upper bounds, a low estimate is conclusive ("at most X% of the codes' perplexity"), a high
one is not. The ids' bits are a bijection of the ids, so the bounds hold for any implicit codebook; the per-bit
reading is meaningful for LFQ / BSQ, whose id bits are the quantized signs.
"""
from __future__ import annotations

import math
from typing import Any

import torch

EXACT_COUNT_LIMIT = 2 ** 22
"""Implicit codebooks up to this many codes get exact per-code counts; larger ones get ``BitUsageStream``."""


class BitUsageStream:
    """Per-bit and pairwise bit counts of code ids, for one implicit codebook too large to histogram.

    Args:
        num_codes: K (any size; ``b = ceil(log2 K)`` bits are tracked, at most 63).
    """

    reservoir_size = 0

    def __init__(self, num_codes: int):
        if int(num_codes) < 2:
            raise ValueError(f"BitUsageStream: num_codes must be >= 2, got {num_codes}")
        self.num_codes = int(num_codes)
        self.bits = max(1, math.ceil(math.log2(self.num_codes)))
        if self.bits > 63:
            raise ValueError(f"BitUsageStream: at most 2^63 codes, got K={num_codes}")
        self._pair: torch.Tensor | None = None  # (b, b) float64
        self._ones: torch.Tensor | None = None  # (b,) float64
        self._n: torch.Tensor | None = None  # 0-d float64: valid ids this window
        self._shifts: torch.Tensor | None = None
        self.cumulative_ids = 0  # host: valid ids in closed windows
        self.updates = 0

    def update_indices(self, indices: torch.Tensor) -> None:
        """Add code ids of any shape (``-1`` and other negative ids ignored); no host sync."""
        idx = indices.detach().reshape(-1).long()
        dev = idx.device
        if self._ones is None or self._ones.device != dev:
            b = self.bits
            self._pair = torch.zeros(b, b, dtype=torch.float64, device=dev)
            self._ones = torch.zeros(b, dtype=torch.float64, device=dev)
            self._n = torch.zeros((), dtype=torch.float64, device=dev)
            self._shifts = torch.arange(b, device=dev)
        valid = (idx >= 0).float()
        # float32 0/1 matmul is exact (TF32 too: 0 and 1 are exact, sums of < 2^24 ones are exact in fp32)
        bits = ((idx.clamp(min=0)[:, None] >> self._shifts) & 1).float() * valid[:, None]
        self._pair += (bits.T @ bits).double()
        self._ones += bits.sum(0).double()
        self._n += valid.sum().double()
        self.updates += 1

    def update_latents(self, *args: Any, **kwargs: Any) -> None:
        """Implicit codebooks have no latents to sample."""

    def reservoir(self) -> None:
        return None

    def seen(self) -> int:
        return 0

    def window_stats(self) -> tuple[int, torch.Tensor, torch.Tensor]:
        """``(n, ones (b,), pair (b, b))`` of the current window, on host (float64 counts)."""
        if self._ones is None:
            b = self.bits
            return 0, torch.zeros(b, dtype=torch.float64), torch.zeros(b, b, dtype=torch.float64)
        return int(self._n), self._ones.cpu(), self._pair.cpu()

    def load_window(self, n: float, ones: torch.Tensor, pair: torch.Tensor) -> None:
        """Replace the window statistics (after a DDP reduction)."""
        dev = ones.device
        self._shifts = torch.arange(self.bits, device=dev)
        self._n = torch.as_tensor(float(n), dtype=torch.float64, device=dev)
        self._ones, self._pair = ones.double().clone(), pair.double().clone()

    def all_reduce(self, *, device: torch.device | str, group: Any = None) -> None:
        """Sum the window statistics over every rank (report time only; every rank must call it)."""
        import torch.distributed as dist

        b = self.bits
        flat = torch.zeros(1 + b + b * b, dtype=torch.float64, device=device)
        if self._ones is not None:
            flat[0] = self._n.to(device)
            flat[1:1 + b] = self._ones.to(device)
            flat[1 + b:] = self._pair.to(device).reshape(-1)
        dist.all_reduce(flat, group=group)
        self.load_window(float(flat[0]), flat[1:1 + b], flat[1 + b:].reshape(b, b))

    def close_window(self, *_: Any) -> None:
        """Start a new window (the bit statistics describe one window; ids seen are kept in a running total)."""
        if self._ones is not None:
            self.cumulative_ids += int(self._n)
            self._ones.zero_()
            self._pair.zero_()
            self._n.zero_()
        self.updates = 0


def _h(p: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of Bernoulli(p), elementwise (0 log 0 = 0)."""
    q = 1 - p
    return -(torch.where(p > 0, p * p.clamp_min(1e-300).log(), 0.0)
             + torch.where(q > 0, q * q.clamp_min(1e-300).log(), 0.0))


def pairwise_mutual_information(n: float, ones: torch.Tensor, pair: torch.Tensor) -> torch.Tensor:
    """``(b, b)`` mutual information (nats) between bits from their 2x2 joint counts; diagonal 0."""
    n = float(n)
    o = ones.double()
    n11 = pair.double()
    n10 = o[:, None] - n11
    n01 = o[None, :] - n11
    n00 = n - o[:, None] - o[None, :] + n11
    pi, pj = o[:, None] / n, o[None, :] / n
    mi = torch.zeros_like(n11)
    for cell, a, c in ((n11, pi, pj), (n10, pi, 1 - pj), (n01, 1 - pi, pj), (n00, 1 - pi, 1 - pj)):
        p = cell.clamp_min(0) / n
        mi += torch.where(p > 0, p * (p.clamp_min(1e-300) / (a * c).clamp_min(1e-300)).log(), 0.0)
    mi.fill_diagonal_(0.0)
    return mi.clamp_min(0.0)


def _max_spanning_tree_weight(w: torch.Tensor) -> float:
    """Total weight of a maximum spanning tree of the complete graph with weights ``w`` (Prim, b <= 63)."""
    b = w.shape[0]
    if b < 2:
        return 0.0
    inside = [0]
    best = w[0].clone()
    best[0] = -math.inf
    total = 0.0
    for _ in range(b - 1):
        j = int(torch.argmax(best))
        total += float(best[j])
        inside.append(j)
        best = torch.maximum(best, w[j])
        best[inside] = -math.inf
    return total


def bit_usage_estimates(n: float, ones: torch.Tensor, pair: torch.Tensor, num_codes: int) -> dict[str, Any]:
    """Entropy bounds on code usage from per-bit and pairwise counts (see the module docstring).

    Args:
        n: number of ids counted.
        ones: ``(b,)`` ids with bit ``i`` set.
        pair: ``(b, b)`` ids with bits ``i`` and ``j`` set.
        num_codes: K.

    Returns:
        ``{"ids": n, "bit_entropy": [b floats, nats], "constant_bits": int (entropy < 0.01 nats),
        "perplexity_bound_independent": exp(sum H), "perplexity_bound": exp(H_T) (Chow-Liu),
        "utilization_bound": exp(H_T) / K}``; bounds are None when ``n == 0``.
    """
    if n <= 0:
        return {"ids": 0, "bit_entropy": None, "constant_bits": None, "perplexity_bound_independent": None,
                "perplexity_bound": None, "utilization_bound": None}
    hb = _h((ones.double() / float(n)).clamp(0, 1))
    h_indep = float(hb.sum())
    h_tree = max(0.0, h_indep - _max_spanning_tree_weight(pairwise_mutual_information(n, ones, pair)))
    return {"ids": int(n), "bit_entropy": [float(x) for x in hb], "constant_bits": int((hb < 0.01).sum()),
            "perplexity_bound_independent": math.exp(h_indep), "perplexity_bound": math.exp(h_tree),
            "utilization_bound": math.exp(h_tree) / num_codes}


def bit_usage_health(name: str, num_codes: int, n: float, ones: torch.Tensor, pair: torch.Tensor,
                     thresholds: Any) -> tuple[Any, dict[str, Any]]:
    """A usage-only ``CodebookHealth`` (exact usage metrics None, so its verdict cannot tell) plus the estimates,
    with a ``low_utilization`` warning when even the upper bound on utilization is below
    ``thresholds.min_utilization`` (conclusive, because it is a bound)."""
    from .metrics import CodebookHealth, judge_health

    h = judge_health(CodebookHealth(name=name, num_codes=num_codes, dim=0), thresholds, all_zero=False)
    est = bit_usage_estimates(n, ones, pair, num_codes)
    u = est["utilization_bound"]
    if u is not None and u < thresholds.min_utilization:
        const = f"; {est['constant_bits']} of {len(est['bit_entropy'])} id bits are constant" \
            if est["constant_bits"] else ""
        h.warnings.append({"code": "low_utilization", "message":
                           f"usage perplexity is at most {est['perplexity_bound']:.4g}, {u:.2%} of K={num_codes} "
                           f"(< {thresholds.min_utilization:.0%}; an upper bound from per-bit and pairwise "
                           f"statistics of {est['ids']} ids{const})"})
    return h, est

"""Usage of implicit codebooks too large to count code by code (LFQ / BSQ / FSQ with 2^23 codes and more).

Codebook-free quantizers name a code by an integer id; its usage is a histogram over K ids. Up to
``EXACT_COUNT_LIMIT`` codes (2^22: 32 MiB of int64 counts on the device, as much on the host) the monitor
counts every code exactly, as for any codebook. Above that a histogram no longer fits comfortably, and
``BitUsageStream`` keeps, per window, the statistics of the id's ``b = ceil(log2 K)`` bits instead:

- ``ones[i]``: ids whose bit ``i`` is 1;  ``pair[i, j]``: ids whose bits ``i`` and ``j`` are both 1;

``b + b^2`` numbers, counted on the device with one ``(N, b + 1)^T (N, b + 1)`` matmul per ``flush_rows`` ids
(a step only copies its ids; see ``BitUsageStream``) and no host sync.

What they give (``bit_usage_estimates``), all in nats:

- per-bit entropies ``H(bit_i)``; a bit that is (almost) always 0 or 1 halves the usable codebook (LFQ and
  BSQ collapse shows up as such constant bits);
- ``sum_i H(bit_i)``, an upper bound on the entropy of the ids (independence maximises entropy);
- the Chow-Liu bound ``H_T = sum_i H(bit_i) - sum_{(i,j) in T} I(bit_i; bit_j)`` over the maximum spanning tree
  ``T`` of pairwise mutual information. It is the entropy of the best tree-shaped approximation of the bits'
  joint distribution with the same pairwise marginals, and ``H_T - H(ids) = KL(P || P_T) >= 0`` (Chow & Liu
  1968), so it is also an upper bound, and a tighter one. This holds exactly for the empirical distribution of
  the window, so ``exp(H_T)`` never understates the measured usage perplexity.

- ``codes_used_bound``: bits that never vary, and bits tied to each other (always equal or always different),
  rule ids out, which bounds the share of codes used in the window from above.

Because all are upper bounds, a low estimate is conclusive ("at most X% of the codes' perplexity"), a high
one is not: the verdict of such a codebook (metrics/implicit_verdict.py) can be ``underused``, never
``healthy``. The ids' bits are a bijection of the ids, so the bounds hold for any implicit codebook; the per-bit
reading is meaningful for LFQ / BSQ, whose id bits are the quantized signs.
"""
from __future__ import annotations

import math
from typing import Any

import torch

EXACT_COUNT_LIMIT = 2 ** 22
"""Implicit codebooks up to this many codes get exact per-code counts; larger ones get ``BitUsageStream``.
Read when ``watch`` is called: raise it (``shrinkscope.implicit.EXACT_COUNT_LIMIT = ...``) to count more codes
exactly, at 8 bytes of device memory (and as many on the host) per code."""


class BitUsageStream:
    """Per-bit and pairwise bit counts of code ids, for one implicit codebook too large to histogram.

    On a GPU the per-step cost is one copy of the step's ids (the caller may reuse its tensor); the bit counts
    are taken every ``flush_rows`` ids or more, in one ``(n, b + 1)^T (n, b + 1)`` matmul over the ids kept
    since the last flush, and at report time. Every id is counted (nothing is sampled): batching only changes
    when the counts are added, so the kernel launches of the counting (about ten) are paid once per flush
    rather than once per step. Memory: at most ``flush_rows`` ids plus one call's worth are kept. On a CPU,
    where there are no launches to amortise, ids are counted as they come, in cache-sized chunks.

    Args:
        num_codes: K (any size; ``b = ceil(log2 K)`` bits are tracked, at most 63).
    """

    reservoir_size = 0
    flush_rows = 1 << 17
    """Ids kept before the bit counts are taken (the counting's temporaries are at most
    ``max(flush_rows, 2^16) x (b + 1)``, and at most ``2^23 x (b + 1)``)."""
    batch_on_cpu = False
    """Batch on a CPU too (default: count CPU ids as they come, in chunks of 2^14 that stay in cache, which
    measured faster there; the tests set it to exercise the batched path without a GPU)."""

    def __init__(self, num_codes: int):
        if int(num_codes) < 2:
            raise ValueError(f"BitUsageStream: num_codes must be >= 2, got {num_codes}")
        self.num_codes = int(num_codes)
        self.bits = (self.num_codes - 1).bit_length()  # ceil(log2 K), exact for any integer K >= 2
        if self.bits > 63:
            raise ValueError(f"BitUsageStream: at most 2^63 codes, got K={num_codes}")
        # (b + 1, b + 1) float64 on the ids' device: [:b, :b] pair counts, [:b, b] ones, [b, b] valid ids
        self._m: torch.Tensor | None = None
        self._shifts: torch.Tensor | None = None
        self._pending: list[torch.Tensor] = []  # ids not counted yet (copies, on their device)
        self._pending_rows = 0  # host: from shapes only, no sync
        self.cumulative_ids = 0  # host: valid ids in closed windows
        self.updates = 0

    def update_indices(self, indices: torch.Tensor) -> None:
        """Add code ids of any shape (``-1`` and other negative ids ignored); no host sync."""
        flat = indices.detach().reshape(-1)
        if self._pending and self._pending[0].device != flat.device:
            self._flush()
        # ids < 2^30 fit int32: half the memory while kept, and the copy is the one kernel of the step
        dtype = torch.int32 if self.bits <= 30 else torch.int64
        if flat.device.type == "cpu" and not self.batch_on_cpu:  # no launches to amortise: count now
            self._count(flat.to(dtype), chunk=1 << 14)
            self.updates += 1
            return
        self._pending.append(flat.to(dtype, copy=True))
        self._pending_rows += flat.numel()
        self.updates += 1
        if self._pending_rows >= self.flush_rows:
            self._flush()

    def _flush(self) -> None:
        """Count the kept ids into the bit statistics (on their device, no host sync)."""
        if not self._pending:
            return
        ids = self._pending[0] if len(self._pending) == 1 else torch.cat(self._pending)
        self._pending, self._pending_rows = [], 0
        # chunks bound the temporaries even for one huge call, and keep each fp32 sum below 2^24 (exact)
        self._count(ids, chunk=min(max(self.flush_rows, 1 << 16), 1 << 23))

    def _count(self, ids: torch.Tensor, *, chunk: int) -> None:
        """Add flat int ids to the bit statistics, ``chunk`` rows at a time (on their device, no host sync)."""
        dev, b = ids.device, self.bits
        if self._m is None:
            self._m = torch.zeros(b + 1, b + 1, dtype=torch.float64, device=dev)
        elif self._m.device != dev:
            self._m = self._m.to(dev)
        if self._shifts is None or self._shifts.device != dev or self._shifts.dtype != ids.dtype:
            self._shifts = torch.arange(b + 1, device=dev, dtype=ids.dtype)
        flag = 1 << b if b < 63 else -(1 << 63)  # bit b: set on every valid id, so column b counts them
        for s in range(0, ids.numel(), chunk):
            x = ids[s:s + chunk]
            x = torch.where(x >= 0, x | flag, 0)  # a negative (ignored) id becomes all-zero bits
            bits = ((x[:, None] >> self._shifts) & 1).float()
            self._m += bits.T @ bits  # 0/1 products summed in fp32 (also under TF32): exact below 2^24 rows

    def update_latents(self, *args: Any, **kwargs: Any) -> None:
        """Implicit codebooks have no latents to sample."""

    def reservoir(self) -> None:
        return None

    def seen(self) -> int:
        return 0

    def window_stats(self) -> tuple[int, torch.Tensor, torch.Tensor]:
        """``(n, ones (b,), pair (b, b))`` of the current window, on host (float64 counts)."""
        self._flush()
        b = self.bits
        if self._m is None:
            return 0, torch.zeros(b, dtype=torch.float64), torch.zeros(b, b, dtype=torch.float64)
        m = self._m.cpu()
        return int(m[b, b]), m[:b, b].clone(), m[:b, :b].clone()

    def load_window(self, n: float, ones: torch.Tensor, pair: torch.Tensor) -> None:
        """Replace the window statistics (after a DDP reduction); ids not yet counted are dropped."""
        b = self.bits
        self._pending, self._pending_rows = [], 0
        m = torch.zeros(b + 1, b + 1, dtype=torch.float64, device=ones.device)
        m[:b, :b], m[:b, b], m[b, :b], m[b, b] = pair.double(), ones.double(), ones.double(), float(n)
        self._m = m

    def all_reduce(self, *, device: torch.device | str, group: Any = None) -> None:
        """Sum the window statistics over every rank (report time only; every rank must call it)."""
        import torch.distributed as dist

        self._flush()
        b = self.bits
        m = torch.zeros(b + 1, b + 1, dtype=torch.float64, device=device) if self._m is None \
            else self._m.to(device)
        dist.all_reduce(m, group=group)
        self._m = m

    def close_window(self, *_: Any) -> None:
        """Start a new window (the bit statistics describe one window; ids seen are kept in a running total)."""
        self._flush()
        if self._m is not None:
            self.cumulative_ids += int(self._m[self.bits, self.bits])
            self._m.zero_()
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


def codes_used_bound(n: float, ones: torch.Tensor, pair: torch.Tensor, num_codes: int) -> float:
    """An upper bound on the share of the K codes used in the window, from bits and pairs that never vary.

    A bit that is constant over the window rules out every id with the other value. Two bits whose 2x2 table
    has two empty cells always agree (or always differ): such ties join bits into groups, and a group of ``s``
    bits takes 2 of its ``2^s`` patterns. Constraints on disjoint bits multiply, so of the ``2^b`` bit patterns
    at most ``2^b * share`` occur, and at most that many of the K codes were used. Exact for the window (no
    chance involved) and the same under any relabelling of the bits; 1.0 when no bit is constant or tied, or
    when ``n == 0``. Weaker dependence (one empty cell, or none) shows in the Chow-Liu perplexity bound.
    """
    b = ones.numel()
    if n <= 0 or b == 0:
        return 1.0
    n = float(n)
    o = ones.double()
    constant = (o <= 0) | (o >= n)
    n11 = pair.double()
    cells = torch.stack([n11, o[:, None] - n11, o[None, :] - n11, n - o[:, None] - o[None, :] + n11])
    empty = (cells <= 0).sum(0)  # (b, b): empty cells of each pair's 2x2 table
    free = [i for i in range(b) if not bool(constant[i])]
    root = {i: i for i in free}  # union-find over bits tied by two empty cells (equal or complementary)

    def find(i: int) -> int:
        while root[i] != i:
            root[i] = root[root[i]]
            i = root[i]
        return i

    for x, i in enumerate(free):
        for j in free[x + 1:]:
            if int(empty[i, j]) == 2:
                root[find(i)] = find(j)
    groups: dict[int, int] = {}
    for i in free:
        groups[find(i)] = groups.get(find(i), 0) + 1
    share = 0.5 ** int(constant.sum()) * math.prod(0.5 ** (s - 1) for s in groups.values())
    return min(1.0, share * 2 ** b / num_codes)


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
        "utilization_bound": exp(H_T) / K, "codes_used_bound": ``codes_used_bound``}``; bounds are None when
        ``n == 0``.
    """
    if n <= 0:
        return {"ids": 0, "bit_entropy": None, "constant_bits": None, "perplexity_bound_independent": None,
                "perplexity_bound": None, "utilization_bound": None, "codes_used_bound": None}
    hb = _h((ones.double() / float(n)).clamp(0, 1))
    h_indep = float(hb.sum())
    h_tree = max(0.0, h_indep - _max_spanning_tree_weight(pairwise_mutual_information(n, ones, pair)))
    return {"ids": int(n), "bit_entropy": [float(x) for x in hb], "constant_bits": int((hb < 0.01).sum()),
            "perplexity_bound_independent": math.exp(h_indep), "perplexity_bound": math.exp(h_tree),
            "utilization_bound": min(1.0, math.exp(h_tree) / num_codes),
            "codes_used_bound": codes_used_bound(n, ones, pair, num_codes)}


def bit_usage_health(name: str, num_codes: int, n: float, ones: torch.Tensor, pair: torch.Tensor,
                     thresholds: Any = None) -> tuple[Any, dict[str, Any]]:
    """A usage-only ``CodebookHealth`` judged on the bounds (exact usage metrics None), plus the estimates.

    The verdict (metrics/implicit_verdict.py) is ``underused`` when the upper bound on the share of codes used
    or on perplexity / K falls below its threshold (conclusive, because they are bounds), else ``cannot_tell``:
    a high bound cannot show healthy use.
    """
    from .metrics import CodebookHealth
    from .metrics.verdict import HealthThresholds, Judged, judge

    est = bit_usage_estimates(n, ones, pair, num_codes)
    h = CodebookHealth(name=name, num_codes=num_codes, dim=0)
    h.judged = Judged(num_codes, 0, ("usage",), {"utilization_bound": est["utilization_bound"],
                                                 "codes_used_bound": est["codes_used_bound"]},
                      implicit=True, tokens=float(n), bounds=True)
    h.warnings, h.verdict = judge(h.judged, thresholds or HealthThresholds())
    return h, est

"""Streaming state of one codebook: usage counts and a fixed-size reservoir sample of latents.

Per-step updates (``update_indices``, ``update_latents``) run entirely on the tensors' own device with
fixed-shape kernels: no ``.item()``, no ``nonzero``, no boolean-mask indexing, nothing that makes the
host wait for the GPU. Everything that needs host values (``window_counts``, ``reservoir``, merging,
DDP reduction) happens at report time only.

Counts: a scatter-add histogram (``torch.bincount`` would sync on CUDA to size its output). ``-1`` and
other negative ids are ignored; ids ``>= K`` land in an overflow bin, checked at report time.

Reservoir: Algorithm R (Vitter 1985) vectorised per batch. The row at global position ``p`` (0-based,
among valid rows) goes to slot ``p`` while ``p < R``, else to slot ``j ~ U{0..p}`` if ``j < R``; when
several rows of one batch pick the same slot the latest wins, exactly as in the sequential algorithm.
The running count lives on the device, so padding masks need no sync either. Memory: ``R x D`` floats.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

__all__ = ["CodebookStream", "merge_reservoirs", "reduce_streams"]


class CodebookStream:
    """Usage counts (window and cumulative) and a latent reservoir for one codebook.

    Args:
        num_codes: K.
        reservoir_size: R, the number of latents kept (uniform sample of the current window).
        seed: seed of the private random generator (the global RNG is never touched, so training
            randomness is the same with and without a monitor).
    """

    def __init__(self, num_codes: int, *, reservoir_size: int = 4096, seed: int = 0):
        if int(num_codes) < 1:
            raise ValueError(f"CodebookStream: num_codes must be >= 1, got {num_codes}")
        if int(reservoir_size) < 0:
            raise ValueError(f"CodebookStream: reservoir_size must be >= 0, got {reservoir_size}")
        self.num_codes = int(num_codes)
        self.reservoir_size = int(reservoir_size)
        self.seed = int(seed)
        self._hist: torch.Tensor | None = None  # (K + 2,) int64: K codes, ignored (-1), overflow (>= K)
        self.cumulative = torch.zeros(self.num_codes, dtype=torch.int64)  # merged, on host
        self._res: torch.Tensor | None = None  # (R + 1, D) float32 on the latents' device; row R: dump
        self._seen: torch.Tensor | None = None  # 0-d int64 on device: valid latent rows offered this window
        self._gen: torch.Generator | None = None
        self._slots: torch.Tensor | None = None  # arange(R + 1) cache
        self.updates = 0  # host counter of index updates in the window (cheap, no sync)

    # ---- per-step path (no host sync) ------------------------------------------------------------

    def update_indices(self, indices: torch.Tensor) -> None:
        """Add code ids of any shape to the window histogram (``-1`` ignored)."""
        idx = indices.detach().reshape(-1).long()
        if self._hist is None or self._hist.device != idx.device:
            self._hist = torch.zeros(self.num_codes + 2, dtype=torch.int64, device=idx.device)
        k = self.num_codes
        slot = torch.where(idx < 0, k, torch.where(idx >= k, k + 1, idx))
        self._hist.scatter_add_(0, slot, torch.ones_like(slot))
        self.updates += 1

    def update_latents(self, latents: torch.Tensor, *, valid: torch.Tensor | None = None,
                       transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """Offer latent rows to the reservoir.

        Args:
            latents: ``(..., D_in)``; every leading index is one row (a non-contiguous view is fine:
                only the sampled rows are gathered).
            valid: optional bool, one entry per row; False rows are never sampled nor counted.
            transform: maps gathered rows ``(R, D_in)`` to codebook space ``(R, D)``.
        """
        r = self.reservoir_size
        if r == 0:
            return
        x = latents.detach()
        lead = x.shape[:-1]
        n = int(np.prod(lead)) if len(lead) else 1
        if n == 0:
            return
        dev = x.device
        if self._gen is None or self._gen.device != dev:
            self._gen = torch.Generator(device=dev).manual_seed(self.seed)
            self._slots = torch.arange(r + 1, device=dev)
        if self._seen is None:
            self._seen = torch.zeros((), dtype=torch.int64, device=dev)
        if valid is None:
            pos = self._seen + torch.arange(n, device=dev)
            ok = None
            self._seen = self._seen + n
        else:
            ok = valid.detach().reshape(-1).to(dev, torch.bool)
            c = torch.cumsum(ok.long(), 0)
            pos = self._seen + c - 1
            self._seen = self._seen + c[-1]
        u = torch.rand(n, dtype=torch.float64, device=dev, generator=self._gen)
        slot = torch.where(pos < r, pos, torch.floor(u * (pos + 1).double()).long())
        keep = slot < r if ok is None else (slot < r) & ok
        slot = torch.where(keep, slot, r)  # slot R is a dump
        winner = torch.full((r + 1,), -1, dtype=torch.int64, device=dev)
        winner.scatter_reduce_(0, slot, torch.arange(n, device=dev), reduce="amax", include_self=True)
        if n <= r:
            # Few rows: write every row that won its slot (losers go to the dump row R).
            mine = torch.arange(n, device=dev)
            dest = torch.where((winner[slot] == mine) & (slot < r), slot, r)
            rows = x.reshape(n, x.shape[-1])
        else:
            # Many rows: gather the (at most R) winners only, so ``transform`` runs on R rows, not n.
            winner = winner[:r]
            take = winner.clamp(min=0)
            rows = x.reshape(n, x.shape[-1])[take] if x.is_contiguous() or len(lead) <= 1 \
                else x[_unravel(take, lead)]
            dest = torch.where(winner >= 0, self._slots[:r], r)
        with torch.no_grad():
            rows = (transform(rows) if transform is not None else rows).float()
        if self._res is None or self._res.shape[1] != rows.shape[1] or self._res.device != dev:
            self._res = torch.zeros(r + 1, rows.shape[1], dtype=torch.float32, device=dev)
        self._res.index_copy_(0, dest, rows)  # only the dump row R can receive several rows

    # ---- report time ------------------------------------------------------------------------------

    @property
    def dim(self) -> int | None:
        """D of the sampled latents (None before the first latents)."""
        return None if self._res is None else int(self._res.shape[1])

    def window_counts(self) -> torch.Tensor:
        """``(K,)`` int64 usage counts of the current window, on host."""
        if self._hist is None:
            return torch.zeros(self.num_codes, dtype=torch.int64)
        return self._hist[: self.num_codes].cpu()

    def overflow(self) -> int:
        """Number of ids ``>= K`` seen in the window (should be 0: they are not code ids)."""
        return 0 if self._hist is None else int(self._hist[self.num_codes + 1])

    def seen(self) -> int:
        """Valid latent rows offered to the reservoir in the current window."""
        return 0 if self._seen is None else int(self._seen)

    def reservoir(self) -> torch.Tensor | None:
        """``(min(seen, R), D)`` float32 sampled latents of the window (None before any latents)."""
        if self._res is None:
            return None
        return self._res[: min(self.seen(), self.reservoir_size)].clone()  # row R is the dump

    def close_window(self, window_counts: torch.Tensor | None = None) -> None:
        """Add the window's counts (or the given merged ones) to ``cumulative`` and start a new window.

        The reservoir is emptied too: each window's latents are a uniform sample of that window, so
        metrics follow the encoder as it trains.
        """
        wc = self.window_counts() if window_counts is None else window_counts.to("cpu", torch.int64)
        self.cumulative += wc
        if self._hist is not None:
            self._hist.zero_()
        if self._seen is not None:
            self._seen = torch.zeros_like(self._seen)
        self.updates = 0

    def resize(self, num_codes: int) -> None:
        """Follow a codebook whose K the user changed: drop the current window (its ids belong to two
        codebooks), keep the cumulative counts of the codes that still exist, and start a new window with
        ``num_codes`` codes (the latent sample is dropped too: D may have changed with K)."""
        if int(num_codes) < 1:
            raise ValueError(f"CodebookStream.resize: num_codes must be >= 1, got {num_codes}")
        old, self.num_codes = self.num_codes, int(num_codes)
        cumulative = torch.zeros(self.num_codes, dtype=torch.int64)
        cumulative[: min(old, self.num_codes)] = self.cumulative[: min(old, self.num_codes)]
        self.cumulative = cumulative
        self._hist, self._res, self._seen = None, None, None
        self.updates = 0

    def merge(self, other: CodebookStream, *, seed: int = 0) -> CodebookStream:
        """Fold another stream of the same codebook (e.g. another rank) into this one, in place.

        Counts add exactly; the reservoirs combine into a uniform sample of the union (rows drawn
        from each side in proportion to the rows each side saw).
        """
        if other.num_codes != self.num_codes:
            raise ValueError(f"merge: streams have K={self.num_codes} and K={other.num_codes}; merge one codebook")
        wc = self.window_counts() + other.window_counts()
        ov = self.overflow() + other.overflow()
        res, seen = merge_reservoirs([(self.reservoir(), self.seen()), (other.reservoir(), other.seen())],
                                     self.reservoir_size, seed=seed)
        self.cumulative += other.cumulative
        self.load_window(wc, res, seen, overflow=ov)
        return self

    def load_window(self, counts: torch.Tensor, reservoir: torch.Tensor | None, seen: int, *,
                    overflow: int = 0) -> None:
        """Replace the window state (used after merging or a DDP reduction)."""
        dev = self._hist.device if self._hist is not None else counts.device
        self._hist = torch.zeros(self.num_codes + 2, dtype=torch.int64, device=dev)
        self._hist[: self.num_codes] = counts.to(dev, torch.int64)
        self._hist[self.num_codes + 1] = int(overflow)
        if reservoir is not None and reservoir.shape[0] > 0:
            self._res = torch.zeros(self.reservoir_size + 1, reservoir.shape[1], dtype=torch.float32,
                                    device=reservoir.device)
            self._res[: reservoir.shape[0]] = reservoir.float()
            # The merged sample stands for ``seen`` rows, so later rows enter at Algorithm R's true rate.
            self._seen = torch.tensor(int(seen), dtype=torch.int64, device=reservoir.device)
        else:
            self._res, self._seen = None, None


def _unravel(flat: torch.Tensor, shape: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    """Multi-index of flat row ids (``torch.unravel_index`` copies its coefficients host-to-device,
    a sync on CUDA; Python-int divisors are kernel arguments)."""
    out, stride = [], 1
    for size in reversed(shape):
        out.append(torch.remainder(torch.div(flat, stride, rounding_mode="floor"), size))
        stride *= size
    return tuple(reversed(out))


def reduce_streams(streams: list[CodebookStream], dims: list[int | None], *, device: torch.device | str,
                   group=None, seed: int = 0) -> None:
    """Sum window counts and gather reservoirs over all ranks of ``torch.distributed`` (report time only).

    Every rank must call this with the same streams in the same order; afterwards each rank holds the
    merged window (identical counts everywhere; the merged reservoir is drawn with the same seed).

    Args:
        streams: one stream per codebook.
        dims: latent width D per stream (None: the codebook has no latents; nothing gathered).
        device: where the collectives run (a CUDA device under NCCL, CPU under gloo).
        group: process group (default: the world).
        seed: seed of the reservoir merge (same on every rank).
    """
    import torch.distributed as dist

    world = dist.get_world_size(group)
    for s, d in zip(streams, dims):
        k = s.num_codes
        hist = torch.zeros(k + 2, dtype=torch.int64, device=device)
        if s._hist is not None:
            hist += s._hist.to(device)
        dist.all_reduce(hist, group=group)
        res, seen = None, 0
        if d is not None and s.reservoir_size > 0:
            local = torch.zeros(s.reservoir_size, d, dtype=torch.float32, device=device)
            mine = s.reservoir()
            if mine is not None and mine.shape[0] > 0 and mine.shape[1] == d:
                local[: mine.shape[0]] = mine.to(device)
            meta = torch.tensor([s.seen(), 0 if mine is None else mine.shape[0]], dtype=torch.int64,
                                device=device)
            all_res = [torch.empty_like(local) for _ in range(world)]
            all_meta = [torch.empty_like(meta) for _ in range(world)]
            dist.all_gather(all_res, local, group=group)
            dist.all_gather(all_meta, meta, group=group)
            parts = [(r[: int(m[1])], int(m[0])) for r, m in zip(all_res, all_meta)]
            res, seen = merge_reservoirs(parts, s.reservoir_size, seed=seed)
        s.load_window(hist[:k], res, seen, overflow=int(hist[k + 1]))


def merge_reservoirs(parts: list[tuple[torch.Tensor | None, int]], size: int, *, seed: int = 0
                     ) -> tuple[torch.Tensor | None, int]:
    """Combine uniform samples of disjoint streams into one uniform sample of their union.

    Args:
        parts: ``[(sample (n_i, D) or None, rows seen by that stream), ...]``.
        size: size of the merged sample.
        seed: seed of the draw.

    Returns:
        ``(merged (m, D) or None, total rows seen)`` with ``m = min(size, total)``.
    """
    seen = [int(s) for _, s in parts]
    total = sum(seen)
    samples = [p for p, _ in parts]
    if total == 0 or all(p is None or p.shape[0] == 0 for p in samples):
        return None, total
    rng = np.random.default_rng(seed)
    m = min(size, total)
    # How many of the merged rows come from each stream: a draw without replacement over the union.
    take = rng.multivariate_hypergeometric(np.array(seen, dtype=np.int64), m)
    chunks = []
    for (sample, _), t in zip(parts, take):
        if sample is None or t == 0:
            continue
        t = min(int(t), sample.shape[0])
        perm = torch.from_numpy(rng.permutation(sample.shape[0])[:t]).to(sample.device)
        chunks.append(sample[perm])
    return torch.cat(chunks, 0), total

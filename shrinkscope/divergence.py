"""Rank divergence: do all DDP ranks hold the same codebook? (report time only)

Under DDP a codebook must be identical on every rank: the ids of one rank mean the same codes as on any
other, and the checkpoint that rank 0 writes is the model every rank trained. Codebooks updated outside
DDP's gradient all-reduce drift apart silently when their own sync is off or broken: EMA statistics
(encodec #16), k-means initialisation on each rank's own batch (vector-quantize-pytorch #17), in-place
codebook optimisers (vector-quantize-pytorch #222).

The check is cheap and runs only when a report is made, never per step: each rank reduces its ``(K, D)``
codebook to a fingerprint ``(K, 2)`` (each code's norm and its projection on one fixed random unit
vector, the same on every rank), and one ``all_gather`` per codebook brings every rank's fingerprint
everywhere. Any change to a code changes its projection with probability 1, so equal fingerprints mean
equal codebooks up to float noise; unequal ones give the size of the difference per code.
"""
from __future__ import annotations

import math
from typing import Any

import torch

RANK_DIVERGENCE_TOL = 1e-5
"""Largest per-code difference of the fingerprint, relative to the mean code norm of rank 0, still counted
as equal (float32 round-off of identical arithmetic is ~1e-7; a real drift is orders of magnitude larger)."""


def fingerprint(codebook: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
    """``(K, 2)`` float64: each code's norm and its projection on a fixed random unit vector.

    Args:
        codebook: ``(K, D)``.
        seed: seed of the projection (must be the same on every rank).
    """
    cb = codebook.detach().to(torch.float64)
    u = torch.randn(cb.shape[1], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    u = (u / u.norm().clamp_min(1e-300)).to(cb.device)
    return torch.stack([cb.norm(dim=1), cb @ u], dim=1)


def compare_fingerprints(prints: list[torch.Tensor], *, tol: float = RANK_DIVERGENCE_TOL) -> dict[str, Any] | None:
    """Compare every rank's fingerprint with rank 0's.

    Args:
        prints: one ``(K, 2)`` fingerprint per rank, rank order.
        tol: relative tolerance (see ``RANK_DIVERGENCE_TOL``).

    Returns:
        None when every rank matches rank 0, else ``{"ranks": [ranks that differ], "codes_differing": int
        (most on one rank), "relative_difference": float (largest per-code distance between fingerprints /
        mean code norm on rank 0)}``.
    """
    ref = prints[0].double().cpu()
    scale = max(float(ref[:, 0].mean()) if ref.numel() else 0.0, 1e-12)
    ranks, worst, n_codes = [], 0.0, 0
    for r, p in enumerate(prints[1:], start=1):
        d = (p.double().cpu() - ref).norm(dim=1) / scale
        bad = ~(d <= tol)  # NaN (a rank that could not read its codebook) counts as different
        if bool(bad.any()):
            ranks.append(r)
            n_codes = max(n_codes, int(bad.sum()))
            finite = d[torch.isfinite(d)]
            worst = max(worst, float(finite.max()) if finite.numel() else math.inf)
    if not ranks:
        return None
    return {"ranks": ranks, "codes_differing": n_codes, "relative_difference": worst}


def rank_divergence(codebooks: dict[str, torch.Tensor | None], num_codes: dict[str, int], *,
                    device: torch.device | str, group: Any = None, seed: int = 0
                    ) -> dict[str, dict[str, Any]]:
    """All-gather codebook fingerprints and name the codebooks whose ranks disagree.

    Every rank must call this with the same names in the same order (a rank that could not read a codebook
    passes None and is reported as differing, so the collectives always match).

    Args:
        codebooks: ``{name: (K, D) codebook or None}`` of this rank.
        num_codes: ``{name: K}`` (the fingerprint's shape, known on every rank).
        device: where the collectives run (CUDA under NCCL, CPU under gloo).
        group: process group (default: the world).
        seed: seed of the fingerprint projection.

    Returns:
        ``{name: warning}`` for each diverging codebook, where a warning is ``{"code": "rank_divergence",
        "message", "ranks", "codes_differing", "relative_difference"}``.
    """
    import torch.distributed as dist

    world = dist.get_world_size(group)
    out: dict[str, dict[str, Any]] = {}
    for name, k in num_codes.items():
        cb = codebooks.get(name)
        mine = fingerprint(cb, seed=seed).to(device) if cb is not None and cb.shape[0] == k \
            else torch.full((k, 2), math.nan, dtype=torch.float64, device=device)
        prints = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(prints, mine, group=group)
        diff = compare_fingerprints(prints)
        if diff is not None:
            out[name] = {
                "code": "rank_divergence",
                "message": f"the codebook differs across DDP ranks: rank(s) {', '.join(map(str, diff['ranks']))} "
                           f"differ from rank 0 in {diff['codes_differing']} of {k} codes (largest difference "
                           f"{diff['relative_difference']:.3g} of the mean code norm); the codebook is updated "
                           "outside DDP's sync (EMA, k-means init or a codebook optimizer without all-reduce)",
                **diff,
            }
    return out

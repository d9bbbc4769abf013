"""Mode-level shrinkage: how the codebook's tokens are shared among the data's modes (Zhao et al. 2026).

Paper A's theory: the data are M modes; under shrinkage the codebook's tokens sit in only a few of them,
so the entropy of the tokens' distribution over modes drops from ``log M`` to at most ``log M'`` for the
M' modes they cover. It needs labels of the data modes, one per latent (classes, mixture components).

Two measurements from one joint histogram of (code, mode) over the latents:

- ``token_mode_entropy``: Paper A's mode-coverage entropy ``H = -sum_m p_m log p_m`` where ``p_m`` is the
  share of the codebook's (used) tokens that belong to mode m, normalised by ``log M`` so that 1 means
  tokens spread over the modes evenly and 0 means all tokens in one mode. A token belongs to the mode
  that most of its latents come from (the paper assigns tokens to modes without saying how; a majority
  vote over the latents quantized to it is the natural reading).
- ``shrunk_mode_share``: the share of modes whose tokens come from a small part of the codebook: a mode
  counts when the perplexity of the codes its latents use is below ``min_ratio`` times what the k-means
  reference (same K, same latents) gives that mode. Against the reference, not a constant, because how
  many codes a mode deserves depends on K, on the mode's size and on its spread.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from ._validate import to_tensor

__all__ = ["as_labels", "joint_counts", "mode_perplexities", "shrunk_mode_share", "token_mode_entropy"]


def as_labels(labels: Any, n: int, name: str = "labels") -> torch.Tensor:
    """Validate per-latent mode labels: ``(N,)`` integers (negative = no mode, ignored)."""
    t = to_tensor(labels, name)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name}: expected integer mode ids, one per latent row, got {t.dtype}")
    t = t.reshape(-1) if t.dim() > 1 and t.numel() == n else t
    if t.dim() != 1 or t.numel() != n:
        raise ValueError(f"{name}: expected {n} labels (one per latent row), got shape {tuple(t.shape)}")
    return t.long()


def joint_counts(indices: torch.Tensor, labels: torch.Tensor, num_codes: int) -> torch.Tensor:
    """``(K, M)`` float64 counts of latents per (code, mode); modes are the distinct non-negative labels, sorted."""
    keep = labels >= 0
    idx, lab = indices[keep].long(), labels.to(indices.device)[keep]
    if lab.numel() == 0:
        return torch.zeros(num_codes, 0, dtype=torch.float64)
    modes, inv = torch.unique(lab, return_inverse=True)
    m = modes.numel()
    flat = torch.bincount(idx * m + inv, minlength=num_codes * m)
    return flat.reshape(num_codes, m).double().cpu()


def token_mode_entropy(joint: torch.Tensor) -> float | None:
    """Normalised entropy of the used tokens' distribution over modes (``None`` with fewer than 2 modes).

    Args:
        joint: ``(K, M)`` counts from ``joint_counts``.

    Returns:
        ``H / log M`` in ``[0, 1]``; Paper A's ``H`` (nats) is this times ``log M``. Higher is better.

    Example:
        >>> j = torch.tensor([[5., 0.], [0., 5.], [3., 1.]])
        >>> round(token_mode_entropy(j), 3)  # tokens 2:1 over the two modes
        0.918
    """
    m = joint.shape[1]
    if m < 2:
        return None
    used = joint.sum(1) > 0
    if not bool(used.any()):
        return None
    owner = joint[used].argmax(1)  # ties go to the lower mode id
    p = torch.bincount(owner, minlength=m).double()
    p = p / p.sum()
    nz = p[p > 0]
    return float(-(nz * nz.log()).sum()) / math.log(m)


def mode_perplexities(joint: torch.Tensor) -> torch.Tensor:
    """``(M,)`` perplexity ``exp(H)`` of the codes used by each mode's latents (0 for an empty mode)."""
    tot = joint.sum(0, keepdim=True)
    p = joint / tot.clamp_min(1)
    ent = -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(0)
    return torch.where(tot[0] > 0, ent.exp(), torch.zeros_like(ent))


def shrunk_mode_share(joint: torch.Tensor, reference_joint: torch.Tensor, *, min_ratio: float) -> float | None:
    """Share of modes whose code perplexity is below ``min_ratio`` times the reference's for that mode.

    Args:
        joint: ``(K, M)`` (code, mode) counts of the codebook on held-out latents.
        reference_joint: the same for the k-means reference on the same latents (same modes).
        min_ratio: a mode counts as shrunk below this share of the reference's perplexity.

    Returns:
        A float in ``[0, 1]`` (``None`` without modes); lower is better.
    """
    if joint.shape[1] == 0 or joint.shape != reference_joint.shape:
        return None
    mine, ref = mode_perplexities(joint), mode_perplexities(reference_joint)
    present = ref > 0
    if not bool(present.any()):
        return None
    return float((mine[present] < min_ratio * ref[present]).double().mean())

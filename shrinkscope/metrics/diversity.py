"""Diversity of generated samples: mode coverage, mean pairwise L2, PRDC and the Vendi score.

These measure what codebook shrinkage costs downstream: a generator fed by a shrunk codebook hits
fewer modes of the data, and its samples are closer to each other.

- ``mode_coverage``: on data with M known modes (e.g. a Gaussian mixture), how many modes the *generated
  samples* hit, the KL divergence of their mode histogram from the reference one, and its entropy. This is
  not Paper A's mode-coverage entropy, which is over the *codebook's tokens* per data mode
  (``shrinkscope.metrics.token_mode_entropy`` where available).
- ``mean_pairwise_l2`` (alias ``pixel_diversity``): mean pairwise Euclidean distance between flattened
  samples, in the samples' own units. Paper A (Zhao et al. 2026) reports an "average pairwise pixel-level
  distance" ("Pixel Dist.", 70-81 on 128x128 RGB) whose scaling it does not state; this function is one
  plain reading of it, so its values are not comparable with the paper's numbers, only its direction.
- ``prdc``: precision, recall, density and coverage of k-NN manifolds (Naeem et al. 2020), blocked
  and certified in float64 like ``latent_coverage`` (never an N x N matrix).
- ``vendi_score``: exp of the entropy of the eigenvalues of the normalised similarity matrix
  (Friedman & Dieng 2023): the effective number of distinct samples.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from ._validate import as_counts, as_float, same_dim, to_tensor
from .coverage import _ball_pass, _knn_sq_radii, _Points
from .geometry import DEFAULT_MAX_POINTS, mean_pairwise_distance


@dataclass(frozen=True)
class ModeCoverage:
    """How generated samples spread over M known modes.

    Attributes:
        modes_hit: number of modes with at least one sample.
        num_modes: M.
        fraction: ``modes_hit / M``; higher is better.
        kl: ``KL(p_gen || p_ref)`` in nats (0 = same histogram as the reference, ``inf`` when samples land
            in a mode the reference gives zero weight); lower is better.
        entropy: entropy of the sample mode histogram in nats (``log M`` when spread evenly); higher is better.
        num_samples: samples with a mode id (ids ``< 0`` are ignored and not counted).
        counts: ``(M,)`` int64 sample count per mode.
    """

    modes_hit: int
    num_modes: int
    fraction: float
    kl: float
    entropy: float
    num_samples: int
    counts: torch.Tensor

    def to_dict(self) -> dict[str, float | int]:
        """Plain numbers for JSON (without the histogram)."""
        return {"modes_hit": self.modes_hit, "num_modes": self.num_modes, "fraction": self.fraction,
                "kl": self.kl, "entropy": self.entropy, "num_samples": self.num_samples}


def mode_coverage(modes: Any, num_modes: int, *, reference: Any | None = None) -> ModeCoverage:
    """Modes hit by generated samples, KL to the reference mode distribution, and mode entropy.

    Args:
        modes: integer mode id of every sample, any shape; ``-1`` (or any negative id) marks a sample
            assigned to no mode and is ignored.
        num_modes: M, the number of modes of the data.
        reference: ``(M,)`` reference weights or counts of the modes (normalised here); uniform by default.

    Returns:
        A ``ModeCoverage``.

    Raises:
        TypeError: floating mode ids. ValueError: ids >= M, M < 1, a bad reference, or no sample with a mode.

    Example:
        >>> mc = mode_coverage(torch.tensor([0, 1, 1, 3]), 4)
        >>> mc.modes_hit, round(mc.fraction, 2)
        (3, 0.75)
    """
    if isinstance(num_modes, bool) or not isinstance(num_modes, numbers.Integral) or num_modes < 1:
        raise ValueError(f"num_modes: expected an int M >= 1, got {num_modes!r}")
    num_modes = int(num_modes)
    ids = to_tensor(modes, "modes")
    if ids.is_floating_point() or ids.is_complex():
        raise TypeError(f"modes: expected integer mode ids, got {ids.dtype}; round or classify the samples first")
    flat = ids.reshape(-1).long()
    flat = flat[flat >= 0]
    if flat.numel() == 0:
        raise ValueError("modes: no sample has a mode id >= 0; nothing to measure")
    if int(flat.max()) >= num_modes:
        raise ValueError(f"modes: max id {int(flat.max())} is out of range for M={num_modes} modes")
    counts = torch.bincount(flat.cpu(), minlength=num_modes)
    p = counts.double() / counts.sum()
    if reference is None:
        q = torch.full((num_modes,), 1.0 / num_modes, dtype=torch.float64)
    else:
        q = as_counts(reference, "reference").cpu()
        if q.numel() != num_modes:
            raise ValueError(f"reference: expected {num_modes} weights (one per mode), got {q.numel()}")
        if float(q.sum()) <= 0:
            raise ValueError("reference: all weights are zero; pass the modes' true weights or leave it None")
        q = q / q.sum()
    hit = p > 0
    if bool((q[hit] == 0).any()):
        kl = math.inf  # samples in a mode the reference says cannot occur
    else:
        kl = float((p[hit] * (p[hit] / q[hit]).log()).sum())
    entropy = float(-(p[hit] * p[hit].log()).sum())
    modes_hit = int(hit.sum())
    return ModeCoverage(modes_hit=modes_hit, num_modes=num_modes, fraction=modes_hit / num_modes,
                        kl=max(kl, 0.0), entropy=entropy, num_samples=int(flat.numel()), counts=counts)


def _flatten_samples(samples: Any, name: str) -> torch.Tensor:
    t = to_tensor(samples, name)
    if t.dim() < 2:
        raise ValueError(f"{name}: expected (N, ...) samples with a leading batch axis, got shape {tuple(t.shape)}")
    if not (t.is_floating_point() or t.is_complex()) and t.dtype != torch.bool:
        t = t.double()  # uint8 images are the usual case: measure them in their own 0..255 units
    return as_float(t.reshape(t.shape[0], -1), name, min_rows=2)


def mean_pairwise_l2(samples: Any, *, max_samples: int | None = DEFAULT_MAX_POINTS, seed: int = 0) -> float:
    """Mean pairwise Euclidean distance between flattened samples; higher is more diverse.

    Not Paper A's "Pixel Dist." number: the paper does not state its scaling (see the module docstring).

    Args:
        samples: ``(N, ...)`` samples (e.g. ``(N, C, H, W)`` images), N >= 2; integer images are measured
            in their own units (0..255 for uint8), floats as given.
        max_samples: exact over all pairs up to this many samples; above, a uniform random subset of this
            size (an unbiased U-statistic; see docs/metrics.md for the error).
        seed: seed of the subset.

    Returns:
        The mean distance over ordered pairs ``i != j``.

    Example:
        >>> mean_pairwise_l2(torch.eye(3).reshape(3, 1, 3))
        1.4142135623730951
    """
    x = _flatten_samples(samples, "samples")
    return mean_pairwise_distance(x, max_points=max_samples, seed=seed, name="samples")


#: The earlier name of ``mean_pairwise_l2`` (kept for callers; same function, same values).
pixel_diversity = mean_pairwise_l2


class PRDC(NamedTuple):
    """Precision, recall, density and coverage of generated vs real samples (Naeem et al. 2020)."""

    precision: float
    recall: float
    density: float
    coverage: float


@torch.no_grad()
def prdc(real: Any, fake: Any, *, k: int = 5) -> PRDC:
    """Precision/recall/density/coverage of ``fake`` against ``real`` with k-NN balls (Naeem et al. 2020).

    Same definitions (strict ``<``) as ``prdc.compute_prdc``: precision = share of fake samples inside
    some real ball; recall = share of real samples inside some fake ball; density = mean number of real
    balls holding a fake sample, divided by k; coverage = share of real balls holding a fake sample.
    Computed block by block in float32 with float64 re-checks near ball edges: memory O(chunk * N).

    Args:
        real: ``(N, D)`` real features, N > k.
        fake: ``(M, D)`` generated features, M > k.
        k: neighbour rank of the balls.

    Returns:
        A ``PRDC`` named tuple; every field is higher-is-better (density can exceed 1).
    """
    if k < 1:
        raise ValueError(f"k: expected k >= 1, got {k}")
    r = as_float(real, "real")
    f = as_float(fake, "fake")
    for name, t in (("real", r), ("fake", f)):
        if t.shape[0] < k + 1:
            raise ValueError(f"{name}: k-NN balls with k={k} need at least {k + 1} rows, got {t.shape[0]}")
    same_dim(r, f)
    f = f.to(r.device)
    origin = r.double().mean(0)
    pr, pf = _Points(r, origin), _Points(f, origin)
    res = _ball_pass(pr, pf, _knn_sq_radii(pr, k), _knn_sq_radii(pf, k), density=True)
    return PRDC(precision=float(res["inside"].double().mean()), recall=float(res["recalled"].double().mean()),
                density=float(res["count"].double().mean()) / k, coverage=float(res["covered"].double().mean()))


@torch.no_grad()
def vendi_score(x: Any, *, kernel: str = "cosine") -> float:
    """Vendi score (Friedman & Dieng 2023): ``exp(-sum_i l_i log l_i)`` over eigenvalues ``l`` of ``K / tr(K)``.

    With the cosine kernel ``K_ij = cos(x_i, x_j)`` (``tr K = N``) this is the paper's ``K / n``; with the
    linear kernel ``K = X X^T`` it is normalised by its trace. The nonzero eigenvalues of ``X X^T`` equal
    those of the ``D x D`` Gram ``X^T X``, so the cost is O(N D^2) and memory O(D^2) when N > D.

    Args:
        x: ``(N, D)`` sample features (flatten images first), N >= 1.
        kernel: ``"cosine"`` (rows normalised to unit length; zero rows are rejected) or ``"linear"``.

    Returns:
        A float in ``[1, min(N, D)]``: 1 when all samples are alike, N when all are orthogonal.

    Example:
        >>> round(vendi_score(torch.eye(4)), 6)
        4.0
    """
    if kernel not in ("cosine", "linear"):
        raise ValueError(f"kernel: expected 'cosine' or 'linear', got {kernel!r}")
    t = as_float(x, "x", min_rows=1).double()
    if kernel == "cosine":
        norms = t.norm(dim=1)
        if bool((norms == 0).any()):
            raise ValueError(f"x: {int((norms == 0).sum())} rows are all-zero; the cosine kernel needs nonzero "
                             "rows (drop them or use kernel='linear')")
        t = t / norms[:, None]
    n, d = t.shape
    gram = t.t() @ t if n > d else t @ t.t()
    trace = float(gram.trace())
    if trace <= 0:
        raise ValueError("x: all rows are zero; the Vendi score is undefined")
    ev = torch.linalg.eigvalsh(gram / trace).clamp_min(0)
    ev = ev[ev > 0]
    return float(math.exp(float(-(ev * ev.log()).sum())))

"""``codebook_health``: every codebook metric at once, plus plain-language warnings.

Multi-head and residual quantizers have several codebooks; callers (``analyze``, ``watch``) measure
them one codebook at a time and name each (``layers.0``, ``head 1``, ...).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ._validate import as_counts, as_float, same_dim
from .coverage import coverage_and_precision
from .geometry import (
    DEFAULT_MAX_POINTS,
    mean_pairwise_distance,
    spread_cosine,
    spread_euclidean,
    total_variance,
)
from .spectrum import _effective_dimension_from, _effective_rank_from, singular_spectrum
from .usage import assign, dead_code_ratio, utilization_perplexity

METRIC_KEYS: tuple[str, ...] = (
    "num_codes", "dim", "spread_cosine", "spread_euclidean", "spread_ratio", "effective_rank",
    "effective_dimension", "latent_effective_rank", "latent_effective_dimension", "utilization_perplexity",
    "utilization", "dead_code_ratio", "latent_coverage", "codebook_precision", "quantization_error",
)
"""The metric keys of the JSON contract, in display order."""

HIGHER_IS_BETTER: dict[str, bool | None] = {
    "num_codes": None, "dim": None, "spread_cosine": True, "spread_euclidean": True, "spread_ratio": True,
    "effective_rank": True, "effective_dimension": True, "latent_effective_rank": None,
    "latent_effective_dimension": None, "utilization_perplexity": True, "utilization": True,
    "dead_code_ratio": False, "latent_coverage": True, "codebook_precision": True, "quantization_error": False,
}

WARNING_CODES: tuple[str, ...] = (
    "shrinkage", "dimensional_collapse", "dead_codes", "low_utilization", "poor_coverage", "uninitialized",
)


@dataclass
class HealthThresholds:
    """Where ``codebook_health`` raises a warning. Every field is a documented, tunable cut-off."""

    shrinkage_spread_ratio: float = 0.5  # spread_ratio below this: codes span < half the latent cloud
    collapse_rank_ratio: float = 0.5  # codebook effective rank below this share of the latents' one
    collapse_rank_share: float = 0.1  # without latents: effective rank below this share of min(K, D)
    dead_code_ratio: float = 0.1  # more than 10% of codes never (or barely) used
    dead_threshold: float = 0.0  # a code with usage count <= this is dead
    low_utilization: float = 0.25  # utilization (perplexity / K) below this
    poor_coverage: float = 0.5  # coverage below half of what codes drawn from the latents would reach


@dataclass
class CodebookHealth:
    """All metrics of one codebook (``None`` where the needed input was absent) and its warnings."""

    name: str
    num_codes: int
    dim: int
    spread_cosine: float | None = None
    spread_euclidean: float | None = None
    spread_ratio: float | None = None
    effective_rank: float | None = None
    effective_dimension: int | None = None
    latent_effective_rank: float | None = None
    latent_effective_dimension: int | None = None
    utilization_perplexity: float | None = None
    utilization: float | None = None
    dead_code_ratio: float | None = None
    latent_coverage: float | None = None
    codebook_precision: float | None = None
    quantization_error: float | None = None
    warnings: list[dict[str, str]] = field(default_factory=list)
    singular_values: torch.Tensor | None = field(default=None, repr=False)
    latent_singular_values: torch.Tensor | None = field(default=None, repr=False)
    counts: torch.Tensor | None = field(default=None, repr=False)

    @property
    def metrics(self) -> dict[str, float | int | None]:
        """The contract's metric dict: ``{KEY: number or None}``."""
        return {k: getattr(self, k) for k in METRIC_KEYS}

    def to_dict(self) -> dict[str, Any]:
        """``{"name", "num_codes", "dim", "metrics": {KEY: ...}, "warnings": [...]}`` (JSON-ready)."""
        return {"name": self.name, "num_codes": self.num_codes, "dim": self.dim,
                "metrics": dict(self.metrics), "warnings": [dict(w) for w in self.warnings]}

    @property
    def healthy(self) -> bool:
        """True when no warning was raised."""
        return not self.warnings


def _warn(h: CodebookHealth, code: str, message: str) -> None:
    h.warnings.append({"code": code, "message": message})


def raise_warnings(h: CodebookHealth, t: HealthThresholds, all_zero: bool = False,
                   expected_coverage: float | None = None) -> None:
    """Append the warnings that ``h``'s metrics trip under thresholds ``t`` to ``h.warnings``.

    Used by ``codebook_health`` and by callers that assemble a ``CodebookHealth`` themselves (the monitor's
    cumulative and usage-only records).

    Args:
        h: the health record (its ``warnings`` list is extended in place).
        t: the thresholds.
        all_zero: the codebook is all zeros (reported as ``uninitialized`` and nothing else).
        expected_coverage: coverage that codes drawn from the latents would reach (``expected_coverage``);
            ``poor_coverage`` is only judged when it is given.
    """
    if all_zero:
        _warn(h, "uninitialized", "every code is zero: the codebook looks uninitialised (saved before the first "
              "forward / k-means init?), not collapsed; geometry metrics are meaningless here")
        return
    if h.spread_ratio is not None and h.spread_ratio < t.shrinkage_spread_ratio:
        _warn(h, "shrinkage", f"codes span {h.spread_ratio:.2f}x the latents' mean pairwise distance "
              f"(< {t.shrinkage_spread_ratio}): the codebook has shrunk into a narrow region of latent space")
    if h.effective_rank is not None:
        if h.latent_effective_rank is not None and h.latent_effective_rank > 1:
            if h.effective_rank < t.collapse_rank_ratio * h.latent_effective_rank:
                _warn(h, "dimensional_collapse", f"codebook effective rank {h.effective_rank:.1f} is below "
                      f"{t.collapse_rank_ratio:g}x the latents' {h.latent_effective_rank:.1f}")
        elif h.effective_rank < t.collapse_rank_share * min(h.num_codes, h.dim):
            _warn(h, "dimensional_collapse", f"codebook effective rank {h.effective_rank:.1f} is below "
                  f"{t.collapse_rank_share:g} x min(K, D) = {t.collapse_rank_share * min(h.num_codes, h.dim):.1f}")
    if h.dead_code_ratio is not None and h.dead_code_ratio > t.dead_code_ratio:
        _warn(h, "dead_codes", f"{h.dead_code_ratio:.0%} of the {h.num_codes} codes are dead "
              f"(usage <= {t.dead_threshold:g}; threshold {t.dead_code_ratio:.0%})")
    if h.utilization is not None and h.utilization < t.low_utilization:
        _warn(h, "low_utilization", f"usage perplexity {h.utilization_perplexity:.1f} is {h.utilization:.1%} of "
              f"K={h.num_codes} (< {t.low_utilization:.0%})")
    if (h.latent_coverage is not None and expected_coverage is not None
            and h.latent_coverage < t.poor_coverage * expected_coverage):
        _warn(h, "poor_coverage", f"only {h.latent_coverage:.0%} of latents have a code in their k-NN ball; "
              f"codes spread like the latents would reach about {expected_coverage:.0%}")


def expected_coverage(num_codes: int, num_latents: int, *, k: int = 5) -> float:
    """Coverage that K codes drawn from the latent distribution itself would reach on N latents.

    A latent's k-NN ball holds about k of the N latents, so about ``k * K / N`` codes drawn from the same
    distribution; the chance it holds at least one is ``1 - exp(-k * K / N)`` (Poisson approximation).
    Coverage depends on K/N this way, so warnings compare against it rather than against a fixed number.
    """
    return 1.0 - math.exp(-k * num_codes / max(1, num_latents))


def _subsample(x: torch.Tensor, n: int | None, seed: int) -> torch.Tensor:
    if n is None or x.shape[0] <= n:
        return x
    g = torch.Generator().manual_seed(seed)
    return x[torch.randperm(x.shape[0], generator=g)[:n].to(x.device)]


@torch.no_grad()
def codebook_health(
    codebook: Any,
    *,
    latents: Any | None = None,
    counts: Any | None = None,
    name: str = "codebook",
    k: int = 5,
    thresholds: HealthThresholds | None = None,
    coverage_max_latents: int | None = 10_000,
    max_points: int | None = DEFAULT_MAX_POINTS,
    seed: int = 0,
) -> CodebookHealth:
    """Measure every codebook-health metric that the given inputs allow.

    Args:
        codebook: ``(K, D)`` effective codebook (after any normalisation/projection the lookup uses).
        latents: optional ``(N, D)`` pre-quantization latents: enables spread_ratio, latent spectrum,
            coverage, precision and quantization error; also gives counts when ``counts`` is None.
        counts: optional ``(K,)`` usage counts or shares (e.g. from hooks or a ``cluster_size`` buffer).
        name: label of this codebook in reports.
        k: neighbour rank of the coverage balls.
        thresholds: warning cut-offs (``HealthThresholds()`` by default).
        coverage_max_latents: coverage/precision use a random subset of at most this many latents
            (their cost is O(N^2)); ``None`` uses all.
        max_points: exact pairwise spreads up to this many rows, sampled above.
        seed: seed of every subsample.

    Returns:
        A ``CodebookHealth``.

    Raises:
        ValueError / TypeError: bad shapes, dtypes, NaN/Inf, D mismatch, counts of the wrong length.

    Example:
        >>> h = codebook_health(torch.randn(64, 8), latents=torch.randn(500, 8))
        >>> sorted(h.to_dict())
        ['dim', 'metrics', 'name', 'num_codes', 'warnings']
    """
    t = thresholds or HealthThresholds()
    cb = as_float(codebook, "codebook", min_rows=2)
    kk, d = cb.shape
    h = CodebookHealth(name=name, num_codes=kk, dim=d)
    x = None
    exp_cov = None
    if latents is not None:
        x = as_float(latents, "latents", min_rows=2)
        same_dim(cb, x)
        x = x.to(cb.device)
    c = None
    if counts is not None:
        c = as_counts(counts)
        if c.numel() != kk:
            raise ValueError(f"counts: expected {kk} entries (one per code), got {c.numel()}")

    all_zero = not bool(cb.any())
    h.spread_cosine = spread_cosine(cb)
    h.spread_euclidean = spread_euclidean(cb, max_points=max_points, seed=seed)
    sv = singular_spectrum(cb)
    h.singular_values = sv
    h.effective_rank = _effective_rank_from(sv)
    h.effective_dimension = _effective_dimension_from(sv, 0.99)
    if x is not None:
        lat_spread = mean_pairwise_distance(x, max_points=max_points, seed=seed, name="latents")
        h.spread_ratio = h.spread_euclidean / lat_spread if lat_spread > 0 else None
        lsv = singular_spectrum(x)
        h.latent_singular_values = lsv
        h.latent_effective_rank = _effective_rank_from(lsv)
        h.latent_effective_dimension = _effective_dimension_from(lsv, 0.99)
        # One nearest-code search serves both the quantization error and (without counts) the usage.
        idx, d2 = assign(cb, x)
        var = total_variance(x)
        h.quantization_error = float(d2.mean()) / var if var > 0 else None
        xs = _subsample(x, coverage_max_latents, seed)
        if xs.shape[0] > k:
            h.latent_coverage, h.codebook_precision = coverage_and_precision(cb, xs, k=k)
            exp_cov = expected_coverage(kk, xs.shape[0], k=k)
        if c is None:
            c = torch.bincount(idx, minlength=kk).double()
    if c is not None and float(c.sum()) > 0:
        h.counts = c.cpu()
        h.utilization_perplexity = utilization_perplexity(c)
        h.utilization = h.utilization_perplexity / kk
        h.dead_code_ratio = dead_code_ratio(c, threshold=t.dead_threshold)
    raise_warnings(h, t, all_zero, exp_cov)
    return h

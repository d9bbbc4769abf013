"""Codebook-health metrics: pure functions on tensors (torch or numpy in, Python numbers out).

Direction of every metric: ``HIGHER_IS_BETTER``. Definitions, formulas and sources: docs/metrics.md.
"""
from .coverage import codebook_precision, coverage_and_precision, knn_radii, latent_coverage
from .diversity import PRDC, ModeCoverage, mode_coverage, pixel_diversity, prdc, vendi_score
from .geometry import (
    mean_pairwise_distance,
    pairwise_distance_sample,
    quantization_error,
    quantization_mse,
    spread_cosine,
    spread_euclidean,
    spread_ratio,
    total_variance,
)
from .health import (
    HIGHER_IS_BETTER,
    METRIC_KEYS,
    WARNING_CODES,
    CodebookHealth,
    HealthThresholds,
    codebook_health,
    expected_coverage,
)
from .spectrum import effective_dimension, effective_rank, singular_spectrum
from .usage import assign, code_counts, dead_code_ratio, utilization, utilization_perplexity

__all__ = [
    "HIGHER_IS_BETTER",
    "METRIC_KEYS",
    "PRDC",
    "WARNING_CODES",
    "CodebookHealth",
    "HealthThresholds",
    "ModeCoverage",
    "assign",
    "code_counts",
    "codebook_health",
    "codebook_precision",
    "coverage_and_precision",
    "dead_code_ratio",
    "effective_dimension",
    "effective_rank",
    "expected_coverage",
    "knn_radii",
    "latent_coverage",
    "mean_pairwise_distance",
    "mode_coverage",
    "pairwise_distance_sample",
    "pixel_diversity",
    "prdc",
    "quantization_error",
    "quantization_mse",
    "singular_spectrum",
    "spread_cosine",
    "spread_euclidean",
    "spread_ratio",
    "total_variance",
    "utilization",
    "utilization_perplexity",
    "vendi_score",
]

"""Codebook-health metrics: pure functions on tensors (torch or numpy in, Python numbers out).

Direction of every metric: ``HIGHER_IS_BETTER``. Definitions, formulas and sources: docs/metrics.md.
"""
from .coverage import codebook_precision, coverage_and_precision, knn_radii, latent_coverage
from .diversity import PRDC, ModeCoverage, mean_pairwise_l2, mode_coverage, pixel_diversity, prdc, vendi_score
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
    CodebookGeometry,
    CodebookHealth,
    HealthThresholds,
    codebook_geometry,
    codebook_health,
    expected_coverage,
    judge_health,
)
from .modes import joint_counts, mode_perplexities, shrunk_mode_share, token_mode_entropy
from .reference import KMeansReference, kmeans_reference
from .spectrum import effective_dimension, effective_rank, singular_spectrum
from .usage import assign, code_counts, dead_code_ratio, utilization, utilization_perplexity
from .verdict import STATUSES, Verdict

__all__ = [
    "HIGHER_IS_BETTER",
    "METRIC_KEYS",
    "PRDC",
    "STATUSES",
    "WARNING_CODES",
    "CodebookGeometry",
    "CodebookHealth",
    "HealthThresholds",
    "KMeansReference",
    "ModeCoverage",
    "Verdict",
    "assign",
    "code_counts",
    "codebook_geometry",
    "codebook_health",
    "codebook_precision",
    "coverage_and_precision",
    "dead_code_ratio",
    "effective_dimension",
    "effective_rank",
    "expected_coverage",
    "joint_counts",
    "judge_health",
    "kmeans_reference",
    "knn_radii",
    "latent_coverage",
    "mean_pairwise_distance",
    "mean_pairwise_l2",
    "mode_coverage",
    "mode_perplexities",
    "pairwise_distance_sample",
    "pixel_diversity",
    "prdc",
    "quantization_error",
    "quantization_mse",
    "shrunk_mode_share",
    "singular_spectrum",
    "spread_cosine",
    "spread_euclidean",
    "spread_ratio",
    "token_mode_entropy",
    "total_variance",
    "utilization",
    "utilization_perplexity",
    "vendi_score",
]

"""codebook_health: contract keys, agreement with the single metrics, and each warning on a constructed case."""
import json

import pytest
import torch
from metrics_testutil import randn

from shrinkscope.kmeans import kmeans
from shrinkscope.metrics import (
    HIGHER_IS_BETTER,
    METRIC_KEYS,
    WARNING_CODES,
    HealthThresholds,
    assign,
    code_counts,
    codebook_health,
    codebook_precision,
    effective_dimension,
    effective_rank,
    expected_coverage,
    latent_coverage,
    quantization_error,
    spread_cosine,
    spread_euclidean,
    spread_ratio,
    utilization_perplexity,
)

CONTRACT_KEYS = {
    "num_codes", "dim", "spread_cosine", "spread_euclidean", "spread_ratio", "effective_rank", "effective_dimension",
    "latent_effective_rank", "latent_effective_dimension", "utilization_perplexity", "utilization",
    "dead_code_ratio", "latent_coverage", "codebook_precision", "quantization_error",
    # added with the verdicts (issue #10)
    "codes_used", "offset_vs_spread", "spread_vs_kmeans", "rank_vs_kmeans", "coverage_vs_kmeans",
    "excess_distortion", "stranded_codes", "token_mode_entropy", "shrunk_mode_share", "spread_all_vs_live",
    "excess_unused_share",
}
NEEDS_LABELS = {"token_mode_entropy", "shrunk_mode_share"}


@pytest.fixture(scope="module")
def latents():
    # an anisotropic 6-D cloud with a few clusters
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(8, 6, generator=g, dtype=torch.float64) * 3
    x = centres[torch.randint(0, 8, (1500,), generator=g)] + torch.randn(1500, 6, generator=g, dtype=torch.float64)
    return x


@pytest.fixture(scope="module")
def healthy(latents):
    return kmeans(latents, 64, seed=0)


def codes_of(h):
    return {w["code"] for w in h.warnings}


def test_contract_keys_and_json(healthy, latents):
    h = codebook_health(healthy, latents=latents, name="vq")
    d = h.to_dict()
    assert set(METRIC_KEYS) == CONTRACT_KEYS == set(d["metrics"]) == set(HIGHER_IS_BETTER)
    assert (d["name"], d["num_codes"], d["dim"]) == ("vq", 64, 6)
    assert all(v is not None for k, v in d["metrics"].items() if k not in NEEDS_LABELS)
    assert d["verdict"]["status"] == "healthy" and d["verdict"]["evidence"] == ["codes", "latents"]
    json.dumps(d)  # plain numbers only
    assert {"shrinkage", "dimensional_collapse", "dead_codes", "low_utilization", "poor_coverage"} <= set(WARNING_CODES)


def test_values_equal_the_single_metrics(healthy, latents):
    h = codebook_health(healthy, latents=latents)
    assert h.spread_cosine == pytest.approx(spread_cosine(healthy), rel=1e-12)
    assert h.spread_euclidean == pytest.approx(spread_euclidean(healthy), rel=1e-12)
    assert h.spread_ratio == pytest.approx(spread_ratio(healthy, latents), rel=1e-12)
    assert h.effective_rank == pytest.approx(effective_rank(healthy), rel=1e-12)
    assert h.effective_dimension == effective_dimension(healthy)
    assert h.latent_effective_rank == pytest.approx(effective_rank(latents), rel=1e-12)
    assert h.quantization_error == pytest.approx(quantization_error(healthy, latents), rel=1e-12)
    assert h.latent_coverage == latent_coverage(healthy, latents)
    assert h.codebook_precision == codebook_precision(healthy, latents)
    counts = code_counts(assign(healthy, latents)[0], 64)
    assert torch.equal(h.counts, counts.double())
    assert h.utilization_perplexity == pytest.approx(utilization_perplexity(counts), rel=1e-12)


def test_absent_inputs_give_none(healthy):
    h = codebook_health(healthy)
    m = h.to_dict()["metrics"]
    needs_latents = {"spread_ratio", "latent_effective_rank", "latent_effective_dimension", "latent_coverage",
                     "codebook_precision", "quantization_error", "spread_vs_kmeans", "rank_vs_kmeans",
                     "coverage_vs_kmeans", "excess_distortion", "stranded_codes", "spread_all_vs_live",
                     "excess_unused_share"} | NEEDS_LABELS
    needs_counts = {"utilization_perplexity", "utilization", "dead_code_ratio", "codes_used"}
    assert all(m[k] is None for k in needs_latents | needs_counts)
    assert all(m[k] is not None for k in CONTRACT_KEYS - needs_latents - needs_counts)
    with_counts = codebook_health(healthy, counts=torch.ones(64))
    assert with_counts.utilization == pytest.approx(1.0)
    assert with_counts.latent_coverage is None


def test_healthy_codebook_has_no_warnings(healthy, latents):
    assert codebook_health(healthy, latents=latents).warnings == []


def test_shrinkage_warning(latents):
    mean = latents.mean(0)
    shrunk = mean + 0.1 * (latents[:64] - mean)
    h = codebook_health(shrunk, latents=latents)
    assert h.spread_ratio == pytest.approx(0.1, rel=0.15)
    # poor_coverage is off by default since #10 (the calibration switched it off; docs/verdicts.md)
    assert {"shrinkage", "excess_distortion"} <= codes_of(h) and h.verdict.status == "shrunk"
    assert "poor_coverage" in codes_of(codebook_health(shrunk, latents=latents,
                                                       thresholds=HealthThresholds(min_coverage_vs_kmeans=0.5)))
    # thresholds are configurable (renamed in #10: they say min/max; the rules compare with k-means of the same K)
    relaxed = HealthThresholds(min_spread_vs_kmeans=0.05, min_spread_all_vs_live=0.05, min_coverage_vs_kmeans=0.0,
                               max_excess_distortion=1e9)
    assert not {"shrinkage", "poor_coverage"} & codes_of(codebook_health(shrunk, latents=latents, thresholds=relaxed))


def test_dimensional_collapse_warning(latents):
    direction = torch.randn(6, dtype=torch.float64)
    line = torch.linspace(-5, 5, 64, dtype=torch.float64)[:, None] * direction  # rank 1
    assert "dimensional_collapse" in codes_of(codebook_health(line, latents=latents))
    # without latents, compared with 0.1 * min(K, D): needs D > 10 to be able to fire
    assert "dimensional_collapse" not in codes_of(codebook_health(line))
    line32 = torch.linspace(-5, 5, 64, dtype=torch.float64)[:, None] * torch.randn(32, dtype=torch.float64)
    assert "dimensional_collapse" in codes_of(codebook_health(line32))
    assert "dimensional_collapse" not in codes_of(codebook_health(randn(64, 32, seed=1)))


def test_usage_warnings(healthy):
    counts = torch.zeros(64)
    counts[:4] = 100
    h = codebook_health(healthy, counts=counts)
    assert h.dead_code_ratio == pytest.approx(60 / 64)
    assert {"dead_codes", "low_utilization"} <= codes_of(h)
    lenient = HealthThresholds(max_dead_code_ratio=0.95, min_utilization=0.01)
    assert not {"dead_codes", "low_utilization"} & codes_of(codebook_health(healthy, counts=counts,
                                                                              thresholds=lenient))


def test_parameters_that_require_grad(healthy, latents):
    param = torch.nn.Parameter(healthy.clone())
    h = codebook_health(param, latents=latents)
    assert h.to_dict()["metrics"] == codebook_health(healthy, latents=latents).to_dict()["metrics"]
    assert param.grad is None


def test_uninitialized_codebook():
    h = codebook_health(torch.zeros(16, 4))
    assert codes_of(h) == {"uninitialized"}


def test_expected_coverage_rule():
    assert expected_coverage(100, 1000, k=5) == pytest.approx(1 - torch.exp(torch.tensor(-0.5)).item())
    assert expected_coverage(10_000, 100) == pytest.approx(1.0)


def test_coverage_subsample_and_half_precision(healthy, latents):
    h = codebook_health(healthy.half(), latents=latents.half(), coverage_max_latents=300)
    assert h.latent_coverage is not None and 0 <= h.latent_coverage <= 1
    full = codebook_health(healthy, latents=latents)
    assert h.spread_euclidean == pytest.approx(full.spread_euclidean, rel=1e-2)


def test_device(device, healthy, latents):
    h = codebook_health(healthy.to(device), latents=latents.to(device)).to_dict()
    ref = codebook_health(healthy, latents=latents).to_dict()
    assert {k for k, v in h["metrics"].items() if v is None} == NEEDS_LABELS
    assert {k: v for k, v in h["metrics"].items() if v is not None} == pytest.approx(
        {k: v for k, v in ref["metrics"].items() if v is not None}, rel=1e-6)


def test_bad_input(healthy, latents):
    with pytest.raises(ValueError, match="counts: expected 64 entries"):
        codebook_health(healthy, counts=torch.ones(10))
    with pytest.raises(ValueError, match="codebook has dimension D=6 but latents have D=3"):
        codebook_health(healthy, latents=latents[:, :3])
    with pytest.raises(ValueError, match="needs at least 2 rows"):
        codebook_health(healthy[:1])
    with pytest.raises(ValueError, match="contains 1 NaN"):
        bad = healthy.clone()
        bad[0, 0] = float("nan")
        codebook_health(bad)

"""Property tests (hypothesis): invariances, scale behaviour, streaming == one pass, bounds."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shrinkscope.metrics import (
    code_counts,
    coverage_and_precision,
    dead_code_ratio,
    effective_dimension,
    effective_rank,
    quantization_error,
    spread_cosine,
    spread_euclidean,
    spread_ratio,
    utilization,
    utilization_perplexity,
    vendi_score,
)

FAST = settings(max_examples=15, deadline=None)


@st.composite
def clouds(draw):
    """A seeded codebook (K, D) and latent cloud (N, D) with a random anisotropy and offset."""
    seed = draw(st.integers(0, 2**31 - 1))
    k = draw(st.integers(2, 24))
    d = draw(st.integers(1, 8))
    n = draw(st.integers(8, 60))
    g = torch.Generator().manual_seed(seed)
    scales = torch.rand(d, generator=g, dtype=torch.float64) * 3 + 0.05
    offset = torch.randn(d, generator=g, dtype=torch.float64) * draw(st.sampled_from([0.0, 1.0, 10.0]))
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * scales + offset
    c = torch.randn(k, d, generator=g, dtype=torch.float64) * scales * draw(st.floats(0.05, 1.5)) + offset
    return c, x, g


def rotation(d, g):
    q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


@FAST
@given(clouds())
def test_permuting_codes_changes_nothing(cloud):
    c, x, g = cloud
    pc = c[torch.randperm(c.shape[0], generator=g)]
    assert spread_cosine(pc) == pytest.approx(spread_cosine(c), rel=1e-9, abs=1e-12)
    assert spread_euclidean(pc) == pytest.approx(spread_euclidean(c), rel=1e-9)
    assert effective_rank(pc) == pytest.approx(effective_rank(c), rel=1e-9)
    assert effective_dimension(pc) == effective_dimension(c)
    assert quantization_error(pc, x) == pytest.approx(quantization_error(c, x), rel=1e-9)
    assert coverage_and_precision(pc, x) == coverage_and_precision(c, x)


@FAST
@given(clouds())
def test_rotating_codes_and_latents_changes_nothing(cloud):
    c, x, g = cloud
    q = rotation(c.shape[1], g)
    assert spread_euclidean(c @ q) == pytest.approx(spread_euclidean(c), rel=1e-9)
    assert spread_ratio(c @ q, x @ q) == pytest.approx(spread_ratio(c, x), rel=1e-9)
    assert effective_rank(c @ q) == pytest.approx(effective_rank(c), rel=1e-7)
    assert quantization_error(c @ q, x @ q) == pytest.approx(quantization_error(c, x), rel=1e-7)
    cov, prec = coverage_and_precision(c, x)
    cov_r, prec_r = coverage_and_precision(c @ q, x @ q)
    # a ball edge can sit within round-off of a code; allow one flip at most
    assert abs(cov_r - cov) <= 1 / x.shape[0] and abs(prec_r - prec) <= 1 / c.shape[0]
    # rotations about the origin preserve every cosine
    assert spread_cosine(c @ q) == pytest.approx(spread_cosine(c), rel=1e-9, abs=1e-12)


@FAST
@given(clouds(), st.floats(1e-3, 1e3))
def test_scale_behaviour(cloud, a):
    c, x, _ = cloud
    assert spread_cosine(a * c) == pytest.approx(spread_cosine(c), rel=1e-9, abs=1e-12)
    assert effective_rank(a * c) == pytest.approx(effective_rank(c), rel=1e-7)
    assert spread_euclidean(a * c) == pytest.approx(a * spread_euclidean(c), rel=1e-9)
    assert spread_ratio(a * c, a * x) == pytest.approx(spread_ratio(c, x), rel=1e-9)
    assert quantization_error(a * c, a * x) == pytest.approx(quantization_error(c, x), rel=1e-7)
    assert vendi_score(a * x) == pytest.approx(vendi_score(x), rel=1e-7)


@FAST
@given(clouds())
def test_bounds(cloud):
    c, x, _ = cloud
    k, d = c.shape
    assert 0.0 <= spread_cosine(c) <= 2.0 + 1e-12
    assert 1.0 - 1e-9 <= effective_rank(c) <= min(k, d) + 1e-9
    assert 0 <= effective_dimension(c) <= min(k, d)
    assert 0.0 <= quantization_error(c, x)
    cov, prec = coverage_and_precision(c, x)
    assert 0.0 <= cov <= 1.0 and 0.0 <= prec <= 1.0
    assert 1.0 - 1e-9 <= vendi_score(x) <= min(x.shape) + 1e-9


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-1, 19), min_size=1, max_size=300), st.integers(1, 6))
def test_streaming_counts_equal_one_pass(ids, parts):
    idx = torch.tensor(ids)
    chunks = torch.tensor_split(idx, parts)
    streamed = sum(code_counts(ch, 20) for ch in chunks)
    assert torch.equal(streamed, code_counts(idx, 20))
    if int(streamed.sum()) > 0:
        assert utilization_perplexity(streamed) == pytest.approx(utilization_perplexity(code_counts(idx, 20)))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 1000), min_size=1, max_size=64).filter(lambda v: sum(v) > 0))
def test_usage_bounds(counts):
    c = torch.tensor(counts)
    k = len(counts)
    assert 1.0 - 1e-9 <= utilization_perplexity(c) <= k + 1e-9
    assert 0.0 < utilization(c) <= 1.0 + 1e-12
    assert 0.0 <= dead_code_ratio(c) <= 1.0
    nonzero = sum(v > 0 for v in counts)
    # perplexity never exceeds the number of codes in use
    assert utilization_perplexity(c) <= nonzero + 1e-9
    assert math.isclose(dead_code_ratio(c), (k - nonzero) / k)

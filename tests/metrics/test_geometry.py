"""Geometry metrics against slow pairwise loops, constructed cases, dtypes, devices and bad input."""
import itertools
import math

import numpy as np
import pytest
import torch
from metrics_testutil import FLOAT_DTYPES, randn

from shrinkscope.metrics import (
    mean_pairwise_distance,
    pairwise_distance_sample,
    quantization_error,
    quantization_mse,
    spread_cosine,
    spread_euclidean,
    spread_ratio,
    total_variance,
)


def ref_spread_cosine(c):
    c = np.asarray(c, dtype=np.float64)
    vals = []
    for i, j in itertools.permutations(range(len(c)), 2):
        ni, nj = np.linalg.norm(c[i]), np.linalg.norm(c[j])
        cos = 0.0 if ni == 0 or nj == 0 else float(c[i] @ c[j] / (ni * nj))
        vals.append(1.0 - cos)
    return sum(vals) / len(vals)


def ref_mean_distance(x):
    x = np.asarray(x, dtype=np.float64)
    d = [math.dist(x[i], x[j]) for i, j in itertools.permutations(range(len(x)), 2)]
    return sum(d) / len(d)


def ref_quantization(c, x):
    c, x = np.asarray(c, np.float64), np.asarray(x, np.float64)
    best = [min(float(((xi - cj) ** 2).sum()) for cj in c) for xi in x]
    var = float(((x - x.mean(0)) ** 2).sum(1).mean())
    return sum(best) / len(best), var


@pytest.mark.parametrize("seed,k,d", [(0, 7, 3), (1, 30, 16), (2, 2, 5)])
def test_spreads_match_loops(seed, k, d):
    c = randn(k, d, seed=seed) + 0.3
    assert spread_cosine(c) == pytest.approx(ref_spread_cosine(c), abs=1e-12)
    assert spread_euclidean(c) == pytest.approx(ref_mean_distance(c), rel=1e-12)


def test_spread_ratio_and_quantization_match_loops():
    c, x = randn(12, 4, seed=3) * 0.5, randn(40, 4, seed=4)
    assert spread_ratio(c, x) == pytest.approx(ref_mean_distance(c) / ref_mean_distance(x), rel=1e-12)
    mse_sum, var = ref_quantization(c, x)
    assert quantization_error(c, x) == pytest.approx(mse_sum / var, rel=1e-10)
    assert quantization_mse(c, x) == pytest.approx(mse_sum / 4, rel=1e-10)
    assert total_variance(x) == pytest.approx(var, rel=1e-12)


def test_identical_codes_have_zero_spread():
    c = torch.tensor([[1.0, 2.0, -1.0]]).repeat(9, 1)
    assert spread_cosine(c) == pytest.approx(0.0, abs=1e-12)
    assert spread_euclidean(c) == pytest.approx(0.0, abs=1e-7)


def test_orthonormal_codebook():
    q, _ = torch.linalg.qr(randn(6, 6, seed=5))
    assert spread_cosine(q) == pytest.approx(1.0, abs=1e-12)  # every pair orthogonal
    assert spread_euclidean(q) == pytest.approx(math.sqrt(2.0), rel=1e-12)


def test_antipodal_codes_reach_upper_bound():
    v = randn(1, 5, seed=6)
    assert spread_cosine(torch.cat([v, -v])) == pytest.approx(2.0, abs=1e-12)


def test_shrunken_copy_gives_spread_ratio_one_tenth():
    x = randn(300, 8, seed=7) * 3 + 5
    mean = x.mean(0)
    # the whole cloud shrunk 10x about its mean: exactly 0.1
    assert spread_ratio(mean + 0.1 * (x - mean), x) == pytest.approx(0.1, rel=1e-12)
    # a 64-code subset of it: about 0.1
    assert spread_ratio(mean + 0.1 * (x[:64] - mean), x) == pytest.approx(0.1, rel=0.1)
    # quantization error of a point codebook at the mean is exactly 1
    assert quantization_error(mean[None], x) == pytest.approx(1.0, rel=1e-12)
    assert quantization_error(x, x) == pytest.approx(0.0, abs=1e-12)


def test_zero_vectors_count_as_orthogonal():
    c = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    assert spread_cosine(c) == pytest.approx(ref_spread_cosine(c), abs=1e-12)


def test_sampled_spread_estimator_error():
    # documented in docs/metrics.md: relative error of the subsampled U-statistic vs the exact mean
    x = randn(3000, 16, seed=8)
    exact = spread_euclidean(x, max_points=None)
    errors = [abs(spread_euclidean(x, max_points=400, seed=s) - exact) / exact for s in range(8)]
    assert max(errors) < 0.03
    assert max(errors) > 0  # it really sampled
    assert spread_euclidean(x, max_points=400, seed=1) == spread_euclidean(x, max_points=400, seed=1)
    # unbiased: averaging independent subsets gets closer than a typical single one
    mean_est = sum(spread_euclidean(x, max_points=400, seed=s) for s in range(8)) / 8
    assert abs(mean_est - exact) / exact < 0.01


def test_pairwise_distance_sample_is_unbiased_and_skips_self_pairs():
    x = randn(50, 3, seed=9)
    s = pairwise_distance_sample(x, max_pairs=20000, seed=0)
    assert s.shape == (20000,)
    assert bool((s > 0).all())
    assert float(s.mean()) == pytest.approx(ref_mean_distance(x), rel=0.02)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_half_and_single_precision_are_upcast(dtype):
    c, x = randn(20, 6, seed=10).to(dtype), randn(60, 6, seed=11).to(dtype)
    c64, x64 = c.double(), x.double()
    assert spread_cosine(c) == pytest.approx(ref_spread_cosine(c64), abs=1e-6)
    assert spread_euclidean(c) == pytest.approx(ref_mean_distance(c64), rel=1e-6)
    assert spread_ratio(c, x) == pytest.approx(spread_ratio(c64, x64), rel=1e-6)
    assert quantization_error(c, x) == pytest.approx(quantization_error(c64, x64), rel=1e-5)


def test_device(device):
    c, x = randn(20, 6, seed=12), randn(60, 6, seed=13)
    assert spread_euclidean(c.to(device)) == pytest.approx(spread_euclidean(c), rel=1e-10)
    assert spread_cosine(c.to(device)) == pytest.approx(spread_cosine(c), rel=1e-10)
    assert quantization_error(c.to(device), x.to(device)) == pytest.approx(quantization_error(c, x), rel=1e-6)


def test_numpy_input():
    c = randn(10, 3, seed=14)
    assert spread_euclidean(c.numpy()) == pytest.approx(spread_euclidean(c), rel=1e-12)
    assert mean_pairwise_distance(c.numpy().tolist()) == pytest.approx(spread_euclidean(c), rel=1e-12)


@pytest.mark.parametrize("fn", [spread_cosine, spread_euclidean])
def test_bad_codebooks(fn):
    with pytest.raises(ValueError, match=r"expected a 2-D tensor of shape \(K, D\), got shape \(5,\)"):
        fn(torch.ones(5))
    with pytest.raises(ValueError, match="needs at least 2 rows .*got 1"):
        fn(torch.ones(1, 4))
    with pytest.raises(TypeError, match="expected a floating tensor .* got torch.int64"):
        fn(torch.ones(3, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="complex"):
        fn(torch.ones(3, 4, dtype=torch.complex64))
    bad = torch.ones(3, 4)
    bad[0, 0], bad[1, 1], bad[2, 2] = float("nan"), float("nan"), float("inf")
    with pytest.raises(ValueError, match="contains 2 NaN and 1 Inf values"):
        fn(bad)


def test_bad_pairs():
    with pytest.raises(ValueError, match="codebook has dimension D=4 but latents have D=5"):
        spread_ratio(torch.randn(3, 4), torch.randn(10, 5))
    with pytest.raises(ValueError, match="codebook has dimension D=4 but latents have D=5"):
        quantization_error(torch.randn(3, 4), torch.randn(10, 5))
    with pytest.raises(ValueError, match="mean pairwise distance 0"):
        spread_ratio(torch.randn(3, 4), torch.ones(10, 4))
    with pytest.raises(ValueError, match="zero total variance"):
        quantization_error(torch.randn(3, 4), torch.ones(10, 4))

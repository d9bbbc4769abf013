"""Usage metrics and nearest-code assignment against loops, constructed histograms and bad input."""
import math

import numpy as np
import pytest
import torch
from metrics_testutil import FLOAT_DTYPES, randn

from shrinkscope.metrics import assign, code_counts, dead_code_ratio, utilization, utilization_perplexity


def ref_assign(c, x):
    c, x = np.asarray(c, np.float64), np.asarray(x, np.float64)
    idx, d2 = [], []
    for xi in x:
        d = [float(((xi - cj) ** 2).sum()) for cj in c]
        j = int(np.argmin(d))
        idx.append(j)
        d2.append(d[j])
    return np.array(idx), np.array(d2)


def ref_perplexity(counts):
    p = np.asarray(counts, np.float64)
    p = p / p.sum()
    p = p[p > 0]
    return math.exp(-(p * np.log(p)).sum())


@pytest.mark.parametrize("seed,k,n,d", [(0, 10, 200, 4), (1, 64, 500, 16), (2, 1, 30, 3)])
def test_assign_matches_loops(seed, k, n, d):
    c, x = randn(k, d, seed=seed) + 7, randn(n, d, seed=seed + 10) + 7
    idx, d2 = assign(c, x)
    ri, rd = ref_assign(c, x)
    assert idx.dtype == torch.int64 and d2.dtype == torch.float64
    np.testing.assert_array_equal(idx.numpy(), ri)
    np.testing.assert_allclose(d2.numpy(), rd, rtol=1e-12)
    # chunking changes nothing
    idx2, d22 = assign(c, x, chunk_size=7)
    assert torch.equal(idx, idx2) and torch.allclose(d2, d22)


def test_assign_float32_far_from_origin():
    # large offset: centring keeps float32 argmin right
    c, x = randn(32, 8, seed=3) + 1e3, randn(300, 8, seed=4) + 1e3
    idx, d2 = assign(c.float(), x.float())
    ri, rd = ref_assign(c.float().double(), x.float().double())
    assert (idx.numpy() == ri).mean() > 0.99
    np.testing.assert_allclose(d2.numpy(), rd, rtol=1e-3)


def test_assign_empty_and_devices(device):
    idx, d2 = assign(torch.eye(3), torch.empty(0, 3))
    assert idx.shape == (0,) and d2.shape == (0,)
    c, x = randn(16, 5, seed=5), randn(100, 5, seed=6)
    i_dev, d_dev = assign(c.to(device), x.to(device))
    i_cpu, d_cpu = assign(c, x)
    assert torch.equal(i_dev.cpu(), i_cpu)
    assert torch.allclose(d_dev.cpu(), d_cpu)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_assign_dtypes(dtype):
    c, x = randn(8, 4, seed=7).to(dtype), randn(50, 4, seed=8).to(dtype)
    idx, d2 = assign(c, x)
    ri, _ = ref_assign(c.double(), x.double())
    assert (idx.numpy() == ri).mean() >= 0.96  # rare near-ties may flip in low precision
    assert d2.dtype == torch.float64


def test_code_counts_ignores_minus_one():
    idx = torch.tensor([[0, 2, -1], [2, -1, 3]])
    assert code_counts(idx, 5).tolist() == [1, 0, 2, 1, 0]
    assert code_counts(np.array([-1, -1]), 3).tolist() == [0, 0, 0]


def test_uniform_and_one_hot_usage():
    k = 16
    uniform = torch.full((k,), 7)
    assert utilization_perplexity(uniform) == pytest.approx(k, rel=1e-12)
    assert utilization(uniform) == pytest.approx(1.0, rel=1e-12)
    assert dead_code_ratio(uniform) == 0.0
    one_hot = torch.zeros(k)
    one_hot[3] = 100
    assert utilization_perplexity(one_hot) == pytest.approx(1.0, abs=1e-12)
    assert utilization(one_hot) == pytest.approx(1 / k)
    assert dead_code_ratio(one_hot) == pytest.approx((k - 1) / k)


@pytest.mark.parametrize("seed", range(3))
def test_perplexity_matches_numpy_and_is_unit_free(seed):
    counts = torch.randint(0, 50, (40,), generator=torch.Generator().manual_seed(seed))
    assert utilization_perplexity(counts) == pytest.approx(ref_perplexity(counts.numpy()), rel=1e-12)
    shares = counts.double() / counts.sum()
    assert utilization_perplexity(shares) == pytest.approx(utilization_perplexity(counts), rel=1e-12)
    assert dead_code_ratio(counts) == pytest.approx(float((counts == 0).double().mean()))


def test_dead_threshold():
    counts = torch.tensor([0, 1, 2, 5, 10])
    assert dead_code_ratio(counts, threshold=2) == pytest.approx(3 / 5)
    assert dead_code_ratio(counts, threshold=-1) == 0.0


def test_bad_counts_and_indices():
    with pytest.raises(ValueError, match="counts: is empty"):
        utilization_perplexity(torch.tensor([]))
    with pytest.raises(ValueError, match="all counts are zero"):
        utilization(torch.zeros(4))
    with pytest.raises(ValueError, match="contains 1 negative values"):
        dead_code_ratio(torch.tensor([1.0, -2.0, 3.0]))
    with pytest.raises(ValueError, match="expected a 1-D histogram of length K, got shape \\(2, 2\\)"):
        utilization(torch.ones(2, 2))
    with pytest.raises(ValueError, match="contains 1 NaN/Inf"):
        utilization(torch.tensor([1.0, float("inf")]))
    with pytest.raises(TypeError, match="complex"):
        utilization(torch.ones(3, dtype=torch.complex64))
    with pytest.raises(TypeError, match="expected an integer tensor"):
        code_counts(torch.tensor([0.0, 1.0]), 3)
    with pytest.raises(ValueError, match="max id 3 is out of range for a codebook of K=3"):
        code_counts(torch.tensor([0, 3]), 3)
    with pytest.raises(ValueError, match="num_codes: expected K >= 1"):
        code_counts(torch.tensor([0]), 0)
    with pytest.raises(ValueError, match="codebook has dimension D=3 but latents have D=2"):
        assign(torch.eye(3), torch.ones(4, 2))

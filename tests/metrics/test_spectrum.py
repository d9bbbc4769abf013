"""Spectral metrics against numpy SVD, constructed spectra, dtypes, devices and bad input."""
import math

import numpy as np
import pytest
import torch
from metrics_testutil import FLOAT_DTYPES, randn

from shrinkscope.metrics import effective_dimension, effective_rank, singular_spectrum


def ref_spectrum(x):
    x = np.asarray(x, np.float64)
    return np.linalg.svd(x - x.mean(0), compute_uv=False)


def ref_effective_rank(x):
    s = ref_spectrum(x)
    p = s / s.sum()
    p = p[p > 0]
    return math.exp(-(p * np.log(p)).sum())


def ref_effective_dimension(x, threshold=0.99):
    # Paper B's rule: k = #{i : cumsum(lambda)/sum(lambda) < threshold} + 1
    lam = ref_spectrum(x) ** 2
    cum = np.cumsum(lam) / lam.sum()
    return int((cum < threshold - 1e-12).sum()) + 1


@pytest.mark.parametrize("seed,n,d", [(0, 50, 8), (1, 6, 10), (2, 200, 3)])
def test_matches_numpy(seed, n, d):
    x = randn(n, d, seed=seed) * torch.linspace(0.1, 3, d, dtype=torch.float64) + 4
    np.testing.assert_allclose(singular_spectrum(x).numpy(), ref_spectrum(x)[: min(n, d)], rtol=1e-7, atol=1e-9)
    assert effective_rank(x) == pytest.approx(ref_effective_rank(x), rel=1e-9)
    for thr in (0.5, 0.9, 0.99):
        assert effective_dimension(x, threshold=thr) == ref_effective_dimension(x, thr)


def test_isotropic_codebook_has_full_rank():
    # +-e_i: centred, all singular values equal
    c = torch.cat([torch.eye(5), -torch.eye(5)]).double()
    assert effective_rank(c) == pytest.approx(5.0, rel=1e-12)
    assert effective_dimension(c) == 5


def test_orthonormal_codebook_loses_one_direction_to_centring():
    # centring K orthonormal rows in D = K leaves K - 1 equal singular values
    q, _ = torch.linalg.qr(randn(6, 6, seed=3))
    assert effective_rank(q) == pytest.approx(5.0, rel=1e-9)
    assert effective_dimension(q) == 5


def test_identical_codes_and_a_line():
    same = torch.tensor([[1.0, -2.0, 3.0]]).repeat(8, 1)
    assert effective_rank(same) == 1.0
    assert effective_dimension(same) == 0
    line = torch.arange(10.0)[:, None] * torch.tensor([[1.0, 2.0, 0.5]])
    assert effective_rank(line) == pytest.approx(1.0, abs=1e-6)
    assert effective_dimension(line) == 1


def test_threshold_one_counts_every_nonzero_direction():
    x = randn(40, 4, seed=4) * torch.tensor([1.0, 1e-3, 1e-3, 1e-3], dtype=torch.float64)
    assert effective_dimension(x, threshold=0.99) == 1
    assert effective_dimension(x, threshold=1.0) == 4


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_dtypes(dtype):
    x = randn(64, 6, seed=5).to(dtype)
    assert effective_rank(x) == pytest.approx(ref_effective_rank(x.double()), rel=1e-5)


def test_device(device):
    x = randn(64, 6, seed=6)
    assert effective_rank(x.to(device)) == pytest.approx(effective_rank(x), rel=1e-9)
    assert effective_dimension(x.to(device)) == effective_dimension(x)


def test_bad_input():
    with pytest.raises(ValueError, match="threshold: expected a variance share in"):
        effective_dimension(randn(5, 3), threshold=0.0)
    with pytest.raises(ValueError, match="threshold"):
        effective_dimension(randn(5, 3), threshold=1.5)
    with pytest.raises(ValueError, match="needs at least 2 rows"):
        effective_rank(randn(1, 3))
    with pytest.raises(ValueError, match="expected a 2-D tensor"):
        effective_rank(randn(2, 3, 4))
    with pytest.raises(TypeError, match="expected a floating tensor"):
        singular_spectrum(torch.ones(4, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match="contains 1 NaN and 0 Inf"):
        effective_rank(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))


def test_gram_path_for_large_inputs(monkeypatch):
    # force the chunked D x D Gram path and compare with the direct SVD on the same rows
    from shrinkscope.metrics import spectrum

    x = randn(300, 12, seed=7) * torch.linspace(0.5, 2, 12, dtype=torch.float64) - 2
    direct = singular_spectrum(x)
    monkeypatch.setattr(spectrum, "_DIRECT_SVD_MAX", 0)
    gram = singular_spectrum(x)
    np.testing.assert_allclose(gram.numpy(), direct.numpy(), rtol=1e-9)
    assert effective_rank(x) == pytest.approx(ref_effective_rank(x), rel=1e-9)

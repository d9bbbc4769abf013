"""k-NN coverage and precision against loops and the published ``prdc`` package (exact agreement)."""
import numpy as np
import pytest
import torch
from metrics_testutil import FLOAT_DTYPES, randn

from shrinkscope.metrics import (
    codebook_precision,
    coverage,
    coverage_and_precision,
    knn_radii,
    latent_coverage,
)


def ref_radii(x, k):
    x = np.asarray(x, np.float64)
    out = []
    for i in range(len(x)):
        d = sorted(float(np.sqrt(((x[i] - x[j]) ** 2).sum())) for j in range(len(x)) if j != i)
        out.append(d[k - 1])
    return np.array(out)


def ref_coverage_precision(c, x, k):
    c, x = np.asarray(c, np.float64), np.asarray(x, np.float64)
    r = ref_radii(x, k)

    def dist(a, b):
        return float(np.sqrt(((a - b) ** 2).sum()))

    cov = np.mean([any(dist(xi, cj) < r[i] for cj in c) for i, xi in enumerate(x)])
    prec = np.mean([any(dist(cj, xi) < r[i] for i, xi in enumerate(x)) for cj in c])
    return cov, prec


def cases():
    yield randn(40, 3, seed=0) * 0.5, randn(60, 3, seed=1), 3
    yield randn(25, 8, seed=2) + 0.3, randn(50, 8, seed=3), 5
    # integer lattice: many exact distance ties, so strict "<" really matters
    g = torch.Generator().manual_seed(4)
    yield (torch.randint(0, 4, (30, 2), generator=g).double(), torch.randint(0, 5, (60, 2), generator=g).double(), 4)


@pytest.mark.parametrize("case", list(range(3)))
def test_matches_loops(case):
    c, x, k = list(cases())[case]
    np.testing.assert_allclose(knn_radii(x, k=k).numpy(), ref_radii(x, k), rtol=1e-12, atol=1e-12)
    cov, prec = ref_coverage_precision(c, x, k)
    assert latent_coverage(c, x, k=k) == cov
    assert codebook_precision(c, x, k=k) == prec


@pytest.mark.parametrize("seed,k_codes,n,d", [(0, 100, 400, 8), (1, 300, 200, 32), (2, 50, 600, 2), (3, 64, 64, 128)])
def test_matches_prdc_package(seed, k_codes, n, d, capsys):
    prdc_pkg = pytest.importorskip("prdc")  # test-only dependency (extra "dev")
    x = randn(n, d, seed=seed).numpy()
    c = (randn(k_codes, d, seed=seed + 100) * 0.6 + 0.2).numpy()
    ref = prdc_pkg.compute_prdc(real_features=x, fake_features=c, nearest_k=5)
    capsys.readouterr()  # prdc prints its sizes
    assert abs(latent_coverage(c, x) - ref["coverage"]) < 1e-6
    assert abs(codebook_precision(c, x) - ref["precision"]) < 1e-6
    np.testing.assert_allclose(knn_radii(x).numpy(),
                               prdc_pkg.prdc.compute_nearest_neighbour_distances(x, 5), rtol=1e-9)


def test_float64_recheck_path_gives_same_answer(monkeypatch):
    c, x = randn(80, 6, seed=5) * 0.7, randn(300, 6, seed=6)
    fast = coverage_and_precision(c, x), knn_radii(x)
    # a huge tolerance sends every decision through the exact float64 re-check
    monkeypatch.setattr(coverage, "_TOL_SAFETY", 1e12)
    slow = coverage_and_precision(c, x), knn_radii(x)
    assert fast[0] == slow[0]
    assert torch.equal(fast[1], slow[1])


def test_blocked_knn_search_matches_one_block(monkeypatch):
    x = randn(250, 5, seed=16) * torch.tensor([3.0, 1.0, 1.0, 0.3, 0.1], dtype=torch.float64)
    one_block = knn_radii(x, k=4)
    monkeypatch.setattr(coverage, "_SQUARE_BLOCK", 13)  # many square blocks, ragged last one
    assert torch.equal(knn_radii(x, k=4), one_block)
    np.testing.assert_allclose(one_block.numpy(), ref_radii(x, 4), rtol=1e-12)


def test_low_precision_matmul_setting_is_honoured():
    c, x = randn(60, 16, seed=7) * 0.5, randn(300, 16, seed=8)
    exact = ref_coverage_precision(c, x, 5)
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        assert coverage_and_precision(c, x) == pytest.approx(exact, abs=0)
    finally:
        torch.set_float32_matmul_precision(before)


def test_constructed_cases():
    x = randn(200, 4, seed=9)
    # codes = the latents themselves: every ball holds its own centre, every code sits in a ball
    assert latent_coverage(x, x) == 1.0
    assert codebook_precision(x, x) == 1.0
    # one code far away from everything
    far = torch.full((1, 4), 100.0, dtype=torch.float64)
    assert latent_coverage(far, x) == 0.0
    assert codebook_precision(far, x) == 0.0
    # a 10x shrunken codebook covers few balls
    assert latent_coverage(x[:50] * 0.1, x) < latent_coverage(x[:50], x)


def test_precomputed_radii_are_used():
    c, x = randn(30, 3, seed=10), randn(100, 3, seed=11)
    r = knn_radii(x, k=5)
    assert latent_coverage(c, x, radii=r) == latent_coverage(c, x)
    assert latent_coverage(c, x, radii=torch.zeros(100)) == 0.0
    with pytest.raises(ValueError, match=r"radii: expected shape \(100,\)"):
        latent_coverage(c, x, radii=torch.zeros(99))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_dtypes(dtype):
    c, x = randn(30, 4, seed=12).to(dtype), randn(120, 4, seed=13).to(dtype)
    ref = ref_coverage_precision(c.double(), x.double(), 5)
    assert coverage_and_precision(c, x) == ref


def test_device(device):
    c, x = randn(30, 4, seed=14), randn(120, 4, seed=15)
    assert coverage_and_precision(c.to(device), x.to(device)) == pytest.approx(coverage_and_precision(c, x), abs=1e-12)


def test_bad_input():
    with pytest.raises(ValueError, match="k-NN balls with k=5 need at least 6 latents, got 5"):
        latent_coverage(randn(3, 2), randn(5, 2))
    with pytest.raises(ValueError, match="k: expected k >= 1, got 0"):
        codebook_precision(randn(3, 2), randn(10, 2), k=0)
    with pytest.raises(ValueError, match="codebook has dimension D=2 but latents have D=3"):
        latent_coverage(randn(3, 2), randn(10, 3))
    with pytest.raises(ValueError, match="needs at least 6 rows"):
        knn_radii(randn(5, 2))
    with pytest.raises(TypeError, match="expected a floating tensor"):
        latent_coverage(torch.ones(3, 2, dtype=torch.int64), randn(10, 2))

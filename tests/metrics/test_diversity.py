"""Diversity metrics: mode coverage, pixel diversity, PRDC (vs the ``prdc`` package) and the Vendi score."""
import itertools
import math

import numpy as np
import pytest
import torch
from metrics_testutil import FLOAT_DTYPES, randn

from shrinkscope.metrics import coverage, mode_coverage, pixel_diversity, prdc, vendi_score


def ref_prdc(real, fake, k):
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)

    def radii(x):
        return np.array([sorted(np.sqrt(((x[i] - x[j]) ** 2).sum()) for j in range(len(x)) if j != i)[k - 1]
                         for i in range(len(x))])

    rr, rf = radii(real), radii(fake)
    d = np.array([[np.sqrt(((a - b) ** 2).sum()) for b in fake] for a in real])
    precision = np.mean([any(d[i, j] < rr[i] for i in range(len(real))) for j in range(len(fake))])
    recall = np.mean([any(d[i, j] < rf[j] for j in range(len(fake))) for i in range(len(real))])
    density = np.mean([sum(d[i, j] < rr[i] for i in range(len(real))) for j in range(len(fake))]) / k
    cov = np.mean([min(d[i]) < rr[i] for i in range(len(real))])
    return precision, recall, density, cov


def ref_vendi(x, kernel):
    x = np.asarray(x, np.float64)
    if kernel == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    km = x @ x.T
    ev = np.linalg.eigvalsh(km / np.trace(km))
    ev = ev[ev > 1e-15]
    return math.exp(-(ev * np.log(ev)).sum())


# ---- mode coverage -------------------------------------------------------------------------------

def test_mode_coverage_uniform_and_single_mode():
    m = 8
    even = mode_coverage(torch.arange(m).repeat(5), m)
    assert (even.modes_hit, even.fraction) == (m, 1.0)
    assert even.kl == pytest.approx(0.0, abs=1e-12)
    assert even.entropy == pytest.approx(math.log(m))
    single = mode_coverage(torch.full((20,), 3), m)
    assert (single.modes_hit, single.fraction) == (1, 1 / m)
    assert single.kl == pytest.approx(math.log(m))
    assert single.entropy == 0.0
    assert single.counts.tolist() == [0, 0, 0, 20, 0, 0, 0, 0]


def test_mode_coverage_matches_numpy_with_reference_and_ignores_minus_one():
    modes = torch.tensor([0, 0, 1, 2, 2, 2, -1, -1])
    ref = torch.tensor([0.5, 0.25, 0.2, 0.05], dtype=torch.float64)
    mc = mode_coverage(modes, 4, reference=ref)
    p = np.array([2, 1, 3, 0]) / 6
    q = ref.numpy().astype(np.float64)
    nz = p > 0
    assert mc.num_samples == 6
    assert mc.kl == pytest.approx(float((p[nz] * np.log(p[nz] / q[nz])).sum()), rel=1e-12)
    assert mc.entropy == pytest.approx(float(-(p[nz] * np.log(p[nz])).sum()), rel=1e-12)
    # reference given as counts: same answer
    assert mode_coverage(modes, 4, reference=ref * 40).kl == pytest.approx(mc.kl, rel=1e-12)
    # samples in a mode the reference rules out
    assert mode_coverage(modes, 4, reference=torch.tensor([1.0, 0.0, 1.0, 1.0])).kl == math.inf
    assert set(mc.to_dict()) == {"modes_hit", "num_modes", "fraction", "kl", "entropy", "num_samples"}


def test_mode_coverage_bad_input():
    with pytest.raises(TypeError, match="expected integer mode ids"):
        mode_coverage(torch.tensor([0.0, 1.0]), 2)
    with pytest.raises(ValueError, match="max id 5 is out of range for M=3"):
        mode_coverage(torch.tensor([0, 5]), 3)
    with pytest.raises(ValueError, match="no sample has a mode id"):
        mode_coverage(torch.tensor([-1, -1]), 3)
    with pytest.raises(ValueError, match="num_modes: expected an int M >= 1"):
        mode_coverage(torch.tensor([0]), 0)
    with pytest.raises(ValueError, match="reference: expected 3 weights"):
        mode_coverage(torch.tensor([0]), 3, reference=torch.ones(2))
    with pytest.raises(ValueError, match="reference: is empty"):
        mode_coverage(torch.tensor([0]), 3, reference=torch.ones(0))


# ---- pixel diversity -----------------------------------------------------------------------------

def test_pixel_diversity_matches_loops_on_images():
    imgs = randn(12, 3, 4, 4, seed=0)
    flat = imgs.reshape(12, -1).numpy()
    ref = np.mean([np.linalg.norm(flat[i] - flat[j]) for i, j in itertools.permutations(range(12), 2)])
    assert pixel_diversity(imgs) == pytest.approx(ref, rel=1e-12)
    # uint8 images are measured in 0..255 units
    u8 = torch.tensor([[[0, 0]], [[3, 4]]], dtype=torch.uint8)
    assert pixel_diversity(u8) == pytest.approx(5.0)
    assert pixel_diversity(torch.zeros(5, 2, 2)) == 0.0


def test_pixel_diversity_sampling_and_errors():
    x = randn(900, 10, seed=1)
    exact = pixel_diversity(x, max_samples=None)
    assert pixel_diversity(x, max_samples=300) == pytest.approx(exact, rel=0.03)
    with pytest.raises(ValueError, match="leading batch axis"):
        pixel_diversity(torch.ones(5))
    with pytest.raises(ValueError, match="needs at least 2 rows"):
        pixel_diversity(torch.ones(1, 3, 2, 2))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_pixel_diversity_dtypes(dtype):
    x = randn(10, 2, 3, seed=2).to(dtype)
    assert pixel_diversity(x) == pytest.approx(pixel_diversity(x.double()), rel=1e-6)


# ---- PRDC ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed,n,m,d,k", [(0, 120, 80, 4, 5), (1, 60, 90, 16, 3), (2, 40, 40, 2, 5)])
def test_prdc_matches_loops(seed, n, m, d, k):
    real, fake = randn(n, d, seed=seed), randn(m, d, seed=seed + 1) * 0.8 + 0.3
    assert tuple(prdc(real, fake, k=k)) == pytest.approx(ref_prdc(real, fake, k), abs=1e-12)


@pytest.mark.parametrize("seed,n,m,d", [(0, 500, 300, 8), (1, 200, 400, 64), (2, 300, 300, 2)])
def test_prdc_matches_package(seed, n, m, d, capsys):
    prdc_pkg = pytest.importorskip("prdc")  # test-only dependency (extra "dev")
    real = randn(n, d, seed=seed).numpy()
    fake = (randn(m, d, seed=seed + 50) * 1.2 - 0.2).numpy()
    ref = prdc_pkg.compute_prdc(real_features=real, fake_features=fake, nearest_k=5)
    capsys.readouterr()
    ours = prdc(real, fake, k=5)
    for key in ("precision", "recall", "density", "coverage"):
        assert abs(getattr(ours, key) - ref[key]) < 1e-6, key


def test_prdc_exact_path_and_identical_sets(monkeypatch):
    real, fake = randn(100, 5, seed=3), randn(70, 5, seed=4)
    fast = prdc(real, fake)
    monkeypatch.setattr(coverage, "_TOL_SAFETY", 1e12)
    assert prdc(real, fake) == pytest.approx(tuple(fast), abs=1e-15)
    same = prdc(real, real)
    assert (same.precision, same.recall, same.coverage) == (1.0, 1.0, 1.0)


def test_prdc_bad_input():
    with pytest.raises(ValueError, match="fake: k-NN balls with k=5 need at least 6 rows, got 4"):
        prdc(randn(10, 2), randn(4, 2))
    with pytest.raises(ValueError, match="codebook has dimension D=2 but latents have D=3"):
        prdc(randn(10, 2), randn(10, 3))
    with pytest.raises(ValueError, match="k: expected k >= 1"):
        prdc(randn(10, 2), randn(10, 2), k=0)


# ---- Vendi ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kernel", ["cosine", "linear"])
@pytest.mark.parametrize("n,d", [(40, 5), (6, 30)])  # N > D uses the D x D Gram, N < D the N x N one
def test_vendi_matches_numpy(kernel, n, d):
    x = randn(n, d, seed=n) + 0.5
    assert vendi_score(x, kernel=kernel) == pytest.approx(ref_vendi(x, kernel), rel=1e-9)


def test_vendi_constructed():
    assert vendi_score(torch.eye(5)) == pytest.approx(5.0, rel=1e-12)  # orthogonal samples: all distinct
    assert vendi_score(torch.ones(9, 3) * 2) == pytest.approx(1.0, rel=1e-9)  # identical samples: one
    two = torch.tensor([[1.0, 0.0]] * 5 + [[0.0, 1.0]] * 5)
    assert vendi_score(two) == pytest.approx(2.0, rel=1e-9)  # two equal groups
    assert vendi_score(two * torch.tensor([3.0, 0.5])) == pytest.approx(2.0, rel=1e-9)  # cosine: scale-free


def test_vendi_bad_input():
    with pytest.raises(ValueError, match="1 rows are all-zero"):
        vendi_score(torch.tensor([[0.0, 0.0], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="kernel: expected 'cosine' or 'linear'"):
        vendi_score(torch.eye(3), kernel="rbf")
    with pytest.raises(TypeError, match="expected a floating tensor"):
        vendi_score(torch.ones(3, 3, dtype=torch.int64))


def test_device(device):
    real, fake = randn(60, 4, seed=5), randn(50, 4, seed=6)
    assert tuple(prdc(real.to(device), fake.to(device))) == pytest.approx(tuple(prdc(real, fake)), abs=1e-12)
    assert vendi_score(real.to(device)) == pytest.approx(vendi_score(real), rel=1e-9)
    assert pixel_diversity(real.to(device)) == pytest.approx(pixel_diversity(real), rel=1e-9)

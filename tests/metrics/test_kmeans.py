"""k-means: recovers separated clusters, is a Lloyd fixed point, reproducible, and handles degenerate input."""
import numpy as np
import pytest
import torch
from metrics_testutil import randn

from shrinkscope.kmeans import kmeans, kmeans_plusplus
from shrinkscope.metrics import assign


def test_recovers_separated_blobs():
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]], dtype=torch.float64)
    x = centres.repeat_interleave(50, 0) + 0.1 * randn(200, 2, seed=0)
    c = kmeans(x, 4, seed=1)
    got = sorted(map(tuple, c.round().tolist()))
    assert got == sorted(map(tuple, centres.tolist()))


def test_result_is_a_lloyd_fixed_point():
    x = randn(400, 3, seed=2)
    c = kmeans(x, 6, iters=100, seed=0, tol=0)
    idx, _ = assign(c, x)
    xn, idxn = x.numpy(), idx.numpy()
    for j in range(6):  # every centre is the mean of its members (loop reference)
        np.testing.assert_allclose(c[j].numpy(), xn[idxn == j].mean(0), atol=1e-9)


def test_improves_on_the_seeding():
    x = randn(500, 4, seed=3)
    seeds = kmeans_plusplus(x, 8, generator=torch.Generator().manual_seed(0))
    c = kmeans(x, 8, seed=0)
    assert float(assign(c, x)[1].mean()) < float(assign(seeds, x)[1].mean())


def test_reproducible_and_dtypes():
    x = randn(300, 4, seed=4)
    assert torch.equal(kmeans(x, 5, seed=7), kmeans(x, 5, seed=7))
    assert kmeans(x.half(), 5).dtype == torch.float32
    assert kmeans(x.float(), 5).dtype == torch.float32
    assert kmeans(x.numpy(), 5).dtype == torch.float64


def test_fewer_distinct_points_than_clusters():
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0]]).repeat(10, 1)
    c = kmeans(x, 5)
    assert c.shape == (5, 2) and bool(torch.isfinite(c).all())
    assert set(map(tuple, c.tolist())) <= {(0.0, 0.0), (1.0, 1.0)}


def test_device(device):
    x = randn(200, 3, seed=5)
    assert torch.allclose(kmeans(x.to(device), 4).cpu(), kmeans(x, 4), atol=1e-6)


def test_bad_input():
    with pytest.raises(ValueError, match="k-means with k=10 needs at least 10 points, got 5"):
        kmeans(randn(5, 2), 10)
    with pytest.raises(ValueError, match="k: expected k >= 1"):
        kmeans(randn(5, 2), 0)
    with pytest.raises(ValueError, match="expected a 2-D tensor"):
        kmeans(torch.ones(5), 2)

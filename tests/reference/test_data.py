"""Bundled datasets: shapes, ranges, modes, splits, user data."""
import numpy as np
import pytest
import torch

from shrinkscope.reference.data import (
    digit_pools,
    from_path,
    gaussians,
    load_dataset,
    patches,
    stacked_digits,
)


def test_stacked_digits_shapes_and_modes():
    d = stacked_digits(n_train=3000, n_test=500, seed=1)
    assert d.train.shape == (3000, 3, 8, 8) and d.test.shape == (500, 3, 8, 8)
    assert 0.0 <= float(d.train.min()) and float(d.train.max()) <= 1.0
    assert d.num_modes == 1000
    assert int(d.train_modes.min()) >= 0 and int(d.train_modes.max()) < 1000
    # 3000 uniform draws over 1000 modes hit about 950 of them; a broken stacking would hit far fewer
    assert len(torch.unique(d.train_modes)) > 900


def test_stacked_digits_mode_matches_channel_labels():
    xtr, ytr, _, _ = digit_pools()
    d = stacked_digits(n_train=50, n_test=10, seed=0)
    lookup = {tuple(x.flatten().tolist()): int(y) for x, y in zip(xtr, ytr)}
    for img, mode in zip(d.train[:20], d.train_modes[:20]):
        digits = [lookup[tuple(img[c].flatten().tolist())] for c in range(3)]
        assert digits[0] * 100 + digits[1] * 10 + digits[2] == int(mode)


def test_digit_pools_are_disjoint():
    xtr, _, xte, _ = digit_pools()
    tr = {tuple(x.flatten().tolist()) for x in xtr}
    # sklearn's digits contain a few exact duplicates; held-out images must be overwhelmingly unseen
    assert sum(tuple(x.flatten().tolist()) in tr for x in xte) < 0.02 * len(xte)


@pytest.mark.parametrize("dim", [2, 8, 64])
def test_gaussians_balanced_and_separated(dim):
    d = gaussians(n_train=1000, n_test=200, dim=dim, seed=0)
    assert d.train.shape == (1000, dim) and d.num_modes == 10
    assert torch.bincount(d.train_modes, minlength=10).tolist() == [100] * 10
    centroids = torch.stack([d.train[d.train_modes == k].mean(0) for k in range(10)])
    spread = torch.stack([d.train[d.train_modes == k].std(0).mean() for k in range(10)]).max()
    gap = torch.cdist(centroids, centroids).add(torch.eye(10) * 1e9).min()
    assert float(gap) > 5 * float(spread)


def test_gaussians_rejects_bad_dim():
    with pytest.raises(ValueError, match="dim"):
        gaussians(dim=1)


def test_patches():
    d = patches(n_train=100, n_test=20, seed=0)
    assert d.train.shape == (100, 3, 8, 8) and d.test.shape == (20, 3, 8, 8)
    assert d.train_modes is None and float(d.train.std()) > 0.01


def test_from_npy_and_folder(tmp_path):
    arr = (np.random.default_rng(0).random((40, 8, 8, 3)) * 255).astype(np.uint8)
    np.save(tmp_path / "x.npy", arr)
    d = from_path(tmp_path / "x.npy")
    assert d.train.shape[1:] == (3, 8, 8) and len(d.train) + len(d.test) == 40
    assert float(d.train.max()) <= 1.0
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(12):
        Image.fromarray(arr[i]).save(folder / f"{i}.png")
    d2 = load_dataset("path", path=str(folder))
    assert d2.train.shape[1:] == (3, 8, 8)


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="does not exist"):
        from_path(tmp_path / "nope")


def test_seeded():
    a, b = stacked_digits(n_train=100, n_test=10, seed=3), stacked_digits(n_train=100, n_test=10, seed=3)
    assert torch.equal(a.train, b.train) and torch.equal(a.train_modes, b.train_modes)

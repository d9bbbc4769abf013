"""Bundled datasets for the reference study: nothing is ever downloaded.

- ``gaussians``: the synthetic setting of Zhao et al. (2026): a balanced mixture of well-separated
  Gaussians (10 components by default) in 2..64 dimensions, the mode of every point known.
- ``stacked-digits``: three of scikit-learn's bundled 8x8 digits stacked as the channels of one image,
  1,000 equally likely modes (the offline counterpart of Stacked MNIST). Train and held-out images are
  built from disjoint pools of digit images, so held-out data is unseen at the digit level too.
- ``patches``: small RGB patches cropped from scikit-learn's two bundled sample photographs.
- a path: a folder of images or a ``.npy`` array (``--data PATH``).

Every dataset comes back as a ``Dataset`` with ``train``/``test`` float tensors in [0, 1] (images,
``(N, C, H, W)``) or standardised vectors (``gaussians``, ``(N, D)``), plus ``train_modes``/``test_modes``
where the mode of each item is known.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

DATASETS = ("stacked-digits", "gaussians", "patches")


@dataclass
class Dataset:
    """A bundled dataset split into train and held-out parts.

    Attributes:
        name: dataset name (one of ``DATASETS`` or ``"path:<PATH>"``).
        train: ``(N, C, H, W)`` images in [0, 1] or ``(N, D)`` vectors.
        test: held-out items, same layout as ``train``.
        train_modes / test_modes: ``(N,)`` int64 mode id of each item, or None when unknown.
        num_modes: number of modes (1,000 for stacked digits), or None.
        info: plain-dict description saved in checkpoints (contract 5 ``"data"``).
    """

    name: str
    train: torch.Tensor
    test: torch.Tensor
    train_modes: torch.Tensor | None = None
    test_modes: torch.Tensor | None = None
    num_modes: int | None = None
    info: dict = field(default_factory=dict)

    @property
    def is_image(self) -> bool:
        return self.train.dim() == 4

    @property
    def item_shape(self) -> tuple[int, ...]:
        return tuple(self.train.shape[1:])


def digit_pools(*, seed: int = 0, test_fraction: float = 0.2):
    """Split sklearn's bundled 8x8 digits into disjoint train / held-out pools.

    Returns:
        ``(x_train (N1, 8, 8) float32 in [0,1], y_train (N1,), x_test (N2, 8, 8), y_test (N2,))``.
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)
    y = torch.from_numpy(d.target.astype(np.int64))
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = round(len(x) * test_fraction)
    te, tr = perm[:n_test], perm[n_test:]
    return x[tr], y[tr], x[te], y[te]


def _stack(x: torch.Tensor, y: torch.Tensor, n: int, g: torch.Generator):
    # each channel an independent uniform draw -> all 1,000 digit triples equally likely
    idx = torch.randint(0, len(x), (n, 3), generator=g)
    images = x[idx]  # (n, 3, 8, 8)
    modes = y[idx[:, 0]] * 100 + y[idx[:, 1]] * 10 + y[idx[:, 2]]
    return images.contiguous(), modes


def stacked_digits(*, n_train: int = 20_000, n_test: int = 2_000, seed: int = 0) -> Dataset:
    """Stacked digits: ``(N, 3, 8, 8)`` images whose mode is the 3-digit number of their channels."""
    xtr, ytr, xte, yte = digit_pools()  # fixed pool split: the classifier holds out the same digits
    g = torch.Generator().manual_seed(seed)
    train, mtr = _stack(xtr, ytr, n_train, g)
    test, mte = _stack(xte, yte, n_test, g)
    return Dataset("stacked-digits", train, test, mtr, mte, 1000,
                   {"dataset": "stacked-digits", "n_train": n_train, "n_test": n_test, "seed": seed})


def gaussians(*, n_train: int = 10_000, n_test: int = 2_000, dim: int = 8, num_modes: int = 10,
              std: float = 0.1, seed: int = 0) -> Dataset:
    """Balanced mixture of ``num_modes`` well-separated isotropic Gaussians in ``dim`` dimensions.

    Means are drawn on the unit sphere and rescaled so the closest pair of means is at least
    ``10 * std`` apart; points are standardised with the training statistics.
    """
    if not 2 <= dim <= 64:
        raise ValueError(f"gaussians: expected 2 <= dim <= 64, got dim={dim}")
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(num_modes, dim, generator=g)
    means = means / means.norm(dim=1, keepdim=True)
    dmin = torch.cdist(means, means).add(torch.eye(num_modes) * 1e9).min()
    means = means * max(1.0, 10 * std / float(dmin))

    def draw(n):
        modes = torch.arange(n) % num_modes  # balanced
        modes = modes[torch.randperm(n, generator=g)]
        return means[modes] + std * torch.randn(n, dim, generator=g), modes

    tr, mtr = draw(n_train)
    te, mte = draw(n_test)
    mu, sd = tr.mean(0), tr.std(0).clamp_min(1e-6)
    return Dataset("gaussians", (tr - mu) / sd, (te - mu) / sd, mtr, mte, num_modes,
                   {"dataset": "gaussians", "n_train": n_train, "n_test": n_test, "dim": dim,
                    "num_modes": num_modes, "std": std, "seed": seed})


def patches(*, n_train: int = 20_000, n_test: int = 2_000, size: int = 8, seed: int = 0) -> Dataset:
    """Random ``(3, size, size)`` crops of sklearn's bundled photos at half resolution.

    The left 80% of each photo feeds the training crops, the right 20% the held-out crops.
    """
    from sklearn.datasets import load_sample_images

    g = torch.Generator().manual_seed(seed)
    pools_tr, pools_te = [], []
    for img in load_sample_images().images:
        t = torch.from_numpy(img.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
        t = torch.nn.functional.avg_pool2d(t, 2)[0]  # (3, H/2, W/2): less JPEG noise per pixel
        cut = int(t.shape[2] * 0.8)
        pools_tr.append(t[:, :, :cut])
        pools_te.append(t[:, :, cut:])

    def crops(pools, n):
        out = torch.empty(n, 3, size, size)
        which = torch.randint(0, len(pools), (n,), generator=g)
        for i in range(n):
            p = pools[int(which[i])]
            y = int(torch.randint(0, p.shape[1] - size + 1, (1,), generator=g))
            x = int(torch.randint(0, p.shape[2] - size + 1, (1,), generator=g))
            out[i] = p[:, y:y + size, x:x + size]
        return out

    return Dataset("patches", crops(pools_tr, n_train), crops(pools_te, n_test),
                   info={"dataset": "patches", "n_train": n_train, "n_test": n_test, "size": size, "seed": seed})


def from_path(path: str | os.PathLike, *, n_test_fraction: float = 0.1, seed: int = 0,
              size: int | None = None) -> Dataset:
    """The user's own data: a ``.npy`` array or a folder of images.

    A ``.npy`` array may be ``(N, D)`` vectors, ``(N, H, W)`` grey images or ``(N, H, W, C)`` /
    ``(N, C, H, W)`` images; integer images are scaled by 255. Folder images are converted to RGB and
    resized to ``size`` (default: the first image's size).
    """
    p = Path(path)
    if not p.exists():
        raise ValueError(f"--data: {p} does not exist; pass a folder of images or a .npy array")
    if p.is_dir():
        from PIL import Image

        files = sorted(f for f in p.iterdir() if f.suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp", ".gif"})
        if len(files) < 10:
            raise ValueError(f"--data: {p} holds {len(files)} images (.png/.jpg/.bmp/.gif); need at least 10")
        first = Image.open(files[0])
        side = size or min(first.size)
        arr = np.stack([np.asarray(Image.open(f).convert("RGB").resize((side, side))) for f in files])
        x = torch.from_numpy(arr.astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    elif p.suffix == ".npy":
        arr = np.load(p, allow_pickle=False)
        x = torch.from_numpy(np.asarray(arr)).float()
        if np.issubdtype(arr.dtype, np.integer):
            x = x / 255.0
        if x.dim() == 3:
            x = x[:, None]
        elif x.dim() == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
            x = x.permute(0, 3, 1, 2)
        elif x.dim() != 2 and x.dim() != 4:
            raise ValueError(f"--data: expected a (N, D), (N, H, W) or (N, H, W, C) array, got shape {tuple(x.shape)}")
        if x.dim() == 2:
            x = (x - x.mean(0)) / x.std(0).clamp_min(1e-6)
    else:
        raise ValueError(f"--data: expected a folder of images or a .npy file, got {p}")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = max(1, int(len(x) * n_test_fraction))
    return Dataset(f"path:{p}", x[perm[n_test:]].contiguous(), x[perm[:n_test]].contiguous(),
                   info={"dataset": "path", "path": str(p), "seed": seed})


def load_dataset(name: str, *, seed: int = 0, n_train: int | None = None, n_test: int | None = None,
                 dim: int = 8, path: str | None = None) -> Dataset:
    """Load a bundled dataset by name (``DATASETS``), or the user's own with ``path``.

    Args:
        name: ``"stacked-digits"``, ``"gaussians"``, ``"patches"`` or ``"path"``.
        seed: seed of the sampling.
        n_train / n_test: sizes (dataset defaults when None).
        dim: dimension of ``gaussians``.
        path: folder / ``.npy`` file for ``name="path"``.
    """
    sizes = {k: v for k, v in (("n_train", n_train), ("n_test", n_test)) if v is not None}
    if path is not None or name == "path":
        if path is None:
            raise ValueError("dataset 'path' needs path=... (the --data option)")
        return from_path(path, seed=seed)
    if name == "stacked-digits":
        return stacked_digits(seed=seed, **sizes)
    if name == "gaussians":
        return gaussians(seed=seed, dim=dim, **sizes)
    if name == "patches":
        return patches(seed=seed, **sizes)
    raise ValueError(f"unknown dataset {name!r}; expected one of {DATASETS} or --data PATH")

"""A small digit classifier for sklearn's bundled 8x8 digits.

It labels the three channels of a stacked-digits image (exact mode counting) and gives the feature
space in which PRDC compares generated with held-out images. Training is deterministic and takes a few
seconds on one CPU core; the weights are cached in ``$SHRINKSCOPE_CACHE`` (default
``~/.cache/shrinkscope``) and retrained when the cache is missing or unreadable.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .data import digit_pools

_CACHE_NAME = "digit_classifier_v1.pt"


class DigitClassifier(nn.Module):
    """Conv net for ``(N, 1, 8, 8)`` digits in [0, 1]; ``features`` is its 64-d penultimate layer."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 4x4
            nn.Flatten(), nn.Linear(64 * 16, 64), nn.ReLU(),
        )
        self.head = nn.Linear(64, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _cache_dir() -> Path:
    return Path(os.environ.get("SHRINKSCOPE_CACHE", Path.home() / ".cache" / "shrinkscope"))


def train_classifier(*, epochs: int = 50, seed: int = 0) -> tuple[DigitClassifier, float]:
    """Train the classifier on the training pool of digits; return it and its held-out accuracy."""
    xtr, ytr, xte, yte = digit_pools()
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = DigitClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=1e-4)
    # cosine decay: the last epochs settle instead of ending on a noisy large step
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    xtr = xtr[:, None]
    for _ in range(epochs):
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(0, len(xtr), 64):
            b = perm[i:i + 64]
            x = xtr[b]
            # one-pixel random shifts: cheap augmentation that buys about a point of accuracy
            dx, dy = torch.randint(-1, 2, (2,), generator=g).tolist()
            x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            loss = nn.functional.cross_entropy(model(x), ytr[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(xte[:, None]).argmax(1) == yte).float().mean())
    return model, acc


def load_classifier(*, retrain: bool = False) -> DigitClassifier:
    """The cached digit classifier (trained and cached on first use).

    Returns:
        An eval-mode ``DigitClassifier`` on CPU with ``held_out_accuracy`` set as an attribute.
    """
    path = _cache_dir() / _CACHE_NAME
    if not retrain and path.exists():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            model = DigitClassifier()
            model.load_state_dict(blob["model"])
            model.eval()
            model.held_out_accuracy = float(blob["held_out_accuracy"])
            return model
        except (RuntimeError, KeyError, OSError, EOFError):
            pass  # stale or partial cache: retrain below
    with torch.random.fork_rng():
        model, acc = train_classifier()
    model.held_out_accuracy = acc
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"model": model.state_dict(), "held_out_accuracy": acc}, tmp)
        os.replace(tmp, path)  # atomic: parallel test workers never read half a file
    except OSError:
        pass  # read-only home: keep the freshly trained model in memory only
    return model


@torch.no_grad()
def classify_stacked(model: DigitClassifier, images: torch.Tensor, *, batch: int = 4096):
    """Label each channel of ``(N, 3, 8, 8)`` stacked digits.

    Returns:
        ``(modes (N,) int64 in [0, 1000), features (N, 192))``: the 3-digit mode and the three channels'
        classifier features concatenated.
    """
    if images.dim() != 4 or images.shape[1:] != (3, 8, 8):
        raise ValueError(f"classify_stacked: expected (N, 3, 8, 8) images, got {tuple(images.shape)}")
    modes, feats = [], []
    for i in range(0, len(images), batch):
        x = images[i:i + batch].float().cpu().clamp(0, 1)
        n = len(x)
        flat = x.reshape(n * 3, 1, 8, 8)
        f = model.features(flat)
        digits = model.head(f).argmax(1).reshape(n, 3)
        modes.append(digits[:, 0] * 100 + digits[:, 1] * 10 + digits[:, 2])
        feats.append(f.reshape(n, -1))
    return torch.cat(modes), torch.cat(feats)

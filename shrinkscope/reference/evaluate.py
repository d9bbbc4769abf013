"""Evaluation of one arm: held-out reconstruction, codebook health, generative diversity of the prior.

All metrics come from ``shrinkscope.metrics`` (health) and ``shrinkscope.metrics.diversity`` (mode
coverage, mean pairwise L2, PRDC); this module only produces the inputs: held-out latents, prior samples
decoded to items, and their modes/features.

- stacked digits: the digit classifier labels the three channels (exact modes out of 1,000); PRDC runs in
  the classifier's feature space (3 x 64 penultimate features).
- gaussians: the mode of a generated point is the nearest training-mode centroid; PRDC on the raw vectors.
- other data: no modes; PRDC on flattened pixels.
"""
from __future__ import annotations

import contextlib
import inspect
from typing import Any

import torch

from .data import Dataset
from .prior import TokenPrior
from .tokenizer import VQTokenizer

#: PRDC's k-NN radii cost O(N^2); both sides are subsampled to this many items.
PRDC_MAX_ITEMS = 2000


@torch.no_grad()
def recon_mse(tokenizer: VQTokenizer, x: torch.Tensor, *, batch: int = 1024) -> float:
    """Mean squared error of the tokenizer's reconstructions of ``x`` (quantized path when active)."""
    dev = next(tokenizer.parameters()).device
    total, n = 0.0, 0
    for i in range(0, len(x), batch):
        xb = x[i:i + batch].to(dev)
        total += float((tokenizer(xb)["recon"] - xb).pow(2).sum())
        n += xb.numel()
    return total / max(n, 1)


@torch.no_grad()
def tokenizer_health(tokenizer: VQTokenizer, x: torch.Tensor, *, name: str = "quantizer",
                     max_latents: int = 20_000, seed: int = 0, modes: torch.Tensor | None = None):
    """Full ``codebook_health`` of the tokenizer's codebook on the held-out latents of ``x``.

    ``modes``: optional ``(N,)`` data-mode id of each item of ``x``, passed on as per-latent labels.

    Returns:
        A ``CodebookHealth`` (counts come from assigning the latents to their nearest codes).
    """
    from ..metrics import codebook_health

    # measured where the tokenizer lives: on a GPU the k-means reference takes a fraction of a second
    dev = next(tokenizer.parameters()).device
    lat = tokenizer.latents(x.to(dev))
    labels = None
    if modes is not None:  # one label per latent: every token of an item belongs to the item's mode
        h, w = tokenizer.grid
        labels = modes.reshape(-1).repeat_interleave(h * w)
    if len(lat) > max_latents:
        keep = torch.randperm(len(lat), generator=torch.Generator().manual_seed(seed))[:max_latents]
        lat = lat[keep.to(dev)]
        labels = None if labels is None else labels[keep]
    kwargs = {}
    if labels is not None and "labels" in inspect.signature(codebook_health).parameters:
        kwargs["labels"] = labels  # mode-level metrics (token_mode_entropy) where this version has them
    return codebook_health(tokenizer.quantizer.effective_codebook(), latents=lat, name=name, seed=seed, **kwargs)


def _mode_centroids(data: Dataset) -> torch.Tensor:
    m = data.num_modes
    return torch.stack([data.train[data.train_modes == k].mean(0) for k in range(m)])


def modes_and_features(items: torch.Tensor, data: Dataset, classifier=None) -> tuple[torch.Tensor | None,
                                                                                        torch.Tensor]:
    """Modes (or None) and PRDC features of decoded items.

    Args:
        items: ``(N, ...)`` items in the dataset's layout.
        data: the dataset (decides how modes are read).
        classifier: the digit classifier (stacked digits only; loaded when None).

    Returns:
        ``(modes (N,) int64 | None, features (N, F) float32)``.
    """
    from .classifier import classify_stacked, load_classifier

    items = items.detach().float().cpu()
    if data.name == "stacked-digits":
        return classify_stacked(classifier or load_classifier(), items)
    if data.name == "gaussians":
        from ..metrics.usage import assign

        modes, _ = assign(_mode_centroids(data), items)
        return modes, items
    return None, items.reshape(len(items), -1)


@torch.no_grad()
def sample_items(tokenizer: VQTokenizer, prior: TokenPrior, n: int, *, seed: int = 0, temperature: float = 1.0,
                 top_k: int | None = None) -> torch.Tensor:
    """Draw ``n`` token grids from the prior and decode them (on the models' device; returned on CPU)."""
    dev = next(prior.parameters()).device
    g = torch.Generator(device=dev).manual_seed(seed)
    tokens = prior.sample(n, temperature=temperature, top_k=top_k, generator=g)
    h, w = tokenizer.grid
    out = [tokenizer.decode_indices(tokens[i:i + 2048].reshape(-1, h, w)) for i in range(0, n, 2048)]
    items = torch.cat(out).cpu()
    return items.clamp(0, 1) if items.dim() == 4 else items


def generative_diversity(samples: torch.Tensor, data: Dataset, *, classifier=None, seed: int = 0) -> dict[str, Any]:
    """Diversity of decoded prior samples against the held-out data.

    Returns:
        dict with ``num_samples``, ``modes_covered``, ``num_modes``, ``mode_kl`` (KL of the generated mode
        histogram to the data's, nats), ``mode_entropy`` (entropy of the samples' mode histogram, nats; not
        Paper A's entropy of tokens per mode), ``mean_pairwise_l2`` (mean pairwise L2 distance of flattened
        samples in [0, 1] units; not Paper A's "Pixel Dist." scale), and PRDC
        ``precision``/``recall``/``density``/``coverage`` (k=5, at
        most ``PRDC_MAX_ITEMS`` items per side). Mode entries are None when the data has no known modes.
    """
    from ..metrics.diversity import mean_pairwise_l2, mode_coverage, prdc

    modes, feats = modes_and_features(samples, data, classifier)
    _, real_feats = modes_and_features(data.test, data, classifier)
    out: dict[str, Any] = {"num_samples": len(samples), "num_modes": data.num_modes, "modes_covered": None,
                           "mode_kl": None, "mode_entropy": None}
    if modes is not None and data.num_modes:
        ref = torch.bincount(data.test_modes, minlength=data.num_modes).double()
        # the data's mode distribution is uniform by construction; the test histogram estimates it
        # noisily at 1,000 modes, so the exact uniform reference is used for stacked digits
        mc = mode_coverage(modes, data.num_modes, reference=None if data.name == "stacked-digits" else ref)
        out.update(_as_dict(mc, ("modes_hit", "kl", "entropy"), ("modes_covered", "mode_kl", "mode_entropy")))
    out["mean_pairwise_l2"] = float(mean_pairwise_l2(samples.reshape(len(samples), -1)))
    g = torch.Generator().manual_seed(seed)
    fk = feats[torch.randperm(len(feats), generator=g)[:PRDC_MAX_ITEMS]]
    rl = real_feats[torch.randperm(len(real_feats), generator=g)[:PRDC_MAX_ITEMS]]
    out.update(_as_dict(prdc(rl, fk, k=5), ("precision", "recall", "density", "coverage")))
    return out


def _as_dict(result: Any, keys: tuple[str, ...], rename: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Pull ``keys`` out of a dataclass / NamedTuple / dict result as plain numbers."""
    rename = rename or keys
    src = result if isinstance(result, dict) else (result._asdict() if hasattr(result, "_asdict")
                                                  else vars(result))
    return {new: (None if src.get(old) is None else float(src[old])) for old, new in zip(keys, rename)}


def evaluate_arm(tokenizer: VQTokenizer, prior: TokenPrior | None, data: Dataset, *, num_samples: int = 10_000,
                 seed: int = 0, classifier=None, temperature: float = 1.0, top_k: int | None = None,
                 name: str = "quantizer", clock=None) -> dict[str, Any]:
    """Everything the study reports for one arm.

    ``clock``: an optional ``phases.PhaseClock``; its ``evaluate/health``, ``evaluate/recon``,
    ``evaluate/sample`` and ``evaluate/diversity`` phases get the time of each part.

    Returns:
        ``{"recon_mse": float, "health": CodebookHealth.to_dict(), "diversity": dict | None}`` (the
        ``CodebookHealth`` object itself under ``"_health"`` for plots, and the samples under ``"_samples"``).
    """
    def phase(part: str):
        return clock.phase(f"evaluate/{part}") if clock is not None else contextlib.nullcontext()

    with phase("health"):
        health = tokenizer_health(tokenizer, data.test, name=name, seed=seed, modes=data.test_modes)
    with phase("recon"):
        mse = recon_mse(tokenizer, data.test)
    res: dict[str, Any] = {"recon_mse": mse, "health": health.to_dict(), "diversity": None, "_health": health}
    if prior is not None and num_samples > 0:
        with phase("sample"):
            samples = sample_items(tokenizer, prior, num_samples, seed=seed, temperature=temperature, top_k=top_k)
        with phase("diversity"):
            res["diversity"] = generative_diversity(samples, data, classifier=classifier, seed=seed)
        res["_samples"] = samples[:64]
    return res

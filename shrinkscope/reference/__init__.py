"""The bundled reference study: datasets, a VQ tokenizer with deferred quantization, an AR prior.

- ``data``: bundled datasets (``stacked-digits``, ``gaussians``, ``patches``, or the user's own);
- ``quantizer.EMAQuantizer``: EMA VQ with an inactive (pass-through) phase;
- ``tokenizer.VQTokenizer`` / ``TokenizerConfig``: conv VQ-VAE with ``quantize_start``;
- ``prior.TokenPrior``: GPT-style prior over token grids;
- ``train``: seeded training loops (CPU, CUDA, DDP) and checkpoints;
- ``evaluate``: reconstruction, codebook health, generative diversity;
- ``demo``: ``shrinkscope demo``; ``study``: the larger GPU study.

``reference_latents(checkpoint)`` lets ``shrinkscope analyze`` measure coverage metrics on a reference
checkpoint without a ``--latents`` file.
"""
from __future__ import annotations

import torch

from .quantizer import EMAQuantizer, QuantizerOutput

__all__ = ["EMAQuantizer", "QuantizerOutput", "reference_latents"]


def reference_latents(checkpoint: dict, *, max_items: int = 2000, device: str = "cpu") -> torch.Tensor | None:
    """Pre-quantization latents of a reference checkpoint on its bundled held-out data.

    Rebuilds the tokenizer from the checkpoint's config, regenerates the dataset named in
    ``checkpoint["data"]`` (bundled data only; nothing is downloaded) and encodes up to ``max_items`` of its
    held-out items.

    Args:
        checkpoint: a loaded reference checkpoint (``format == "shrinkscope.reference.tokenizer/1"``).
        max_items: number of held-out items to encode (each gives ``h * w`` latents).
        device: where to run the encoder.

    Returns:
        ``(N, D)`` float32 latents on CPU, or None when the data cannot be rebuilt (the user's own data
        named by a path that no longer exists, or an unknown dataset).
    """
    from .data import load_dataset
    from .train import load_checkpoint

    tok, _, blob = load_checkpoint(checkpoint, device=device)
    info = blob.get("data") or {}
    name = info.get("dataset")
    try:
        if name == "path":
            data = load_dataset("path", path=info.get("path"), seed=int(info.get("seed", 0)))
        else:
            kwargs = {"seed": int(info.get("seed", 0)), "n_train": int(info.get("n_train", 0)) or None,
                      "n_test": int(info.get("n_test", 0)) or None}
            if name == "gaussians":
                kwargs["dim"] = int(info.get("dim", 8))
            data = load_dataset(str(name), **kwargs)
    except (ValueError, OSError):
        return None
    return tok.latents(data.test[:max_items].to(device)).float().cpu()

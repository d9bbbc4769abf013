"""The reference VQ tokenizer: a small conv VQ-VAE (an MLP one for vector data), no GAN loss.

``TokenizerConfig.quantize_start`` sets *when* quantization starts (the one difference between the arms of
the study): ``0`` is the usual early-quantization baseline, whose codebook is k-means-initialised from the
untrained encoder's outputs; ``> 0`` is deferred quantization: the first ``quantize_start`` steps train a
plain continuous autoencoder, then the codebook is k-means-initialised on the mature encoder's outputs and
quantization stays on for the rest of the same budget (``train.train_tokenizer`` runs the schedule).

Adversarial losses are left out on purpose: they can mask shrinkage (Zhao et al. 2026).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from .quantizer import EMAQuantizer, QuantizerOutput


@dataclass
class TokenizerConfig:
    """Everything needed to rebuild a tokenizer (saved in every reference checkpoint).

    Attributes:
        in_channels: image channels (ignored for vector data).
        image_size: image side in pixels; must be divisible by ``2 ** downsample``.
        input_dim: set for vector data (e.g. gaussians): an MLP maps each vector to one token.
        hidden: width of the conv / MLP layers.
        downsample: number of stride-2 stages (an 8x8 image with 1 stage gives a 4x4 token grid).
        num_codes: codebook size K.
        code_dim: code dimension D.
        decay: EMA decay of the codebook.
        beta: commitment-loss weight.
        l2_normalize: cosine-similarity VQ (unit-norm latents and codes).
        dead_code_threshold: dead-code expiry (EMA hits per batch below which a code moves to a latent; 0: off).
        quantize_start: step at which quantization starts (0 = early baseline; > 0 = deferred).
    """

    in_channels: int = 3
    image_size: int = 8
    input_dim: int | None = None
    hidden: int = 64
    downsample: int = 1
    num_codes: int = 512
    code_dim: int = 8
    decay: float = 0.99
    beta: float = 0.25
    l2_normalize: bool = False
    dead_code_threshold: float = 0.0
    quantize_start: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TokenizerConfig:
        """Rebuild from a checkpoint's ``config``; unknown keys (from newer versions) are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.net = nn.Sequential(nn.ReLU(), nn.Conv2d(ch, ch, 3, padding=1), nn.ReLU(), nn.Conv2d(ch, ch, 1))

    def forward(self, x):
        return x + self.net(x)


def _conv_encoder(c: TokenizerConfig) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(c.in_channels, c.hidden, 3, padding=1)]
    for _ in range(c.downsample):
        layers += [nn.ReLU(), nn.Conv2d(c.hidden, c.hidden, 4, stride=2, padding=1)]
    layers += [ResBlock(c.hidden), nn.ReLU(), nn.Conv2d(c.hidden, c.code_dim, 1)]
    return nn.Sequential(*layers)


def _conv_decoder(c: TokenizerConfig) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(c.code_dim, c.hidden, 3, padding=1), ResBlock(c.hidden)]
    for _ in range(c.downsample):
        layers += [nn.ReLU(), nn.ConvTranspose2d(c.hidden, c.hidden, 4, stride=2, padding=1)]
    layers += [nn.ReLU(), nn.Conv2d(c.hidden, c.in_channels, 3, padding=1)]
    return nn.Sequential(*layers)


def _mlp(i: int, h: int, o: int) -> nn.Module:
    return nn.Sequential(nn.Linear(i, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, o))


class VQTokenizer(nn.Module):
    """Encoder -> ``EMAQuantizer`` -> decoder.

    Args:
        config: a ``TokenizerConfig``.

    Example:
        >>> tok = VQTokenizer(TokenizerConfig(num_codes=16))
        >>> out = tok(torch.rand(2, 3, 8, 8))
        >>> out["recon"].shape, out["indices"].shape
        (torch.Size([2, 3, 8, 8]), torch.Size([2, 4, 4]))
    """

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        c = self.config = config
        if c.input_dim is None:
            if c.image_size % (2 ** c.downsample):
                raise ValueError(f"TokenizerConfig: image_size {c.image_size} is not divisible by "
                                 f"2**downsample = {2 ** c.downsample}")
            self.encoder, self.decoder = _conv_encoder(c), _conv_decoder(c)
        else:
            self.encoder = _mlp(c.input_dim, c.hidden, c.code_dim)
            self.decoder = _mlp(c.code_dim, c.hidden, c.input_dim)
        self.quantizer = EMAQuantizer(c.num_codes, c.code_dim, decay=c.decay, beta=c.beta,
                                      l2_normalize=c.l2_normalize, dead_code_threshold=c.dead_code_threshold)

    @property
    def grid(self) -> tuple[int, int]:
        """``(H, W)`` of the token grid."""
        if self.config.input_dim is not None:
            return (1, 1)
        s = self.config.image_size // 2 ** self.config.downsample
        return (s, s)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Items ``(B, C, H, W)`` or ``(B, input_dim)`` -> latent grid ``(B, D, h, w)``."""
        if self.config.input_dim is not None:
            if x.dim() != 2 or x.shape[1] != self.config.input_dim:
                raise ValueError(f"VQTokenizer: expected (B, {self.config.input_dim}) vectors, got {tuple(x.shape)}")
            z = self.encoder(x)[:, :, None, None]
        else:
            c = self.config
            if x.dim() != 4 or x.shape[1:] != (c.in_channels, c.image_size, c.image_size):
                raise ValueError(f"VQTokenizer: expected (B, {c.in_channels}, {c.image_size}, {c.image_size}) "
                                 f"images, got {tuple(x.shape)}")
            z = self.encoder(x)
        # normalising here (not only inside the quantizer) keeps the decoder's input on the sphere in both
        # the continuous and the quantized phase, so deferral does not change the decoder's input space
        return nn.functional.normalize(z, dim=1) if self.config.l2_normalize else z

    def decode(self, zq: torch.Tensor) -> torch.Tensor:
        """Latent grid ``(B, D, h, w)`` -> items."""
        if self.config.input_dim is not None:
            return self.decoder(zq[:, :, 0, 0])
        return self.decoder(zq)

    @torch.no_grad()
    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Token grids ``(B, h, w)`` int64 -> decoded items."""
        codes = self.quantizer.effective_codebook()[indices]  # (B, h, w, D)
        return self.decode(codes.permute(0, 3, 1, 2).contiguous())

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Reconstruct ``x``.

        Returns:
            dict with ``recon`` (like ``x``), ``indices`` ``(B, h, w)``, ``commit_loss`` (scalar) and
            ``z`` (the pre-quantization latent grid ``(B, D, h, w)``).
        """
        z = self.encode(x)
        q: QuantizerOutput = self.quantizer(z)
        return {"recon": self.decode(q.quantized), "indices": q.indices, "commit_loss": q.loss, "z": z}

    @torch.no_grad()
    def latents(self, x: torch.Tensor, *, batch: int = 1024) -> torch.Tensor:
        """``(N, D)`` pre-quantization latents of items ``x`` as the quantizer sees them."""
        out = [self.quantizer.flat_latents(self.encode(x[i:i + batch])) for i in range(0, len(x), batch)]
        return torch.cat(out)

    @torch.no_grad()
    def tokenize(self, x: torch.Tensor, *, batch: int = 1024) -> torch.Tensor:
        """Items -> ``(N, h, w)`` int64 token grids (nearest code, whether or not quantization is active)."""
        return torch.cat([self.quantizer(self.encode(x[i:i + batch])).indices for i in range(0, len(x), batch)])

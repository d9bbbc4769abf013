"""A look-alike of VAR's multi-scale quantizer, written here from its public layout (FoundationVision/VAR,
``models/quant.py``, described in research/ecosystem.md); no code of VAR is copied.

What it keeps of VAR, because shrinkscope relies on it: the class name ``VectorQuantizer2``; the attributes
``v_patch_nums``, ``using_znorm``, ``embedding`` (an ``nn.Embedding`` (V, C)), ``quant_resi`` indexed by a float
in [0, 1] and the buffer ``ema_vocab_hit_SV`` (S, V); ``forward(f_BChw)`` returning ``(f_hat, usages, loss)``
without ids; and the coarse-to-fine residual loop (area pooling to each scale, cosine or squared-distance
lookup, bicubic upsampling, a conv mixed in with ratio ``quant_resi``, subtraction from the residual).

For the tests it also records what it computed (``last_ids``, ``last_rows``): the slow obvious reference.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class Phi(nn.Conv2d):
    """A 3x3 conv mixed into its input: ``h * (1 - r) + conv(h) * r``."""

    def __init__(self, dim: int, ratio: float):
        super().__init__(dim, dim, kernel_size=3, padding=1)
        self.ratio = abs(ratio)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * (1 - self.ratio) + super().forward(h) * self.ratio


class PhiPartiallyShared(nn.Module):
    """``k`` convs shared by all scales: ``[at]`` (``at`` in [0, 1]) picks the one whose tick is nearest."""

    def __init__(self, phis: list[nn.Module]):
        super().__init__()
        self.phis = nn.ModuleList(phis)
        k = len(phis)
        self.ticks = torch.linspace(1 / (3 * k), 1 - 1 / (3 * k), k) if k > 1 else torch.zeros(1)

    def __getitem__(self, at: float) -> nn.Module:
        return self.phis[int((self.ticks - at).abs().argmin())]


class VectorQuantizer2(nn.Module):
    """Multi-scale residual quantizer with one shared codebook (VAR's structure)."""

    def __init__(self, vocab_size: int, Cvae: int, using_znorm: bool = False,  # VAR's argument name
                 v_patch_nums: tuple[int, ...] = (1, 2, 3, 4), quant_resi: float = 0.5, share_quant_resi: int = 4,
                 beta: float = 0.25):
        super().__init__()
        self.vocab_size, self.Cvae, self.using_znorm = vocab_size, Cvae, using_znorm
        self.v_patch_nums = tuple(v_patch_nums)
        self.quant_resi = PhiPartiallyShared([Phi(Cvae, quant_resi) for _ in range(share_quant_resi)])
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(self.v_patch_nums), vocab_size))
        self.beta = beta
        self.embedding = nn.Embedding(vocab_size, Cvae)
        nn.init.trunc_normal_(self.embedding.weight, std=0.5)
        self.last_ids: list[torch.Tensor] = []
        self.last_rows: list[torch.Tensor] = []

    def _lookup(self, rows: torch.Tensor) -> torch.Tensor:
        w = self.embedding.weight.data
        if self.using_znorm:
            return (F.normalize(rows, dim=-1) @ F.normalize(w, dim=-1).t()).argmax(1)
        d = rows.square().sum(1, keepdim=True) + w.square().sum(1)
        return d.addmm_(rows, w.t(), alpha=-2, beta=1).argmin(1)

    def forward(self, f_BChw: torch.Tensor, ret_usages: bool = False):  # VAR's argument name
        f = f_BChw.float()
        b, c, h, w = f.shape
        rest = f.detach().clone()
        f_hat = torch.zeros_like(rest)
        loss = f.new_zeros(())
        n = len(self.v_patch_nums)
        self.last_ids, self.last_rows = [], []
        for si, pn in enumerate(self.v_patch_nums):
            z = rest if si == n - 1 else F.interpolate(rest, size=(pn, pn), mode="area")
            rows = z.permute(0, 2, 3, 1).reshape(-1, c)
            ids = self._lookup(rows)
            self.last_ids.append(ids.detach().clone())
            self.last_rows.append((F.normalize(rows, dim=-1) if self.using_znorm else rows).detach().clone())
            q = self.embedding(ids.view(b, pn, pn)).permute(0, 3, 1, 2)
            if si != n - 1:
                q = F.interpolate(q, size=(h, w), mode="bicubic")
            q = self.quant_resi[si / (n - 1)](q)
            f_hat = f_hat + q
            rest = rest - q
            loss = loss + F.mse_loss(f_hat.data, f) * self.beta + F.mse_loss(f_hat, f.detach())
        f_hat = (f_hat.data - f.detach()) + f  # straight-through
        return f_hat, None, loss / n


class TinyVQVAE(nn.Module):
    """Encoder -> ``quant_conv`` -> ``quantize`` (multi-scale) -> ``post_quant_conv`` -> decoder; images of side
    twice the last patch number."""

    def __init__(self, vocab: int = 32, cvae: int = 4, patch_nums: tuple[int, ...] = (1, 2, 3, 4),
                 znorm: bool = False):
        super().__init__()
        side = patch_nums[-1]
        self.encoder = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(side),
                                     nn.Conv2d(8, cvae, 1))
        self.quant_conv = nn.Conv2d(cvae, cvae, 1)
        self.quantize = VectorQuantizer2(vocab, cvae, znorm, patch_nums)
        self.post_quant_conv = nn.Conv2d(cvae, cvae, 1)
        self.decoder = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cvae, 3, 3, padding=1))

    def forward(self, x: torch.Tensor):
        f_hat, usages, loss = self.quantize(self.quant_conv(self.encoder(x)))
        return self.decoder(self.post_quant_conv(f_hat)), usages, loss

"""Code on no package index, as look-alikes written from its public layout (class, attribute and buffer names,
forward signatures; none of its code): LlamaGen's ``VectorQuantizer`` (the stand-in in tests/families/fakes.py)
with its ``{'model', 'ema'}`` files, and the taming-derived quantizer of Paper B with a ``usage_ema`` buffer.

Also the file formats every loader meets: a training checkpoint holding numpy arrays, and a Lightning 1.0-era
``.ckpt`` whose callbacks are keyed by class.
"""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from realkit import blobs
from torch import nn
from torch.nn import functional as F

import shrinkscope
from shrinkscope.checkpoint import CheckpointError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "families"))
import fakes

K, D = 64, 8


class LlamaGenVQ(nn.Module):
    """``VQModel``: encoder -> quant_conv -> quantize -> post_quant_conv -> decoder (tiny convs here)."""

    def __init__(self, channels=32):
        super().__init__()
        self.encoder = nn.Conv2d(3, channels, 3, padding=1)
        self.quant_conv = nn.Conv2d(channels, D, 1)
        self.quantize = fakes.LlamaGenVectorQuantizer(K, D, 0.25, 0.0, l2_norm=True, show_usage=True)
        self.post_quant_conv = nn.Conv2d(D, channels, 1)
        self.decoder = nn.Conv2d(channels, 3, 3, padding=1)

    def forward(self, x):
        q, (l1, l2, l3, _), _ = self.quantize(self.quant_conv(self.encoder(x)))
        return self.decoder(self.post_quant_conv(q)), l1 + l2 + l3


def _trained_llamagen(steps=10):
    torch.manual_seed(0)
    m = LlamaGenVQ()
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for s in range(steps):
        x = blobs(s, (4, 3, 8, 8))
        rec, loss = m(x)
        opt.zero_grad()
        ((rec - x).pow(2).mean() + loss).backward()
        opt.step()
    return m


def test_llamagen_model_and_ema_file(tmp_path):
    """LlamaGen's ``update_ema`` copies parameters only: the EMA copy's ``codebook_used`` stays zeros, which
    is no evidence of use (not "100% dead"); the trained model's FIFO is read."""
    m = _trained_llamagen()
    ema = {k: (torch.zeros_like(v) if k.endswith("codebook_used") else v.clone()) for k, v in m.state_dict().items()}
    torch.save({"model": m.state_dict(), "ema": ema, "steps": 10}, tmp_path / "ckpt.pt")
    res = shrinkscope.analyze(str(tmp_path / "ckpt.pt"))
    by = {e.health.name: e for e in res.entries}
    assert len(by) == 2, list(by)
    model_e = next(e for n, e in by.items() if "ema" not in n)
    ema_e = next(e for n, e in by.items() if "ema" in n)
    assert (model_e.health.num_codes, model_e.health.dim) == (K, D)
    assert model_e.found.counts is not None
    assert ema_e.found.counts is None, "an all-zero codebook_used FIFO was read as usage"
    assert ema_e.health.dead_code_ratio is None


def _llamagen_latents(m, n=4):
    with torch.no_grad():
        return torch.cat([m.quant_conv(m.encoder(blobs(-1 - i, (4, 3, 8, 8)))) for i in range(n)])


def test_llamagen_latents_go_through_the_codebooks_normalisation(tmp_path):
    """analyze l2-normalises LlamaGen's codebook; ``--latents`` must get the same transform."""
    m = _trained_llamagen()
    torch.save(m.state_dict(), tmp_path / "m.pt")
    z = _llamagen_latents(m)  # (B, D, H, W), raw encoder output
    raw = shrinkscope.analyze(str(tmp_path / "m.pt"), latents=z).entries[0].health
    normed = shrinkscope.analyze(str(tmp_path / "m.pt"), latents=F.normalize(z, dim=1)).entries[0].health
    assert raw.spread_ratio == pytest.approx(normed.spread_ratio, rel=1e-4)
    assert raw.quantization_error == pytest.approx(normed.quantization_error, rel=1e-4)


def test_ambiguous_latents_layout_is_refused_with_the_fix(tmp_path):
    """(B, 32, 8, 8) for a D=8 codebook: axis 1 is not D, the last axis is D only by accident of the grid."""
    m = _trained_llamagen()
    torch.save(m.state_dict(), tmp_path / "m.pt")
    z = torch.randn(4, 32, 8, 8)
    with pytest.raises(CheckpointError, match="(?i)ambiguous|channel|layout"):
        shrinkscope.analyze(str(tmp_path / "m.pt"), latents=z)


def test_paper_b_usage_ema_is_read(tmp_path):
    """Paper B's taming-derived quantizer keeps usage in ``usage_ema`` (K,) next to ``embedding``."""
    torch.manual_seed(0)
    usage = torch.rand(K) * (torch.rand(K) > 0.3)
    sd = {"quantize.embedding.weight": torch.randn(K, D), "quantize.usage_ema": usage,
          "quantize.vq_step_counter": torch.tensor(500), "quantize.last_n_respawned": torch.tensor(3)}
    torch.save(sd, tmp_path / "last.pt")
    e = shrinkscope.analyze(str(tmp_path / "last.pt")).entries[0]
    assert e.found.counts is not None and e.found.usage_source == "usage_ema"
    assert e.health.dead_code_ratio == pytest.approx(float((usage == 0).double().mean()))


def test_residual_latents_need_residuals(tmp_path):
    """--latents of the encoder output for an RVQ: stage 0 gets them, later stages get the residual left by
    the stages before (computed from the codebooks), or a clear note when that is not possible."""
    vqp = pytest.importorskip("vector_quantize_pytorch")
    torch.manual_seed(0)
    rvq = vqp.ResidualVQ(dim=D, codebook_size=K, num_quantizers=3)
    x = blobs(0, (8, D, 64)).movedim(1, -1)
    rvq.train()
    for _ in range(3):
        rvq(x)
    torch.save(rvq.state_dict(), tmp_path / "rvq.pt")
    res = shrinkscope.analyze(str(tmp_path / "rvq.pt"), latents=x.reshape(-1, D))
    for i, e in enumerate(res.entries):
        assert e.health.spread_ratio is not None
        if i:
            assert any("residual" in n for n in e.notes), e.notes


def test_numpy_arrays_in_a_training_checkpoint_load_safely(tmp_path):
    """Paper B's ``last.pt`` holds numpy arrays (e.g. a saved RNG state): safe loading must accept them."""
    sd = {"quantize.embedding.weight": torch.randn(K, D)}
    torch.save({"state_dict": sd, "np_rng": np.random.default_rng(0).random(4), "epoch": 3}, tmp_path / "last.pt")
    res = shrinkscope.analyze(str(tmp_path / "last.pt"))
    assert [(e.health.num_codes, e.health.dim) for e in res.entries] == [(K, D)]


def test_lightning_1_0_callbacks_keyed_by_class_load_safely(tmp_path):
    """Lightning 1.0 saved ``callbacks`` keyed by the callback class; analyze needs no --trust-checkpoint."""
    pl = pytest.importorskip("pytorch_lightning")
    from pytorch_lightning.callbacks import ModelCheckpoint

    sd = {"quantize.embedding.weight": torch.randn(K, D)}
    torch.save({"state_dict": sd, "epoch": 1, "global_step": 10, "pytorch-lightning_version": "1.0.8",
                "callbacks": {ModelCheckpoint: {"best_model_score": None, "dirpath": "ckpts"}}},
               tmp_path / "old.ckpt")
    assert pl.__version__
    res = shrinkscope.analyze(str(tmp_path / "old.ckpt"))
    assert [(e.health.num_codes, e.health.dim) for e in res.entries] == [(K, D)]

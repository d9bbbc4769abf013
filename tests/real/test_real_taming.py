"""taming-transformers, the installed package (PyPI ``taming-transformers-rom1504``: ``VectorQuantizer2``,
legacy ``VectorQuantizer``, ``GumbelQuantize``, and taming's own ``Encoder``/``Decoder``), plus a Lightning
``.ckpt`` written by the installed pytorch-lightning.

``taming.models.vqgan.VQModel`` imports torchvision (its perceptual loss), whose PyPI wheels do not load next
to the CPU torch, so the model here is taming's Encoder -> quant_conv -> quantizer -> post_quant_conv ->
Decoder, wired as VQModel wires them (same attribute names, so checkpoints have VQModel's keys).
``EMAVectorQuantizer`` is in neither PyPI build of taming: the look-alikes in tests/families/ cover it.
"""
import pytest
import torch
from realkit import Case, blobs, check_defer, check_trained_state_dict, check_watch
from torch import nn

import shrinkscope

quantize_mod = pytest.importorskip("taming.modules.vqvae.quantize")
model_mod = pytest.importorskip("taming.modules.diffusionmodules.model")

EMBED_DIM, K = 4, 32
DD = {"ch": 32, "out_ch": 3, "ch_mult": (1,), "num_res_blocks": 1, "attn_resolutions": [], "in_channels": 3,
      "resolution": 8, "z_channels": 4, "double_z": False}


class TamingVQ(nn.Module):
    """taming's VQModel layout: encoder, quant_conv, quantize, post_quant_conv, decoder."""

    def __init__(self, quantizer: nn.Module):
        super().__init__()
        self.encoder = model_mod.Encoder(**DD)
        self.decoder = model_mod.Decoder(**DD)
        self.quant_conv = nn.Conv2d(DD["z_channels"], EMBED_DIM, 1)
        self.quantize = quantizer
        self.post_quant_conv = nn.Conv2d(EMBED_DIM, DD["z_channels"], 1)

    def encode(self, x):
        return self.quant_conv(self.encoder(x))

    def forward(self, x):
        quant, emb_loss, info = self.quantize(self.encode(x))
        return self.decoder(self.post_quant_conv(quant)), emb_loss, info


def _loss(m, x):
    rec, loss, _ = m(x)
    return (rec - x).pow(2).mean() + loss


def _latents(m, x):
    return m.encode(x).movedim(1, -1).reshape(-1, EMBED_DIM)


def _codebook(m):
    q = getattr(m.quantize, "wrapped", m.quantize)
    return (q.embed.weight if hasattr(q, "embed") else q.embedding.weight).detach()


def _case(make, usage=(), name="quantize") -> Case:
    def build():
        torch.manual_seed(0)
        return TamingVQ(make())
    return Case(build=build, data=lambda s: blobs(s, (4, 3, 8, 8)), loss=_loss, output=lambda m, x: m(x),
                codebooks={name: (K, EMBED_DIM)}, usage_stored=set(usage), latents=_latents, codebook=_codebook,
                lr=3e-3)


CASES = {
    "vq2": lambda: _case(lambda: quantize_mod.VectorQuantizer2(K, EMBED_DIM, beta=0.25)),
    "vq2_sane": lambda: _case(lambda: quantize_mod.VectorQuantizer2(K, EMBED_DIM, beta=0.25, sane_index_shape=True)),
    "legacy": lambda: _case(lambda: quantize_mod.VectorQuantizer(K, EMBED_DIM, beta=0.25)),
    "gumbel": lambda: _case(lambda: quantize_mod.GumbelQuantize(EMBED_DIM, EMBED_DIM, K)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_analyze_state_dict(name, tmp_path):
    check_trained_state_dict(CASES[name](), tmp_path, steps=3)


@pytest.mark.parametrize("name", list(CASES))
def test_watch(name, tmp_path):
    # Gumbel's input is not in code space: usage and codebook geometry only (docs/hooks.md)
    check_watch(CASES[name](), tmp_path, latents=name != "gumbel")


@pytest.mark.parametrize("name", ["vq2", "legacy"])
def test_defer_fits(name):
    check_defer(CASES[name](), warmup=20, after=20, reservoir=256)


def test_defer_gumbel_refused_clearly():
    with pytest.raises((TypeError, ValueError), match="(?i)gumbel|not supported|support"):
        shrinkscope.defer(quantize_mod.GumbelQuantize(EMBED_DIM, EMBED_DIM, K), switch=5)


pl = pytest.importorskip("pytorch_lightning")


class LitVQ(pl.LightningModule):
    def __init__(self, quantizer):
        super().__init__()
        self.model = TamingVQ(quantizer)

    def training_step(self, batch, i):
        return _loss(self.model, batch)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def _lightning_ckpt(tmp_path, quantizer, *, deferred=False):
    lit = LitVQ(quantizer)
    if deferred:
        lit.model.quantize = shrinkscope.defer(lit.model.quantize, switch=2, reservoir_size=64, check_every=1)
    data = torch.utils.data.DataLoader([blobs(s, (1, 3, 8, 8))[0] for s in range(8)], batch_size=2)
    trainer = pl.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(lit, data)
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    return lit, path


def test_lightning_ckpt(tmp_path):
    _, path = _lightning_ckpt(tmp_path, quantize_mod.VectorQuantizer2(K, EMBED_DIM, beta=0.25))
    res = shrinkscope.analyze(str(path))
    assert [(e.health.name, e.health.num_codes, e.health.dim) for e in res.entries] == [
        ("quantize", K, EMBED_DIM)]  # the LightningModule's ``model.`` container is not shown


def test_deferred_lightning_ckpt_keeps_the_users_names(tmp_path):
    """A deferred model's checkpoint reads as ``quantize``, not ``quantize.wrapped``."""
    lit, path = _lightning_ckpt(tmp_path, quantize_mod.VectorQuantizer2(K, EMBED_DIM, beta=0.25), deferred=True)
    assert lit.model.quantize.switched
    res = shrinkscope.analyze(str(path))
    assert [e.health.name for e in res.entries] == ["quantize"]
    torch.save(lit.state_dict(), tmp_path / "sd.pt")
    assert [e.health.name for e in shrinkscope.analyze(str(tmp_path / "sd.pt")).entries] == ["quantize"]

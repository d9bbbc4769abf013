"""taming-transformers, the installed package (PyPI ``taming-transformers-rom1504``: ``VectorQuantizer2``,
legacy ``VectorQuantizer``, ``GumbelQuantize``, and taming's own ``Encoder``/``Decoder``), plus a Lightning
``.ckpt`` written by the installed pytorch-lightning.

``taming.models.vqgan.VQModel`` imports torchvision (its perceptual loss), whose PyPI wheels do not load next
to the CPU torch, so the model here is taming's Encoder -> quant_conv -> quantizer -> post_quant_conv ->
Decoder, wired as VQModel wires them (same attribute names, so checkpoints have VQModel's keys).
``EMAVectorQuantizer`` is in neither PyPI build of taming: a look-alike written from its public layout is
tested below, in this model.
"""
import sys
from pathlib import Path

import pytest
import torch
from realkit import Case, blobs, check_defer, check_trained_state_dict, check_watch, train
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


def _lightning_ckpt(tmp_path, quantizer, *, deferred=False, switch=2):
    lit = LitVQ(quantizer)
    if deferred:
        lit.model.quantize = shrinkscope.defer(lit.model.quantize, switch=switch, reservoir_size=64, check_every=1)
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


# ---- taming's EMAVectorQuantizer: a look-alike ---------------------------------------------------------
# In neither PyPI build of taming; tests/families/fakes.py has one written from the public layout of CompVis'
# taming/modules/vqvae/quantize.py: ``EmbeddingEMA`` keeps ``weight``, ``cluster_size`` and ``embed_avg`` as
# Parameters with requires_grad=False (so they are in ``parameters()`` and in an optimizer built from it), and
# its EMA step sets ``weight = embed_avg / smoothed cluster_size``; the forward returns ``(z_q, loss,
# (perplexity, one-hots, ids))``.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "families"))
from fakes import EMAVectorQuantizer


def _ema_case():
    return _case(lambda: EMAVectorQuantizer(K, EMBED_DIM, beta=0.25), usage=["quantize"])


def test_ema_lookalike_state_written_at_the_switch_is_what_its_ema_step_expects():
    """At the switch: ``weight == embed_avg / cluster_size`` for every code, sizes summing to one step's tokens;
    the library's next EMA step then keeps each used code near its centroid, and no code collapses to 0."""
    case = _ema_case()
    model = case.build()
    dq = shrinkscope.defer(model.quantize, switch=8, reservoir_size=256)
    model.quantize = dq
    train(case, model, 8)
    assert not dq.switched
    dq.switch_now()
    e = dq.wrapped.embedding
    tokens = 4 * 8 * 8  # one batch: 4 images of 8x8 latents
    assert float(e.cluster_size.sum()) == pytest.approx(tokens, rel=1e-5)
    assert bool((e.cluster_size > 0).all()), "a code with a zero count gets embed_avg 0: its EMA step sends it to 0"
    assert torch.allclose(e.embed_avg / e.cluster_size[:, None], e.weight, atol=1e-5)
    centroids = e.weight.detach().clone()
    model.train()
    with torch.no_grad():
        model(case.data(100))  # the library's own EMA step on a fresh batch
    moved = (e.weight - centroids).norm(dim=1) / centroids.norm(dim=1).clamp_min(1e-6)
    assert float(moved.median()) < 0.5, moved
    assert float(e.weight.norm(dim=1).min()) > 0.1 * float(centroids.norm(dim=1).min()), "a code collapsed to 0"


def test_ema_lookalike_deferred_checkpoints_claim_only_stored_usage(tmp_path):
    """A Lightning ``.ckpt`` of a deferred taming EMA model: during the warm-up ``cluster_size`` is still its zero
    fill (no usage claimed); after the switch and training it is the EMA the library wrote, read as usage."""
    (tmp_path / "warm").mkdir(), (tmp_path / "done").mkdir()
    _, warm = _lightning_ckpt(tmp_path / "warm", EMAVectorQuantizer(K, EMBED_DIM, beta=0.25), deferred=True,
                              switch=10)
    e = shrinkscope.analyze(str(warm)).entries
    assert [x.health.name for x in e] == ["quantize"] and e[0].found.counts is None, e[0].found.usage_source
    lit, done = _lightning_ckpt(tmp_path / "done", EMAVectorQuantizer(K, EMBED_DIM, beta=0.25), deferred=True)
    assert lit.model.quantize.switched
    e = shrinkscope.analyze(str(done)).entries
    assert [x.health.name for x in e] == ["quantize"]
    stored = lit.model.quantize.wrapped.embedding.cluster_size.detach().double()
    assert e[0].found.counts is not None and torch.allclose(e[0].found.counts.double(), stored)


def test_ema_lookalike_code_no_reservoir_row_chose_keeps_its_centroid():
    """A code with a zero k-means count: ``embed_avg = 0`` would make taming's next EMA step divide 0 by its
    smoothed count and send the code to the origin; it gets a tiny count instead and stays put."""
    from shrinkscope.families import get_family

    q = EMAVectorQuantizer(4, EMBED_DIM, beta=0.25)
    centers = torch.eye(4, EMBED_DIM) * 3
    counts = torch.tensor([0.0, 10.0, 10.0, 12.0])
    get_family(q).write(q, {"": (centers, counts)}, tokens_per_step=32.0)
    z = centers[1:].repeat(8, 1)[:, :, None, None] + 0.01  # (24, D, 1, 1): never near code 0
    q.train()(z)
    assert torch.allclose(q.embedding.weight[0], centers[0], atol=0.05), q.embedding.weight[0]

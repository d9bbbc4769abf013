"""transformers' image VQ-VAEs (Chameleon, Janus, GLM-Image, Emu3), built from tiny configs: watch reads
their quantizers in the space the lookup uses, analyze reads their saved files, defer works or says why."""
import copy
import json

import pytest
import torch
from realkit import tensors_of

import shrinkscope
from shrinkscope.families import find_quantizers, get_family
from shrinkscope.metrics.usage import assign

tr = pytest.importorskip("transformers")

K, E = 64, 8
_SMALL = {"embed_dim": E, "base_channels": 32, "channel_multiplier": [1, 2], "num_res_blocks": 1,
          "latent_channels": E, "attn_resolutions": []}


def _build(kind: str):
    torch.manual_seed(0)
    if kind == "chameleon":
        return tr.models.chameleon.modeling_chameleon.ChameleonVQVAE(
            tr.ChameleonVQVAEConfig(num_embeddings=K, resolution=16, **_SMALL))
    if kind == "janus":
        return tr.JanusVQVAE(tr.models.janus.configuration_janus.JanusVQVAEConfig(
            num_embeddings=K, num_patches=8, projection_dim=16, image_token_embed_dim=16, hidden_size=16,
            resolution=16, **_SMALL))
    if kind == "glm":
        return tr.models.glm_image.modeling_glm_image.GlmImageVQVAE(
            tr.models.glm_image.configuration_glm_image.GlmImageVQVAEConfig(embed_dim=E, num_embeddings=K,
                                                                             latent_channels=E))
    return tr.Emu3VQVAE(tr.Emu3VQVAEConfig(codebook_size=K, temporal_downsample_factor=1, out_channels=3,
                                           in_channels=3, **_SMALL))


def _latents(kind: str, step: int) -> torch.Tensor:
    """Input of the quantizer: (B, E, H, W), or Emu3's (B, T, E, H, W)."""
    g = torch.Generator().manual_seed(100 + step)
    mu = torch.randn(16, E, generator=torch.Generator().manual_seed(0))
    z = mu[torch.randint(16, (2 * 8 * 8,), generator=g)] + 0.2 * torch.randn(2 * 8 * 8, E, generator=g)
    z = z.reshape(2, 8, 8, E).permute(0, 3, 1, 2)
    return z if kind != "emu3" else z[:, None]


class Head(torch.nn.Module):
    """A 1x1 conv standing in for the encoder, then the library's quantizer (the VQ-VAE's own ``quantize``)."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.pre = torch.nn.Conv2d(E, E, 1)
        self.quantize = _build(kind).quantize

    def forward(self, z):
        if self.kind == "emu3":
            return self.quantize(self.pre(z[:, 0])[:, None])
        return self.quantize(self.pre(z))


def _train(model, kind, steps):
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for s in range(steps):
        opt.zero_grad()
        out = model(_latents(kind, s))
        loss = sum(t.float().pow(2).mean() for t in tensors_of(out) if t.is_floating_point())
        if kind != "emu3":  # Emu3's quantizer returns ids only: nothing to train through it
            loss.backward()
            opt.step()
    return model


@pytest.mark.parametrize("kind", ["chameleon", "janus", "glm", "emu3"])
def test_family_reads_the_lookup_space(kind):
    """The VQ-VAE's quantizer is found, and the latents watch samples, through its transform, have the ids
    the library returned as their nearest codes (GLM-Image: both sides l2-normalised)."""
    vae = _build(kind)
    assert [(n, f.name) for n, _, f in find_quantizers(vae)] == [
        ("quantize", "transformers.emu3" if kind == "emu3" else "transformers.vqvae")]
    q, z = vae.quantize, 3 * _latents(kind, 0)
    out = q(z)
    fam = get_family(q)
    (cap,) = fam.extract(q, (z,), {}, out)
    rows = cap.latents.reshape(-1, E)
    rows = cap.transform(rows) if cap.transform else rows
    ids, _ = assign(fam.codebooks(q)[""], rows)
    assert torch.equal(ids, cap.indices.reshape(-1))
    if kind == "glm":
        assert torch.allclose(fam.codebooks(q)[""].norm(dim=1), torch.ones(K), atol=1e-5)


@pytest.mark.parametrize("kind", ["chameleon", "glm", "emu3"])
def test_watch(kind, tmp_path):
    plain = Head(kind)
    watched = copy.deepcopy(plain)
    monitor = shrinkscope.watch(watched, every=2, log_to=tmp_path / "w.jsonl", log_warnings=False)
    torch.manual_seed(1)
    _train(plain, kind, 4)
    torch.manual_seed(1)
    _train(watched, kind, 4)
    monitor.remove()
    for a, b in zip(plain.state_dict().values(), watched.state_dict().values()):
        assert torch.equal(a, b)
    recs = [json.loads(line) for line in (tmp_path / "w.jsonl").read_text().splitlines()]
    recs = [r for r in recs if "metrics" in r]
    assert recs and all((r["num_codes"], r["dim"]) == (K, E) for r in recs)
    assert all(r["metrics"]["quantization_error"] is not None for r in recs)


@pytest.mark.parametrize("kind", ["chameleon", "janus", "glm", "emu3"])
def test_analyze_saved_model(kind, tmp_path):
    vae = _build(kind)
    torch.save(vae.state_dict(), tmp_path / "m.pt")
    res = shrinkscope.analyze(str(tmp_path / "m.pt"))
    assert [(e.health.name, e.health.num_codes, e.health.dim) for e in res.entries] == [("quantize", K, E)]


@pytest.mark.parametrize("kind", ["chameleon", "glm"])
def test_defer_passes_through_then_fits(kind):
    model = Head(kind)
    base = copy.deepcopy(model)
    dq = shrinkscope.defer(model.quantize, switch=4, reservoir_size=256, check_every=2)
    model.quantize = dq
    z = _latents(kind, 0)
    with torch.no_grad():
        got, want = model(z), base(z)
    assert [(t.dtype, t.shape) for t in tensors_of(got)] == [(t.dtype, t.shape) for t in tensors_of(want)]
    assert torch.equal(got[0], model.pre(z))  # the latents themselves before the switch
    _train(model, kind, 6)
    assert dq.switched
    cb = get_family(dq.wrapped).codebooks(dq.wrapped)[""]
    with torch.no_grad():
        rows = model.pre(_latents(kind, -1)).permute(0, 2, 3, 1).reshape(-1, E)
    if kind == "glm":
        rows = torch.nn.functional.normalize(rows, dim=-1)
    ids, _ = assign(cb, rows)
    assert ids.unique().numel() >= 8, "the k-means codebook should spread over the 16 blobs"


def test_defer_emu3_refused_with_the_reason():
    with pytest.raises(TypeError, match="returns only code ids"):
        shrinkscope.defer(_build("emu3").quantize, switch=3)


@pytest.mark.parametrize("kind", ["neucodec", "xcodec2"])
def test_fsq_ports_are_read_for_usage_only(kind, tmp_path):
    """transformers' FSQ ports: an implicit grid, so watch reports usage only (and defer says why not)."""
    if kind == "neucodec":
        q = tr.models.neucodec.modeling_neucodec.NeuCodecFiniteScalarQuantization(tr.NeuCodecConfig())
    else:
        q = tr.models.xcodec2.modeling_xcodec2.Xcodec2FiniteScalarQuantization(tr.Xcodec2Config())
    k, d = q.codebook.shape
    assert get_family(q).name == "transformers.fsq"
    with shrinkscope.watch(q, every=0, log_warnings=False) as monitor:
        q.train()
        _, ids = q(torch.randn(4, 50, d))
        (h,) = monitor.report()
    assert h.num_codes == k and h.metrics["spread_ratio"] is None
    assert h.metrics["utilization_perplexity"] is not None
    assert h.metrics["utilization_perplexity"] <= ids.unique().numel() + 1e-6
    with pytest.raises(TypeError, match="fixed grid"):
        shrinkscope.defer(q, switch=3)


def test_xcodec_and_wavtokenizer_quantizers_read_through_encode(tmp_path):
    """Xcodec's residual quantizer and WavTokenizer's single one are transformers' Encodec port: watched
    through ``.encode()``, stage by stage up to the bandwidth in use, with the stage inputs as latents."""
    from transformers.models.wavtokenizer.modeling_wavtokenizer import WavTokenizerVectorQuantization
    from transformers.models.xcodec.modeling_xcodec import XcodecResidualVectorQuantization

    torch.manual_seed(0)
    rvq = XcodecResidualVectorQuantization(tr.XcodecConfig(codebook_size=32, codebook_dim=8))
    single = WavTokenizerVectorQuantization(tr.WavTokenizerConfig(codebook_size=32, codebook_dim=8, hidden_size=8))
    for book in [q.codebook for q in rvq.quantizers] + [single.codebook]:
        book.embed.copy_(torch.randn(32, 8))  # the port starts from zeros: a trained model's codes instead
    assert get_family(rvq).name == "transformers.codec_rvq" and get_family(single).name == "transformers.codec_vq"
    x = torch.randn(2, 8, 40)
    torch.save(rvq.state_dict(), tmp_path / "rvq.pt")
    found = shrinkscope.analyze(str(tmp_path / "rvq.pt")).entries
    assert len(found) == 16 and all((e.health.num_codes, e.health.dim) == (32, 8) for e in found)
    for q, call, stages in [(rvq, lambda: rvq.encode(x, bandwidth=1), 4), (single, lambda: single.encode(x), 1)]:
        with shrinkscope.watch(q, every=0, log_warnings=False) as monitor:
            q.train()
            call()
            hs = monitor.report()
        assert len(hs) == stages, [h.name for h in hs]  # 1 kbps at 50 frames/s and 5 bits a code: 4 stages
        assert all((h.num_codes, h.dim) == (32, 8) and h.metrics["quantization_error"] is not None for h in hs)
    with pytest.raises(TypeError, match="no straight-through path"):
        shrinkscope.defer(rvq, switch=3)

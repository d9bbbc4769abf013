"""``analyze`` / ``compare`` Python API.  Run: pytest tests/test_analyze.py -q"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from shrinkscope.analyze import EMA_DEAD_SHARE, analyze, compare, status_of
from shrinkscope.checkpoint import CheckpointError
from shrinkscope.kmeans import kmeans
from shrinkscope.metrics import METRIC_KEYS, assign


def _latents(n=3000, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(12, d, generator=g) * 3
    return centres[torch.randint(0, 12, (n,), generator=g)] + torch.randn(n, d, generator=g)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A healthy codebook (k-means of the latents) and a shrunken one (a small blob in one corner)."""
    tmp = tmp_path_factory.mktemp("pair")
    z = _latents()
    healthy = kmeans(z, 64, iters=10, seed=0)
    shrunk = z.mean(0) + 0.05 * torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    torch.save({"state_dict": {"quantize.embedding.weight": healthy}}, tmp / "healthy.ckpt")
    torch.save({"state_dict": {"quantize.embedding.weight": shrunk}}, tmp / "shrunk.ckpt")
    np.save(tmp / "z.npy", z.numpy())
    return tmp


def test_healthy_and_shrunk_told_apart(pair):
    good = analyze(pair / "healthy.ckpt", latents=pair / "z.npy", progress=False)
    bad = analyze(pair / "shrunk.ckpt", latents=pair / "z.npy", progress=False)
    assert good.healthy and good.verdict().startswith("Healthy")
    assert not bad.healthy and bad.verdict().startswith("Shrunk: quantize")
    assert {w["code"] for w in bad.codebooks[0].warnings} >= {"shrinkage"}
    assert good.codebooks[0].spread_ratio > 0.7 > 0.1 > bad.codebooks[0].spread_ratio


def test_json_contract(pair):
    d = analyze(pair / "healthy.ckpt", latents=pair / "z.npy", progress=False).to_dict()
    assert list(d) == ["source", "codebooks"] and d["source"].endswith("healthy.ckpt")
    (cb,) = d["codebooks"]
    assert list(cb) == ["name", "num_codes", "dim", "metrics", "warnings", "verdict"]  # "verdict" added in #10
    assert tuple(cb["metrics"]) == METRIC_KEYS and cb["num_codes"] == 64 and cb["dim"] == 8
    label_keys = {"token_mode_entropy", "shrunk_mode_share"}  # need --labels
    assert all(v is not None for k, v in cb["metrics"].items() if k not in label_keys)


def test_usage_buffer_with_dead_codes_without_latents():
    usage = torch.ones(32)
    usage[:20] = 1e-6  # EMA counts of unused codes decay towards zero without reaching it
    sd = {"quantize.embedding.weight": torch.randn(32, 8), "quantize.embedding.cluster_size": usage}
    res = analyze(sd, progress=False)
    h = res.codebooks[0]
    assert h.dead_code_ratio == pytest.approx(20 / 32)
    assert status_of(h) == "underused" and "Under-used" in res.verdict() and "--latents" in res.verdict()
    assert 1e-6 / usage.sum() < EMA_DEAD_SHARE / 32


def test_module_in_memory_and_channel_first_latents():
    vqp = pytest.importorskip("vector_quantize_pytorch")
    vq = vqp.VectorQuantize(dim=8, codebook_size=16)
    maps = torch.randn(4, 8, 6, 6)
    res = analyze(vq, latents=maps, progress=False)
    assert res.source == "<state_dict>" and res.entries[0].latents.shape == (4 * 36, 8)
    torch.testing.assert_close(res.entries[0].latents[:6], maps[0].movedim(0, -1).reshape(-1, 8)[:6])
    with pytest.raises(CheckpointError, match="match no codebook dimension"):
        analyze(vq, latents=torch.randn(10, 5), progress=False)
    bad = torch.randn(10, 8)
    bad[0, 0] = float("inf")
    with pytest.raises(CheckpointError, match="NaN/Inf"):
        analyze(vq, latents=bad, progress=False)


def test_residual_layers_measured_on_residuals():
    z = _latents(n=800)
    l0, l1 = z[:32].clone(), 0.3 * torch.randn(32, 8)
    sd = {"rvq.layers.0._codebook.embed": l0[None], "rvq.layers.1._codebook.embed": l1[None]}
    res = analyze(sd, latents=z, progress=False)
    e0, e1 = res.entries
    idx, _ = assign(l0, z)
    torch.testing.assert_close(e1.latents, z - l0[idx])
    assert any("residual" in n for n in e1.notes) and not any("residual" in n for n in e0.notes)


def _reference_blob(z):
    return {
        "format": "shrinkscope.reference.tokenizer/1",
        "config": {"quantizer": {"l2_normalize": False}},
        "model": {
            "quantizer.embed": z[:16].clone(), "quantizer.cluster_size": torch.ones(16),
            "quantizer.initted": torch.tensor(True), "quantizer.active": torch.tensor(False)
        },
        "data": {"dataset": "gaussians"},
        "step": 10,
    }


def test_reference_checkpoint_brings_its_own_latents(monkeypatch):
    z = _latents(n=500)
    monkeypatch.setitem(sys.modules, "shrinkscope.reference", None)  # analyze must not need the demo package
    res = analyze({**_reference_blob(z), "encoder_latents": z}, progress=False)
    assert res.latents_source == "reference model"
    assert res.codebooks[0].latent_coverage is not None
    assert any("deferred phase" in n for n in res.entries[0].notes)


def test_reference_checkpoint_without_saved_latents_says_how_to_get_them():
    res = analyze(_reference_blob(_latents(n=500)), progress=False)
    assert res.latents_source is None and res.codebooks[0].latent_coverage is None
    assert any("re-save it" in n and "--latents" in n for n in res.entries[0].notes)


def test_compare_pairs_by_name_and_deltas(pair):
    res = compare(pair / "shrunk.ckpt", pair / "healthy.ckpt", latents=pair / "z.npy", progress=False)
    d = res.to_dict()
    assert list(d) == ["before", "after", "delta"]
    (delta,) = d["delta"]
    b, a = d["before"]["codebooks"][0]["metrics"], d["after"]["codebooks"][0]["metrics"]
    assert delta["metrics"]["spread_ratio"] == pytest.approx(a["spread_ratio"] - b["spread_ratio"])
    assert delta["metrics"]["spread_ratio"] > 0.5
    assert "quantize: shrunk -> healthy (better)" in res.verdict()


def test_uninitialised_codebook_is_not_called_collapsed():
    vqp = pytest.importorskip("vector_quantize_pytorch")
    res = analyze(vqp.VectorQuantize(dim=8, codebook_size=16, kmeans_init=True), progress=False)
    assert res.entries[0].status == "uninitialised" and res.verdict().startswith("Uninitialised: codebook")


def test_real_reference_checkpoint_end_to_end(tmp_path):
    """Contract 5: a checkpoint written by shrinkscope.reference is analysed with its own latents."""
    from shrinkscope.reference.data import load_dataset
    from shrinkscope.reference.tokenizer import TokenizerConfig, VQTokenizer
    from shrinkscope.reference.train import TrainConfig, save_checkpoint

    torch.manual_seed(0)
    data = load_dataset("gaussians", seed=0, n_train=400, n_test=200)
    tok = VQTokenizer(TokenizerConfig(input_dim=data.train.shape[-1], num_codes=32))
    tok.quantizer.init_codebook(tok.latents(data.train[:400]).float(), iters=5)
    save_checkpoint(tmp_path / "ref.pt", tok, data, TrainConfig())
    res = analyze(tmp_path / "ref.pt", progress=False)
    (h,) = res.codebooks
    assert res.latents_source == "reference model" and h.num_codes == 32
    assert h.latent_coverage is not None and h.quantization_error is not None


def test_package_level_analyze_is_callable_after_module_import():
    import shrinkscope
    import shrinkscope.analyze  # noqa: F401 - the import that used to shadow the function

    res = shrinkscope.analyze({"vq.codebook": torch.randn(8, 3)}, progress=False)
    assert res.codebooks[0].num_codes == 8


@pytest.mark.parametrize("ext", ["pt", "npz"])
def test_latents_saved_by_watch_feed_analyze_per_codebook(tmp_path, ext):
    """Monitor.save_latents of a residual quantizer writes one array per stage; analyze matches them by name."""
    ResidualVQ = pytest.importorskip("vector_quantize_pytorch").ResidualVQ

    import shrinkscope

    torch.manual_seed(0)
    model = torch.nn.Module()
    model.rvq = ResidualVQ(dim=8, codebook_size=16, num_quantizers=2, kmeans_init=True)
    with shrinkscope.watch(model.rvq, every=0) as monitor:
        for _ in range(4):
            model.rvq(torch.randn(2, 64, 8))
        path = monitor.save_latents(tmp_path / f"lat.{ext}")
    torch.save(model.state_dict(), tmp_path / "m.pt")
    res = shrinkscope.analyze(tmp_path / "m.pt", latents=path, progress=False)
    assert [h.name for h in res.codebooks] == ["rvq.layers.0", "rvq.layers.1"]
    assert all(h.latent_coverage is not None for h in res.codebooks)
    # each stage is measured against its own captured input, not the residual recomputed from stage 0
    assert any("latents: array" in n for e in res.entries for n in e.notes)

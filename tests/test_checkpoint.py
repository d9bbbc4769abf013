"""Safe loading and codebook discovery on real library layouts.  Run: pytest tests/test_checkpoint.py -q"""

from __future__ import annotations

import argparse
import os

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from shrinkscope.checkpoint import (
    CheckpointError, find_codebooks, from_state_dict, load_array, load_checkpoint
)
from optional import vqp


def _found(path, **kw):
    return {f.name: f for f in find_codebooks(load_checkpoint(path), **kw)}


class _Evil:
    """Pickles to a call that writes a marker file: loading must never run it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# --- real libraries ----------------------------------------------------------------------------------------


def test_lucidrains_heads_and_residual(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.ModuleDict(
        {
            "vq": vqp.VectorQuantize(dim=16, codebook_size=32, heads=2, separate_codebook_per_head=True),
            "rvq": vqp.ResidualVQ(dim=16, codebook_size=24, num_quantizers=3),
        }
    )
    x = torch.randn(2, 50, 16)
    model["vq"](x), model["rvq"](x)
    path = tmp_path / "lucid.pt"
    torch.save({"model": model.state_dict(), "step": 5}, path)
    f = _found(path)
    assert sorted(f) == ["rvq.layers.0", "rvq.layers.1", "rvq.layers.2", "vq/head0", "vq/head1"]
    embed = model["vq"]._codebook.embed
    assert torch.equal(f["vq/head1"].codebook, embed[1])
    assert f["vq/head1"].family == "lucidrains.vq" and f["rvq.layers.2"].codebook.shape == (24, 16)
    assert torch.equal(f["vq/head0"].counts, model["vq"]._codebook.cluster_size[0].double())
    assert f["vq/head0"].ema_counts


def test_lucidrains_shared_codebook_reported_once(tmp_path):
    rvq = vqp.ResidualVQ(dim=8, codebook_size=16, num_quantizers=3, shared_codebook=True)
    torch.save(rvq.state_dict(), tmp_path / "shared.pt")
    assert list(_found(tmp_path / "shared.pt")) == ["layers.0"]


def test_lucidrains_uninitialised_kmeans(tmp_path):
    vq = vqp.VectorQuantize(dim=8, codebook_size=16, kmeans_init=True)
    torch.save(vq.state_dict(), tmp_path / "init.pt")
    (fc,) = _found(tmp_path / "init.pt").values()
    assert fc.counts is None and any("not initialised" in n for n in fc.notes)
    assert not fc.codebook.any()


def test_simvq_effective_codebook(tmp_path):
    sim = vqp.SimVQ(dim=8, codebook_size=16)
    torch.save({"quantizer": sim.state_dict()}, tmp_path / "sim.pt")
    (fc,) = _found(tmp_path / "sim.pt").values()
    want = sim.frozen_codebook @ sim.code_transform.weight.detach().t()
    torch.testing.assert_close(fc.codebook, want)


# --- state dicts with other libraries' key names -----------------------------------------------------------


def test_taming_lightning_ckpt_prefix_and_lm_table(tmp_path):
    cb = torch.randn(64, 8)
    sd = {
        "first_stage_model.quantize.embedding.weight": cb,
        "first_stage_model.encoder.conv.weight": torch.randn(4, 3),
        "transformer.tok_embeddings.weight": torch.randn(500, 32),
    }
    torch.save({"state_dict": sd, "epoch": 3, "global_step": 100}, tmp_path / "last.ckpt")
    f = _found(tmp_path / "last.ckpt")
    assert list(f) == ["quantize"] and torch.equal(f["quantize"].codebook, cb)
    with_lm = _found(tmp_path / "last.ckpt", include_embeddings=True)
    assert "transformer.tok_embeddings" in with_lm


def test_taming_ema_usage_buffer(tmp_path):
    usage = torch.tensor([5.0, 0.0, 3.0, 2.0])
    sd = {
        "quantize.embedding.weight": torch.randn(4, 3), "quantize.embedding.cluster_size": usage,
        "quantize.embedding.embed_avg": torch.randn(4, 3)
    }
    torch.save(sd, tmp_path / "ema.pt")
    (fc,) = _found(tmp_path / "ema.pt").values()
    assert fc.family == "taming.ema" and torch.equal(fc.counts, usage.double())


def test_llamagen_fifo_normalised_model_and_ema(tmp_path):
    cb = torch.randn(16, 8) * 3
    fifo = torch.tensor([1.0, 1.0, 2.0, 15.0] * 4)
    sd = {"quantize.embedding.weight": cb, "quantize.codebook_used": fifo}
    obj = {
        "model": sd, "ema": {k: v.clone() for k, v in sd.items()},
        "args": argparse.Namespace(codebook_size=16), "optimizer": {"state": {}}
    }
    torch.save(obj, tmp_path / "llamagen.pt")
    f = _found(tmp_path / "llamagen.pt")
    assert sorted(f) == ["ema.quantize", "model.quantize"]
    fc = f["model.quantize"]
    torch.testing.assert_close(fc.codebook.norm(dim=1), torch.ones(16))
    assert fc.counts[1] == 8 and fc.counts[2] == 4 and fc.counts[15] == 4 and fc.counts.sum() == 16
    assert any("l2-normalised" in n for n in fc.notes)


def test_diffusers_safetensors_reads_only_the_codebook(tmp_path, monkeypatch):
    import safetensors

    cb = torch.randn(256, 4)
    save_file(
        {
            "quantize.embedding.weight": cb, "encoder.conv_in.weight": torch.randn(64, 3, 3, 3),
            "decoder.conv_out.weight": torch.randn(3, 64, 3, 3)
        },
        tmp_path / "diffusion_pytorch_model.safetensors",
    )
    loaded = []
    real = safetensors.safe_open

    class Spy:
        def __init__(self, *a, **k):
            self.f = real(*a, **k)

        def __enter__(self):
            self.f.__enter__()
            return self

        def __exit__(self, *a):
            return self.f.__exit__(*a)

        def get_tensor(self, key):
            loaded.append(key)
            return self.f.get_tensor(key)

    monkeypatch.setattr(safetensors, "safe_open", Spy)
    (fc,) = _found(tmp_path / "diffusion_pytorch_model.safetensors").values()
    assert torch.equal(fc.codebook, cb) and loaded == ["quantize.embedding.weight"]


def test_encodec_original_and_hf(tmp_path):
    sd = {}
    for i in range(2):
        sd[f"quantizer.vq.layers.{i}._codebook.embed"] = torch.randn(32, 6)
        sd[f"quantizer.vq.layers.{i}._codebook.cluster_size"] = torch.rand(32)
        sd[f"quantizer.vq.layers.{i}._codebook.inited"] = torch.ones(1)
    torch.save(sd, tmp_path / "encodec.th")
    f = _found(tmp_path / "encodec.th")
    assert (
        sorted(f) == ["quantizer.vq.layers.0", "quantizer.vq.layers.1"]
        and f["quantizer.vq.layers.0"].counts is not None
    )
    hf = {
        "quantizer.layers.0.codebook.embed": torch.randn(32, 6),
        "quantizer.layers.0.codebook.cluster_size": torch.rand(32),
        "quantizer.layers.0.codebook.inited": torch.zeros(1),
    }
    save_file(hf, tmp_path / "model.safetensors")
    (fc,) = _found(tmp_path / "model.safetensors").values()
    assert fc.name == "quantizer.layers.0" and fc.counts is None  # inited == 0: buffers not meaningful yet


def test_dac_codebooks_are_l2_normalised(tmp_path):
    sd = {f"quantizer.quantizers.{i}.codebook.weight": torch.randn(1024, 8) * 4 for i in range(3)}
    sd["quantizer.quantizers.0.in_proj.weight_v"] = torch.randn(8, 64, 1)
    torch.save({"state_dict": sd, "metadata": {"kwargs": {"n_codebooks": 3}}}, tmp_path / "weights.pth")
    f = _found(tmp_path / "weights.pth")
    assert len(f) == 3 and f["quantizer.quantizers.2"].family == "dac.vq"
    torch.testing.assert_close(f["quantizer.quantizers.1"].codebook.norm(dim=1), torch.ones(1024))


def test_moshi_and_mimi_derived_codebook(tmp_path):
    emb_sum, usage = torch.randn(64, 8) * 10, torch.rand(64) * 5 + 1
    sd = {
        "quantizer.rvq_first.vq.layers.0._codebook.embedding_sum": emb_sum,
        "quantizer.rvq_first.vq.layers.0._codebook.cluster_usage": usage,
        "quantizer.acoustic_residual_vector_quantizer.layers.0.codebook.embed_sum": emb_sum.clone(),
        "quantizer.acoustic_residual_vector_quantizer.layers.0.codebook.cluster_usage": usage.clone(),
    }
    torch.save(sd, tmp_path / "mimi.pt")
    f = _found(tmp_path / "mimi.pt")
    fc = f["quantizer.rvq_first.vq.layers.0"]
    torch.testing.assert_close(fc.codebook, emb_sum / usage[:, None])
    assert (
        torch.equal(fc.counts, usage.double())
        and "quantizer.acoustic_residual_vector_quantizer.layers.0" in f
    )


def test_var_scale_hits(tmp_path):
    hits = torch.rand(10, 32)
    torch.save(
        {"quantize.embedding.weight": torch.randn(32, 4), "quantize.ema_vocab_hit_SV": hits},
        tmp_path / "var.pth",
    )
    (fc,) = _found(tmp_path / "var.pth").values()
    torch.testing.assert_close(fc.counts, hits.double().sum(0))


def test_wrapper_prefixes_and_legacy_format(tmp_path):
    cb = torch.randn(8, 3)
    torch.save(
        {"module._orig_mod.vq.codebook": cb}, tmp_path / "old.pt", _use_new_zipfile_serialization=False
    )
    (fc,) = _found(tmp_path / "old.pt").values()
    assert fc.name == "vq" and torch.equal(fc.codebook, cb)


def test_bare_tensor_file_is_a_codebook(tmp_path):
    cb = torch.randn(12, 3)
    torch.save(cb, tmp_path / "cb.pt")
    (fc,) = _found(tmp_path / "cb.pt").values()
    assert torch.equal(fc.codebook, cb) and torch.equal(load_array(tmp_path / "cb.pt"), cb)


def test_numpy_codebooks(tmp_path):
    cb = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    np.savez(tmp_path / "cb.npz", codebook=cb, counts=np.arange(16))
    (fc,) = _found(tmp_path / "cb.npz").values()
    assert np.allclose(fc.codebook.numpy(), cb) and torch.equal(fc.counts, torch.arange(16).double())
    np.save(tmp_path / "codes.npy", cb)
    assert list(_found(tmp_path / "codes.npy")) == ["codes"]


def test_explicit_key_and_in_memory_state_dict():
    sd = {"net.table": torch.randn(10, 4), "net.other": torch.randn(3, 3)}
    ck = from_state_dict(sd)
    with pytest.raises(CheckpointError, match="no codebook found"):
        find_codebooks(ck)
    (fc,) = find_codebooks(ck, keys=["net.table"])
    assert fc.codebook.shape == (10, 4)
    with pytest.raises(CheckpointError, match="key 'missing' not found"):
        find_codebooks(ck, keys=["missing"])


def test_load_array_channel_first_maps(tmp_path):
    z = torch.randn(2, 8, 4, 4)
    torch.save({"latents": z, "labels": torch.arange(2)}, tmp_path / "z.pt")
    assert torch.equal(load_array(tmp_path / "z.pt"), z)


# --- bad input ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make,fragment",
    [
        (lambda p: None, "no such file"),
        (lambda p: os.mkdir(p), "is a directory"),
        (lambda p: open(p, "wb").close(), "is empty"),
        (
            lambda p: open(p, "wb").write(b"hello, this is plain text and not a checkpoint\n"),
            "not a checkpoint",
        ),
    ],
)
def test_unreadable_files(tmp_path, make, fragment):
    path = tmp_path / "bad.pt"
    make(path)
    with pytest.raises(CheckpointError, match=fragment):
        load_checkpoint(path)


def test_truncated_torch_and_safetensors(tmp_path):
    torch.save({"quantize.embedding.weight": torch.randn(256, 64)}, tmp_path / "ok.pt")
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(tmp_path / "cut.pt")
    save_file({"quantize.embedding.weight": torch.randn(256, 64)}, tmp_path / "ok.safetensors")
    data = (tmp_path / "ok.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(tmp_path / "cut.safetensors")


def test_nan_codebook_refused(tmp_path):
    cb = torch.randn(8, 4)
    cb[2, 1] = float("nan")
    torch.save({"quantize.embedding.weight": cb}, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match="1 NaN"):
        find_codebooks(load_checkpoint(tmp_path / "nan.pt"))


@pytest.mark.parametrize("writer", ["torch_zip", "torch_legacy", "plain_pickle"])
def test_malicious_pickle_never_runs(tmp_path, writer):
    import pickle

    marker = tmp_path / "pwned"
    payload = {"quantize.embedding.weight": torch.randn(4, 2), "x": _Evil(marker)}
    path = tmp_path / "evil.pt"
    if writer == "plain_pickle":
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=4)
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=writer == "torch_zip")
    with pytest.raises(CheckpointError, match=r"refused to unpickle.*open.*--trust-checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()


def test_trust_checkpoint_is_an_explicit_opt_in(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"quantize.embedding.weight": torch.randn(4, 2), "x": _Evil(marker)}, tmp_path / "t.pt")
    ck = load_checkpoint(tmp_path / "t.pt", trust=True)
    assert marker.exists() and len(find_codebooks(ck)) == 1

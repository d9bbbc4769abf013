"""analyze on hostile or extreme inputs: reference checkpoints that ask for files or huge builds, latents
larger than memory should need, magnitudes that overflow float32, degenerate codebooks, bad options.
Run: pytest tests/hardening/test_analyze_inputs.py -q"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from shrinkscope import analyze
from shrinkscope.checkpoint import CheckpointError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _reference_blob(**data):
    from shrinkscope.reference.tokenizer import TokenizerConfig, VQTokenizer
    from shrinkscope.reference.train import CHECKPOINT_FORMAT

    torch.manual_seed(0)
    cfg = TokenizerConfig(input_dim=8, hidden=16, num_codes=16, code_dim=4)
    tok = VQTokenizer(cfg)
    return {"format": CHECKPOINT_FORMAT, "config": cfg.to_dict(), "model": tok.state_dict(),
            "data": {"dataset": "gaussians", "n_train": 200, "n_test": 100, "dim": 8, **data}}


def _spy_on_builds(monkeypatch) -> list:
    """Record any dataset read or reference model built from now on (what a file must not cause)."""
    from shrinkscope.reference import data, tokenizer

    calls: list = []
    monkeypatch.setattr(data, "load_dataset", lambda *a, **k: calls.append(("data", a, k)))
    monkeypatch.setattr(tokenizer.VQTokenizer, "__init__", lambda *a, **k: calls.append(("model", a, k)))
    return calls


@pytest.mark.parametrize("data", [{"dataset": "path", "path": "/etc/passwd"}, {"n_train": 10**8},
                                  {"dim": 10**6}])
def test_a_checkpoint_never_chooses_what_is_read_or_built(tmp_path, monkeypatch, data):
    """Data named inside a reference checkpoint (a local path, 10^8 items) is never followed: analyze reads
    only latents saved in the file or given with --latents."""
    torch.save(_reference_blob(**data), tmp_path / "ref.pt")
    calls = _spy_on_builds(monkeypatch)
    res = analyze(tmp_path / "ref.pt", progress=False)
    assert calls == [] and res.latents_source is None
    assert any("--latents" in n for e in res.entries for n in e.notes)


def test_saved_latents_are_read_within_bounds(tmp_path):
    blob = _reference_blob()
    blob["encoder_latents"] = torch.zeros(1).expand(1 << 28, 4)  # a 4 GiB stride-0 view in a small file
    torch.save(blob, tmp_path / "ref.pt")
    with pytest.raises(CheckpointError, match="stride-0"):
        analyze(tmp_path / "ref.pt", progress=False)
    blob["encoder_latents"] = torch.randn(50_000, 4)
    torch.save(blob, tmp_path / "ref.pt")
    res = analyze(tmp_path / "ref.pt", progress=False, max_latents=1000)
    assert res.latents_source == "reference model" and res.entries[0].latents.shape == (1000, 4)


@pytest.mark.parametrize("scale", [1e19, 1e-25])
def test_extreme_magnitudes_do_not_flip_the_verdict(scale):
    torch.manual_seed(0)
    cb, z = torch.randn(64, 8), torch.randn(4000, 8)
    base = analyze({"quantize.embedding.weight": cb}, latents=z, progress=False)
    far = analyze({"quantize.embedding.weight": cb * scale}, latents=z * scale, progress=False)
    assert far.entries[0].status == base.entries[0].status
    mb, mf = base.to_dict()["codebooks"][0]["metrics"], far.to_dict()["codebooks"][0]["metrics"]
    for key, v in mb.items():
        if v is None:
            assert mf[key] is None
        elif key == "spread_euclidean":
            assert mf[key] == pytest.approx(v * scale, rel=1e-5)
        else:
            assert mf[key] == pytest.approx(v, rel=1e-5, abs=1e-9), key


@pytest.mark.parametrize("shape", [(16, 0), (0, 8)])
def test_empty_codebooks_are_a_clear_error(tmp_path, shape):
    torch.save({"quantize.embedding.weight": torch.zeros(shape)}, tmp_path / "e.pt")
    with pytest.raises(CheckpointError, match="K, D >= 1|no codebook"):
        analyze(tmp_path / "e.pt", progress=False)


@pytest.mark.parametrize("kw", [{"max_latents": -1}, {"max_latents": 0}, {"max_points": 0}, {"seed": -3},
                                {"max_latents": 2.5}])
def test_bad_options_are_refused(kw):
    with pytest.raises(ValueError, match="must be"):
        analyze({"quantize.embedding.weight": torch.randn(8, 2)}, progress=False, **kw)


def test_max_latents_keeps_exactly_that_many_rows(tmp_path):
    z = np.random.default_rng(0).normal(size=(5000, 4)).astype(np.float32)
    np.save(tmp_path / "z.npy", z)
    res = analyze({"quantize.embedding.weight": torch.randn(8, 4)}, latents=tmp_path / "z.npy",
                  max_latents=1234, progress=False)
    assert res.entries[0].latents.shape == (1234, 4)


PEAK = textwrap.dedent("""
    import resource, sys, torch
    from shrinkscope import analyze
    import shrinkscope.metrics, shrinkscope.checkpoint  # imported before the baseline
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if sys.argv[2] == "go":
        analyze({"quantize.embedding.weight": torch.randn(32, 8)}, latents=sys.argv[1], max_latents=20000,
                progress=False, max_points=512)
    print(base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
""")


@pytest.mark.slow
@pytest.mark.parametrize("ext", ["npy", "npz"])
def test_peak_memory_follows_max_latents_not_the_file(tmp_path, ext):
    """10M rows x 8 float32 (320 MB): the peak stays near 20,000 rows' worth plus a fixed overhead."""
    n, d = 10_000_000, 8
    path = tmp_path / f"z.{ext}"
    rows = np.lib.format.open_memmap(tmp_path / "z.npy", mode="w+", dtype=np.float32, shape=(n, d))
    rng = np.random.default_rng(0)
    for s in range(0, n, 1_000_000):
        rows[s:s + 1_000_000] = rng.standard_normal((1_000_000, d), dtype=np.float32)
    rows.flush()
    del rows
    if ext == "npz":
        np.savez(path, latents=np.load(tmp_path / "z.npy", mmap_mode="r"))
        os.remove(tmp_path / "z.npy")
    env = {**os.environ, "PYTHONPATH": ROOT}
    out = subprocess.run([sys.executable, "-c", PEAK, str(path), "go"], capture_output=True, text=True,
                         env=env, timeout=600, check=True).stdout.split()
    base, peak = int(out[0]), int(out[1])  # KiB
    file_mib = n * d * 4 / 2**20
    grew = (peak - base) / 1024
    assert grew < 0.25 * file_mib, f"peak grew by {grew:.0f} MiB for a {file_mib:.0f} MiB file"


def test_wide_codebooks_do_not_ask_for_a_d_by_d_matrix():
    """2 codes of 10^6 dims (8 MB) once asked for an 8 TB Gram matrix; the N x N Gram gives the same spectrum."""
    from shrinkscope.metrics import singular_spectrum

    x = torch.randn(5, 400_000, dtype=torch.float64)
    ref = torch.linalg.svdvals(x - x.mean(0))
    # the zero singular value of centred rows comes back at round-off, about sqrt(eps) * s_max
    torch.testing.assert_close(singular_spectrum(x), ref, rtol=1e-9, atol=1e-6 * float(ref.max()))
    res = analyze({"quantize.embedding.weight": torch.randn(2, 1_000_000)}, progress=False)
    assert res.entries[0].health.effective_rank is not None

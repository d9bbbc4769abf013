"""A VAR checkpoint analysed scale by scale, and the shared codebook's geometry measured once.

The checkpoint is the state dict of the VAR look-alike (tests/var_lookalike.py, written from VAR's public
layout) whose ``ema_vocab_hit_SV`` holds what VAR writes there in training: per scale, the hit counts of the
ids that scale picked (VAR's first record copies ``bincount(ids)`` into row ``si``). References: ``bincount``
of the look-alike's own ids per scale, and ``codebook_health`` run on each scale's counts by hand.
"""
from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest
import torch
from var_lookalike import TinyVQVAE

import shrinkscope
import shrinkscope.metrics.health as health_mod
from shrinkscope.checkpoint import CheckpointError
from shrinkscope.cli import main
from shrinkscope.metrics import codebook_geometry, codebook_health
from shrinkscope.report import analysis_text, write_analysis_report

PATCHES = (1, 2, 3, 4)
VOCAB = 32


def _trained_var(tmp_path, *, n: int = 64, dead_scale: int | None = None):
    """The look-alike after one forward, its hits buffer written as VAR writes it; saved as a state dict."""
    torch.manual_seed(0)
    model = TinyVQVAE(vocab=VOCAB, patch_nums=PATCHES)
    with torch.no_grad():
        model(torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(1)))
    hits = torch.stack([torch.bincount(ids, minlength=VOCAB).float() for ids in model.quantize.last_ids])
    if dead_scale is not None:
        hits[dead_scale] = 0
    model.quantize.ema_vocab_hit_SV.copy_(hits)
    path = tmp_path / "var.pth"
    torch.save(model.state_dict(), path)
    return path, model, hits


def test_a_var_checkpoint_gives_one_row_per_scale_with_that_scales_usage(tmp_path):
    path, model, hits = _trained_var(tmp_path)
    res = shrinkscope.analyze(path)
    assert [e.health.name for e in res.entries] == [f"quantize.scales.{i}" for i in range(len(PATCHES))]
    cb = model.quantize.embedding.weight.detach()
    for si, e in enumerate(res.entries):
        assert e.scale == {"index": si, "size": None}
        torch.testing.assert_close(e.found.counts, hits[si].double())
        ref = codebook_health(cb, counts=hits[si] / hits[si].sum(), max_points=4096)  # slow obvious reference
        got, want = e.health.metrics, ref.metrics
        assert got == pytest.approx(want, nan_ok=True)
        assert e.found.ema_counts and f"row {si} of the ema_vocab_hit_SV" in " ".join(e.notes)
    # the coarse scale (1x1, one token per image) uses fewer codes than the finest: visible per scale only
    used = [e.health.codes_used for e in res.entries]
    assert used[0] < used[-1]
    d = res.to_dict()
    assert [c["scale"] for c in d["codebooks"]] == [{"index": i, "size": None} for i in range(len(PATCHES))]
    json.dumps(d)
    text = analysis_text(res)
    assert "Scales:" in text and "quantize (4 scales)" in text and "size unknown: pass --scales" in text
    # the way to a scale's latents is running the model: --latents would not reach a scale row
    assert "pass --latents" not in res.verdict() and "--model/--data" in res.verdict()
    assert all(m["how"].startswith("run the model") for e in res.entries for m in e.health.verdict.missing
               if m["input"] == "latents")


def test_scales_label_the_rows_and_must_match_the_buffer(tmp_path):
    path, _, _ = _trained_var(tmp_path)
    res = shrinkscope.analyze(path, scales=PATCHES)
    assert [e.scale for e in res.entries] == [{"index": i, "size": [p, p]} for i, p in enumerate(PATCHES)]
    assert "quantize.scales.3 4x4" in analysis_text(res)
    with pytest.raises(CheckpointError, match="3 sizes given, but quantize.embedding.weight has 4 scales"):
        shrinkscope.analyze(path, scales=(1, 2, 3))
    torch.save({"vq.codebook": torch.randn(8, 2)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="applies to VAR checkpoints"):
        shrinkscope.analyze(tmp_path / "plain.pt", scales=(1, 2))


def test_cli_json_carries_scale_fields_and_bad_scales_exit_2(tmp_path, capsys):
    path, _, _ = _trained_var(tmp_path)
    assert main(["analyze", str(path), "--json", "--scales", "1,2,3,4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [c["scale"] for c in out["codebooks"]] == [{"index": i, "size": [p, p]} for i, p in enumerate(PATCHES)]
    for bad in ("1,2,3", "1,0,2,3", "a,b"):
        proc = subprocess.run([sys.executable, "-m", "shrinkscope.cli", "analyze", str(path), "--scales", bad],
                              capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 2, bad
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr


def test_latents_are_measured_against_the_whole_codebook_not_a_scale(tmp_path):
    path, _, hits = _trained_var(tmp_path)
    z = torch.randn(300, 4, generator=torch.Generator().manual_seed(2))
    res = shrinkscope.analyze(path, latents=z)
    names = [e.health.name for e in res.entries]
    assert names == ["quantize"] + [f"quantize.scales.{i}" for i in range(len(PATCHES))]
    whole, *scales = res.entries
    assert whole.scale is None and whole.latents is not None and whole.health.spread_ratio is not None
    torch.testing.assert_close(whole.found.counts, hits.double().sum(0))  # as before: summed over scales
    assert all(e.latents is None and e.health.spread_ratio is None for e in scales)
    assert all("not this scale's residual" in " ".join(e.notes) for e in scales)


def test_a_scale_without_hits_has_unknown_usage(tmp_path):
    path, _, _ = _trained_var(tmp_path, dead_scale=1)
    res = shrinkscope.analyze(path)
    e = res.entries[1]
    assert e.found.counts is None and e.health.utilization is None
    assert "holds no hits" in " ".join(e.notes)
    assert res.entries[2].health.utilization is not None


def test_a_never_written_buffer_keeps_one_row(tmp_path):
    torch.manual_seed(0)
    model = TinyVQVAE(vocab=VOCAB, patch_nums=PATCHES)  # ema_vocab_hit_SV still all zeros
    torch.save(model.state_dict(), tmp_path / "fresh.pth")
    (e,) = shrinkscope.analyze(tmp_path / "fresh.pth").entries
    assert e.health.name == "quantize" and e.scale is None and e.found.counts is None


def test_the_shared_codebook_geometry_is_measured_once(tmp_path, monkeypatch):
    path, _, _ = _trained_var(tmp_path)
    calls = []
    real = health_mod.codebook_geometry

    def counting(cb, **kw):
        calls.append(cb.shape)
        return real(cb, **kw)

    # the modules, not the functions of the same name bound in the package
    analyze_mod, watch_report_mod = (importlib.import_module(f"shrinkscope.{m}") for m in ("analyze", "watch_report"))
    monkeypatch.setattr(analyze_mod, "codebook_geometry", counting)
    res = shrinkscope.analyze(path)
    assert len(res.entries) == 4 and len(calls) == 1
    # one geometry per report for VAR's live scales too
    monkeypatch.setattr(watch_report_mod, "codebook_geometry", counting)
    calls.clear()
    torch.manual_seed(0)
    model = TinyVQVAE(vocab=VOCAB, patch_nums=PATCHES)
    mon = shrinkscope.watch(model, every=0)
    with torch.no_grad():
        model(torch.rand(8, 3, 8, 8))
    healths = mon.report()
    assert len(healths) == 4 and len(calls) == 1


def test_geometry_given_equals_geometry_measured_and_is_checked():
    g = torch.Generator().manual_seed(0)
    cb, z = torch.randn(40, 5, generator=g), torch.randn(400, 5, generator=g)
    counts = torch.bincount(torch.randint(0, 40, (500,), generator=g), minlength=40)
    for kw in ({}, {"latents": z}, {"counts": counts}, {"latents": z, "counts": counts}):
        own = codebook_health(cb, seed=3, max_points=16, **kw).to_dict()
        shared = codebook_health(cb, seed=3, max_points=16, geometry=codebook_geometry(cb, max_points=16, seed=3),
                                 **kw).to_dict()
        assert shared == own
    with pytest.raises(ValueError, match="geometry: measured on a"):
        codebook_health(cb, geometry=codebook_geometry(cb, seed=1))
    with pytest.raises(ValueError, match="geometry: measured on a"):
        codebook_health(cb[:30], geometry=codebook_geometry(cb))


def test_the_html_report_of_a_var_checkpoint_has_the_depth_panel(tmp_path):
    pytest.importorskip("matplotlib")
    path, _, _ = _trained_var(tmp_path)
    res = shrinkscope.analyze(path)
    with open(write_analysis_report(res, str(tmp_path / "out")), encoding="utf-8") as f:
        page = f.read()
    assert "Health by depth" in page and "quantize.scales.3" in page


@pytest.mark.parametrize("damage", ["nan", "negative"])
def test_a_damaged_hits_buffer_is_refused_in_one_line(tmp_path, damage):
    hits = torch.rand(4, VOCAB)
    hits[2, 5] = float("nan") if damage == "nan" else -1.0
    torch.save({"quantize.embedding.weight": torch.randn(VOCAB, 4), "quantize.ema_vocab_hit_SV": hits},
               tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="ema_vocab_hit_SV buffer holds 1 NaN, Inf or negative"):
        shrinkscope.analyze(tmp_path / "bad.pth")


def test_the_codebook_limit_counts_the_split_rows(tmp_path, monkeypatch):
    from shrinkscope import scale_rows

    path, _, _ = _trained_var(tmp_path)
    monkeypatch.setattr(scale_rows, "MAX_CODEBOOKS", 3)
    with pytest.raises(CheckpointError, match="4 codebooks once VAR's scales are split, more than 3"):
        shrinkscope.analyze(path)
    (e,) = shrinkscope.analyze(path, keys=["quantize.embedding.weight"]).entries  # --key reads it whole
    assert e.scale is None


def test_compare_pairs_each_scale_with_an_early_checkpoint_read_whole(tmp_path):
    path, _, _ = _trained_var(tmp_path)
    torch.manual_seed(0)
    early = TinyVQVAE(vocab=VOCAB, patch_nums=PATCHES)  # its hit buffer is still all zeros: one row
    torch.save(early.state_dict(), tmp_path / "early.pth")
    res = shrinkscope.compare(tmp_path / "early.pth", path)
    assert [(b.health.name, a.health.name) for b, a in res.pairs] == [
        ("quantize", f"quantize.scales.{i}") for i in range(len(PATCHES))]
    assert [d["before_name"] for d in res.to_dict()["delta"]] == ["quantize"] * len(PATCHES)

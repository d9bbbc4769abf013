"""HTML/PNG reports of analyze and compare.  Run: pytest tests/report -q"""

from __future__ import annotations

import json
import re

import torch

from shrinkscope.analyze import analyze, compare
from shrinkscope.report import analysis_text, comparison_text, write_analysis_report, write_comparison_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _checkpoints():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1200, 6, generator=g)
    good = {"quantize.embedding.weight": z[:48].clone()}
    bad = {
        "quantize.embedding.weight": 0.05 * torch.randn(48, 6, generator=g),
        "quantize.embedding.cluster_size": torch.rand(48, generator=g),
    }
    return z, good, bad


def test_analysis_report_is_self_contained(tmp_path):
    z, _, bad = _checkpoints()
    res = analyze(bad, latents=z, progress=False)
    html_path = write_analysis_report(res, str(tmp_path), umap=False)
    page = open(html_path).read()
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == ["00_quantize.png"] and (tmp_path / "00_quantize.png").read_bytes()[:8] == PNG_MAGIC
    assert page.count("data:image/png;base64,") == 1
    assert not re.search(
        r"""(src|href)=["']?(https?:|//|file:)""", page
    )  # nothing fetched when opened offline
    assert "shrinkage" in page and "Shrunk" in page
    assert json.loads((tmp_path / "health.json").read_text()) == json.loads(json.dumps(res.to_dict()))


def test_report_without_latents_or_usage(tmp_path):
    res = analyze({"vq.codebook": torch.randn(40, 5)}, progress=False)
    write_analysis_report(res, str(tmp_path), umap=False)
    assert (tmp_path / "00_vq.png").stat().st_size > 10_000
    text = analysis_text(res)
    assert "codebook" in text.splitlines()[2] and "Verdict:" in text and "--latents" in text


def test_comparison_report_overlays(tmp_path):
    z, good, bad = _checkpoints()
    res = compare(bad, good, latents=z, progress=False)
    write_comparison_report(res, str(tmp_path), umap=False)
    assert (tmp_path / "00_quantize_compare.png").read_bytes()[:8] == PNG_MAGIC
    page = (tmp_path / "report.html").read_text()
    assert "Before" in page and "After" in page and page.count("data:image/png;base64,") == 1
    text = comparison_text(res)
    assert "spread_ratio" in text and "shrunk -> healthy" in text


def test_compare_draws_each_codebook_over_its_own_encoders_latents(tmp_path, monkeypatch):
    """Two reference checkpoints bring two encoders' latents: neither codebook is measured on the other's."""
    import torch

    from shrinkscope.analyze import analyze
    from shrinkscope.report import plots

    g = torch.Generator().manual_seed(0)
    z_before, z_after = torch.randn(400, 4, generator=g) * 0.2, torch.randn(400, 4, generator=g)
    before = analyze({"quantize.embedding.weight": z_before[:32].clone()}, latents=z_before, progress=False)
    after = analyze({"quantize.embedding.weight": z_after[:32].clone()}, latents=z_after, progress=False)
    seen = {}
    real = plots._distances

    def spy(ax, codebooks, latents, own=None):
        seen["own"] = own
        return real(ax, codebooks, latents, own)

    monkeypatch.setattr(plots, "_distances", spy)
    path = plots.comparison_figure(before.entries[0], after.entries[0], str(tmp_path / "cmp.png"))
    assert (tmp_path / "cmp.png").stat().st_size > 0 and path
    assert seen["own"] is not None
    assert torch.equal(seen["own"][0], before.entries[0].latents)
    assert torch.equal(seen["own"][1], after.entries[0].latents)
    # one shared latent set: the single-cloud drawing
    same = analyze({"quantize.embedding.weight": z_after[:32].clone() * 0.1}, latents=z_after, progress=False)
    plots.comparison_figure(same.entries[0], after.entries[0], str(tmp_path / "cmp2.png"))
    assert seen["own"] is None

"""Display classes: the data each one plots, checked against slow obvious references.

Run: pytest tests/report -q
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from shrinkscope.analyze import analyze
from shrinkscope.metrics import codebook_health
from shrinkscope.report import (
    CodebookDisplay,
    DistanceDisplay,
    ProjectionDisplay,
    SpectrumDisplay,
    TimelineDisplay,
    UsageDisplay,
    read_timeline,
)


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(900, 6, generator=g) * torch.tensor([3.0, 2.0, 1.0, 0.5, 0.3, 0.1])
    cb = 0.3 * z[:40].clone()
    return cb, z


def _centred_sv(x: torch.Tensor) -> np.ndarray:
    x = x.double()
    s = np.linalg.svd((x - x.mean(0)).numpy(), compute_uv=False)
    return s / s[0]


def test_spectrum_plots_normalised_singular_values(data):
    cb, z = data
    d = SpectrumDisplay.from_health(codebook_health(cb, latents=z))
    codes, lat = d.series
    np.testing.assert_allclose(codes.values, _centred_sv(cb), rtol=1e-6)
    np.testing.assert_allclose(lat.values, _centred_sv(z), rtol=1e-6)
    assert lat.kind == "latents" and lat.style == "--" and codes.label.startswith("codes (eff. rank")
    d.plot()
    assert d.figure_ is d.ax_.figure and len(d.lines_) == 2
    np.testing.assert_allclose(d.lines_[0].get_ydata(), codes.values)


def test_spectrum_of_two_encoders_keeps_each_latent_spectrum(data):
    cb, z = data
    hb, ha = codebook_health(cb, latents=z), codebook_health(z[:40], latents=2 * z)
    own = SpectrumDisplay.from_healths({"before": hb, "after": ha}, own_latents=True)
    assert [s.label.split(" (")[0] for s in own.series] == ["before", "latents", "after", "latents"]
    shared = SpectrumDisplay.from_healths({"before": hb, "after": ha}, own_latents=False)
    assert [s.kind for s in shared.series] == ["codes", "codes", "latents"]


def test_usage_plots_sorted_shares_and_says_when_absent(data):
    cb, z = data
    counts = torch.tensor([5.0, 0.0, 3.0, 2.0] + [0.0] * 36)
    d = UsageDisplay.from_health(codebook_health(cb, counts=counts))
    np.testing.assert_allclose(d.series[0].values[:4], [0.5, 0.3, 0.2, 0.0])
    assert d.series[0].values.sum() == pytest.approx(1.0) and d.used == [3]
    empty = UsageDisplay.from_health(codebook_health(cb)).plot()
    assert empty.series == [] and empty.missing == ["codes"]
    assert any("no usage information" in t.get_text() for t in empty.ax_.texts)


def test_pca_projection_matches_numpy(data):
    cb, z = data
    d = ProjectionDisplay.from_codebooks({"codes": cb}, z, max_points=5000)
    lat, codes = d.series
    zc = z.double().numpy() - z.double().numpy().mean(0)
    _, s, vt = np.linalg.svd(zc, full_matrices=False)
    ref = (cb.double().numpy() - z.double().numpy().mean(0)) @ vt[:2].T
    sign = np.sign((codes.values * ref).sum(0))  # principal directions are defined up to sign
    np.testing.assert_allclose(codes.values * sign, ref, atol=1e-8)
    np.testing.assert_allclose(d.explained, (s**2 / (s**2).sum())[:2], rtol=1e-8)
    assert lat.kind == "latents" and lat.values.shape == (900, 2) and d.basis == "latents"
    assert len(d.plot().collections_) == 2
    with pytest.raises(ValueError, match="'pca' or 'umap'"):
        ProjectionDisplay.from_codebooks({"codes": cb}, z, method="tsne")


def test_distances_nearest_code_matches_brute_force(data):
    cb, z = data
    d = DistanceDisplay.from_codebooks({"codes": cb}, z)
    by = {s.label: s.values for s in d.series}
    near = torch.cdist(z.double(), cb.double()).min(1).values.numpy()
    np.testing.assert_allclose(np.sort(by["latent to nearest code (codes)"]), np.sort(near), rtol=1e-6)
    assert by["pairwise code-code (codes)"].max() < by["pairwise latent-latent"].max()
    assert d.bins[0] == 0 and d.bins[-1] >= max(v.max() for v in by.values())
    no_lat = DistanceDisplay.from_codebooks({"codes": cb}, None)
    assert [s.label for s in no_lat.series] == [
        "pairwise code-code (codes)",
        "code to nearest other code (codes)",
    ]


def test_codebook_display_from_entry_and_on_user_axes(data):
    cb, z = data
    entry = analyze({"quantize.embedding.weight": cb}, latents=z, progress=False).entries[0]
    d = CodebookDisplay.from_entry(entry).plot()
    assert d.ax_.shape == (2, 2) and d.spectrum.ax_ is d.ax_[0, 0] and d.distances.ax_ is d.ax_[1, 1]
    assert "quantize" in d.figure_._suptitle.get_text()
    from matplotlib.figure import Figure

    fig = Figure()
    axes = fig.subplots(1, 4)
    d2 = CodebookDisplay.from_entry(entry).plot(ax=axes)
    assert d2.figure_ is fig and d2.usage.ax_ is axes[1]


def test_codebook_display_from_health_without_codebook(data):
    cb, z = data
    d = CodebookDisplay.from_health(codebook_health(cb, latents=z)).plot()
    assert d.projection is None and d.distances is None
    assert any("needs the codebook tensor" in t.get_text() for t in d.ax_[1, 0].texts)


def test_comparison_measures_each_codebook_on_its_own_encoders_latents():
    g = torch.Generator().manual_seed(0)
    z_before, z_after = torch.randn(400, 4, generator=g) * 0.2, torch.randn(400, 4, generator=g)
    before = analyze(
        {"quantize.embedding.weight": z_before[:32].clone()}, latents=z_before, progress=False
    ).entries[0]
    after = analyze(
        {"quantize.embedding.weight": z_after[:32].clone()}, latents=z_after, progress=False
    ).entries[0]
    d = CodebookDisplay.from_comparison(before, after)
    by = {s.label: s.values for s in d.distances.series}
    assert "pairwise latent-latent (before)" in by and "pairwise latent-latent" not in by
    ref = torch.cdist(z_before.double(), z_before[:32].double()).min(1).values.numpy()
    np.testing.assert_allclose(np.sort(by["latent to nearest code (before)"]), np.sort(ref), atol=1e-6)
    assert d.projection.basis == "latents of both encoders"
    # one shared latent set: one grey latent cloud and histogram
    same = analyze(
        {"quantize.embedding.weight": 0.1 * z_after[:32]}, latents=z_after, progress=False
    ).entries[0]
    d = CodebookDisplay.from_comparison(same, after)
    assert [s.label for s in d.distances.series if s.kind == "latents"] == ["pairwise latent-latent"]


def test_timeline_display_plots_every_logged_metric(tmp_path):
    rows = [
        {
            "step": s,
            "time": 0,
            "name": "vq",
            "scope": "window",
            "num_codes": 8,
            "dim": 2,
            "metrics": {"utilization": 0.1 * s, "dead_code_ratio": None},
            "warnings": [],
        }
        for s in (3, 1, 2)
    ]
    rows.append({"step": 2, "time": 0, "event": "defer_switch"})
    (tmp_path / "run.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    d = TimelineDisplay.from_timeline(read_timeline(str(tmp_path / "run.jsonl")))
    assert list(d.panels) == ["utilization"] and d.events == [(2, "defer_switch")]
    np.testing.assert_allclose(d.panels["utilization"][0].values, [[1, 0.1], [2, 0.2], [3, 0.3]])
    d.plot()
    assert d.axes_[0].get_title() == "utilization" and len(d.axes_[0].lines) == 2  # the series + the event


def test_computing_displays_needs_no_matplotlib():
    code = (
        "import sys, torch; from shrinkscope.metrics import codebook_health; "
        "from shrinkscope.report import SpectrumDisplay, UsageDisplay; "
        "h = codebook_health(torch.randn(16, 3), latents=torch.randn(50, 3)); "
        "SpectrumDisplay.from_health(h); UsageDisplay.from_health(h); "
        "sys.exit(3 if 'matplotlib' in sys.modules else 0)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


def test_new_figures_come_from_pyplot_only_when_the_user_imported_it(tmp_path):
    code = (
        "import sys, torch, matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt; "
        "from shrinkscope.analyze import analyze; from shrinkscope.report import UsageDisplay, "
        "write_analysis_report; from shrinkscope.metrics import codebook_health; "
        "UsageDisplay.from_health(codebook_health(torch.randn(16, 3), counts=torch.ones(16))).plot(); "
        "n = len(plt.get_fignums()); "
        "write_analysis_report(analyze({'vq.codebook': torch.randn(16, 3)}, progress=False), sys.argv[1]); "
        "sys.exit(0 if n == 1 and len(plt.get_fignums()) == 1 else 3)"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr


@pytest.mark.slow
def test_umap_projection(data):
    pytest.importorskip("umap")
    cb, z = data
    d = ProjectionDisplay.from_codebooks({"codes": cb}, z, method="umap", max_points=400)
    assert d.method == "umap" and d.explained is None
    assert [s.values.shape for s in d.series] == [(200, 2), (40, 2)]
    assert np.isfinite(np.concatenate([s.values for s in d.series])).all()

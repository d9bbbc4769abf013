"""Health by depth: one panel per residual or multi-scale quantizer (metrics against stage or scale) with its
depth summary beside it, in the analyze, compare and timeline reports.

Run: pytest tests/report/test_depth.py -q
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from shrinkscope.analyze import analyze, compare
from shrinkscope.report import (
    read_timeline,
    timeline_text,
    write_analysis_report,
    write_comparison_report,
    write_timeline_report,
)
from shrinkscope.report.depth import DepthDisplay
from shrinkscope.stages import as_rows, stage_groups

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the VAR look-alike

PNG = re.compile(r"<img alt='([^']*)' src='data:image/png;base64,")


def _rvq(shrink_last: float = 1.0, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    scales = (1.0, 1.0, shrink_last)
    return {f"enc.rvq.layers.{i}._codebook.embed": s * torch.randn(1, 32, 4, generator=g) for i, s in enumerate(scales)}


def _latents(seed: int = 1) -> torch.Tensor:
    return torch.randn(600, 4, generator=torch.Generator().manual_seed(seed))


def test_display_data_are_the_measured_metrics_per_stage():
    res = analyze(_rvq(0.05), latents=_latents(), progress=False)
    (group,) = stage_groups(res.codebooks)
    d = DepthDisplay.from_group(group)
    assert d.kind == "stage" and d.ticks == [(0, "0"), (1, "1"), (2, "2")]
    assert set(d.panels) >= {"utilization", "dead_code_ratio", "spread", "effective_rank", "quantization_error"}
    (rank_line,) = d.panels["effective_rank"]
    assert rank_line.values[:, 0].tolist() == [0, 1, 2]
    assert rank_line.values[:, 1].tolist() == pytest.approx([h.effective_rank for h in res.codebooks])
    spread = {s.label: s for s in d.panels["spread"]}
    assert spread["spread / latents"].values[:, 1].tolist() == pytest.approx([h.spread_ratio for h in res.codebooks])
    assert spread["spread / k-means"].style == "--"
    d.plot()
    assert len([ax for ax in d.axes_ if ax.get_visible()]) == len(d.panels)
    assert d.axes_[0].get_xlabel() == "stage"


def test_analysis_report_has_a_depth_panel_with_the_summary_beside_it(tmp_path):
    res = analyze(_rvq(0.05), latents=_latents(), progress=False)
    text = Path(write_analysis_report(res, str(tmp_path), umap=False)).read_text()
    assert "<h2>Health by depth</h2>" in text
    assert text.index("Health by depth") < text.index("<h2>enc.rvq.layers.0")  # after the verdicts, before details
    block = text[text.index("<div class='depth'>"):]
    assert "enc.rvq: health by stage" in PNG.findall(block)[0]
    (summary,) = [g.summary() for g in stage_groups(res.codebooks)]
    assert summary.split(";")[0] in block  # the sentence sits next to its panel
    assert (tmp_path / "depth_00.png").stat().st_size > 0
    plain = write_analysis_report(analyze({"quantize.embedding.weight": torch.randn(8, 4)}, progress=False),
                                  str(tmp_path / "plain"))
    assert "Health by depth" not in Path(plain).read_text()  # nothing to show: no empty section


def test_comparison_overlays_both_runs_per_quantizer(tmp_path):
    res = compare(_rvq(1.0), _rvq(0.05), latents=_latents(), progress=False)
    text = Path(write_comparison_report(res, str(tmp_path), umap=False)).read_text()
    assert "Health by depth" in text and "before: enc.rvq (3 stages)" in text and "after: enc.rvq (3 stages)" in text
    before, after = (stage_groups(r.codebooks)[0] for r in (res.before, res.after))
    d = DepthDisplay.from_groups({"before": before, "after": after})
    colors = {s.color for s in d.panels["effective_rank"]}
    assert len(colors) == 2 and {s.label for s in d.panels["effective_rank"]} == {"before", "after"}


def _log(path: Path, records: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records))
    return path


def test_timeline_depth_uses_the_last_record_of_each_stage(tmp_path):
    recs = [{"step": s, "time": 0.0, "name": f"rvq/layers.{i}", "scope": scope, "num_codes": 16, "dim": 4,
             "metrics": {"utilization": 0.1 * s + 0.01 * i + (0.5 if scope == "cumulative" else 0.0)},
             "warnings": []}
            for s in (1, 2, 3) for i in range(3) for scope in ("window", "cumulative")]
    tl = read_timeline(str(_log(tmp_path / "run.jsonl", recs)))
    text = Path(write_timeline_report(tl, str(tmp_path / "out"))).read_text()
    assert "Health by depth" in text and "rvq (3 stages): utilization 30% at stage 0 to 32% at stage 2" in text
    assert "(step 3)" in text
    assert "stages at the last logged step: rvq (3 stages)" in timeline_text(tl)


def test_timeline_scales_are_labelled_by_size_and_a_bad_scale_field_is_dropped(tmp_path):
    recs = [{"step": 5, "time": 0.0, "name": f"vae.quantize/scales.{i}", "scope": "window", "num_codes": 16,
             "dim": 4, "metrics": {"utilization": 0.2 * (i + 1)}, "warnings": [],
             "scale": {"index": i, "size": [p, p]}} for i, p in enumerate((1, 2, 4))]
    recs.append({**recs[0], "name": "other/scales.0", "scale": {"index": "x", "size": [1, 2, 3]}})
    recs.append({**recs[0], "name": "other/scales.1", "scale": "4x4"})
    tl = read_timeline(str(_log(tmp_path / "run.jsonl", recs)))
    assert tl.series[("other/scales.0", "window")][0]["scale"] is None
    groups = stage_groups(as_rows([rows[-1] for rows in tl.series.values()]))
    by = {g.quantizer: g for g in groups}
    assert by["vae.quantize"].kind == "scale" and by["vae.quantize"].sizes == ["1x1", "2x2", "4x4"]
    assert by["other"].sizes == [None, None]
    assert "utilization 20% at scale 0 (1x1) to 60% at scale 2 (4x4)" in by["vae.quantize"].summary()
    d = DepthDisplay.from_group(by["vae.quantize"])
    assert d.ticks == [(0, "1x1"), (1, "2x2"), (2, "4x4")] and d.kind == "scale"
    write_timeline_report(tl, str(tmp_path / "out"))


def test_live_var_lookalike_report_shows_scales(tmp_path):
    from var_lookalike import TinyVQVAE

    import shrinkscope

    torch.manual_seed(0)
    res = shrinkscope.analyze(TinyVQVAE(patch_nums=(1, 2, 3, 4)),
                              torch.rand(24, 3, 8, 8, generator=torch.Generator().manual_seed(0)), batch_size=8)
    text = Path(write_analysis_report(res, str(tmp_path), umap=False)).read_text()
    assert "quantize: health by scale" in text and "quantize (4 scales)" in text
    assert "K=32, D=4 &middot; scale 3, 4x4 tokens" in text
    assert json.loads((tmp_path / "health.json").read_text())["codebooks"][3]["scale"] == {"index": 3, "size": [4, 4]}

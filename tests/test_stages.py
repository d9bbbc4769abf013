"""Residual stages grouped by quantizer, and the one-line depth summary."""
from __future__ import annotations

import pytest
import torch

import shrinkscope
from shrinkscope.metrics import CodebookHealth
from shrinkscope.report import analysis_text
from shrinkscope.stages import depth_summary, stage_groups

vqp = pytest.importorskip("vector_quantize_pytorch")


def _h(name, util, dead=None, warn=()):
    h = CodebookHealth(name=name, num_codes=64, dim=8, utilization=util, dead_code_ratio=dead)
    h.warnings = [{"code": c, "message": c} for c in warn]
    return h


def test_grouping_by_quantizer_and_stage_order():
    hs = [_h("enc.rvq.layers.1", 0.5), _h("enc.rvq.layers.0", 0.9), _h("rvqs.0.layers.0", 0.8),
          _h("rvqs.0.layers.1", 0.7), _h("rvqs.1.layers.0", 0.6), _h("RVQ/quantizers.0", 0.5),
          _h("RVQ/quantizers.1", 0.4), _h("other.codebook", 0.3), _h("solo.layers.0", 0.2)]
    groups = stage_groups(hs)
    assert [(g.quantizer, g.stages) for g in groups] == [("enc.rvq", [0, 1]), ("rvqs.0", [0, 1]), ("RVQ", [0, 1])]
    assert [r["name"] for r in groups[0].rows()] == ["enc.rvq.layers.0", "enc.rvq.layers.1"]
    assert stage_groups([_h("layers.0", 0.5), _h("layers.1", 0.4)])[0].quantizer == ""


def test_summary_names_the_trend_the_worst_stage_and_the_first_warning():
    hs = [_h("rvq.layers.0", 0.91, 0.0), _h("rvq.layers.1", 0.30, 0.5, ["dead_codes", "low_utilization"]),
          _h("rvq.layers.2", 0.62, 0.2, ["dead_codes"])]
    (line,) = depth_summary(hs)
    assert line.startswith("rvq (3 stages): ")
    assert "utilization 91% at stage 0 to 62% at stage 2 (lowest 30% at stage 1)" in line
    assert "dead codes 0% at stage 0 to 20% at stage 2 (highest 50% at stage 1)" in line
    assert "first warning at stage 1 (dead_codes, low_utilization); 2 of 3 stages warn" in line
    assert "spread ratio" not in line  # not measured: not mentioned
    assert depth_summary([_h("rvq.layers.0", 0.9), _h("rvq.layers.1", 0.8)])[0].endswith("no stage warns")
    assert depth_summary([_h("vq", 0.9)]) == []


def test_analysis_text_has_a_depth_line_for_a_real_residual_vq():
    torch.manual_seed(0)
    rvq = vqp.ResidualVQ(dim=8, codebook_size=32, num_quantizers=3)
    rvq(torch.randn(2, 64, 8))
    result = shrinkscope.analyze(rvq, torch.randn(10, 32, 8))
    text = analysis_text(result)
    util = [h.utilization for h in result.codebooks]
    assert "Residual stages:" in text and "(3 stages)" in text
    assert f"utilization {util[0]:.0%} at stage 0 to {util[2]:.0%} at stage 2" in text

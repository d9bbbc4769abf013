"""Each kind of report, rendered in headless Chromium as a person would open it.

Fails on a blank page, console errors, broken images or horizontal overflow of the main column, at a
desktop and a phone width. Skipped when no Chromium binary exists (CI installs Debian's ``chromium``).
Run: pytest tests/report/test_browser.py -q
"""

from __future__ import annotations

import json

import pytest
import torch

from browser_probe import find_chromium, probe
from shrinkscope.analyze import analyze, compare
from shrinkscope.report import (
    read_timeline,
    write_analysis_report,
    write_comparison_report,
    write_timeline_report,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        find_chromium() is None,
        reason="no chromium binary (apt-get install chromium, or set SHRINKSCOPE_CHROMIUM)",
    ),
]
LONG = "model.tokenizer.residual_quantizer_with_a_deliberately_long_module_name"


def _reports(root):
    """One report of each kind, with long names and several codebooks to provoke overflow."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1500, 8, generator=g)
    rvq = {
        f"{LONG}.layers.{i}._codebook.embed": (0.05 if i == 0 else 1.0) * torch.randn(1, 64, 8, generator=g)
        for i in range(3)
    }
    good = {"quantize.embedding.weight": z[:64].clone()}
    bad = {"quantize.embedding.weight": 0.05 * torch.randn(64, 8, generator=g)}
    log = root / "run.jsonl"
    lines = [
        json.dumps(
            {
                "step": s,
                "time": 0.0,
                "name": f"{LONG}.layers.{i}",
                "scope": scope,
                "num_codes": 64,
                "dim": 8,
                "metrics": {
                    "spread_ratio": 0.1 * s + i,
                    "utilization": 0.05 * s,
                    "dead_code_ratio": 1 / s,
                    "effective_rank": 2.0 + s,
                },
                "warnings": [{"code": "dead_codes", "message": "x" * 300}] if s == 9 else [],
            }
        )
        for s in range(1, 10)
        for i in range(2)
        for scope in ("window", "cumulative")
    ]
    lines.append(json.dumps({"step": 5, "time": 0.0, "event": "defer_switch"}))
    log.write_text("\n".join(lines))
    return {
        "analyze": write_analysis_report(analyze(rvq, latents=z, progress=False), str(root / "analyze")),
        "compare": write_comparison_report(
            compare(bad, good, latents=z, progress=False), str(root / "compare")
        ),
        "timeline": write_timeline_report(read_timeline(str(log)), str(root / "timeline")),
        # residual stages before and after: the "Health by depth" overlay with its summaries beside it
        "compare_stages": write_comparison_report(
            compare({k: 0.3 * v for k, v in rvq.items()}, rvq, latents=z, progress=False),
            str(root / "compare_stages"),
        ),
    }


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    return _reports(tmp_path_factory.mktemp("browser"))


@pytest.mark.parametrize("width", [1280, 500])  # 500: headless Chromium's narrowest window
@pytest.mark.parametrize("kind", ["analyze", "compare", "timeline", "compare_stages"])
def test_report_renders_cleanly(reports, kind, width):
    found = probe(reports[kind], width=width)
    assert found["text"] > 300, "blank page"
    assert found["images"] >= 1 and found["broken"] == [], found["broken"]
    assert found["errors"] == [] and found["console"] == [], found["errors"] + found["console"]
    assert found["overflow"] == [], found["overflow"]


def test_probe_sees_what_a_person_would(tmp_path):
    """The checks above can fail: a page with each fault is caught."""
    page = tmp_path / "bad.html"
    page.write_text(
        "<!doctype html><html><head></head><body><main style='max-width:300px'><p>text</p>"
        "<img alt='missing' src='data:image/png;base64,AAAA'>"
        "<div style='width:900px'>wide</div><script>console.error('boom'); console.log('logged')</script>"
        "</main></body></html>"
    )
    found = probe(page, width=800)
    assert found["broken"] == ["missing"]
    assert any("boom" in e for e in found["errors"]) and any("logged" in c for c in found["console"])
    assert any("past the main column" in o for o in found["overflow"])

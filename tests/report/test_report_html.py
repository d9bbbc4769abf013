"""HTML reports of analyze, compare and the training timeline: one layout, verdict first.

Run: pytest tests/report -q
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest
import torch

from shrinkscope.analyze import analyze, compare
from shrinkscope.report import (
    analysis_text,
    comparison_text,
    read_timeline,
    write_analysis_report,
    write_comparison_report,
    write_timeline_report,
)
from shrinkscope.report.layout import change_class, change_table, metric_table
from shrinkscope.report.verdict import reason_passes, verdict_card

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SHRUNK = {
    "status": "shrunk",
    "evidence": ["codes", "usage", "latents"],
    "summary": "Shrunk (codes and latents): the live codes span 0.21x the spread of k-means.",
    "reasons": [
        {
            "code": "shrinkage",
            "metric": "spread_vs_kmeans",
            "value": 0.21,
            "reference": 2.5,
            "reference_name": "k-means, same K, on these latents",
            "threshold": 0.75,
            "direction": "min",
        },
        {
            "code": "excess_distortion",
            "metric": "excess_distortion",
            "value": 1.9,
            "reference": 0.4,
            "reference_name": "k-means, same K, on these latents, held-out rows",
            "threshold": 1.0,
            "direction": "max",
        },
    ],
    "missing": [
        {
            "input": "labels",
            "why": "mode-level shrinkage needs the data mode of each latent",
            "how": "pass --labels FILE",
        }
    ],
}


def _checkpoints():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1200, 6, generator=g)
    good = {"quantize.embedding.weight": z[:48].clone()}
    bad = {
        "quantize.embedding.weight": 0.05 * torch.randn(48, 6, generator=g),
        "quantize.embedding.cluster_size": torch.rand(48, generator=g),
    }
    return z, good, bad


def _read(path: str) -> str:
    return Path(path).read_text(encoding="utf-8")


def _sections(page: str) -> list[str]:
    return re.findall(r"<section[^>]*><h2>([^<]*)</h2>", page)


def test_analysis_report_is_self_contained_and_verdict_first(tmp_path):
    z, _, bad = _checkpoints()
    res = analyze(bad, latents=z, progress=False)
    v = res.entries[0].health.verdict
    assert v.status == "shrunk" and v.reasons and v.missing  # what the card below must show
    page = _read(write_analysis_report(res, str(tmp_path)))
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["00_quantize.png"]  # no UMAP unless asked
    assert (tmp_path / "00_quantize.png").read_bytes()[:8] == PNG_MAGIC
    assert page.count("data:image/png;base64,") == 1 and "<script" not in page
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", page)  # nothing fetched offline
    assert _sections(page) == ["Verdict", "quantize"]
    card = html.unescape(re.sub("<[^>]+>", "", page[page.index("id='verdict'") : page.index("id='cb-00'")]))
    # status and summary, each deciding measurement against its threshold and reference, what is missing
    assert "Shrunk" in card and v.summary in card
    for r in v.reasons:
        side = "\u2265" if r["direction"] == "min" else "\u2264"
        assert f"{r['metric']} = {r['value']:.3g}" in card and f"(must be {side} {r['threshold']:.3g})" in card
        assert r["reference_name"] in card
    assert "against k-means, same K, on these latents" in card and "its spread = " in card
    for m in v.missing:
        assert m["how"] in card
    assert "\u2713 latents" in card and "\u2717 labels" in card and "\u2713 usage" in card
    assert page.index("<img") < page.index("<table class='metrics'>")  # plots, then the table
    assert json.loads((tmp_path / "health.json").read_text()) == json.loads(json.dumps(res.to_dict()))


def test_full_metric_table_is_vertical_with_which_way_is_good():
    res = analyze({"vq.codebook": torch.randn(40, 5)}, progress=False)
    table = metric_table(res.codebooks[0].metrics)
    rows = re.findall(
        r"<tr><td class='key'><code>(\w+)</code></td><td class='num'>([^<]*)</td><td>([^<]*)</td>", table
    )
    assert [r[0] for r in rows] == list(res.codebooks[0].metrics)
    good = {k: g for k, _, g in rows}
    assert good["dead_code_ratio"] == "lower" and good["effective_rank"] == "higher"
    assert dict((k, v) for k, v, _ in rows)["latent_coverage"] == "&ndash;"  # absent input: a dash


def test_report_without_latents_or_usage_or_verdict(tmp_path):
    res = analyze({"vq.codebook": torch.randn(40, 5)}, progress=False)
    page = _read(write_analysis_report(res, str(tmp_path)))
    assert (tmp_path / "00_vq.png").stat().st_size > 10_000
    assert "none (pass --latents FILE)" in page
    text = analysis_text(res)
    assert "codebook" in text.splitlines()[2] and "Verdict:" in text and "--latents" in text


def test_verdict_card_tolerates_unknown_status_and_missing_fields():
    card = verdict_card("vq", {"status": "brand_new_status", "summary": "s", "reasons": [{"metric": "m"}]})
    assert "Brand new status" in card and "tone-neutral" in card and "&ndash;" in card
    card = html.unescape(verdict_card("vq", dict(SHRUNK, evidence=["codes", "latents"])))
    assert "\u2713 usage (from latents)" in card  # usage assigned from the latents counts as present
    assert reason_passes(SHRUNK["reasons"][0]) is False and reason_passes(SHRUNK["reasons"][1]) is False
    assert reason_passes({"value": 2.0, "threshold": 1.0, "direction": "min"}) is True
    assert reason_passes({"value": 2.0}) is None
    with pytest.raises(TypeError, match="Verdict"):
        verdict_card("vq", 3.5)


def test_change_is_coloured_by_each_metrics_direction():
    assert change_class("spread_ratio", 0.1, 0.9) == "better"
    assert change_class("dead_code_ratio", 0.1, 0.9) == "worse"
    assert change_class("quantization_error", 0.9, 0.1) == "better"
    assert change_class("latent_effective_rank", 3.0, 5.0) == ""  # context, no direction
    assert change_class("utilization", 0.5, 0.5) == "same" and change_class("utilization", None, 0.5) == ""
    table = change_table(
        {"dead_code_ratio": 0.5, "utilization": 0.2}, {"dead_code_ratio": 0.1, "utilization": 0.1}
    )
    assert "class='num better'>-0.4 better<" in table and "class='num worse'>-0.1 worse<" in table


def test_comparison_report_side_by_side(tmp_path):
    z, good, bad = _checkpoints()
    res = compare(bad, good, latents=z, progress=False)
    assert [e.health.verdict.status for e in res.pairs[0]] == ["shrunk", "healthy"]
    page = _read(write_comparison_report(res, str(tmp_path)))
    assert (tmp_path / "00_quantize_compare.png").read_bytes()[:8] == PNG_MAGIC
    assert _sections(page) == ["Verdict", "quantize"] and page.count("data:image/png;base64,") == 1
    pair = re.search(r"<div class='pair'>(.*?)</div></section>", page, re.S).group(1)
    assert pair.index("before") < pair.index("Shrunk") < pair.index("after") < pair.index("Healthy")
    assert "Shrunk &rarr; Healthy <span class='better'>(better)</span>" in page
    spread = re.search(r"<code>spread_ratio</code>.*?</tr>", page).group(0)
    assert "class='num better'" in spread
    text = comparison_text(res)
    assert "spread_ratio" in text and "shrunk -> healthy" in text


def _log(tmp_path, verdict=None):
    rows = []
    for step in (1, 2, 3):
        rows.append(
            {
                "step": step,
                "time": 0.0,
                "name": "vq",
                "scope": "window",
                "num_codes": 16,
                "dim": 4,
                "metrics": {"spread_ratio": 0.2 * step, "dead_code_ratio": 0.5 / step},
                "warnings": [{"code": "dead_codes", "message": "50% dead"}] if step == 1 else [],
            }
        )
    if verdict:
        rows[-1]["verdict"] = verdict
    rows.append({"step": 2, "time": 0.0, "event": "defer_switch"})
    (tmp_path / "run.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return read_timeline(str(tmp_path / "run.jsonl"))


def test_timeline_report_has_the_same_layout(tmp_path):
    page = _read(write_timeline_report(_log(tmp_path, verdict=SHRUNK), str(tmp_path / "a")))
    assert _sections(page) == ["Verdict at the last logged step", "Timeline", "First and last logged values"]
    assert "class='card tone-bad'" in page and "spread_vs_kmeans" in page and "defer_switch at step 2" in page
    spread = re.search(r"<code>spread_ratio</code>.*?</tr>", page).group(0)
    dead = re.search(r"<code>dead_code_ratio</code>.*?</tr>", page).group(0)
    assert "step 1" in page and "class='num better'" in spread and "class='num better'" in dead
    assert (tmp_path / "a" / "timeline.png").read_bytes()[:8] == PNG_MAGIC
    # a log without verdicts shows the last warnings instead (none here) and says so
    page = _read(write_timeline_report(_log(tmp_path), str(tmp_path / "b")))
    assert "No verdict recorded" in page and "No verdict" in html.unescape(page)


def test_one_layout_for_the_three_pages(tmp_path):
    z, good, bad = _checkpoints()
    pages = [
        _read(write_analysis_report(analyze(bad, latents=z, progress=False), str(tmp_path / "a"))),
        _read(write_comparison_report(compare(bad, good, latents=z, progress=False), str(tmp_path / "c"))),
        _read(write_timeline_report(_log(tmp_path), str(tmp_path / "t"))),
    ]
    for page in pages:
        assert (
            page.index("<header><h1>")
            < page.index("id='verdict'")
            < page.index("<img")
            < page.index("<table class='metrics'>")
        )
        assert "<th>good</th>" in page and "class='card tone-" in page and "class='meta'" in page


@pytest.mark.slow
def test_umap_only_when_asked(tmp_path):
    pytest.importorskip("umap")
    z, _, bad = _checkpoints()
    res = analyze(bad, latents=z, progress=False)
    page = _read(write_analysis_report(res, str(tmp_path), umap=True))
    assert (tmp_path / "00_quantize_umap.png").read_bytes()[:8] == PNG_MAGIC
    assert page.count("data:image/png;base64,") == 2 and "UMAP of quantize" in page

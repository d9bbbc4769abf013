"""``shrinkscope report RUN.jsonl``: parsing and timeline plots.  Run: pytest tests/report -q"""

from __future__ import annotations

import json

import pytest
import torch

from shrinkscope.cli import main
from shrinkscope.report import TimelineError, read_timeline


def _line(step, name="vq", scope="window", ratio=0.5, **extra):
    metrics = {"spread_ratio": ratio, "utilization": 0.1 * step, "dead_code_ratio": None}
    return json.dumps(
        {
            "step": step, "time": 0.0, "name": name, "scope": scope, "num_codes": 16, "dim": 4,
            "metrics": metrics, "warnings": [], **extra
        }
    )


def test_parse_series_events_and_partial_last_line(tmp_path):
    lines = [
        _line(2, ratio=0.2), _line(1, ratio=0.1), _line(1, scope="cumulative"),
        json.dumps({"step": 2, "time": 0.0, "event": "defer_switch", "reason": "plateau"}), '{"step": 3, "ti'
    ]
    (tmp_path / "run.jsonl").write_text("\n".join(lines))
    tl = read_timeline(str(tmp_path / "run.jsonl"))
    assert sorted(tl.series) == [("vq", "cumulative"), ("vq", "window")]
    assert tl.values(("vq", "window"), "spread_ratio") == ([1, 2], [0.1, 0.2])  # sorted by step
    assert tl.values(("vq", "window"), "dead_code_ratio") == ([], [])  # nulls are gaps
    assert [e["event"] for e in tl.events] == ["defer_switch"] and tl.skipped_last_line


@pytest.mark.parametrize(
    "content,fragment",
    [
        ("", "is empty"), ("{bad json\n" + _line(1), ":1: not a shrinkscope"),
        (json.dumps({"step": 1, "event": "x"}), "no metric lines")
    ],
)
def test_bad_logs(tmp_path, content, fragment):
    (tmp_path / "run.jsonl").write_text(content)
    with pytest.raises(TimelineError, match=fragment):
        read_timeline(str(tmp_path / "run.jsonl"))


def test_report_from_a_real_watch_log(tmp_path, capsys):
    vqp = pytest.importorskip("vector_quantize_pytorch")
    from shrinkscope import watch

    torch.manual_seed(0)
    model = torch.nn.ModuleDict(
        {"enc": torch.nn.Linear(8, 8), "vq": vqp.VectorQuantize(dim=8, codebook_size=16)}
    )
    log = tmp_path / "run.jsonl"
    with watch(model, every=2, log_to=str(log)) as mon:
        for i in range(8):
            model["vq"](model["enc"](torch.randn(2, 30, 8)))
            if i == 3:
                mon.log_event("defer_switch")
    assert main(["report", str(log), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "vq" in out and "defer_switch@" in out
    assert (tmp_path / "out" / "timeline.png").stat().st_size > 10_000
    assert "data:image/png;base64," in (tmp_path / "out" / "report.html").read_text()

"""``report RUN.jsonl`` reads its log in one streaming pass with bounded memory.

References: a plain ``json.loads`` of every line (the whole file in memory) for what the series must hold; the
memory bound is checked by tracemalloc at two log lengths (the peak must not grow with the file).
"""
from __future__ import annotations

import itertools
import json
import subprocess
import sys
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shrinkscope.report import TimelineError, read_timeline, runlog, timeline_text


def _write_log(path, steps: int, *, names=("vq", "rvq/layers.0"), events_every: int = 0) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for i in range(steps):
            f.writelines(json.dumps({
                    "step": i, "time": 0.0, "name": name, "scope": "window", "num_codes": 16, "dim": 4,
                    "metrics": {"spread_ratio": 0.5 + i / steps, "utilization": (i % 7) / 7, "dead_code_ratio": None},
                    "warnings": [{"code": "dead_codes", "message": f"step {i}"}],
                    **({"verdict": {"status": "shrunk", "summary": f"at {i}"}} if i == steps - 1 else {}),
                }) + "\n" for name in names)
            if events_every and i % events_every == 0:
                f.write(json.dumps({"step": i, "time": 0.0, "event": "defer_switch"}) + "\n")


def _peak_mb(path) -> float:
    tracemalloc.start()
    try:
        read_timeline(str(path))
        return tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_log(tmp_path):
    small, large = tmp_path / "small.jsonl", tmp_path / "large.jsonl"
    _write_log(small, 5_000)
    _write_log(large, 40_000)  # 80,000 metric lines, ~13 MB
    peak_small, peak_large = _peak_mb(small), _peak_mb(large)
    # the whole large file parsed into dicts takes ~100 MB; the streaming reader keeps a few MB for any length
    assert peak_large < 8 and peak_large < 1.5 * peak_small + 1, (peak_small, peak_large)
    tl = read_timeline(str(large))
    assert tl.lines == 80_000 and tl.thinned
    assert all(len(rows) <= runlog.MAX_POINTS + 2 for rows in tl.series.values())


def test_thinned_series_keep_first_last_and_evenly_spaced_records(tmp_path, monkeypatch):
    monkeypatch.setattr(runlog, "MAX_POINTS", 64)
    path = tmp_path / "run.jsonl"
    _write_log(path, 1_000, events_every=100)
    every = [json.loads(ln) for ln in path.read_text().splitlines()]  # the reference: everything in memory
    tl = read_timeline(str(path))
    rows = tl.series[("vq", "window")]
    steps = [r["step"] for r in rows]
    assert steps[0] == 0 and steps[-1] == 999 and len(rows) <= 64 + 2
    gaps = {b - a for a, b in itertools.pairwise(steps[:-1])}  # evenly spaced, apart from the appended last one
    assert len(gaps) == 1
    ref = {r["step"]: r for r in every if r.get("name") == "vq"}
    for r in rows:
        assert r["metrics"]["spread_ratio"] == ref[r["step"]]["metrics"]["spread_ratio"]
    assert rows[-1]["verdict"] == ref[999]["verdict"] and rows[-1]["warnings"] == ref[999]["warnings"]
    assert rows[0]["warnings"] == ref[0]["warnings"]  # first and last are whole records
    assert [e["step"] for e in tl.events] == list(range(0, 1000, 100))
    assert "evenly spaced subset" in timeline_text(tl)


def test_out_of_order_steps_give_the_smallest_and_largest_step_as_first_and_last(tmp_path, monkeypatch):
    monkeypatch.setattr(runlog, "MAX_POINTS", 4)
    path = tmp_path / "run.jsonl"
    steps = [5, 3, 9, 1, 7, 9, 2, 8, 4, 6]
    path.write_text("\n".join(json.dumps({"step": s, "name": "vq", "metrics": {"utilization": s / 10},
                                          "warnings": [], "tag": i}) for i, s in enumerate(steps)) + "\n")
    rows = read_timeline(str(path)).series[("vq", "window")]
    assert rows[0]["step"] == 1 and rows[-1]["step"] == 9 and rows[-1]["tag"] == 5  # the later of the two 9s
    assert [r["step"] for r in rows] == sorted(r["step"] for r in rows)


def _cli(path, out):
    return subprocess.run([sys.executable, "-m", "shrinkscope.cli", "report", str(path), "--out", str(out)],
                          capture_output=True, text=True, timeout=300, check=False)


def test_a_malformed_line_is_one_clear_line_and_exit_2(tmp_path):
    path = tmp_path / "run.jsonl"
    _write_log(path, 50)
    lines = path.read_text().splitlines()
    lines.insert(30, '{"step": 3, "name": "vq", "metrics": {')  # damaged, with lines after it
    path.write_text("\n".join(lines) + "\n")
    proc = _cli(path, tmp_path / "out")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "run.jsonl:31: not a shrinkscope JSONL line" in proc.stderr
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_a_damaged_last_line_is_skipped_and_reported(tmp_path):
    path = tmp_path / "run.jsonl"
    _write_log(path, 20)
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"step": 20, "name": "vq", "metr')
    tl = read_timeline(str(path))
    assert tl.skipped_last_line and tl.lines == 40


@pytest.mark.parametrize("case,fragment", [("long", "longer than"), ("series", r"jsonl:4: more than 3 \(codebook, scope\)")])
def test_unbounded_inputs_are_refused_with_the_line(tmp_path, monkeypatch, case, fragment):
    path = tmp_path / "run.jsonl"
    if case == "long":
        monkeypatch.setattr(runlog, "MAX_LINE", 1000)
        path.write_text(json.dumps({"step": 1, "name": "vq", "metrics": {"x": "y" * 2000}}) + "\n")
    else:
        monkeypatch.setattr(runlog, "MAX_SERIES", 3)
        _write_log(path, 2, names=("a", "b", "c", "d"))
    with pytest.raises(TimelineError, match=fragment):
        read_timeline(str(path))


def test_events_beyond_the_cap_are_counted(tmp_path, monkeypatch):
    monkeypatch.setattr(runlog, "MAX_EVENTS", 3)
    path = tmp_path / "run.jsonl"
    _write_log(path, 10, events_every=1)
    tl = read_timeline(str(path))
    assert len(tl.events) == 3 and tl.events_dropped == 7


def test_the_report_of_a_long_log_says_how_many_lines_it_had(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "run.jsonl"
    _write_log(path, 3_000)
    proc = _cli(path, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    page = (tmp_path / "out" / "report.html").read_text()
    assert "6000 metric lines" in page and "evenly spaced" in page


def test_whole_records_and_events_keep_only_what_the_page_shows(tmp_path):
    path = tmp_path / "run.jsonl"
    metrics = {"utilization": 0.5, **{f"x{i}": float(i) for i in range(500)}}
    warnings = [{"code": "dead_codes", "message": "m" * 1500}] * 100
    path.write_text(json.dumps({"step": 1, "name": "vq", "metrics": metrics, "warnings": warnings}) + "\n"
                    + json.dumps({"step": 1, "event": "defer_switch", "payload": "p" * 10_000}) + "\n")
    tl = read_timeline(str(path))
    (row,) = tl.series[("vq", "window")]
    assert row["metrics"]["utilization"] == 0.5 and len(row["metrics"]) == 1 + runlog.MAX_EXTRA_METRICS
    assert len(row["warnings"]) == runlog.MAX_WARNINGS and len(row["warnings"][0]["message"]) == 1000
    assert tl.events == [{"step": 1, "event": "defer_switch"}]


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(steps=st.lists(st.integers(-5, 40), min_size=1, max_size=120), cap=st.integers(2, 9))
def test_thinning_keeps_a_sorted_subset_with_both_ends(tmp_path_factory, steps, cap):
    path = tmp_path_factory.mktemp("thin") / "run.jsonl"
    path.write_text("".join(json.dumps({"step": s, "name": "vq", "metrics": {"utilization": i}}) + "\n"
                            for i, s in enumerate(steps)))
    old, runlog.MAX_POINTS = runlog.MAX_POINTS, cap
    try:
        tl = read_timeline(str(path))
    finally:
        runlog.MAX_POINTS = old
    rows = tl.series[("vq", "window")]
    order = [r["metrics"]["utilization"] for r in rows]  # each record's position in the file
    # what a stable sort of every record by step gives first and last
    ref = sorted(range(len(steps)), key=lambda i: steps[i])
    assert order[0] == ref[0] and order[-1] == ref[-1]
    assert [r["step"] for r in rows] == sorted(r["step"] for r in rows)
    assert len(set(order)) == len(order) and len(rows) <= cap + 2 and tl.lines == len(steps)
    assert tl.thinned == (len(steps) > cap)

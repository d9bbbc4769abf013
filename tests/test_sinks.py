"""Sinks: JSONL lines (schema, NaN -> null), TensorBoard scalars, callables, logging, normalisation."""
from __future__ import annotations

import json
import logging

import pytest

from shrinkscope.sinks import CallableSink, JSONLSink, LoggingSink, TensorBoardSink, make_sinks

RECORD = {"step": 5, "time": 1.5, "name": "quantize", "scope": "window", "num_codes": 8, "dim": 2,
          "metrics": {"utilization": 0.5, "spread_ratio": float("nan"), "effective_rank": None},
          "warnings": [{"code": "dead_codes", "message": "50% of the 8 codes are dead"}]}


def test_jsonl_sink_writes_one_clean_object_per_line(tmp_path):
    path = tmp_path / "deep" / "run.jsonl"
    s = JSONLSink(path)
    assert not path.exists()  # opened lazily (ranks other than 0 never create it)
    s.write(RECORD)
    s.write({"step": 6, "time": 2.0, "event": "switch", "value": 3})
    s.close()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines[0]["metrics"] == {"utilization": 0.5, "spread_ratio": None, "effective_rank": None}
    assert lines[0]["warnings"][0]["code"] == "dead_codes"
    assert lines[1] == {"step": 6, "time": 2.0, "event": "switch", "value": 3}


class FakeWriter:
    def __init__(self):
        self.scalars, self.texts = [], []

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def add_text(self, tag, text, step):
        self.texts.append((tag, text, step))


def test_tensorboard_sink_logs_finite_metrics_and_events():
    w = FakeWriter()
    s = TensorBoardSink(w)
    s.write(RECORD)
    s.write({"step": 6, "time": 2.0, "event": "switch"})
    assert w.scalars == [("shrinkscope/quantize/window/utilization", 0.5, 5)]
    assert w.texts and w.texts[0][0] == "shrinkscope/events" and "switch" in w.texts[0][1]


def test_tensorboard_sink_with_real_writer(tmp_path):
    pytest.importorskip("tensorboard")
    s = TensorBoardSink(tmp_path / "tb")
    s.write(RECORD)
    s.close()
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())


def test_callable_and_logging_sinks(caplog):
    got = []
    CallableSink(got.append).write(RECORD)
    assert got == [RECORD]
    with caplog.at_level(logging.INFO, logger="shrinkscope"):
        LoggingSink().write(RECORD)
        LoggingSink().write(dict(RECORD, scope="cumulative"))  # warnings logged once, for the window
        LoggingSink().write({"step": 1, "time": 0.0, "event": "switch"})
    warn = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warn) == 1 and "dead_codes" in warn[0].getMessage()
    assert any(r.levelno == logging.INFO and "switch" in r.getMessage() for r in caplog.records)


def test_make_sinks_normalises_everything(tmp_path):
    sinks = make_sinks(tmp_path / "a.jsonl", [FakeWriter(), print, str(tmp_path / "b.jsonl")])
    assert [type(s).__name__ for s in sinks] == ["JSONLSink", "TensorBoardSink", "CallableSink", "JSONLSink",
                                                 "LoggingSink"]
    assert [type(s).__name__ for s in make_sinks(None, print, log_warnings=False)] == ["CallableSink"]
    with pytest.raises(TypeError, match="sinks"):
        make_sinks(None, [3])
    with pytest.raises(TypeError):
        TensorBoardSink(object())

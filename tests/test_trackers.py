"""Trackers for real, offline and local: W&B in offline mode and MLflow on a local file store.

Every value a tracker receives is checked against the JSONL sink of the same monitor (the reference record),
and the usage curve against the monitor's own counts.
"""
from __future__ import annotations

import json

import pytest
import torch

from shrinkscope import watch
from shrinkscope.sinks import usage_curve

vqp = pytest.importorskip("vector_quantize_pytorch")


def _train(sinks, tmp_path, steps=4, every=2):
    torch.manual_seed(0)
    vq = vqp.VectorQuantize(dim=4, codebook_size=600)  # K > 512: more codes than a W&B histogram has bins
    m = watch(vq, every=every, sinks=sinks, log_to=tmp_path / "ref.jsonl", log_warnings=False)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        vq(torch.randn(2, 64, 4, generator=g))
    counts = m.counts("VectorQuantize")
    m.log_event("switch", note="test")
    m.remove()
    recs = [json.loads(x) for x in (tmp_path / "ref.jsonl").read_text().splitlines()]
    return recs, counts


def test_usage_curve_matches_sorted_shares():
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(5000, dtype=torch.int64)
    counts[:700] = torch.randint(1, 50, (700,), generator=g)
    ranks, shares = usage_curve(counts, max_points=64)
    ref = sorted((counts.double() / counts.sum()).tolist(), reverse=True)  # slow obvious reference
    assert ranks[0] == 1 and ranks[-1] == 5000 and 700 in ranks and 701 in ranks
    assert shares == [ref[r - 1] for r in ranks]
    assert len(ranks) <= 64 + 3 and ranks == sorted(set(ranks))
    assert usage_curve(torch.zeros(8)) == ([], [])
    assert usage_curve(torch.tensor([3, 1]), max_points=512) == ([1, 2], [0.75, 0.25])


def test_wandb_offline(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from shrinkscope.integrations.wandb import WandbSink

    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = wandb.init(project="shrinkscope-test", mode="offline", dir=str(tmp_path))
    try:
        recs, counts = _train([WandbSink(run)], tmp_path)
        summary = {k: run.summary[k] for k in run.summary.keys()}  # noqa: SIM118 - a Summary iterates by index
        run_dir = run.dir
    finally:
        run.finish()
        wandb.teardown()  # stop W&B's service and its threads: nothing of it outlives the test
    last = {r["scope"]: r for r in recs if "metrics" in r and r["step"] == 4}
    for scope, r in last.items():
        for key, value in r["metrics"].items():
            if value is not None:
                assert summary[f"shrinkscope/VectorQuantize/{scope}/{key}"] == pytest.approx(value, rel=1e-12)
    assert summary["shrinkscope/step"] == 4
    # usage as a line plot: one table per report, the last one is the exact curve of the counts so far
    tables = sorted((tmp_path / "wandb").glob("offline-run-*/files/media/table/shrinkscope/VectorQuantize/usage*.json"),
                    key=lambda p: int(p.name.split("_")[2]))
    assert len(tables) == 2 and run_dir
    data = json.loads(tables[-1].read_text())
    ranks, shares = usage_curve(counts)
    assert data["columns"] == ["code rank", "share"]
    assert [row[0] for row in data["data"]] == ranks
    assert [row[1] for row in data["data"]] == pytest.approx(shares, rel=1e-12)
    assert len(ranks) > 2 and ranks[-1] == 600


def test_wandb_needs_a_run():
    pytest.importorskip("wandb")
    from shrinkscope.integrations.wandb import WandbSink

    with pytest.raises(ValueError, match="usage_scope"):
        WandbSink(usage_scope="all")
    with pytest.raises(RuntimeError, match="wandb.init"):
        WandbSink().write({"step": 1, "event": "x"})


def test_mlflow_local_file_store(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store behind this switch
    from mlflow.tracking import MlflowClient

    from shrinkscope.integrations.mlflow import MLflowSink, metric_key

    mlflow.set_tracking_uri((tmp_path / "mlruns").as_uri())
    try:
        with mlflow.start_run() as run:
            recs, counts = _train([MLflowSink()], tmp_path)
        client = MlflowClient()
        run_id = run.info.run_id
        for scope in ("window", "cumulative"):
            for key in ("utilization_perplexity", "dead_code_ratio", "spread_ratio"):
                hist = client.get_metric_history(run_id, metric_key("shrinkscope", "VectorQuantize", scope, key))
                ref = [(r["step"], r["metrics"][key]) for r in recs if r.get("scope") == scope]
                got = sorted((m.step, m.value) for m in hist)
                assert [s for s, _ in got] == [s for s, _ in ref] == [2, 4]
                assert [v for _, v in got] == pytest.approx([v for _, v in ref], rel=1e-12)
        art = tmp_path / "mlruns" / run.info.experiment_id / run_id / "artifacts" / "shrinkscope"
        usage = json.loads((art / "usage" / "VectorQuantize" / "step_00000004.json").read_text())
        assert usage["counts"] == counts.tolist()
        assert json.loads((art / "events.json").read_text())["events"][0]["event"] == "switch"
        tags = client.get_run(run_id).data.tags
        assert set(tags["shrinkscope/VectorQuantize/warnings"].split(",")) == {
            w["code"] for r in recs if r.get("scope") == "window" and r["step"] == 4 for w in r["warnings"]}
    finally:
        mlflow.set_tracking_uri(None)

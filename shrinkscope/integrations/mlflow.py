"""MLflow: ``MLflowSink`` logs monitor reports to an MLflow run (any tracking store, a local folder included).

    import mlflow, shrinkscope
    from shrinkscope.integrations.mlflow import MLflowSink

    mlflow.set_tracking_uri("file:./mlruns")
    with mlflow.start_run():
        monitor = shrinkscope.watch(model, every=500, sinks=[MLflowSink()])
        ...

Metrics are ``shrinkscope/{codebook}/{scope}/{metric}`` at the monitor's step (characters MLflow refuses in a
key become ``_``). Usage is an artifact per report, ``shrinkscope/usage/{codebook}/step_{step:08d}.json``
holding the exact counts of every code; events and warnings go to ``shrinkscope/events.json`` (rewritten at each
event) and tags. Under DDP only rank 0 writes, as with every sink.
"""
from __future__ import annotations

import re
from typing import Any

try:
    import mlflow
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("shrinkscope.integrations.mlflow needs MLflow: pip install 'shrinkscope[mlflow]'") from e

from ..sinks import Sink, _clean, scalars

_BAD = re.compile(r"[^A-Za-z0-9_\-. /]")


def metric_key(*parts: str) -> str:
    """An MLflow-safe key (letters, digits, ``_ - . /`` and spaces) from ``parts`` joined by ``/``."""
    return _BAD.sub("_", "/".join(parts))


class MLflowSink(Sink):
    """Monitor records to an MLflow run.

    Args:
        run_id: the run to log to (default: the active run when the first record comes).
        client: an ``MlflowClient`` (default: one for the current tracking URI).
        log_usage: also write the usage counts of cumulative records as JSON artifacts.
    """

    wants_counts = True

    def __init__(self, run_id: str | None = None, *, client: Any = None, log_usage: bool = True):
        self._run_id = run_id
        self.client = client
        self.log_usage = bool(log_usage)
        self._events: list[dict[str, Any]] = []

    def _target(self) -> tuple[Any, str]:
        if self.client is None:
            self.client = MlflowClient()
        if self._run_id is None:
            run = mlflow.active_run()
            if run is None:
                raise RuntimeError("MLflowSink: no active MLflow run: call mlflow.start_run() first or pass run_id")
            self._run_id = run.info.run_id
        return self.client, self._run_id

    def write(self, record: dict[str, Any]) -> None:
        client, run_id = self._target()
        step = int(record.get("step") or 0)
        ts = int(1000 * float(record.get("time") or 0))
        if "event" in record:
            self._events.append(_clean(record))
            client.log_dict(run_id, {"events": self._events}, "shrinkscope/events.json")
            return
        name, scope = record["name"], record["scope"]
        metrics = [Metric(metric_key("shrinkscope", name, scope, k), v, ts, step) for k, v in scalars(record).items()]
        if metrics:
            client.log_batch(run_id, metrics=metrics)
        if scope == "window":
            codes = sorted({w.get("code", "") for w in record.get("warnings", [])})
            client.set_tag(run_id, metric_key("shrinkscope", name, "warnings"), ",".join(codes) or "none")
        counts = record.get("counts")
        if self.log_usage and scope == "cumulative" and counts is not None:
            client.log_dict(run_id, {"step": step, "name": name, "counts": [round(c) for c in counts.tolist()]},
                            metric_key("shrinkscope", "usage", name, f"step_{step:08d}.json"))

"""Weights & Biases: ``WandbSink`` logs monitor reports to a W&B run (online or offline).

    import wandb, shrinkscope
    from shrinkscope.integrations.wandb import WandbSink

    run = wandb.init(project="tokenizer", mode="offline")
    monitor = shrinkscope.watch(model, every=500, sinks=[WandbSink(run)])

Scalars go to ``shrinkscope/{codebook}/{scope}/{metric}`` against their own x-axis ``shrinkscope/step`` (the
monitor's step), so they never fight the run's own step counter. Usage is drawn as a rank-frequency line
(``shrinkscope/{codebook}/usage``: share of the r-th most used code against r, exact at about 512 ranks):
W&B histograms cap at 512 bins, which would merge the codes of a large codebook. Warnings go to a table.
Under DDP only rank 0 writes, as with every sink.
"""
from __future__ import annotations

import json
from typing import Any

try:
    import wandb
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("shrinkscope.integrations.wandb needs wandb: pip install 'shrinkscope[wandb]'") from e

from ..sinks import Sink, _clean, scalars, usage_curve


class WandbSink(Sink):
    """Monitor records to a W&B run.

    Args:
        run: a ``wandb`` run (default: the active ``wandb.run``; one must exist when the first record comes).
        usage_scope: which scope's usage to draw (``"cumulative"``, ``"window"``, or None for none).
        usage_points: about how many ranks of the usage curve to log.
    """

    wants_counts = True

    def __init__(self, run: Any = None, *, usage_scope: str | None = "cumulative", usage_points: int = 512):
        if usage_scope not in ("cumulative", "window", None):
            raise ValueError(f"WandbSink: usage_scope must be 'cumulative', 'window' or None, got {usage_scope!r}")
        self._run = run
        self.usage_scope = usage_scope
        self.usage_points = int(usage_points)
        self._defined = False
        self._warnings: list[list[Any]] = []

    @property
    def run(self) -> Any:
        run = self._run if self._run is not None else wandb.run
        if run is None:
            raise RuntimeError("WandbSink: no W&B run: call wandb.init(...) first or pass WandbSink(run)")
        return run

    def write(self, record: dict[str, Any]) -> None:
        run = self.run
        if not self._defined:
            run.define_metric("shrinkscope/step")
            run.define_metric("shrinkscope/*", step_metric="shrinkscope/step")
            self._defined = True
        step = record.get("step")
        if "event" in record:
            payload = {k: v for k, v in record.items() if k not in ("step", "time")}
            run.log({"shrinkscope/step": step, "shrinkscope/events": wandb.Html(
                f"<pre>{json.dumps(_clean(payload))}</pre>")})
            return
        name, scope = record["name"], record["scope"]
        data: dict[str, Any] = {"shrinkscope/step": step}
        for key, value in scalars(record).items():
            data[f"shrinkscope/{name}/{scope}/{key}"] = value
        counts = record.get("counts")
        if scope == self.usage_scope and counts is not None:
            ranks, shares = usage_curve(counts, max_points=self.usage_points)
            if ranks:
                table = wandb.Table(data=[[r, s] for r, s in zip(ranks, shares)], columns=["code rank", "share"])
                data[f"shrinkscope/{name}/usage"] = wandb.plot.line(
                    table, "code rank", "share", title=f"{name}: usage by code rank (step {step})")
        if scope == "window" and record.get("warnings"):
            self._warnings += [[step, name, w.get("code"), w.get("message")] for w in record["warnings"]]
            data["shrinkscope/warnings"] = wandb.Table(data=list(self._warnings),
                                                       columns=["step", "codebook", "code", "message"])
        run.log(data)

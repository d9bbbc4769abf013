"""PyTorch Lightning: ``ShrinkscopeCallback`` watches the ``LightningModule`` for the whole fit.

    trainer = L.Trainer(callbacks=[ShrinkscopeCallback(every=500, log_to="runs/x/shrinkscope.jsonl")])

Works with ``lightning`` (``lightning.pytorch``) or the older ``pytorch_lightning`` package; importing
this module without either raises an ImportError that says what to install. Steps follow the monitor's
own rule (training-mode forwards of the first quantizer); a last report is written when fitting ends.
Under DDP every rank runs the callback and only rank 0 writes, as with ``watch``.
"""
from __future__ import annotations

from typing import Any

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # pragma: no cover - depends on the environment
    try:
        from pytorch_lightning.callbacks import Callback
    except ImportError as e:
        raise ImportError("shrinkscope.integrations.lightning needs PyTorch Lightning: "
                          "pip install lightning (or pytorch_lightning)") from e

from ..watch import Monitor, watch


def logger_sinks(trainer: Any) -> list[Any]:
    """Sinks for the trainer's own loggers: TensorBoard (its ``SummaryWriter``), W&B (its run) and MLflow
    (its client and run id). Other loggers are left alone. Called on rank 0 only: other ranks' loggers
    are dummies, and only rank 0 writes anyway."""
    out: list[Any] = []
    for lg in getattr(trainer, "loggers", None) or []:
        kind = type(lg).__name__
        if kind == "WandbLogger":
            from .wandb import WandbSink

            out.append(WandbSink(lg.experiment))
        elif kind == "MLFlowLogger":
            from .mlflow import MLflowSink

            out.append(MLflowSink(lg.run_id, client=lg.experiment))
        elif hasattr(getattr(lg, "experiment", None), "add_scalar"):
            out.append(lg.experiment)
    return out


class ShrinkscopeCallback(Callback):
    """Attach ``shrinkscope.watch`` to the LightningModule on fit start, report and detach on fit end.

    Args:
        **watch_kwargs: arguments of ``shrinkscope.watch`` (``every``, ``log_to``, ``sinks``, ``adapter``, ...).
            When ``sinks`` is not given, the trainer's TensorBoard, W&B and MLflow loggers receive the
            records too (``logger_sinks``).
    """

    def __init__(self, **watch_kwargs: Any):
        super().__init__()
        self.watch_kwargs = watch_kwargs
        self.monitor: Monitor | None = None

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        kwargs = dict(self.watch_kwargs)
        if "sinks" not in kwargs:
            kwargs["sinks"] = logger_sinks(trainer) if trainer.is_global_zero else []
        self.monitor = watch(pl_module, **kwargs)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if self.monitor is not None:
            self.monitor.report()
            self.monitor.remove()
            self.monitor = None

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if self.monitor is not None:
            self.monitor.remove()
            self.monitor = None

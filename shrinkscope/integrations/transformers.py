"""Hugging Face ``transformers``: ``ShrinkscopeTrainerCallback`` watches the model a ``Trainer`` trains.

    from shrinkscope.integrations.transformers import ShrinkscopeTrainerCallback

    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      callbacks=[ShrinkscopeTrainerCallback(every=500, log_to="runs/x/shrinkscope.jsonl")])

Reports follow the trainer's own step (``state.global_step``, one per optimizer step, so gradient
accumulation's micro-batches all land in the step they belong to) instead of the monitor's forward count;
usage counts every training forward. A last report is made when training ends. Under DDP (``torchrun``,
``accelerate launch``) every rank runs the callback at the same steps and only rank 0 writes, as with ``watch``.
"""
from __future__ import annotations

from typing import Any

try:
    from transformers import TrainerCallback
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("shrinkscope.integrations.transformers needs transformers: "
                      "pip install 'shrinkscope[transformers]'") from e

from ..watch import Monitor, watch


class ShrinkscopeTrainerCallback(TrainerCallback):
    """Attach ``shrinkscope.watch`` on train begin, report every ``every`` optimizer steps, detach on train end.

    Args:
        every: report period in optimizer steps (0: only at the end of training).
        **watch_kwargs: other arguments of ``shrinkscope.watch`` (``log_to``, ``sinks``, ``adapter``, ...).
    """

    def __init__(self, every: int = 500, **watch_kwargs: Any):
        if int(every) < 0:
            raise ValueError(f"ShrinkscopeTrainerCallback: every must be >= 0, got {every}")
        if "every" in watch_kwargs:
            raise TypeError("ShrinkscopeTrainerCallback: pass every once")
        self.every = int(every)
        self.watch_kwargs = watch_kwargs
        self.monitor: Monitor | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if model is not None and self.monitor is None:
            self.monitor = watch(model, every=0, **self.watch_kwargs)
            self.monitor.step = int(state.global_step)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.monitor is None:
            return
        self.monitor.step = int(state.global_step)  # events logged by the user carry the trainer's step
        if self.every and state.global_step % self.every == 0:
            self.monitor.report(step=state.global_step)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.monitor is not None:
            self.monitor.report(step=state.global_step)
            self.monitor.remove()
            self.monitor = None

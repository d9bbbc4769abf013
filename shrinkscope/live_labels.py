"""Labels in a live analysis: each latent row carries the data-mode id of the input it came from.

``analyze(model, data, labels=...)`` gives the mode-level metrics (``token_mode_entropy``,
``shrunk_mode_share``) that ``analyze(ckpt, latents=..., labels=...)`` gives, without a latents file. The hooks
see the quantizer's input, not the batch's labels, so the run hands each batch's labels to the monitor
(``LiveMonitor.batch_labels``) and every captured latent row gets its input's label as one extra float32
column. The reservoir then samples (row, label) pairs together, and a DDP merge of reservoirs keeps them
together too; ``live._result`` splits the column off again.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .families import Capture
from .watch import Monitor

__all__ = ["BatchLabels", "LiveError", "LiveMonitor"]


class LiveError(ValueError):
    """The model could not be run over the data (or nothing was captured); one line meant for the user.
    (Defined here, the lowest of the live modules; ``shrinkscope.live.LiveError`` is the same class.)"""



_LABEL_LIMIT = 2 ** 24  # labels ride in a float32 column of the reservoir: integers up to here are exact


def _rows_of(batch: Any) -> int | None:
    x = batch[0] if isinstance(batch, (list, tuple)) and batch else batch
    if isinstance(x, dict):
        x = next((v for v in x.values() if isinstance(v, torch.Tensor)), None)
    return int(x.shape[0]) if isinstance(x, torch.Tensor) and x.dim() > 0 else None


def _int_labels(y: Any, what: str) -> torch.Tensor:
    y = y if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y))
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool or y.dim() != 1:
        raise LiveError(f"{what}: expected one integer mode id per input row (1-D integers), got {y.dtype} "
                        f"of shape {list(y.shape)}")
    y = y.detach().cpu().long()
    if y.numel() and int(y.abs().max()) >= _LABEL_LIMIT:
        raise LiveError(f"{what}: mode ids must lie within +-{_LABEL_LIMIT}, got {int(y.abs().max())}")
    return y


class BatchLabels:
    """The labels of each batch's input rows: slices of one array in data order, or the ``y`` of ``(x, y)``."""

    def __init__(self, labels: Any):
        self.array = None if labels is True else _int_labels(labels, "labels")
        self.offset = 0

    def next(self, batch: Any, index: int) -> torch.Tensor:
        """``(B,)`` labels of ``batch`` (the ``index``-th)."""
        b = _rows_of(batch)
        if b is None:
            raise LiveError(f"labels: batch {index} has no tensor input whose first axis counts its rows")
        if self.array is None:
            y = batch[1] if isinstance(batch, (list, tuple)) and len(batch) >= 2 else None
            if not isinstance(y, torch.Tensor) or y.shape[:1] != (b,):
                raise LiveError(f"labels=True takes y from (x, y) batches; batch {index} has no y of shape ({b},)")
            return _int_labels(y, f"labels of batch {index}")
        if self.offset + b > self.array.numel():
            raise LiveError(f"labels: {self.array.numel()} labels for more data rows ({self.offset + b} by batch "
                            f"{index}); pass one label per input row, in data order")
        self.offset += b
        return self.array[self.offset - b:self.offset]

    def finish(self) -> None:
        """Every label used (checked when the whole data was run)."""
        if self.array is not None and self.offset != self.array.numel():
            raise LiveError(f"labels: {self.array.numel()} labels for {self.offset} data rows; pass one label per "
                            "input row, in data order")


def _labelled(cap: Capture, y: torch.Tensor) -> Capture:
    """The capture with its latent rows in codebook space plus a last column: the label of each row's input.

    Rows are matched to inputs when the latents' first axis is the batch (``(B, ..., D)``: every position of
    an input's map gets its label) or when they are flat sample-major rows ``(B * M, D)``; other rows get -1
    (no mode, ignored by the mode metrics). Costs one transform of every row: the live analysis is not a
    training step.
    """
    if cap.latents is None:
        return cap
    x = cap.latents
    lead, b = x.shape[:-1], y.numel()
    n = int(np.prod(lead)) if len(lead) else 1
    rows = x.reshape(n, x.shape[-1])
    rows = (cap.transform(rows) if cap.transform is not None else rows).float()
    if b and len(lead) >= 1 and n % b == 0 and (lead[0] == b or len(lead) == 1):
        lab = y.to(rows.device).repeat_interleave(n // b)
    else:
        lab = torch.full((n,), -1, dtype=torch.long, device=rows.device)
    return cap._replace(latents=torch.cat([rows, lab[:, None].float()], 1), transform=None)


class LiveMonitor(Monitor):
    """A ``Monitor`` whose latent rows carry the label of their input (``batch_labels``, set per batch)."""

    batch_labels: torch.Tensor | None = None

    def _collect(self, w: Any, extract: Callable[[], list[Capture]]) -> None:
        y = self.batch_labels
        super()._collect(w, extract if y is None else lambda: [_labelled(c, y) for c in extract()])

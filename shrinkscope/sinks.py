"""Where monitor reports go: a JSONL file, TensorBoard, any callable, Python ``logging``.

A sink receives plain dicts, one per record:

- metric records ``{"step", "time", "name", "scope": "window"|"cumulative", "num_codes", "dim",
  "metrics": {KEY: number|None}, "warnings": [{"code", "message"}], ...}`` (``"usage_only": true`` is
  added for codebook-free quantizers);
- event records ``{"step", "time", "event", ...payload}``.

The JSONL sink writes exactly these dicts, one per line: the input of ``shrinkscope report``.
Under DDP only rank 0 calls sinks.
"""
from __future__ import annotations

import json
import logging
import math
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["CallableSink", "JSONLSink", "LoggingSink", "Sink", "TensorBoardSink", "make_sinks"]

logger = logging.getLogger("shrinkscope")


MAX_RECORD_NODES = 100_000
"""Values one record may hold once cleaned (a user's ``log_event`` payload can be anything)."""
MAX_RECORD_DEPTH = 32


def _clean(v: Any) -> Any:
    """JSON-safe value: non-finite floats become None, tensors/numpy scalars become numbers.

    Bounded, because ``log_event`` payloads come from user code: a container met again on its own path
    becomes ``"<cycle>"``, nesting past ``MAX_RECORD_DEPTH`` and values past ``MAX_RECORD_NODES`` become
    ``"..."`` (a self-referential dict, or a shared subtree that explodes along paths, must not hang the
    training loop or cost the sink).
    """
    budget = [MAX_RECORD_NODES]

    def walk(x: Any, depth: int, path: set[int]) -> Any:
        budget[0] -= 1
        if budget[0] < 0 or depth > MAX_RECORD_DEPTH:
            return "..."
        if isinstance(x, (dict, list, tuple)):
            if id(x) in path:
                return "<cycle>"
            path.add(id(x))
            try:
                if isinstance(x, dict):
                    return {str(k): walk(y, depth + 1, path) for k, y in x.items()}
                return [walk(y, depth + 1, path) for y in x]
            finally:
                path.discard(id(x))
        if hasattr(x, "item") and callable(x.item) and getattr(x, "ndim", 1) == 0:
            x = x.item()
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, (str, int, float, bool)) or x is None:
            return x
        return str(x)

    return walk(v, 0, set())


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a metric record: its ``metrics``, plus its ``estimates`` (bit-statistics bounds of
    implicit codebooks too large to count, shrinkscope/implicit.py) as ``estimate_{key}``."""
    items = list(record.get("metrics", {}).items())
    items += [(f"estimate_{k}", v) for k, v in (record.get("estimates") or {}).items()]
    return {k: float(v) for k, v in items
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


class Sink:
    """Base sink: override ``write``; ``close`` releases resources.

    A sink whose class sets ``wants_counts = True`` also gets ``record["counts"]``: the ``(K,)`` usage counts
    of that record's scope as a CPU tensor (None for a codebook with no usage). Other sinks never see them.
    """

    wants_counts: bool = False

    def write(self, record: dict[str, Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class JSONLSink(Sink):
    """Append one JSON object per record to ``path`` (parent folders created), each line in one ``write``.

    The file is opened on the first record, so ranks other than 0 never create it. Why each line is one
    ``os.write`` on an ``O_APPEND`` descriptor: two runs logging to the same file interleave whole lines,
    never pieces of them. A write that fails (a full disk, a quota, a network mount going away) loses that
    record only: the piece of it that reached the file is cut off again (or ended with a newline when
    another writer appended meanwhile), one warning is logged, and the next record is tried as usual, so
    ``shrinkscope report`` can still read the log. ``failed`` counts the lost records.

    Raises:
        ValueError: ``path`` exists and is not a regular file (a folder, a FIFO that would block the
            training loop until someone reads it, a device).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        _refuse_special(self.path)
        self._fd: int | None = None
        self._fragment = False  # a failed write left part of a line in the file
        self.failed = 0
        self._failing = False

    def _open(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # O_NONBLOCK: a FIFO that appeared since watch() cannot block the loop; O_RDWR: a failed write reads
        # back what reached the file before cutting it off
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ValueError(f"{self.path}: is not a regular file; pass a .jsonl file path to log_to")
        return fd

    def write(self, record: dict[str, Any]) -> None:
        line = (json.dumps(_clean(record), allow_nan=False) + "\n").encode("utf-8")
        if self._fd is None:
            self._fd = self._open()
        try:
            self._append(b"\n" + line if self._fragment else line)
        except OSError as e:
            self.failed += 1
            if not self._failing:
                logger.warning("shrinkscope: could not write a record to %s (%s); it is lost, the next ones are "
                               "tried as usual (training is not affected)", self.path, e.strerror or e)
            self._failing = True
            return
        if self._failing:
            logger.warning("shrinkscope: writing to %s again (%d records lost in all)", self.path, self.failed)
        self._failing = False

    def _append(self, data: bytes) -> None:
        fd = self._fd
        start = os.fstat(fd).st_size
        written = 0
        try:
            while written < len(data):
                written += os.write(fd, data[written:])
        except BaseException:  # OSError, or Ctrl-C between two pieces: no half line is left behind
            self._fragment = self._fragment or not self._cut_back(fd, start, data)
            raise
        self._fragment = False

    @staticmethod
    def _cut_back(fd: int, start: int, data: bytes) -> bool:
        """After a failed write: remove what of ``data`` reached the file; False when a piece stays."""
        try:
            size = os.fstat(fd).st_size
            if size == start:
                return True
            # ours only if the file grew by a prefix of our line (another writer may have appended meanwhile)
            if start < size <= start + len(data) and os.pread(fd, size - start, start) == data[: size - start]:
                os.ftruncate(fd, start)
                return True
        except OSError:
            pass
        return False

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __getstate__(self) -> dict[str, Any]:
        # copies and pickles carry the path, not the open file; they reopen it (append) on their first record
        return {**self.__dict__, "_fd": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({"_fragment": False, "failed": 0, "_failing": False, **state, "_fd": None})


def _refuse_special(path: Path) -> None:
    try:
        st = os.stat(path)
    except NotADirectoryError:
        raise ValueError(f"log_to {str(path)!r}: a parent of it is a file, not a folder") from None
    except OSError:
        return  # absent (created on the first record) or unreachable (reported then, once)
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file (a FIFO or a device would block " \
            "or swallow the log)"
        raise ValueError(f"log_to {str(path)!r}: is {kind}; pass a .jsonl file path")


class TensorBoardSink(Sink):
    """Scalars ``shrinkscope/{name}/{scope}/{metric}`` and events as text, on a ``SummaryWriter``.

    Args:
        writer: a ``torch.utils.tensorboard.SummaryWriter`` (or anything with ``add_scalar``/``add_text``),
            or a log directory (a writer is created; needs the ``tensorboard`` package).
    """

    def __init__(self, writer: Any):
        self._own = False
        if isinstance(writer, (str, Path)):
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:  # pragma: no cover - depends on the environment
                raise ImportError("TensorBoardSink(logdir) needs the 'tensorboard' package: pip install tensorboard"
                                  ) from e
            writer, self._own = SummaryWriter(str(writer)), True
        if not hasattr(writer, "add_scalar"):
            raise TypeError(f"TensorBoardSink: expected a SummaryWriter or a log directory, got {type(writer).__name__}")
        self.writer = writer

    def write(self, record: dict[str, Any]) -> None:
        step = record.get("step")
        if "event" in record:
            if hasattr(self.writer, "add_text"):
                payload = {k: v for k, v in record.items() if k not in ("step", "time")}
                self.writer.add_text("shrinkscope/events", json.dumps(_clean(payload)), step)
            return
        for key, value in scalars(record).items():
            self.writer.add_scalar(f"shrinkscope/{record['name']}/{record['scope']}/{key}", value, step)

    def close(self) -> None:
        if self._own:
            self.writer.close()
        elif hasattr(self.writer, "flush"):
            self.writer.flush()


class CallableSink(Sink):
    """Calls ``fn(record)`` for every record (e.g. ``wandb.log`` wrappers, a list's ``append``)."""

    def __init__(self, fn: Callable[[dict[str, Any]], Any]):
        if not callable(fn):
            raise TypeError(f"CallableSink: expected a callable, got {type(fn).__name__}")
        self.fn = fn

    def write(self, record: dict[str, Any]) -> None:
        self.fn(record)


class LoggingSink(Sink):
    """Health warnings (window scope) as ``logging`` WARNING records on the ``shrinkscope`` logger;
    events at INFO. Metrics themselves are not logged (use another sink)."""

    def __init__(self, log: logging.Logger | None = None):
        self.log = log or logger

    def write(self, record: dict[str, Any]) -> None:
        if "event" in record:
            self.log.info("shrinkscope step %s: event %s", record.get("step"), record["event"])
            return
        if record.get("scope") != "window":
            return
        for w in record.get("warnings", []):
            self.log.warning("shrinkscope step %s %s [%s]: %s", record.get("step"), record.get("name"),
                             w.get("code"), w.get("message"))


def usage_curve(counts: Any, *, max_points: int = 512) -> tuple[list[int], list[float]]:
    """The rank-frequency curve of code usage: share of the r-th most used code against r (1-based).

    Trackers cap histograms (W&B at 512 bins), which would merge codes; this curve keeps every code's exact
    share at about ``max_points`` ranks, spaced evenly on a log scale and always including the first rank,
    the last used code and the last rank, so the head, the dead tail and where it starts all show.

    Args:
        counts: ``(K,)`` usage counts (tensor or array).
        max_points: points wanted (a few more when the last used code falls between them).

    Returns:
        ``(ranks, shares)``; empty lists when nothing was counted.
    """
    import numpy as np

    c = np.asarray(counts.cpu() if hasattr(counts, "cpu") else counts, dtype=np.float64).reshape(-1)
    total = c.sum()
    if c.size == 0 or not total > 0:
        return [], []
    shares = np.sort(c)[::-1] / total
    k = c.size
    used = int((shares > 0).sum())
    pts = np.unique(np.concatenate([
        np.round(np.geomspace(1, k, num=max(2, int(max_points) - 3))).astype(np.int64),
        [1, used, min(used + 1, k), k]]))
    if pts.size > max_points:
        keep = np.round(np.linspace(0, pts.size - 1, max_points)).astype(np.int64)
        pts = np.unique(np.concatenate([pts[keep], [1, used, k]]))
    return [int(r) for r in pts], [float(shares[r - 1]) for r in pts]


def make_sinks(log_to: str | Path | None = None, sinks: Any = (), *, log_warnings: bool = True) -> list[Sink]:
    """Normalise the ``watch(log_to=..., sinks=...)`` arguments into a list of ``Sink``.

    ``sinks`` items may be ``Sink`` instances, ``SummaryWriter``-like objects (``add_scalar``), paths
    (``.jsonl``) or callables.
    """
    out: list[Sink] = []
    if log_to is not None:
        out.append(JSONLSink(log_to))
    if isinstance(sinks, (Sink, str, Path)) or callable(sinks) and not isinstance(sinks, (list, tuple)):
        sinks = [sinks]
    for s in sinks:
        if isinstance(s, Sink):
            out.append(s)
        elif hasattr(s, "add_scalar"):
            out.append(TensorBoardSink(s))
        elif isinstance(s, (str, Path)):
            out.append(JSONLSink(s))
        elif callable(s):
            out.append(CallableSink(s))
        else:
            raise TypeError(f"sinks: expected Sink, SummaryWriter, path or callable, got {type(s).__name__}")
    if log_warnings:
        out.append(LoggingSink())
    return out

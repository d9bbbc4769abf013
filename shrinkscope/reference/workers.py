"""The demo's jobs side by side in worker processes, under one progress bar in the main process.

Each job is one arm of one seed; the jobs are independent and seed themselves, so running them in any number
of processes gives the same tables (tested). Workers are spawned (safe with CUDA), get a share of the cores
as torch threads, and send progress messages (``phases.Progress``) through a queue that the main process
drains into its bar while it waits.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_mod
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any

import torch

from .phases import apply

__all__ = ["BAR_FORMAT", "cores", "run_jobs"]

#: the bar counts weighted work units (``phases.COST``), so it shows a percentage and the ETA only
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}{postfix}"

_QUEUE: Any = None
_FN: Callable[..., Any] | None = None


def cores() -> int:
    """CPU cores this process may run on (its affinity mask: taskset, container limits), else all."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def _init_worker(fn: Callable[..., Any], queue: Any, threads: int) -> None:
    global _QUEUE, _FN
    _QUEUE, _FN = queue, fn
    torch.set_num_threads(threads)


def _call(job: dict) -> Any:
    assert _FN is not None
    return _FN(**job, progress=_QUEUE)


def run_jobs(fn: Callable[..., Any], jobs: list[dict], *, workers: int, threads: int, total: float,
             progress: bool = True) -> list[Any]:
    """``[fn(**job, progress=sink) for job in jobs]``, in this process or in ``workers`` spawned processes.

    Args:
        fn: a module-level function (pickled by reference for the workers) taking each job's keywords and
            ``progress``, where it sends ``phases.Progress`` messages.
        jobs: keyword dicts, one per call (pickled to the workers).
        workers: processes side by side (1: run in this process).
        threads: torch threads of each worker.
        total: work units of all jobs together (the bar's 100%).
        progress: show the bar (on stderr, when it is a terminal).

    Returns:
        The results in the order of ``jobs``; the first job that raised re-raises here.
    """
    from .._progress import progress_bar

    with progress_bar(total, desc="shrinkscope demo", unit="", enabled=None if progress else False,
                      bar_format=BAR_FORMAT) as bar:
        phases: dict[str, str] = {}
        if workers <= 1 or len(jobs) == 1:
            return [fn(**j, progress=lambda m: apply(bar, phases, m)) for j in jobs]
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx, initializer=_init_worker,
                                 initargs=(fn, q, threads)) as ex:
            futs = [ex.submit(_call, j) for j in jobs]
            pending = set(futs)
            while pending:
                _, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
                while True:
                    try:
                        msg = q.get_nowait()
                    except queue_mod.Empty:
                        break
                    apply(bar, phases, msg)
            return [f.result() for f in futs]

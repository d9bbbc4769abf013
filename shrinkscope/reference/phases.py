"""Where a demo run spends its time, and one progress bar over every arm's work.

``PhaseClock`` records CPU seconds (``time.process_time``: user + system time of this process, all its
threads) and wall seconds per named phase. CPU seconds are what the demo's run time is budgeted in: on a
shared machine wall time measures the neighbours as much as the demo, while a single-threaded worker's CPU
time barely moves with the load.

``Progress`` turns steps into *work units* (estimated single-thread CPU seconds at the default preset, from
``COST``) and sends them to one bar: directly when the arms run in this process, through a queue when they
run in worker processes. The bar's ETA is then the ETA of the whole demo, not of the current arm's phase.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["COST", "PHASES", "PhaseClock", "Progress", "apply", "evaluation_units", "work_units"]

PHASES = ("tokenizer", "prior", "evaluate", "save")

#: Cost of one unit of each phase, in CPU seconds of one thread at the default preset (K = 512, D = 64, width
#: 64, batch 128, 5,000 samples; measured, docs/performance.md "demo"). They only weight the progress bar.
COST = {"tokenizer_step": 0.06, "prior_step": 0.065, "evaluate": 13.0, "save": 0.2}


def evaluation_units(num_samples: int) -> float:
    """Estimated work of one arm's evaluation: sampling, about 60% of it, grows with the number of samples."""
    return COST["evaluate"] * (0.4 + 0.6 * min(1.0, num_samples / 5000))


def work_units(steps: int, prior_steps: int, *, num_samples: int) -> float:
    """Estimated work of one arm, in ``COST`` units."""
    return (steps * COST["tokenizer_step"] + prior_steps * COST["prior_step"] + evaluation_units(num_samples)
            + COST["save"])


class PhaseClock:
    """CPU and wall seconds per phase, summed when a phase is entered more than once.

    Example:
        >>> clock = PhaseClock()
        >>> with clock.phase("prior"):
        ...     _ = sum(range(1000))
        >>> sorted(clock.as_dict()["prior"])
        ['cpu_s', 'wall_s']
    """

    def __init__(self) -> None:
        self._phases: dict[str, dict[str, float]] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        c0, w0 = time.process_time(), time.perf_counter()
        try:
            yield
        finally:
            p = self._phases.setdefault(name, {"cpu_s": 0.0, "wall_s": 0.0})
            p["cpu_s"] += time.process_time() - c0
            p["wall_s"] += time.perf_counter() - w0

    def as_dict(self) -> dict[str, dict[str, float]]:
        """``{phase: {"cpu_s", "wall_s"}}`` rounded to milliseconds, phases in the order first entered."""
        return {k: {m: round(v, 3) for m, v in p.items()} for k, p in self._phases.items()}


class Progress:
    """Work done by one arm, sent to the demo's bar.

    Args:
        sink: a queue shared with the main process (anything with ``put``), a callable taking each message
            (the main process's handler, ``apply`` bound to its bar), or None (no progress shown).
        arm: the arm's name (shown in the bar's postfix as it changes phase).
        min_send: units accumulated before a message is sent (fewer messages through the queue).
    """

    def __init__(self, sink: Any, arm: str, *, min_send: float = 1.0) -> None:
        self.sink, self.arm, self.min_send = sink, arm, min_send
        self._held = 0.0

    def phase(self, name: str) -> None:
        """Say which phase the arm is in (flushes what was held back first)."""
        self.flush()
        self._send((self.arm, 0.0, name))

    def advance(self, units: float) -> None:
        self._held += units
        if self._held >= self.min_send:
            self.flush()

    def flush(self) -> None:
        if self._held:
            self._send((self.arm, self._held, None))
            self._held = 0.0

    def _send(self, msg: tuple[str, float, str | None]) -> None:
        if self.sink is None:
            return
        if hasattr(self.sink, "put"):
            self.sink.put(msg)
        else:
            self.sink(msg)


def apply(bar: Any, phases: dict[str, str], msg: tuple[str, float, str | None]) -> None:
    """Apply one progress message to a tqdm-like ``bar``; ``phases`` keeps each arm's current phase."""
    arm, units, phase = msg
    if phase is not None:
        phases[arm] = phase
        if hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(", ".join(f"{a}: {p}" for a, p in phases.items() if p != "done"), refresh=False)
    if units:
        bar.update(units)

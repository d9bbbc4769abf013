"""Progress bars for the slow parts of the CLI (measuring and plotting many or large codebooks).

A bar goes to stderr, appears only once the work has taken ``delay`` seconds (quick runs print nothing), and
by default only when stderr is a terminal (logs and CI output stay clean). tqdm redraws only when a step
ends, so a single long step (one big codebook) would show nothing for its whole duration: while a bar is
visible a daemon thread redraws it twice a second, which keeps its elapsed time moving.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from typing import Any, Callable, Iterable, Iterator, TypeVar

__all__ = ["progress_bar", "progress_iter"]

T = TypeVar("T")


@contextlib.contextmanager
def progress_bar(
    total: float,
    *,
    desc: str,
    unit: str,
    enabled: bool | None = None,
    delay: float = 1.0,
    bar_format: str | None = None,
) -> Iterator[Any]:
    """A ``tqdm`` bar of ``total`` steps (``bar.update()``, ``bar.set_postfix_str(name, refresh=False)``).

    Args:
        total: number of steps.
        desc, unit: tqdm's label and unit.
        enabled: True / False forces the bar on / off; None: only when stderr is a terminal.
        delay: seconds of work before the bar first appears.
        bar_format: tqdm's layout (e.g. percentage and ETA only, for a total in weighted work units).
    """
    from tqdm.auto import tqdm

    bar = tqdm(
        total=total,
        desc=desc,
        unit=unit,
        delay=delay,
        leave=False,
        file=sys.stderr,
        disable=None if enabled is None else not enabled,
        bar_format=bar_format,
    )
    stop = threading.Event()

    def redraw() -> None:
        if stop.wait(delay):
            return
        while not stop.is_set():
            bar.refresh()
            stop.wait(0.5)

    ticker = threading.Thread(target=redraw, name="shrinkscope-progress", daemon=True)
    if not bar.disable:
        ticker.start()
    try:
        yield bar
    finally:
        stop.set()
        if ticker.is_alive():
            ticker.join()
        bar.close()


def progress_iter(
    items: Iterable[T],
    *,
    desc: str,
    unit: str,
    enabled: bool | None = None,
    label: Callable[[T], str] | None = None,
) -> Iterator[T]:
    """Iterate over ``items`` under a ``progress_bar``; ``label(item)`` names the step in progress."""
    items = list(items)
    with progress_bar(len(items), desc=desc, unit=unit, enabled=enabled) as bar:
        for item in items:
            if label is not None:
                bar.set_postfix_str(label(item), refresh=False)
            yield item
            bar.update()

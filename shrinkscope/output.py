"""Writing a report folder without losing anything: checked first, built aside, moved into place.

Why: ``--out DIR`` used to write straight into DIR, so a second run silently replaced an earlier report and
Ctrl-C left half a folder. Now the folder is checked before any work starts (an existing report is refused
unless ``force``), the report is built in a hidden temporary folder next to DIR (same file system, so the
final move is a rename), and moved into place with Ctrl-C held back until the move is done; any failure
removes the temporary folder and leaves DIR as it was.

``printable(text)`` is the other half of output hygiene: names in a checkpoint are chosen by whoever wrote
it, so control characters (terminal escape sequences) are shown escaped, never sent to the terminal.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import tempfile
import threading
from typing import Any, Callable, Iterator

__all__ = ["OutputError", "Terminated", "check_out", "printable", "terminate_cleanly", "write_atomically"]

REPORT_FILES = ("report.html", "health.json", "timeline.png")
# control characters, bidi overrides, and lone surrogates (undecodable bytes of a file name, which no
# strict UTF-8 stream can print)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


class OutputError(ValueError):
    """An output folder that cannot be used; one line for the user."""


def printable(text: str) -> str:
    """``text`` with control, bidi-override and lone surrogate characters escaped (newlines and tabs kept)."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1] if ord(m.group()) < 0x100 else
                        f"\\u{ord(m.group()):04x}", text)


def check_out(out: str, *, force: bool, nonempty: bool = False) -> str:
    """Validate ``--out`` before any work: returns its absolute path.

    Args:
        out: the folder.
        force: allow replacing an existing report.
        nonempty: refuse any non-empty folder unless ``force`` (not only one holding ``REPORT_FILES``): for
            writers whose file names vary from run to run, such as the demo's ``<arm>.pt``.

    Raises:
        OutputError: the path is a file, names too long, sits under a file, or holds a report (with
            ``nonempty``: anything) and ``force`` is False.
    """
    target = os.path.abspath(out)
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    except OSError as exc:  # ENAMETOOLONG, ENOTDIR, EACCES, ...
        raise OutputError(f"--out {out}: {exc.strerror or exc}") from None
    if st is None and os.path.islink(target):  # the move into place would replace the link, or fail on it
        raise OutputError(f"--out {out}: is a symbolic link to a missing path ({os.readlink(target)}); create "
                          "that folder or choose another path")
    name_max = _name_max(os.path.dirname(target))
    if any(len(os.fsencode(part)) > name_max for part in target.split(os.sep)):
        raise OutputError(f"--out {out}: a folder name is longer than {name_max} bytes")
    if st is not None:
        if not os.path.isdir(target):
            raise OutputError(f"--out {out}: exists and is not a folder; choose a folder path")
        old = [f for f in REPORT_FILES if os.path.lexists(os.path.join(target, f))]
        if old and not force:
            raise OutputError(f"--out {out}: already holds a report ({', '.join(old)}); pass --force to "
                              "replace it or choose another folder")
        if nonempty and not force:
            try:
                entries = sorted(os.listdir(target))
            except OSError as exc:
                raise OutputError(f"--out {out}: {exc.strerror or exc}") from None
            if entries:
                shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
                raise OutputError(f"--out {out}: is not empty ({shown}); pass --force to replace what this run "
                                  "writes there, or choose a new folder")
    return target


def _name_max(folder: str) -> int:
    while folder and not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    try:
        return os.pathconf(folder or os.sep, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


class Terminated(KeyboardInterrupt):
    """SIGTERM (a job scheduler, ``timeout``, ``kill``) turned into an exception, so that cleanup runs."""


def _raise_terminated(*_: Any) -> None:
    raise Terminated


@contextlib.contextmanager
def terminate_cleanly() -> Iterator[None]:
    """While the block runs, SIGTERM raises ``Terminated`` (a ``KeyboardInterrupt``) instead of killing the
    process outright, so a half-built report folder is removed as on Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _hold_sigint() -> Iterator[None]:
    """Delay Ctrl-C and SIGTERM until the block ends, so a move into place is never cut in half."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if caught:
            raise Terminated if signal.SIGTERM in caught else KeyboardInterrupt


def write_atomically(write: Callable[[str], str], out: str, *, force: bool, nonempty: bool = False) -> str:
    """Run ``write(tmp_dir) -> path inside it`` in a temporary folder beside ``out``, then move into place.

    A new ``out`` is one rename. An existing folder keeps its other files; the report's files replace
    their old versions one ``os.replace`` each, with Ctrl-C held back until all are moved.

    Returns:
        The path ``write`` returned, as it is after the move.

    Raises:
        OutputError: see ``check_out`` (``nonempty`` is passed on; checked again right before the move).
    """
    target = check_out(out, force=force, nonempty=nonempty)
    parent = os.path.dirname(target)
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".shrinkscope-", dir=parent)
    except OSError as exc:
        raise OutputError(f"--out {out}: cannot create it ({exc.strerror or exc})") from None
    try:
        produced = write(tmp)
        rel = os.path.relpath(produced, tmp)
        with _hold_sigint():
            check_out(out, force=force, nonempty=nonempty)  # another process may have written meanwhile
            if not os.path.exists(target):
                os.rename(tmp, target)
            else:
                for name in sorted(os.listdir(tmp)):
                    dst = os.path.join(target, name)
                    if os.path.isdir(dst) and not os.path.islink(dst):
                        shutil.rmtree(dst)
                    os.replace(os.path.join(tmp, name), dst)
                os.rmdir(tmp)
        return os.path.join(target, rel)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)

"""Class 3 of the adversarial sweep: the file system under the JSONL log and the report folder.

The contract: a full disk or a special file never breaks the training loop nor the log (``shrinkscope report``
still reads it); an unusable ``--out`` is one line and exit 2. Run: pytest tests/adversarial/test_filesystem.py -q
"""
from __future__ import annotations

import errno
import json
import logging
import os
import signal

import pytest
import torch

import shrinkscope
from shrinkscope import sinks
from shrinkscope.cli import main
from shrinkscope.sinks import JSONLSink

vqp = pytest.importorskip("vector_quantize_pytorch")


def _vq():
    torch.manual_seed(0)
    return vqp.VectorQuantize(dim=8, codebook_size=32)


class _FullDisk:
    """``os.write`` that writes part of the first ``failures`` lines, then fails with ENOSPC (as a disk that
    fills up mid-line does: a short write, then the error on the next call)."""

    def __init__(self, failures: int):
        self.failures, self.real, self.short = failures, os.write, False

    def __call__(self, fd, data):
        if self.failures <= 0:
            return self.real(fd, data)
        if not self.short:
            self.short = True
            return self.real(fd, bytes(data)[: len(data) // 2])
        self.failures -= 1
        self.short = False
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_loses_records_but_never_the_log(tmp_path, monkeypatch, caplog):
    vq = _vq()
    m = shrinkscope.watch(vq, every=1, log_to=tmp_path / "run.jsonl", log_warnings=False)
    vq(torch.randn(2, 8, 8))
    monkeypatch.setattr(sinks.os, "write", _FullDisk(failures=2))
    with caplog.at_level(logging.WARNING, logger="shrinkscope"):
        for _ in range(4):
            vq(torch.randn(2, 8, 8))  # never raises into the loop
    monkeypatch.undo()
    m.remove()
    sink = next(s for s in m.sinks if isinstance(s, JSONLSink))
    assert sink.failed == 2
    messages = [r.getMessage() for r in caplog.records]
    assert sum("could not write" in t for t in messages) == 1 and sum("again" in t for t in messages) == 1
    lines = (tmp_path / "run.jsonl").read_text().splitlines()
    assert all(json.loads(ln) for ln in lines)  # no half line left in the middle of the log
    assert max(json.loads(ln)["step"] for ln in lines) == 5  # records after the failures were written
    assert main(["report", str(tmp_path / "run.jsonl"), "--out", str(tmp_path / "rep")]) == 0


def test_ctrl_c_between_two_pieces_of_a_line_leaves_no_half_line(tmp_path, monkeypatch):
    s = JSONLSink(tmp_path / "run.jsonl")
    s.write({"step": 1})
    real = os.write

    def interrupted(fd, data):
        real(fd, bytes(data)[:5])
        raise KeyboardInterrupt

    monkeypatch.setattr(sinks.os, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        s.write({"step": 2, "pad": "x" * 100})
    monkeypatch.undo()
    s.write({"step": 3})
    s.close()
    assert [json.loads(ln)["step"] for ln in (tmp_path / "run.jsonl").read_text().splitlines()] == [1, 3]


def test_special_log_paths_are_refused_at_watch_time_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "fifo.jsonl")  # opening a FIFO for writing blocks until someone reads it
    (tmp_path / "dir.jsonl").mkdir()
    (tmp_path / "afile").write_text("x")
    previous = signal.signal(signal.SIGALRM, lambda *a: pytest.fail("watch() blocked on a FIFO"))
    signal.alarm(10)
    try:
        for path, fragment in ((tmp_path / "fifo.jsonl", "not a regular file"), (tmp_path / "dir.jsonl", "folder"),
                               (tmp_path / "afile" / "run.jsonl", "parent")):
            with pytest.raises(ValueError, match=fragment):
                shrinkscope.watch(_vq(), every=1, log_to=path)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_a_fifo_that_appears_after_watch_does_not_block_the_loop(tmp_path):
    vq = _vq()
    m = shrinkscope.watch(vq, every=1, log_to=tmp_path / "late.jsonl", log_warnings=False)
    os.mkfifo(tmp_path / "late.jsonl")
    previous = signal.signal(signal.SIGALRM, lambda *a: pytest.fail("the training step blocked on a FIFO"))
    signal.alarm(10)
    try:
        vq(torch.randn(2, 8, 8))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert m.step == 1 and not any(isinstance(s, JSONLSink) for s in m.sinks)  # dropped with one warning


def test_out_that_is_a_dangling_symlink_is_one_line(tmp_path, capsys):
    torch.save({"quantize.embedding.weight": torch.randn(16, 4)}, tmp_path / "m.pt")
    os.symlink(tmp_path / "nowhere", tmp_path / "out")
    code = main(["analyze", str(tmp_path / "m.pt"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "symbolic link" in err
    assert os.path.islink(tmp_path / "out") and not os.path.exists(tmp_path / "nowhere")
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".shrinkscope-")]


REWRITE = r'''
import sys
import numpy as np
import torch
import shrinkscope.checkpoint as ck
from shrinkscope.cli import main

path, latents = sys.argv[1], sys.argv[2]
torch.save({"quantize.embedding.weight": torch.randn(256, 8), "big": torch.randn(512, 512)}, path)
np.save(latents, np.random.default_rng(0).standard_normal((2000, 8)).astype(np.float32))
real = ck.load_checkpoint


def rewritten_after_opening(p, **kw):
    c = real(p, **kw)
    if str(p) == path:
        open(path, "wb").close()  # a training job rewrites the checkpoint in place (torch.save truncates first)
    return c


for module in list(sys.modules.values()):
    if getattr(module, "load_checkpoint", None) is real:
        module.load_checkpoint = rewritten_after_opening
sys.exit(main(["analyze", path, "--latents", latents, "--json"]))
'''


def test_a_checkpoint_rewritten_while_it_is_read_is_one_line_not_a_crash(tmp_path):
    # torch files are memory-mapped: reading a page of a truncated file is SIGBUS, which kills the process
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-c", REWRITE, str(tmp_path / "run.pt"), str(tmp_path / "z.npy")],
                          check=False, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": root, "MPLBACKEND": "Agg"})
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-500:])
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "changed while it was being read" in proc.stderr


def test_read_timeline_never_blocks_on_a_fifo(tmp_path):
    from shrinkscope.report import TimelineError, read_timeline

    os.mkfifo(tmp_path / "run.jsonl")  # the Python API, not only the CLI, must not wait for a writer
    previous = signal.signal(signal.SIGALRM, lambda *a: pytest.fail("read_timeline blocked on a FIFO"))
    signal.alarm(10)
    try:
        with pytest.raises(TimelineError, match="FIFO"):
            read_timeline(str(tmp_path / "run.jsonl"))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


SIGTERM_CHILD = r'''
import os, signal, sys
import torch
import shrinkscope.report as rp
from shrinkscope.cli import main

torch.save({"quantize.embedding.weight": torch.randn(32, 4)}, sys.argv[1])
real = rp.write_analysis_report


def terminated(result, out_dir, **kw):
    path = real(result, out_dir, **kw)
    os.kill(os.getpid(), signal.SIGTERM)  # a job scheduler (or `timeout`) stops the run while it writes
    return path


rp.write_analysis_report = terminated
sys.exit(main(["analyze", sys.argv[1], "--out", sys.argv[2]]))
'''


def test_sigterm_while_writing_leaves_no_half_report(tmp_path):
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    (tmp_path / "out").mkdir()
    proc = subprocess.run([sys.executable, "-c", SIGTERM_CHILD, str(tmp_path / "m.pt"), str(tmp_path / "out" / "rep")],
                          check=False, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": root, "MPLBACKEND": "Agg"})
    assert proc.returncode == 143, (proc.returncode, proc.stderr[-300:])
    assert len(proc.stderr.strip().splitlines()) == 1 and "SIGTERM" in proc.stderr
    assert os.listdir(tmp_path / "out") == []  # no report folder, no hidden temporary folder

"""CLI output and exit hygiene: no report is lost or half-written, Ctrl-C and closed pipes end in one line,
option values are validated, printed names cannot drive the terminal, odd input files never block.
Run: pytest tests/hardening/test_cli_hygiene.py -q"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import shrinkscope.report as report_pkg
from shrinkscope.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {**os.environ, "PYTHONPATH": ROOT, "MPLBACKEND": "Agg"}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hyg")
    g = torch.Generator().manual_seed(0)
    z = torch.randn(600, 4, generator=g)
    np.save(tmp / "z.npy", z.numpy())
    torch.save({"quantize.embedding.weight": z[:32].clone()}, tmp / "m.pt")
    return tmp


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line(err: str) -> bool:
    return len(err.strip().splitlines()) == 1 and "Traceback" not in err


def _leftovers(folder) -> list[str]:
    return [n for n in os.listdir(folder) if n.startswith(".shrinkscope-")]


def test_existing_report_is_refused_then_replaced_with_force(ckpt, tmp_path, capsys):
    out = tmp_path / "rep"
    code, _, _ = _run(capsys, "analyze", ckpt / "m.pt", "--out", out, "--no-umap")
    assert code == 0 and (out / "report.html").exists()
    (out / "mine.txt").write_text("keep me")
    before = (out / "health.json").read_bytes()
    code, _, err = _run(capsys, "analyze", ckpt / "m.pt", "--out", out, "--no-umap", "--latents", ckpt / "z.npy")
    assert code == 2 and _one_line(err) and "--force" in err
    assert (out / "health.json").read_bytes() == before
    code, _, _ = _run(capsys, "analyze", ckpt / "m.pt", "--out", out, "--no-umap", "--latents", ckpt / "z.npy",
                      "--force")
    assert code == 0 and (out / "health.json").read_bytes() != before
    assert (out / "mine.txt").read_text() == "keep me" and not _leftovers(tmp_path)


def test_out_that_is_a_file_or_too_long(ckpt, tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    code, _, err = _run(capsys, "analyze", ckpt / "m.pt", "--out", tmp_path / "f")
    assert code == 2 and _one_line(err) and (tmp_path / "f").read_text() == "x"
    code, _, err = _run(capsys, "analyze", ckpt / "m.pt", "--out", tmp_path / ("x" * 300))
    assert code == 2 and _one_line(err) and ("longer than" in err or "too long" in err)
    assert sorted(os.listdir(tmp_path)) == ["f"]


@pytest.mark.parametrize("exc, status", [(RuntimeError("disk on fire"), 1), (KeyboardInterrupt(), 130),
                                         (OSError(28, "No space left on device"), 2)])
def test_failure_while_writing_leaves_nothing_behind(ckpt, tmp_path, capsys, monkeypatch, exc, status):
    real = report_pkg.write_analysis_report

    def half(result, out_dir, **kw):
        real(result, out_dir, **kw)
        raise exc

    monkeypatch.setattr(report_pkg, "write_analysis_report", half)
    code, _, err = _run(capsys, "analyze", ckpt / "m.pt", "--out", tmp_path / "rep", "--no-umap")
    assert code == status and _one_line(err)
    assert os.listdir(tmp_path) == []


def test_ctrl_c_during_the_move_is_held_until_it_is_done(ckpt, tmp_path, capsys, monkeypatch):
    import signal

    import shrinkscope.output as output

    out = tmp_path / "rep"
    assert _run(capsys, "analyze", ckpt / "m.pt", "--out", out, "--no-umap")[0] == 0
    old = {n: (out / n).read_bytes() for n in os.listdir(out)}
    real = os.replace
    calls = []

    def replace(src, dst):
        if not calls:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C between the first and second file
        calls.append(dst)
        real(src, dst)

    monkeypatch.setattr(output.os, "replace", replace)
    code, _, err = _run(capsys, "analyze", ckpt / "m.pt", "--out", out, "--no-umap", "--latents", ckpt / "z.npy",
                        "--force")
    assert code == 130 and _one_line(err)
    assert len(calls) == len(old) and all((out / n).read_bytes() != b for n, b in old.items() if n.endswith(".json"))
    assert not _leftovers(tmp_path)


SIGINT_CHILD = textwrap.dedent("""
    import os, signal, sys
    # a shell that starts us in the background (nohup cmd &) hands SIGINT down ignored; a terminal's Ctrl-C is
    # what this test means, so restore Python's own handler
    signal.signal(signal.SIGINT, signal.default_int_handler)
    import shrinkscope.report as rp
    from shrinkscope.cli import main
    real = rp.write_analysis_report
    def interrupted(result, out_dir, **kw):
        path = real(result, out_dir, **kw)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C arrives while the report is being written
        return path
    rp.write_analysis_report = interrupted
    sys.exit(main(sys.argv[1:]))
""")


def test_real_sigint_exits_130_with_one_line_and_no_folder(ckpt, tmp_path):
    proc = subprocess.run([sys.executable, "-c", SIGINT_CHILD, "analyze", str(ckpt / "m.pt"), "--out",
                           str(tmp_path / "rep"), "--no-umap"], capture_output=True, text=True, env=ENV,
                          timeout=300)
    assert proc.returncode == 130 and _one_line(proc.stderr), proc.stderr
    assert os.listdir(tmp_path) == []


def test_broken_pipe_is_one_line(ckpt):
    proc = subprocess.Popen([sys.executable, "-m", "shrinkscope.cli", "analyze", str(ckpt / "m.pt"), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    proc.stdout.close()  # like `| head -c 0`: the reader is gone before anything is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 2 and _one_line(err) and "pipe" in err, err


@pytest.mark.parametrize("opt", [["--max-points", "0"], ["--max-latents", "-1"], ["--max-latents", "0"],
                                 ["--seed", "-1"], ["--max-latents", "many"], ["--max-points", "1e3"]])
def test_option_values_are_validated(ckpt, tmp_path, capsys, opt):
    code, out, err = _run(capsys, "analyze", ckpt / "m.pt", *opt, "--out", tmp_path / "rep")
    assert code == 2 and _one_line(err) and out == "" and opt[0] in err
    assert not (tmp_path / "rep").exists()


def test_unknown_option_is_one_line(capsys):
    code, _, err = _run(capsys, "analyze", "--frobnicate")
    assert code == 2 and _one_line(err)


def test_terminal_escapes_in_keys_are_not_printed(tmp_path, capsys):
    evil = "quantize\x1b]0;owned\x07\x1b[2J.embedding.weight"
    torch.save({evil: torch.randn(16, 4)}, tmp_path / "esc.pt")
    code, out, err = _run(capsys, "analyze", tmp_path / "esc.pt")
    assert code == 0 and "\x1b" not in out + err and "\x07" not in out + err
    code, out, _ = _run(capsys, "analyze", tmp_path / "esc.pt", "--json")
    assert "\x1b" not in out and json.loads(out)["codebooks"][0]["name"].startswith("quantize\x1b")
    code, out, err = _run(capsys, "analyze", tmp_path / "esc.pt", "--key", "nothing\x1b[2J")
    assert code == 2 and "\x1b" not in err


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.parametrize("role", ["checkpoint", "latents", "report"])
def test_fifo_inputs_never_block(ckpt, tmp_path, role):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    argv = {"checkpoint": ["analyze", str(fifo)], "latents": ["analyze", str(ckpt / "m.pt"), "--latents", str(fifo)],
            "report": ["report", str(fifo), "--out", str(tmp_path / "o")]}[role]
    proc = subprocess.run([sys.executable, "-m", "shrinkscope.cli", *argv], capture_output=True, text=True,
                          env=ENV, timeout=120)
    assert proc.returncode == 2 and _one_line(proc.stderr) and "FIFO" in proc.stderr, proc.stderr


@pytest.mark.parametrize("dev", ["/dev/zero", "/dev/null", "/dev/urandom"])
def test_devices_are_refused(capsys, dev):
    if not os.path.exists(dev):
        pytest.skip(f"no {dev}")
    code, _, err = _run(capsys, "analyze", dev)
    assert code == 2 and _one_line(err)


@pytest.mark.parametrize("line", [
    '{"step": 1, "name": "a", "metrics": {"utilization": 0.5}, "warnings": "oops"}',
    '{"step": 1, "name": "a", "metrics": {"utilization": 0.5}, "warnings": [1, {"code": 5}]}',
    '{"step": 1, "name": {"x": 1}, "metrics": {"utilization": 1e999}, "scope": []}',
    '{"step": 1, "name": "a", "metrics": {"utilization": ' + "9" * 400 + '}}',
    '{"step": 10000000000000000000000000, "name": "a", "metrics": {"utilization": 0.5}}',
    '{"step": true, "name": "a", "metrics": {"utilization": 0.5}}',
    "[" * 50_000,
    '{"step": 2, "event": {"nested": [1, 2]}}',
])
def test_malformed_jsonl_records(tmp_path, capsys, line):
    good = '{"step": 3, "name": "b", "metrics": {"utilization": 0.25}}'
    (tmp_path / "run.jsonl").write_text(line + "\n" + good + "\n")
    code, _, err = _run(capsys, "report", tmp_path / "run.jsonl", "--out", tmp_path / "o")
    assert code in (0, 2) and "Traceback" not in err
    if code == 2:
        assert _one_line(err) and not (tmp_path / "o").exists()
    else:
        assert (tmp_path / "o" / "report.html").exists()

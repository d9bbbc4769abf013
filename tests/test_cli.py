"""The ``shrinkscope`` CLI: exit codes, one-line errors, JSON contract.  Run: pytest tests/test_cli.py -q"""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from shrinkscope.cli import main


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1500, 8, generator=g) * 2
    np.save(tmp / "z.npy", z.numpy())
    torch.save({"state_dict": {"quantize.embedding.weight": z[:64].clone()}}, tmp / "good.ckpt")
    torch.save({"state_dict": {"quantize.embedding.weight": 0.02 * z[:64].clone()}}, tmp / "bad.ckpt")
    save_file({"quantize.embedding.weight": z[:64].clone()}, tmp / "good.safetensors")
    torch.save({"encoder.weight": torch.randn(4, 4)}, tmp / "nocb.pt")
    nan = z[:64].clone()
    nan[0, 0] = float("nan")
    torch.save({"quantize.embedding.weight": nan}, tmp / "nan.pt")
    (tmp / "empty.pt").write_bytes(b"")
    data = (tmp / "good.ckpt").read_bytes()
    (tmp / "trunc.ckpt").write_bytes(data[: len(data) // 2])
    (tmp / "notes.txt").write_text("not a checkpoint\n")
    (tmp / "adir").mkdir()
    with open(tmp / "evil.pkl", "wb") as f:
        pickle.dump({"quantize.embedding.weight": torch.randn(4, 2), "x": _Evil(tmp / "pwned")}, f)
    torch.save({"x": _Evil(tmp / "pwned"), "quantize.embedding.weight": torch.randn(4, 2)}, tmp / "evil.pt")
    return tmp


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_analyze_json_contract(files, capsys):
    code, out, err = _run(
        capsys, "analyze", files / "good.safetensors", "--latents", files / "z.npy", "--json"
    )
    assert code == 0
    d = json.loads(out)
    assert list(d) == ["source", "codebooks"] and d["codebooks"][0]["name"] == "quantize"
    assert d["codebooks"][0]["metrics"]["latent_coverage"] is not None


def test_analyze_table_and_verdict(files, capsys):
    code, out, _ = _run(capsys, "analyze", files / "bad.ckpt", "--latents", files / "z.npy")
    assert code == 0 and "Verdict:" in out and "Shrunk: quantize" in out and "shrinkage" in out
    code, out, _ = _run(capsys, "analyze", files / "good.ckpt", "--latents", files / "z.npy")
    assert code == 0 and "Healthy:" in out


def test_analyze_out_dir(files, tmp_path, capsys):
    code, out, _ = _run(
        capsys, "analyze", files / "bad.ckpt", "--latents", files / "z.npy", "--out", tmp_path / "r",
        "--no-umap"
    )
    assert code == 0 and (tmp_path / "r" / "report.html").exists() and "report:" in out
    assert json.loads((tmp_path / "r" / "health.json").read_text())["codebooks"][0]["warnings"]


def test_compare_json(files, capsys):
    code, out, _ = _run(
        capsys, "compare", files / "bad.ckpt", files / "good.ckpt", "--latents", files / "z.npy", "--json"
    )
    d = json.loads(out)
    assert (
        code == 0 and list(d) == ["before", "after", "delta"] and d["delta"][0]["metrics"]["spread_ratio"] > 0
    )


@pytest.mark.parametrize(
    "name,fragment",
    [
        ("missing.pt", "no such file"), ("adir", "is a directory"), ("empty.pt", "is empty"),
        ("trunc.ckpt", "truncated"), ("notes.txt", "not a checkpoint"), ("nocb.pt", "no codebook found"),
        ("nan.pt", "1 NaN"), ("evil.pt", "refused to unpickle"), ("evil.pkl", "--trust-checkpoint")
    ],
)
def test_bad_input_exits_2_with_one_line(files, capsys, name, fragment):
    code, out, err = _run(capsys, "analyze", files / name)
    assert code == 2 and out == ""
    assert fragment in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (files / "pwned").exists()


def test_bad_latents_and_bad_key(files, capsys):
    np.save(files / "z5.npy", np.zeros((10, 5), np.float32))
    code, _, err = _run(capsys, "analyze", files / "good.ckpt", "--latents", files / "z5.npy")
    assert code == 2 and "match no codebook dimension" in err
    code, _, err = _run(capsys, "analyze", files / "good.ckpt", "--key", "nothing.here")
    assert code == 2 and "key 'nothing.here' not found" in err


def test_report_bad_input(tmp_path, capsys):
    code, _, err = _run(capsys, "report", tmp_path / "none.jsonl")
    assert code == 2 and "no such file" in err
    (tmp_path / "e.jsonl").write_text('{"step": 1, "time": 0, "event": "start"}\n')
    code, _, err = _run(capsys, "report", tmp_path / "e.jsonl", "--out", tmp_path / "o")
    assert code == 2 and "no metric lines" in err


def test_demo_unavailable_is_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "shrinkscope.reference.demo", None)  # import of it raises ImportError
    code, _, err = _run(capsys, "demo", "--quick")
    assert code == 2 and "demo is unavailable" in err and err.count("\n") == 1


def test_no_command_prints_help(capsys):
    code, out, _ = _run(capsys)
    assert code == 2 and "analyze" in out and "compare" in out and "report" in out


def test_console_script_subprocess(files):
    exe = shutil.which("shrinkscope")
    cmd = [exe] if exe else [sys.executable, "-m", "shrinkscope.cli"]
    ok = subprocess.run(
        [*cmd, "analyze", str(files / "good.ckpt"), "--json"], capture_output=True, text=True, timeout=120
    )
    assert ok.returncode == 0 and json.loads(ok.stdout)["codebooks"][0]["num_codes"] == 64
    bad = subprocess.run(
        [*cmd, "analyze", str(files / "evil.pt")], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2 and "refused to unpickle" in bad.stderr and "Traceback" not in bad.stderr
    assert not (files / "pwned").exists()


def test_analyze_without_out_never_imports_matplotlib(files):
    code = ("import sys; from shrinkscope.cli import main; rc = main(['analyze', sys.argv[1], '--json']); "
            "sys.exit(3 if 'matplotlib' in sys.modules or 'umap' in sys.modules else rc)")
    run = subprocess.run([sys.executable, "-c", code, str(files / "good.ckpt")], capture_output=True, timeout=120)
    assert run.returncode == 0, run.stderr

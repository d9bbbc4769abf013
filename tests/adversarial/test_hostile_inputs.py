"""Class 1 of the adversarial sweep: hostile and malformed input files for analyze / compare / report.

The contract for every file: it is analysed (exit 0) or refused with exit 2 and ONE line on stderr (no
traceback, no library warning in Python's two-line form), and nothing in it runs. Exit 1 (an internal error)
is a bug for any of them. Run: pytest tests/adversarial/test_hostile_inputs.py -q
"""
from __future__ import annotations

import collections
import io
import json
import os
import pickle
import sys
import warnings

import numpy as np
import pytest
import torch

from shrinkscope import formats
from shrinkscope.checkpoint import CheckpointError, load_checkpoint
from shrinkscope.cli import main
from shrinkscope.unpickle import pickle_globals

KEY = "quantize.embedding.weight"


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.strip()]


class _Payload:
    """Pickles to ``os.system(touch MARKER)``: the file must be refused, the marker never appear."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# --- pickle protocols 3-5, zip and legacy: one line, the dangerous global named, nothing run ---------------


@pytest.mark.parametrize("protocol", [3, 4, 5])
@pytest.mark.parametrize("legacy", [False, True])
def test_hostile_pickles_of_every_protocol_are_one_line(tmp_path, capsys, protocol, legacy):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    torch.save({KEY: torch.randn(16, 4), "x": _Payload(marker)}, path, pickle_protocol=protocol,
               _use_new_zipfile_serialization=not legacy)
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # torch warns about protocols > 2: that must not reach the user
        code, out, err = _run(capsys, "analyze", path, "--json")
    assert code == 2 and out == ""
    assert len(_lines(err)) == 1, err
    assert "posix.system" in err or "os.system" in err, err  # the user learns what the file wanted to run
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [4, 5])
@pytest.mark.parametrize("legacy", [False, True])
def test_honest_protocol_4_and_5_files_say_why_they_cannot_be_read(tmp_path, capsys, protocol, legacy):
    # torch's safe unpickler reads protocols 0-3 only; such a file is a torch checkpoint all the same
    path = tmp_path / "honest.pt"
    torch.save({KEY: torch.randn(16, 4)}, path, pickle_protocol=protocol, _use_new_zipfile_serialization=not legacy)
    code, _, err = _run(capsys, "analyze", path)
    assert code == 2 and len(_lines(err)) == 1
    assert f"pickle protocol {protocol}" in err and "--trust-checkpoint" in err
    assert "not a torch checkpoint" not in err


def test_loader_warnings_are_not_raised_at_all(tmp_path):
    path = tmp_path / "p3.pt"
    torch.save({KEY: torch.randn(16, 4)}, path, pickle_protocol=3)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        load_checkpoint(path)
    assert not [w for w in seen if "protocol" in str(w.message)]


def test_legacy_files_still_load_with_the_allowlist(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save({KEY: torch.randn(16, 4)}, path, _use_new_zipfile_serialization=False)
    assert KEY in load_checkpoint(path).tensors


def test_stack_global_names_are_read_through_the_memo():
    # protocol 4 names a global by two strings on the stack; a repeated module name comes from the memo
    data = pickle.dumps([collections.OrderedDict(), collections.Counter(), os.system], protocol=4)
    assert pickle_globals(data) == sorted({"collections.OrderedDict", "collections.Counter",
                                           f"{os.system.__module__}.system"})


# --- names and streams ---------------------------------------------------------------------------------


def _save_as(fmt: str, f) -> None:
    cb = torch.randn(16, 4)
    if fmt == "safetensors":
        from safetensors.torch import save

        f.write(save({KEY: cb}))
    elif fmt == "npy":
        np.save(f, cb.numpy())
    elif fmt == "npz":
        np.savez(f, codebook=cb.numpy())
    else:
        torch.save({KEY: cb}, f, _use_new_zipfile_serialization=fmt == "pt")


@pytest.mark.parametrize("fmt", ["pt", "legacy.pt", "safetensors", "npy", "npz"])
def test_file_name_with_undecodable_bytes(tmp_path, capsys, fmt):
    # torch and the safetensors library take names as UTF-8 text; such a file is fine all the same
    path = os.path.join(os.fsencode(tmp_path), b"tok\xff\xfe." + fmt.encode())
    with open(path, "wb") as f:
        _save_as(fmt, f)
    code, out, err = _run(capsys, "analyze", os.fsdecode(path))
    assert code == 0, err
    assert "\\udcff" in out  # the name is shown escaped, not as lone surrogates no terminal can print
    code, out, _ = _run(capsys, "analyze", os.fsdecode(path), "--json")
    assert code == 0 and json.loads(out)["codebooks"]


def test_a_terminal_that_cannot_show_a_name(tmp_path, capsys, monkeypatch):
    torch.save({KEY: torch.randn(16, 4), "vqé.embed": torch.randn(16, 4)}, tmp_path / "m.pt")
    buf = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(buf, encoding="ascii"))  # PYTHONIOENCODING=ascii
    code = main(["analyze", str(tmp_path / "m.pt")])
    sys.stdout.flush()
    assert code == 0, capsys.readouterr().err
    assert b"vq\\xe9" in buf.getvalue()


def test_library_warnings_become_one_line_each(tmp_path, capsys, monkeypatch):
    analyze_mod = sys.modules["shrinkscope.analyze"]  # the package exports a function of the same name
    real = analyze_mod.analyze

    def noisy(*args, **kwargs):
        warnings.warn("Glyph 27 (\x1b) missing\nfrom font(s)", UserWarning)
        warnings.warn("Glyph 27 (\x1b) missing\nfrom font(s)", UserWarning)  # once is enough
        return real(*args, **kwargs)

    monkeypatch.setattr(analyze_mod, "analyze", noisy)
    torch.save({KEY: torch.randn(16, 4)}, tmp_path / "m.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        code, _, err = _run(capsys, "analyze", tmp_path / "m.pt", "--json")
    assert code == 0
    assert _lines(err) == ["shrinkscope: warning: Glyph 27 (\\x1b) missing from font(s) (UserWarning)"]


# --- JSONL for report ----------------------------------------------------------------------------------

RECORD = {"step": 1, "name": "vq", "scope": "window", "metrics": {"utilization": 0.5}, "warnings": []}


def test_an_overlong_jsonl_line_is_refused_before_it_is_read_whole(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(formats, "MAX_JSONL_LINE", 4096)
    path = tmp_path / "run.jsonl"
    path.write_text(json.dumps(RECORD) + "\n" + json.dumps({**RECORD, "pad": "x" * 10_000}) + "\n")
    code, _, err = _run(capsys, "report", path, "--out", tmp_path / "out")
    assert code == 2 and len(_lines(err)) == 1 and "run.jsonl:2: a line longer than" in err
    assert not (tmp_path / "out").exists()


def test_a_jsonl_with_a_byte_order_mark(tmp_path, capsys):
    path = tmp_path / "run.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(RECORD).encode() + b"\r\n")
    code, _, err = _run(capsys, "report", path, "--out", tmp_path / "out")
    assert code == 0, err


# --- the sweep: odd but plausible codebook files -------------------------------------------------------


def _sweep_files():
    g = torch.Generator().manual_seed(0)
    cb = torch.randn(32, 4, generator=g)
    nan = cb.clone()
    nan[1, 1] = float("nan")
    deep: object = {KEY: cb}
    for _ in range(200):
        deep = {"n": deep}
    cases = {f"dtype_{str(dt).split('.')[-1]}": {KEY: (cb * 4).to(dt)} for dt in (
        torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.uint8, torch.bool,
        torch.complex64, torch.float8_e4m3fn)}
    cases.update({
        "one_dim": {KEY: cb[:, 0].clone()}, "zero_dim": {KEY: torch.tensor(1.0)}, "k1": {KEY: cb[:1].clone()},
        "k2": {KEY: cb[:2].clone()}, "d1": {KEY: cb[:, :1].clone()}, "zeros": {KEY: torch.zeros(32, 4)},
        "nan": {KEY: nan}, "inf": {KEY: cb.clone().fill_(float("inf"))}, "huge": {KEY: cb * 1e30},
        "denormal": {KEY: cb * 1e-40}, "three_dim": {KEY: cb.reshape(4, 8, 4)}, "transposed": {KEY: cb.t()},
        "strided": {KEY: torch.randn(32, 8, generator=g)[:, ::2]}, "shared": {KEY: cb, "vq.embed": cb[:16]},
        "parameter": {KEY: torch.nn.Parameter(cb.clone())}, "requires_grad": {KEY: cb.clone().requires_grad_()},
        "deep": deep, "list": [cb, cb * 2], "tuple": (cb,), "non_str_keys": {1: cb, (2, 3): cb, None: cb},
        "ordered": collections.OrderedDict({KEY: cb}), "bare": cb, "none": None, "int": 3, "empty": {},
        "odd_values": {KEY: cb, "meta": {"s": {1, 2}, "c": 1j, "b": bytearray(b"x"), "r": range(3)}},
        "sparse": {KEY: cb.to_sparse()}, "meta": {KEY: torch.empty(32, 4, device="meta")},
    })
    return cases


SWEEP = _sweep_files()


@pytest.mark.parametrize("name", sorted(SWEEP))
def test_every_odd_file_is_analysed_or_refused_in_one_line(tmp_path, capsys, name):
    path = tmp_path / f"{name}.pt"
    torch.save(SWEEP[name], path)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        code, out, err = _run(capsys, "analyze", path, "--json")
    assert code in (0, 2), err  # 1 would be an internal error: a bug
    if code == 2:
        assert len(_lines(err)) == 1 and "Traceback" not in err, err
    else:
        assert json.loads(out)["codebooks"] is not None


@pytest.mark.parametrize("dtype", ["<i8", "|b1", "<c8", "<U1", "<M8[s]", "V8"])
def test_numpy_codebooks_of_odd_dtypes(tmp_path, capsys, dtype):
    a = np.zeros((32, 4), dtype=dtype) if dtype != "V8" else np.zeros(32, dtype=[("a", "<f4", (2,))])
    np.save(tmp_path / "a.npy", a)
    code, _, err = _run(capsys, "analyze", tmp_path / "a.npy")
    assert code in (0, 2) and (code == 0 or len(_lines(err)) == 1), err


def test_checkpoint_error_is_the_one_user_facing_type(tmp_path):
    path = tmp_path / "p5.pt"
    torch.save({KEY: torch.randn(4, 4)}, path, pickle_protocol=5)
    with pytest.raises(CheckpointError, match="pickle protocol 5"):
        load_checkpoint(path)


# --- the live path (--model / --data): bad options and data are one line too ---------------------------

USER_MODEL = '''
import torch
from vector_quantize_pytorch import VectorQuantize


class Tok(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = torch.nn.Linear(4, 8)
        self.vq = VectorQuantize(dim=8, codebook_size=16)

    def forward(self, x):
        return self.vq(self.enc(x)[:, None])


def build():
    torch.manual_seed(0)
    return Tok()
'''


@pytest.fixture
def live_files(tmp_path, monkeypatch):
    pytest.importorskip("vector_quantize_pytorch")
    (tmp_path / "advtok.py").write_text(USER_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    torch.save(importlib.import_module("advtok").build().state_dict(), tmp_path / "w.pt")
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.standard_normal((40, 4)).astype(np.float32))
    np.save(tmp_path / "wide.npy", rng.standard_normal((40, 5)).astype(np.float32))
    return tmp_path


@pytest.mark.parametrize("extra, fragment", [
    (["--device", "bogus"], "--device"),
    (["--device", "cuda:99"], "--device"),
    (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "-1"], "--batch-size"),
    (["--max-batches", "0"], "--max-batches"),
    (["--data-file-is-wide"], "batch 0 failed"),
])
def test_live_options_and_data_are_one_line(live_files, capsys, extra, fragment):
    data = live_files / ("wide.npy" if extra == ["--data-file-is-wide"] else "x.npy")
    extra = [] if extra == ["--data-file-is-wide"] else extra
    code, _, err = _run(capsys, "analyze", live_files / "w.pt", "--model", "advtok:build", "--data", data,
                        "--json", *extra)
    assert code == 2, err  # not 1 (an internal error) and not a second "yielded no data" warning line
    assert len(_lines(err)) == 1 and fragment in err, err


def test_live_analysis_of_empty_data_is_one_error_and_no_warning(caplog):
    import logging

    import shrinkscope
    from shrinkscope.live import LiveError

    vqp = pytest.importorskip("vector_quantize_pytorch")
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), vqp.VectorQuantize(dim=8, codebook_size=16)).eval()
    with caplog.at_level(logging.WARNING, logger="shrinkscope"), pytest.raises(LiveError, match="empty data"):
        shrinkscope.analyze(model, (x for x in []))  # an exhausted generator
    assert not [r for r in caplog.records if "yielded no data" in r.getMessage()]

"""Property-based fuzzing of every reader of untrusted bytes (hypothesis). The property is the promise:
a file either loads, or fails with one ``CheckpointError`` / ``TimelineError`` line; never another
exception, never code run from it, never unbounded time. About 20 s in total.
Run: pytest tests/hardening/test_fuzz_loaders.py -q"""
from __future__ import annotations

import io
import json
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from shrinkscope.checkpoint import CheckpointError, find_codebooks, load_array, load_checkpoint
from shrinkscope.formats import FormatError, parse_safetensors_header
from shrinkscope.report.timeline import TimelineError, read_timeline, timeline_text

pytestmark = pytest.mark.fuzz
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
MARKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_pwned_by_fuzz")


def _exercise(path) -> None:
    """Everything analyze does with a file: load, discover, read the codebooks; only CheckpointError may escape."""
    try:
        ckpt = load_checkpoint(path)
        for ref in list(ckpt.tensors.values())[:8]:
            ref.load()
        find_codebooks(ckpt)
    except CheckpointError:
        pass
    assert not os.path.exists(MARKER)


def _write(tmp_path_factory, name: str, data: bytes):
    path = tmp_path_factory.mktemp("fz") / name
    path.write_bytes(data)
    return path


# --- safetensors headers ----------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20)
DTYPES = ["F32"] * 4 + ["F16", "BF16", "F64", "I64", "U8", "BOOL", "F8_E4M3", "C64", "f32", ""]


@st.composite
def near_valid_headers(draw):
    """Headers close to valid: real dtypes and shapes, offsets sometimes right, sometimes off."""
    entries, pos = {}, 0
    for i in range(draw(st.integers(0, 4))):
        dtype = draw(st.sampled_from(DTYPES))
        shape = draw(st.lists(st.integers(0, 6), min_size=0, max_size=3) | st.lists(st.integers(-2, 6), max_size=3))
        size = {"F64": 8, "I64": 8, "F32": 4, "C64": 8}.get(dtype, 2 if dtype in ("F16", "BF16") else 1)
        n = int(np.prod([max(s, 0) for s in shape])) * size if shape else size
        begin = pos + draw(st.sampled_from([0] * 12 + [-1, 1]))
        end = begin + n + draw(st.sampled_from([0] * 12 + [1, -1]))
        pos = max(pos, end)
        key = draw(st.sampled_from(["quantize.embedding.weight", f"layers.{i}.codebook", "x\x1b[2J", "__m"]))
        entries[key] = {"dtype": dtype, "shape": shape, "data_offsets": draw(
            st.sampled_from([[begin, end]] * 12 + [[end, begin], [begin], "0,4", [begin, float(end)]]))}
    if draw(st.integers(0, 3)) == 0:
        entries["__metadata__"] = draw(st.sampled_from([{"format": "pt"}] * 4 + [{"a": 1}, [], "x"]))
    return json.dumps(entries).encode(), pos + draw(st.sampled_from([0] * 8 + [1, -1]))


@FUZZ
@given(near_valid_headers())
def test_near_valid_safetensors(tmp_path_factory, case):
    header, data_len = case
    path = _write(tmp_path_factory, "m.safetensors",
                  struct.pack("<Q", len(header)) + header + os.urandom(max(data_len, 0)))
    accepted = True
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError:
        accepted = False
    if accepted:  # what our validator accepts, the safetensors library reads: no second opinion fails
        for ref in ckpt.tensors.values():
            ref.load()


@FUZZ
@given(json_values, st.integers(0, 64))
def test_arbitrary_json_headers(tmp_path_factory, value, data_len):
    header = json.dumps(value, allow_nan=True).encode()
    try:
        parse_safetensors_header(header, data_len, "x")
    except FormatError:
        pass
    _exercise(_write(tmp_path_factory, "m.safetensors", struct.pack("<Q", len(header)) + header + bytes(data_len)))


@FUZZ
@given(st.binary(min_size=0, max_size=64), st.integers(0, 2**64 - 1))
def test_random_bytes_after_a_length(tmp_path_factory, body, n):
    _exercise(_write(tmp_path_factory, "m.safetensors", struct.pack("<Q", n) + b"{" + body))


# --- torch files and pickles --------------------------------------------------------------------------------

class _Evil:
    def __reduce__(self):
        return (open, (MARKER, "w"))


tensors = st.builds(lambda k, d: torch.randn(k, d), st.integers(0, 5), st.integers(0, 4)) | st.builds(
    lambda k, d, s: torch.randn(k, d).to(s), st.integers(1, 5), st.integers(1, 4),
    st.sampled_from([torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.bool]))
leaves = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6) | tensors | tensors
trees = st.recursive(leaves, lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner) | st.dictionaries(
    st.sampled_from(["state_dict", "model", "quantize", "embedding", "weight", "codebook", "embed", "ema"]),
    inner, max_size=4), max_leaves=12)


@FUZZ
@given(trees, st.booleans())
def test_random_torch_trees(tmp_path_factory, tree, legacy):
    buf = io.BytesIO()
    torch.save(tree, buf, _use_new_zipfile_serialization=not legacy)
    _exercise(_write(tmp_path_factory, "m.pt", buf.getvalue()))


def _valid_torch_bytes() -> bytes:
    buf = io.BytesIO()
    torch.save({"state_dict": {"quantize.embedding.weight": torch.randn(8, 4), "x": [1, 2.0, "s"]}}, buf)
    return buf.getvalue()


VALID = _valid_torch_bytes()


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_mutated_torch_zip(tmp_path_factory, flips):
    data = bytearray(VALID)
    for pos, byte in flips:
        data[pos] = byte
    _exercise(_write(tmp_path_factory, "m.pt", bytes(data)))


OPS = [b"}", b"]", b"(", b")", b"t", b"0", b"N", b"\x88", b"\x89", b"K\x05", b"X\x01\x00\x00\x00a", b"s", b"u",
       b"a", b"e", b"R", b"b", b"\x81", b"q\x00", b"h\x00", b"\x94", b"cos\nsystem\n", b"cbuiltins\nopen\n",
       b"ctorch._utils\n_rebuild_tensor_v2\n", b"cnumpy.core.multiarray\n_reconstruct\n", b"cnumpy\nndarray\n",
       b"\x8c\x02os\x8c\x06system\x93", b"cargparse\nNamespace\n"]


@FUZZ
@given(st.lists(st.sampled_from(OPS), max_size=30))
def test_random_opcode_streams(tmp_path_factory, ops):
    """Legacy pickles assembled from opcodes, dangerous globals included: nothing may run."""
    data = b"\x80\x02" + b"".join(ops) + b"."
    _exercise(_write(tmp_path_factory, "m.pkl", data))


@FUZZ
@given(trees)
def test_pickles_with_code_in_them_never_run(tmp_path_factory, tree):
    for blob in (pickle.dumps({"t": tree, "x": _Evil()}, protocol=2),):
        _exercise(_write(tmp_path_factory, "m.pkl", blob))
    buf = io.BytesIO()
    torch.save({"t": tree, "x": _Evil()}, buf)
    _exercise(_write(tmp_path_factory, "m.pt", buf.getvalue()))


# --- numpy --------------------------------------------------------------------------------------------------

@st.composite
def npy_files(draw):
    descr = draw(st.sampled_from(["<f4", ">f4", "<f8", "<f2", "<i8", "|b1", "<c8", "|O", "<f16", "|V8", "<U3",
                                  "[('a', '<f4')]"]))
    shape = draw(st.lists(st.integers(0, 6), max_size=3) | st.just([2**40, 8]) | st.just([-1, 4]))
    fortran = draw(st.booleans())
    header = "{'descr': %s, 'fortran_order': %s, 'shape': (%s), }" % (
        descr if descr.startswith("[") else repr(descr), fortran, "".join(f"{s}, " for s in shape))
    header = header.encode("latin1")
    pad = 64 - (10 + len(header) + 1) % 64
    head = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header) + pad + 1) + header + b" " * pad + b"\n"
    return head + os.urandom(draw(st.integers(0, 400)))


@FUZZ
@given(npy_files(), st.booleans(), st.booleans())
def test_numpy_headers_and_archives(tmp_path_factory, npy, archive, deflate):
    if not archive:
        path = _write(tmp_path_factory, "m.npy", npy)
    else:
        path = tmp_path_factory.mktemp("fz") / "m.npz"
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED) as z:
            z.writestr("latents.npy", npy)
    _exercise(path)
    try:
        load_array(path, max_rows=3)
    except CheckpointError:
        pass


# --- JSONL run logs ------------------------------------------------------------------------------------------

records = st.dictionaries(
    st.sampled_from(["step", "name", "scope", "metrics", "warnings", "event", "time"]),
    json_values | st.dictionaries(st.sampled_from(["utilization", "spread_ratio", "x"]), json_values, max_size=3),
    max_size=6)


@FUZZ
@given(st.lists(records, min_size=1, max_size=6))
def test_jsonl_records(tmp_path_factory, rows):
    path = tmp_path_factory.mktemp("fz") / "run.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    try:
        timeline_text(read_timeline(str(path)))
    except TimelineError:
        pass

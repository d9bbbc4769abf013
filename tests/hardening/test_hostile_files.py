"""Hostile and malformed files: every one is refused with one CheckpointError line or read correctly, within
time and memory; none runs code.  Run: pytest tests/hardening -q"""
from __future__ import annotations

import os
import struct
import sys
import time
import types
import zipfile

import numpy as np
import pytest
import torch

from shrinkscope.checkpoint import CheckpointError, find_codebooks, load_array, load_checkpoint

KEY = "quantize.embedding.weight"


def _st(path, header: bytes, data: bytes = b"") -> str:
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header + data)
    return str(path)


def _codebooks(path):
    return find_codebooks(load_checkpoint(path))


# --- class 1: resource exhaustion from tiny inputs ------------------------------------------------------


def test_self_referential_dict_is_walked_once(tmp_path):
    d: dict = {KEY: torch.randn(16, 4)}
    for i in range(8):
        d[f"loop{i}"] = d
    torch.save(d, tmp_path / "loop.pt")
    assert os.path.getsize(tmp_path / "loop.pt") < 4096
    start = time.perf_counter()
    (fc,) = _codebooks(tmp_path / "loop.pt")
    assert time.perf_counter() - start < 5
    assert fc.codebook.shape == (16, 4)


def test_shared_subtrees_that_explode_along_paths_are_refused(tmp_path):
    # no cycle, but 40 levels of {a: x, b: x}: 2^40 paths from a few hundred bytes
    x: dict = {KEY: torch.randn(4, 2)}
    for _ in range(40):
        x = {"a": x, "b": x, "c": x}
    torch.save(x, tmp_path / "dag.pt")
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="nested objects|no codebook|no dense"):
        _codebooks(tmp_path / "dag.pt")
    assert time.perf_counter() - start < 20


def test_stride0_view_is_not_materialised(tmp_path):
    torch.save({KEY: torch.zeros(1).expand(1 << 28, 4)}, tmp_path / "expand.pt")  # asks for 4 GiB
    assert os.path.getsize(tmp_path / "expand.pt") < 4096
    with pytest.raises(CheckpointError, match="stride-0 view"):
        _codebooks(tmp_path / "expand.pt")


def test_small_honest_views_still_load(tmp_path):
    base = torch.randn(8, 4)
    torch.save({KEY: base[::2]}, tmp_path / "view.pt")  # a strided view of a larger storage
    (fc,) = _codebooks(tmp_path / "view.pt")
    assert torch.equal(fc.codebook, base[::2])


def test_npz_decompression_bomb_is_refused_before_reading(tmp_path):
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        with z.open("codebook.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                     "shape": (1 << 24, 8)})  # 512 MiB of zeros
            block = bytes(1 << 24)
            for _ in range(32):
                f.write(block)
    assert os.path.getsize(path) < 8 << 20
    with pytest.raises(CheckpointError, match="decompression bomb"):
        _codebooks(path)


def test_npz_member_shorter_than_its_header_is_truncated(tmp_path):
    path = tmp_path / "short.npz"
    with zipfile.ZipFile(path, "w") as z:
        with z.open("codebook.npy", "w") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                     "shape": (1000, 8)})
            f.write(bytes(64))
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path)


# --- class 4: silent wrong results -----------------------------------------------------------------------


def test_deflated_torch_zip_reads_the_real_values(tmp_path):
    cb = torch.randn(64, 4)
    torch.save({KEY: cb}, tmp_path / "a.pt")
    with zipfile.ZipFile(tmp_path / "a.pt") as zin, \
            zipfile.ZipFile(tmp_path / "deflated.pt", "w", compression=zipfile.ZIP_DEFLATED) as zout:
        for name in zin.namelist():
            zout.writestr(name, zin.read(name))
    (fc,) = _codebooks(tmp_path / "deflated.pt")
    assert torch.equal(fc.codebook, cb)


@pytest.mark.parametrize("dtype", [">f4", ">f8", np.longdouble])
def test_big_endian_and_long_double_arrays(tmp_path, dtype):
    a = np.random.default_rng(0).normal(size=(16, 4)).astype(dtype)
    np.save(tmp_path / "cb.npy", a)
    (fc,) = _codebooks(tmp_path / "cb.npy")
    np.testing.assert_allclose(fc.codebook.double().numpy(), a.astype(np.float64), rtol=1e-6)


def test_big_endian_array_inside_a_torch_file(tmp_path):
    a = np.arange(32, dtype=">f4").reshape(8, 4)
    torch.save({KEY: a}, tmp_path / "np.pt")
    (fc,) = _codebooks(tmp_path / "np.pt")
    assert torch.equal(fc.codebook, torch.arange(32.0).reshape(8, 4))


# --- safe loader: numpy and Lightning 1.0 -----------------------------------------------------------------


def test_training_checkpoint_with_numpy_arrays_and_scalars(tmp_path):
    cb = torch.randn(8, 4)
    torch.save({"state_dict": {KEY: cb}, "metrics": np.array([0.5, 0.25]), "best": np.float64(0.1),
                "epoch": np.int64(3)}, tmp_path / "train.ckpt")
    ckpt = load_checkpoint(tmp_path / "train.ckpt")
    (fc,) = find_codebooks(ckpt)
    assert torch.equal(fc.codebook, cb)


def test_numpy_object_arrays_stay_refused(tmp_path):
    torch.save({KEY: torch.randn(4, 2), "obj": np.array([print], dtype=object)}, tmp_path / "obj.pt")
    with pytest.raises(CheckpointError, match="refused to unpickle|cannot be read"):
        load_checkpoint(tmp_path / "obj.pt")


def _fake_lightning(monkeypatch):
    mod = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")

    class ModelCheckpoint:  # stands for the real 1.0-era class, which no current install provides
        def __reduce__(self):
            return (open, ("/never", "w"))

    ModelCheckpoint.__module__, ModelCheckpoint.__qualname__ = mod.__name__, "ModelCheckpoint"
    mod.ModelCheckpoint = ModelCheckpoint
    for name in ("pytorch_lightning", "pytorch_lightning.callbacks", mod.__name__):
        monkeypatch.setitem(sys.modules, name, sys.modules.get(name) or types.ModuleType(name))
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    return ModelCheckpoint


def test_lightning_1_0_callbacks_keyed_by_class(tmp_path, monkeypatch):
    cls = _fake_lightning(monkeypatch)
    cb = torch.randn(8, 4)
    torch.save({"state_dict": {KEY: cb}, "callbacks": {cls: {"best_model_score": torch.tensor(0.5)}},
                "pytorch-lightning_version": "1.0.8"}, tmp_path / "pl.ckpt")
    monkeypatch.delitem(sys.modules, cls.__module__)  # loading must not need (or import) the class
    (fc,) = _codebooks(tmp_path / "pl.ckpt")
    assert torch.equal(fc.codebook, cb)


def test_lightning_class_used_as_a_value_stays_refused(tmp_path, monkeypatch):
    cls = _fake_lightning(monkeypatch)
    marker = tmp_path / "ran"
    torch.save({"state_dict": {KEY: torch.randn(4, 2)}, "callbacks": {cls: 1}, "hp": cls},
               tmp_path / "pl.ckpt")
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        load_checkpoint(tmp_path / "pl.ckpt")
    torch.save({"state_dict": {KEY: torch.randn(4, 2)}, "callbacks": {cls: cls()}}, tmp_path / "inst.ckpt")
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        load_checkpoint(tmp_path / "inst.ckpt")
    assert not marker.exists() and not os.path.exists("/never")


# --- class 6: malformed structure ----------------------------------------------------------------------


def test_meta_sparse_and_nested_tensors_are_skipped(tmp_path):
    cb = torch.randn(8, 4)
    torch.save({KEY: cb, "quantize.meta.weight": torch.empty(8, 4, device="meta"),
                "quantize.sparse.codebook": torch.randn(8, 4).to_sparse(),
                "quantize.nested.codebook": torch.nested.nested_tensor([torch.randn(2, 4), torch.randn(3, 4)]),
                "quantize.q.codebook": torch.quantize_per_tensor(torch.randn(8, 4), 0.1, 0, torch.qint8)},
               tmp_path / "odd.pt")
    (fc,) = _codebooks(tmp_path / "odd.pt")
    assert fc.key == KEY
    torch.save({"quantize.codebook": torch.empty(8, 4, device="meta")}, tmp_path / "meta.pt")
    with pytest.raises(CheckpointError, match="no dense tensors"):
        load_checkpoint(tmp_path / "meta.pt")


def test_torch_zip_named_safetensors_is_read_as_torch(tmp_path):
    cb = torch.randn(8, 4)
    torch.save({KEY: cb}, tmp_path / "model.safetensors")
    (fc,) = _codebooks(tmp_path / "model.safetensors")
    assert torch.equal(fc.codebook, cb)


GOOD = b'{"codebook":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}'


@pytest.mark.parametrize("header, data, fragment", [
    (b'{"codebook": 5}', b"", "not an object with dtype"),
    (b'{"codebook":{"dtype":"F32","shape":[2,2]}}', b"", "not an object with dtype"),
    (b'{"codebook":{"dtype":"F32","shape":[2,2],"data_offsets":[0]}}', bytes(16), "data_offsets"),
    (b'{"codebook":{"dtype":"F32","shape":[2,2],"data_offsets":[16,0]}}', bytes(16), "data_offsets"),
    (b'{"codebook":{"dtype":"F32","shape":[2,2],"data_offsets":[0,8]}}', bytes(8), "needs 16 bytes"),
    ((b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],'
      b'"data_offsets":[4,12]}}'), bytes(12), "overlaps"),
    (b'{"codebook":{"dtype":"F32","shape":[-2,2],"data_offsets":[0,16]}}', bytes(16), "shape"),
    (b'{"codebook":{"dtype":"F32","shape":[2.5,2],"data_offsets":[0,16]}}', bytes(16), "shape"),
    (b'{"codebook":{"dtype":"F32","shape":[2,2],"data_offsets":[0,1e400]}}', bytes(16), "non-finite|JSON"),
    (b'{"codebook":{"dtype":"F32","shape":[2,2],"data_offsets":[0,NaN]}}', bytes(16), "JSON"),
    (b'{"codebook":{"dtype":"F32","shape":[99999999999999999999999999,2],"data_offsets":[0,16]}}',
     bytes(16), "JSON"),
    (b'{"codebook":{"dtype":"C64","shape":[2,2],"data_offsets":[0,16]}}', bytes(16), "unknown dtype"),
    (b'{"codebook":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"__metadata__":{"a":[1]}}',
     bytes(16), "__metadata__"),
    (b"[1, 2]", b"", "unrecognised bytes"),
    (b"{" + b'"a":' * 0 + b"[" * 100_000 + b"]" * 100_000 + b"}", b"", "JSON|deeply"),
    (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, b"", "JSON|deeply"),
    (GOOD, bytes(16) + b"trailing", "cover 16 bytes"),
    (GOOD, bytes(10), "data_offsets"),
])
def test_malformed_safetensors_headers(tmp_path, header, data, fragment):
    path = _st(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(CheckpointError, match=fragment):
        _codebooks(path)


def test_huge_safetensors_header_claim(tmp_path):
    path = _st(tmp_path / "huge.safetensors", b'{"a":1}')
    with open(path, "r+b") as f:
        f.write(struct.pack("<Q", 100_000_001))
    with pytest.raises(CheckpointError, match="limit"):
        load_checkpoint(path)


def test_valid_safetensors_header_reads(tmp_path):
    data = np.arange(4, dtype="<f4").tobytes()
    path = _st(tmp_path / "ok.safetensors", GOOD, data)
    (fc,) = _codebooks(path)
    assert fc.codebook.tolist() == [[0.0, 1.0], [2.0, 3.0]]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_and_devices_are_refused_without_opening(tmp_path):
    fifo = tmp_path / "pipe.pt"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="FIFO"):
        load_checkpoint(fifo)  # opening a FIFO for reading would block forever
    if os.path.exists("/dev/zero"):
        with pytest.raises(CheckpointError, match="device"):
            load_array("/dev/zero")


def test_latents_subsample_reads_only_the_rows_taken(tmp_path):
    z = np.random.default_rng(0).normal(size=(50_000, 4)).astype(np.float32)
    np.save(tmp_path / "z.npy", z)
    np.savez_compressed(tmp_path / "z.npz", latents=z)
    torch.save(torch.from_numpy(z), tmp_path / "z.pt")
    from safetensors.numpy import save_file

    save_file({"latents": z}, str(tmp_path / "z.safetensors"))
    picks = {}
    for ext in ("npy", "npz", "pt", "safetensors"):
        got = load_array(tmp_path / f"z.{ext}", max_rows=1000, seed=3)
        assert got.shape == (1000, 4)
        picks[ext] = got
        # each row is one of the file's rows, in file order
        rows = {tuple(r) for r in z[::1].tolist()} if ext == "npy" else None
        if rows is not None:
            assert all(tuple(r) in rows for r in got.tolist())
    for ext in ("npz", "pt", "safetensors"):
        assert torch.equal(picks[ext], picks["npy"])  # same seed, same rows whatever the format


def test_header_of_millions_of_numbers_is_refused_fast(tmp_path):
    header = b'{"a":[' + b"1," * 10_000_000 + b"1]}"  # 20 MB; json would take ~5 s and 100+ MB
    path = _st(tmp_path / "numbers.safetensors", header)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="values"):
        load_checkpoint(path)
    assert time.perf_counter() - start < 3


def test_long_metadata_is_not_mistaken_for_a_bomb(tmp_path):
    cb = torch.randn(8, 4)
    history = [float(i) for i in range(300_000)]  # a loss history: one container, many leaves
    torch.save({"state_dict": {KEY: cb}, "loss": history, "shared": [history] * 200,
                "vocab": {f"t{i}": i for i in range(50_000)}}, tmp_path / "long.pt")
    start = time.perf_counter()
    (fc,) = _codebooks(tmp_path / "long.pt")
    assert torch.equal(fc.codebook, cb) and time.perf_counter() - start < 20


def test_many_small_inflations_share_one_budget(tmp_path):
    # 40 stride-0 views of 64 MiB each: each alone fits the 256 MiB floor, together they must not
    sd = {f"quantizer.layers.{i}.codebook": torch.zeros(1).expand(1 << 22, 4) for i in range(40)}
    torch.save(sd, tmp_path / "many.pt")
    with pytest.raises(CheckpointError, match="stride-0 view"):
        _codebooks(tmp_path / "many.pt")


@pytest.mark.parametrize("sd", [
    {"vq._codebook.embed": torch.randn(100_000, 2, 2)},  # 1.6 MB declaring 100,000 heads
    {f"q.layers.{i}.codebook": torch.randn(2, 2) for i in range(5000)},
])
def test_too_many_codebooks_are_refused_before_discovery(tmp_path, sd):
    torch.save(sd, tmp_path / "heads.pt")
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="more than 4,096"):
        _codebooks(tmp_path / "heads.pt")
    assert time.perf_counter() - start < 20

"""Bounded, code-free readers for the array formats: safetensors headers, ``.npy`` and ``.npz``.

Why a module of its own: every number in these files is chosen by whoever wrote the file. A 2 KB file can
declare a 4 GB tensor, a 3 MB ``.npz`` can unpack to 3 GB, a header can nest ten thousand levels deep or
place two tensors on the same bytes. So nothing here trusts a declared size: a header is validated whole
(the same rules as the safetensors library, plus bounds) before any tensor is read, and no array is
materialised beyond four times the bytes the file actually stores for it, except from one allowance of
``INFLATE_FLOOR`` bytes shared by all tensors of a file (``InflationBudget``). Honest data is never larger
than what is stored; only views (stride 0) and compression can inflate.

Large honest arrays (latents) are read in row chunks, so ``NpyMember.sample`` keeps at most the rows
asked for plus one chunk (``CHUNK_BYTES``) in memory whatever the file size.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import stat
import struct
import zipfile
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

__all__ = [
    "FormatError", "InflationBudget", "NpyMember", "check_materialise", "items_for_rows", "iter_jsonl_lines",
    "jsonl_lines", "materialise_limit",
    "native_dtype", "npz_members", "parse_safetensors_header", "read_safetensors_header", "regular_file",
    "sample_tensor", "to_tensor",
]

INFLATE_FLOOR = 256 << 20
"""Bytes any tensor may materialise to regardless of what the file stores for it (256 MiB)."""
SAFETENSORS_MAX_HEADER = 100_000_000
"""The safetensors specification's own header limit (bytes)."""
MAX_HEADER_ENTRIES = 500_000
"""JSON objects a safetensors header may hold (parsing stops at once beyond it)."""
MAX_DIMS = 16
MAX_ARRAYS = 100_000
"""Arrays an ``.npz`` may hold."""
CHUNK_BYTES = 16 << 20  # rows are streamed in chunks of about this many bytes
MAX_JSONL_LINE = 16 << 20
"""Longest line of a JSONL run log (a shrinkscope record is a few KB): a longer one is refused before it is
read whole, so a 1 GB line cannot take gigabytes of memory to parse."""

_ST_ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "F64": 8, "I64": 8, "U64": 8,
}
ST_FLOAT = {"F16", "BF16", "F32", "F64", "F8_E4M3", "F8_E5M2"}


class FormatError(ValueError):
    """A file whose structure is invalid or would need unbounded resources; one line for the user."""


def regular_file(path: str, *, hint: str) -> int:
    """Size of ``path``; refuses missing paths, folders, FIFOs, devices and sockets before anything opens
    them (opening a FIFO for reading blocks; a device never ends). ``hint`` says what to pass instead."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FormatError(f"{path}: no such file") from None
    except OSError as exc:
        raise FormatError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise FormatError(f"{path}: is a directory; {hint}")
    if not stat.S_ISREG(st.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device" if stat.S_ISCHR(st.st_mode) or \
            stat.S_ISBLK(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file"
        raise FormatError(f"{path}: is {kind}, not a regular file; {hint}")
    return st.st_size


def materialise_limit(stored_bytes: int) -> int:
    """Most bytes an array backed by ``stored_bytes`` of file data may grow to when materialised."""
    return max(4 * int(stored_bytes), INFLATE_FLOOR)


class InflationBudget:
    """What one file may inflate to, over all its tensors: ``INFLATE_FLOOR`` bytes in total for tensors
    larger than four times what the file stores for them (so a thousand small views cannot each take the
    floor)."""

    def __init__(self) -> None:
        self.left = INFLATE_FLOOR


def check_materialise(what: str, need: int, stored: int, budget: InflationBudget | None = None) -> None:
    """Raise ``FormatError`` before materialising ``need`` bytes backed by ``stored`` bytes of the file.

    Up to four times the stored bytes is always allowed (honest compression); beyond that the tensor draws
    on ``budget`` (one ``INFLATE_FLOOR`` per file), or on a fresh floor when no budget is given.
    """
    if need <= 4 * int(stored):
        return
    left = INFLATE_FLOOR if budget is None else budget.left
    if need > left:
        raise FormatError(f"{what} would take {need:,} bytes in memory from {stored:,} bytes in the file (a "
                          "stride-0 view or a decompression bomb); refused")
    if budget is not None:
        budget.left -= need


# ---- safetensors ----------------------------------------------------------------------------------------

def _no_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name}")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > 20:
        raise ValueError("integer with more than 20 digits")
    return int(text)


def _float(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ValueError(f"non-finite number {text[:20]}")
    return v


def parse_safetensors_header(raw: bytes, data_size: int, source: str) -> dict[str, dict[str, Any]]:
    """Validate a safetensors JSON header and return ``{name: {"dtype", "shape", "data_offsets"}}``.

    The rules are the safetensors library's (a JSON object of entries with a known dtype, a shape of
    non-negative ints, ``[begin, end]`` offsets whose span is exactly ``numel * itemsize``, entries tiling
    the data section without gaps or overlap, ``__metadata__`` a str->str map) plus bounds: integers of at
    most 20 digits, no NaN/Infinity, at most ``MAX_HEADER_ENTRIES`` objects, at most ``MAX_DIMS`` dims.

    Raises:
        FormatError: the first rule broken, in one line.
    """
    count = [0]

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        count[0] += 1
        if count[0] > MAX_HEADER_ENTRIES:
            raise ValueError(f"more than {MAX_HEADER_ENTRIES:,} JSON objects")
        return dict(pairs)

    if raw.count(b",") > 8 * MAX_HEADER_ENTRIES:  # C-speed count: a 100 MB list of numbers is not parsed
        raise FormatError(f"{source}: safetensors header holds more than {8 * MAX_HEADER_ENTRIES:,} values; "
                          "not a safetensors file")
    try:
        text = raw.decode("utf-8")
        header = json.loads(text, object_pairs_hook=hook, parse_int=_bounded_int, parse_float=_float,
                            parse_constant=_no_constant)
    except RecursionError:
        raise FormatError(f"{source}: safetensors header nests too deeply; not a safetensors file") from None
    except (ValueError, UnicodeDecodeError) as exc:
        msg = " ".join(str(exc).split())[:120]
        raise FormatError(f"{source}: safetensors header is not valid JSON ({msg})") from None
    if not isinstance(header, dict):
        raise FormatError(f"{source}: safetensors header is a JSON {type(header).__name__}, not an object")
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise FormatError(f"{source}: safetensors __metadata__ must map strings to strings")
    spans = []
    for name, info in header.items():
        where = f"{source}: safetensors entry {name[:60]!r}"
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
            raise FormatError(f"{where} is not an object with dtype, shape and data_offsets")
        dtype, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in _ST_ITEMSIZE:
            raise FormatError(f"{where} has unknown dtype {str(dtype)[:20]!r}")
        if not isinstance(shape, list) or len(shape) > MAX_DIMS or \
                not all(type(s) is int and s >= 0 for s in shape):
            raise FormatError(f"{where} has shape {str(shape)[:60]}; expected a list of at most {MAX_DIMS} "
                              "non-negative integers")
        if not isinstance(offs, list) or len(offs) != 2 or not all(type(o) is int for o in offs) \
                or not 0 <= offs[0] <= offs[1] <= data_size:
            raise FormatError(f"{where} has data_offsets {str(offs)[:60]}; expected [begin, end] with "
                              f"0 <= begin <= end <= {data_size} (the data section)")
        need = math.prod(shape) * _ST_ITEMSIZE[dtype]
        if need != offs[1] - offs[0]:
            raise FormatError(f"{where}: shape {shape} of {dtype} needs {need} bytes but its offsets span "
                              f"{offs[1] - offs[0]}")
        spans.append((offs[0], offs[1], name))
    spans.sort()
    end = 0
    for begin, stop, name in spans:
        if begin != end:
            what = "overlaps the previous tensor" if begin < end else "leaves a gap before it"
            raise FormatError(f"{source}: safetensors entry {name[:60]!r} {what} (offset {begin}, expected "
                              f"{end}); the file is damaged")
        end = stop
    if end != data_size:
        raise FormatError(f"{source}: safetensors tensors cover {end} bytes but the data section has "
                          f"{data_size}; the file is damaged or truncated")
    header["__metadata__"] = meta
    return header


def read_safetensors_header(path: str, size: int) -> tuple[dict[str, Any], int]:
    """Read and validate the header of the safetensors file ``path`` of ``size`` bytes.

    Returns:
        ``(header, data_start)``: validated entries (plus ``__metadata__``) and the data section's offset.
    """
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise FormatError(f"{path}: is truncated (shorter than a safetensors header)")
        n = struct.unpack("<Q", head)[0]
        if n > SAFETENSORS_MAX_HEADER:
            raise FormatError(f"{path}: safetensors header claims {n:,} bytes, over the format's limit of "
                              f"{SAFETENSORS_MAX_HEADER:,}")
        if 8 + n > size:
            raise FormatError(f"{path}: is truncated: its safetensors header is longer than the file "
                              f"({size} bytes)")
        raw = f.read(n)
    return parse_safetensors_header(raw, size - 8 - n, path), 8 + n


# ---- numpy ------------------------------------------------------------------------------------------------

def native_dtype(dtype: np.dtype, source: str) -> np.dtype | None:
    """The dtype an array is converted to for torch (native byte order, long double as float64); None
    for kinds that are never tensors here (complex, strings, structured). Object arrays are refused."""
    if dtype.hasobject:
        raise FormatError(f"{source}: holds Python objects (dtype {dtype}); they need pickle, which "
                          "shrinkscope does not load")
    if dtype.kind not in "fiub" or dtype.fields is not None or dtype.subdtype is not None:
        return None
    if dtype.kind == "f" and dtype.itemsize > 8:
        return np.dtype(np.float64)  # long double: torch has no such type
    return dtype.newbyteorder("=")


def to_tensor(a: np.ndarray, source: str) -> torch.Tensor | None:
    """A torch tensor of a numpy array in native order (None for non-numeric kinds)."""
    dt = native_dtype(a.dtype, source)
    if dt is None:
        return None
    if a.dtype != dt:
        a = a.astype(dt)
    elif not a.flags.writeable or not a.flags.c_contiguous:
        a = np.array(a, order="C")  # a read-only map or a view: torch wants its own writable copy
    return torch.from_numpy(a)


def _read_npy_header(f: Any, source: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unknown .npy version {version}")
    except (ValueError, EOFError, OSError, SyntaxError, TypeError) as exc:
        raise FormatError(f"{source}: is not a valid .npy array ({' '.join(str(exc).split())[:120]})") from None
    if len(shape) > MAX_DIMS or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise FormatError(f"{source}: .npy header declares shape {shape}")
    return tuple(shape), bool(fortran), dtype


class NpyMember:
    """One array of a ``.npy`` / ``.npz`` file, read lazily and within bounds.

    Attributes:
        name: the array's name (the file stem for ``.npy``, the member name without ``.npy`` in an npz).
        shape, dtype: from its header.
    """

    def __init__(self, path: str, member: str | None, source: str, archive: zipfile.ZipFile | None = None,
                 budget: InflationBudget | None = None):
        self.path, self.member, self.source = path, member, source
        self.budget = budget or InflationBudget()
        with (archive.open(member) if archive is not None else self._open()) as f:
            self.shape, self.fortran, self.dtype = _read_npy_header(f, source)
            self._data_offset = f.tell()
        self.target = native_dtype(self.dtype, source)
        if member is None:
            self.stored = os.path.getsize(path) - self._data_offset
            self.compressed = False
        else:
            if archive is not None:
                info = archive.getinfo(member)
            else:
                with zipfile.ZipFile(path) as z:
                    info = z.getinfo(member)
            self.stored = info.compress_size
            self.compressed = info.compress_type != zipfile.ZIP_STORED
            if info.file_size < self._data_offset + self.nbytes:
                raise FormatError(f"{source}: is truncated: its header declares {self.nbytes:,} bytes of data "
                                  f"but the archive member holds {info.file_size - self._data_offset:,}")
        if member is None and self.stored < self.nbytes:
            raise FormatError(f"{source}: is truncated: its header declares {self.nbytes:,} bytes of data, "
                              f"the file holds {self.stored:,}")

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def _open(self) -> Any:
        if self.member is None:
            return open(self.path, "rb")
        z = zipfile.ZipFile(self.path)
        f = z.open(self.member)
        close = f.close

        def close_both() -> None:
            close()
            z.close()

        f.close = close_both  # the archive lives exactly as long as its member stream
        return f

    def load(self) -> torch.Tensor:
        """The whole array as a native tensor (bounded by ``materialise_limit``)."""
        check_materialise(self.source, self.nbytes * max(1, self.target.itemsize // self.dtype.itemsize),
                          self.stored, self.budget)
        if self.member is None and not self.fortran:
            a = np.load(self.path, mmap_mode="r", allow_pickle=False)
            return to_tensor(np.asarray(a), self.source)
        with self._open() as f:
            f.seek(self._data_offset) if self.member is None else _skip(f, self._data_offset)
            a = np.frombuffer(_read_exact(f, self.nbytes, self.source), dtype=self.dtype)
        a = a.reshape(self.shape[::-1]).T if self.fortran else a.reshape(self.shape)
        return to_tensor(a, self.source)

    def sample(self, n: int, seed: int) -> torch.Tensor:
        """At most ``n`` items along axis 0, drawn uniformly without replacement, in file order."""
        total = self.shape[0] if self.shape else 1
        if len(self.shape) == 0 or total <= n or self.fortran:
            return self.load()
        idx = np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False))
        # plain reads in chunks, not a memory map: faulting pages around 20,000 random rows would map (and
        # count as resident) most of a large file
        row = math.prod(self.shape[1:]) * self.dtype.itemsize
        per = max(1, CHUNK_BYTES // max(row, 1))
        out = np.empty((n, *self.shape[1:]), dtype=self.dtype)
        filled = 0
        with self._open() as f:
            _skip(f, self._data_offset)
            for start in range(0, total, per):
                stop = min(total, start + per)
                lo, hi = np.searchsorted(idx, [start, stop])
                chunk = _read_exact(f, (stop - start) * row, self.source)  # sequential: a stream cannot seek
                if hi > lo:
                    rows = np.frombuffer(chunk, dtype=self.dtype).reshape(stop - start, *self.shape[1:])
                    out[filled:filled + hi - lo] = rows[idx[lo:hi] - start]
                    filled += hi - lo
                if filled == n:
                    break
        return to_tensor(out, self.source)


def _read_exact(f: Any, n: int, source: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise FormatError(f"{source}: is truncated ({len(data)} of {n} bytes)")
    return data


def _skip(f: Any, offset: int) -> None:
    """Position a (possibly non-seekable) member stream at ``offset`` from its start."""
    f.seek(0)
    f.read(offset)


def npz_members(path: str, source: str) -> list[NpyMember]:
    """The arrays of an ``.npz`` archive (headers only are read)."""
    try:
        with zipfile.ZipFile(path) as z:  # opened once: an archive of many members must not be re-read each time
            names = [i.filename for i in z.infolist() if i.filename.endswith(".npy")]
            if len(names) > MAX_ARRAYS:
                raise FormatError(f"{source}: holds {len(names):,} arrays (more than {MAX_ARRAYS:,}); not a "
                                  "checkpoint or latents file")
            budget = InflationBudget()  # shared: many members cannot each inflate to the floor
            return [NpyMember(path, n, f"{source}[{n[:-4]}]", archive=z, budget=budget) for n in names]
    except (zipfile.BadZipFile, OSError, EOFError, zipfile.LargeZipFile, NotImplementedError, RuntimeError) as exc:
        raise FormatError(f"{source}: is truncated or not a valid .npz ({' '.join(str(exc).split())[:120]})") \
            from None


def sample_tensor(t: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """At most ``n`` items of ``t`` along axis 0 (uniform, without replacement, in order); a memory-mapped
    tensor only reads the rows taken."""
    if t.dim() == 0 or t.shape[0] <= n:
        return t
    idx = np.sort(np.random.default_rng(seed).choice(t.shape[0], size=n, replace=False))
    return t[torch.from_numpy(idx)]


def iter_jsonl_lines(path: str) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of each non-blank line of a JSONL file, one at a time (streaming): UTF-8 (a
    leading byte-order mark dropped, undecodable bytes replaced), each line bounded by ``MAX_JSONL_LINE`` bytes.

    Raises:
        FormatError: not a regular file (a FIFO would block the read forever), a line longer than
            ``MAX_JSONL_LINE``.
    """
    regular_file(path, hint="pass the JSONL file written by shrinkscope.watch(log_to=...)")
    with open(path, "rb") as f:
        for number in itertools.count(1):
            raw = f.readline(MAX_JSONL_LINE + 1)
            if not raw:
                return
            if len(raw) > MAX_JSONL_LINE:
                raise FormatError(f"{path}:{number}: a line longer than {MAX_JSONL_LINE >> 20} MiB; not a "
                                  "shrinkscope JSONL log (its records are a few KB each)")
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if text.strip():
                yield number, text


def jsonl_lines(path: str) -> list[str]:
    """The non-blank lines of a JSONL file as text (``iter_jsonl_lines``, all in memory)."""
    return [text for _, text in iter_jsonl_lines(path)]


def items_for_rows(shape: tuple[int, ...], rows: int) -> int:
    """Items along axis 0 that give at least ``rows`` latent rows whichever axis holds D (axis 1 for
    channel-first maps, the last axis otherwise)."""
    if len(shape) <= 2:
        return rows
    per_item = math.prod(shape[1:]) // max(shape[1], shape[-1], 1)
    return max(1, math.ceil(rows / max(per_item, 1)))




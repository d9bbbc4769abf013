"""Safe checkpoint loading and codebook discovery.

``load_checkpoint(path)`` opens ``.pt/.pth/.bin/.ckpt`` (torch zip or legacy pickle), ``.safetensors``,
``.npy`` and ``.npz`` files without running code from them, and flattens nested containers
(``state_dict``, ``model``, ``ema``, ``best_state``, ...) into dotted keys whose tensors are read lazily.
``find_codebooks(checkpoint)`` (``shrinkscope.discovery``, re-exported here) then finds every codebook by
the key conventions of the VQ families (``shrinkscope.families``).

Loading policy (why): ``torch.load(weights_only=True, mmap=True)`` never executes pickled code and maps
tensors instead of reading them, so memory stays far below the file size; safetensors files are read
through their header and only the codebook tensors are materialised. A file that the safe loader refuses
is never retried unsafely on our own: the error names the globals it needs and ``trust=True``
(``--trust-checkpoint``) is the user's explicit opt-in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import contextlib
import os
import re
from collections.abc import Iterator
from typing import Any, Callable, Mapping
import zipfile

import numpy as np
import torch

from .formats import (
    ST_FLOAT, FormatError, InflationBudget, NpyMember, check_materialise, items_for_rows, npz_members, read_safetensors_header,
    regular_file, sample_tensor, to_tensor
)
from .unpickle import (
    SAFE_GLOBALS, UnsafeGlobals, allowed_global_names, bounded_tree, pickle_globals, pickle_protocol, torch_load
)

__all__ = [
    "CheckpointError", "TensorRef", "Checkpoint", "FoundCodebook", "load_checkpoint", "find_codebooks",
    "from_state_dict", "load_array", "load_arrays", "take_rows"
]

# Containers walked when flattening; optimizer/scheduler state is skipped (never a codebook, often huge).
SKIP_CONTAINERS = {
    "optimizer", "optimizer_states", "optimizer_disc", "lr_schedulers", "lr_scheduler", "scheduler", "scaler",
    "callbacks", "loops", "opt", "optim"
}
# Known-benign globals allowed through the safe loader: argparse.Namespace (LlamaGen's "args") and numpy's
# array reconstruction (unpickle.py says why each is safe).
SAFE_EXTRA_GLOBALS = SAFE_GLOBALS


class CheckpointError(ValueError):
    """A checkpoint or latents file that cannot be used; the message is one line meant for the user."""


@dataclass
class TensorRef:
    """One tensor of a checkpoint, read only when ``load()`` is called."""

    key: str
    shape: tuple[int, ...]
    floating: bool
    _get: Callable[[], torch.Tensor] = field(repr=False)
    _sample: Callable[[int, int], torch.Tensor] | None = field(default=None, repr=False)
    origin: tuple | None = field(default=None, repr=False)
    """Where the tensor lives in the file (storage, offset, strides): two keys with the same origin are
    one tensor, even though each ``load()`` returns its own copy."""

    def load(self) -> torch.Tensor:
        """Materialise the tensor (for safetensors: read just this tensor's bytes).

        Raises:
            CheckpointError: the tensor would take far more memory than the file stores for it.
        """
        return self._get()

    def sample(self, n: int, *, seed: int = 0) -> torch.Tensor:
        """At most ``n`` items along axis 0 (uniform without replacement, in file order), read without
        materialising the rest where the format allows (memory-mapped .npy/.pt, chunked safetensors,
        streamed .npz members)."""
        if self.shape and self.shape[0] <= n:
            return self.load()
        if self._sample is not None:
            return self._sample(n, seed)
        return sample_tensor(self.load(), n, seed)


@dataclass
class Checkpoint:
    """A loaded checkpoint: flattened tensor references plus the top-level object (torch files)."""

    source: str
    kind: str  # "torch" | "safetensors" | "numpy" | "state_dict"
    tensors: dict[str, TensorRef]
    raw: Any = None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:200] + "...") if len(text) > 200 else (text or type(exc).__name__)


def _unchanged_since(path: str) -> Callable[[], None]:
    """A check that ``path`` is still the file that was loaded (same inode, size and modification time).

    Why: torch files are memory-mapped, and a training job that rewrites its checkpoint in place (torch.save
    truncates first) would make the next read of a mapped page kill the process with SIGBUS, with no message.
    Each tensor is therefore checked and copied out of the map when it is read, so a file rewritten before
    that is refused in one line, and one rewritten after it can no longer fault the analysis.
    """
    def signature() -> tuple[int, ...]:
        try:
            st = os.stat(path)
        except OSError:
            return ()
        return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns

    before = signature()

    def check() -> None:
        if signature() != before:
            raise CheckpointError(f"{path}: changed while it was being read (is a training job rewriting it?); "
                                  "copy it and analyze the copy")

    return check


def _tensor_getter(key: str, t: torch.Tensor, budget: InflationBudget, guard: Callable[[], None] | None
                   ) -> tuple[Callable[[], torch.Tensor], Callable[[int, int], torch.Tensor] | None]:
    """``(get, sample)`` that refuse views asking for far more memory than their storage holds (stride 0).
    With a ``guard`` (a tensor of a file): the file is checked first and the result is copied out of it."""
    need = t.numel() * t.element_size()
    stored = t.untyped_storage().nbytes()

    def check() -> None:
        try:
            check_materialise(f"tensor {key}", need, stored, budget)
        except FormatError as exc:
            raise CheckpointError(str(exc)) from None
        if guard is not None:
            guard()

    def get() -> torch.Tensor:
        check()
        return t if guard is None else t.clone()

    def sample(n: int, seed: int) -> torch.Tensor:
        check()
        rows = sample_tensor(t, n, seed)
        return rows.clone() if rows is t else rows  # indexing copies only the rows taken

    return get, (sample if guard is not None else None)


def _ref(key: str, t: torch.Tensor, budget: InflationBudget, guard: Callable[[], None] | None = None
         ) -> TensorRef | None:
    """A reference to a plain dense CPU tensor; None for meta, sparse, nested and quantized tensors,
    which hold no readable codebook (or could only be read by materialising unbounded data)."""
    if t.layout != torch.strided or t.is_nested or t.device.type != "cpu" or t.is_quantized \
            or t.is_complex():
        return None
    get, sample = _tensor_getter(key, t, budget, guard)
    origin = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.stride()))
    return TensorRef(key, tuple(t.shape), t.is_floating_point(), get, sample, origin)


def _flatten(obj: Any, prefix: str, out: dict[str, TensorRef], depth: int = 0,
             budget: InflationBudget | None = None, guard: Callable[[], None] | None = None) -> None:
    """Dotted keys of the tensors in ``obj``; ``obj`` comes from ``bounded_tree`` (acyclic, bounded). All
    tensors of one file share one inflation ``budget`` and the ``guard`` of that file."""
    budget = budget or InflationBudget()
    if depth > 12:
        return
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, torch.Tensor):
        ref = _ref(prefix, obj, budget, guard)
        if ref is not None:
            out[prefix] = ref
    elif isinstance(obj, np.ndarray):
        try:
            t = to_tensor(obj, prefix)
        except FormatError:
            t = None
        if t is not None:
            out[prefix] = _ref(prefix, t, budget)
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            if not isinstance(k, (str, int)) or (depth == 0 and str(k) in SKIP_CONTAINERS):
                continue
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out, depth + 1, budget, guard)
    elif isinstance(obj, (list, tuple)) and obj and all(isinstance(v, (torch.Tensor, Mapping)) for v in obj):
        for i, v in enumerate(obj):
            _flatten(v, f"{prefix}.{i}" if prefix else str(i), out, depth + 1, budget, guard)


def from_state_dict(obj: Any, *, source: str = "<state_dict>") -> Checkpoint:
    """Wrap an in-memory state dict (possibly nested), checkpoint dict or ``nn.Module``."""
    tensors: dict[str, TensorRef] = {}
    try:
        tree = bounded_tree(obj, source=source)
    except FormatError as exc:
        raise CheckpointError(str(exc)) from None
    _flatten(tree, "", tensors)
    if not tensors:
        raise CheckpointError(f"{source}: holds no tensors (got {type(obj).__name__}); pass a state dict")
    return Checkpoint(source, "state_dict", tensors, tree if isinstance(tree, Mapping) else None)


def _refuse_unsafe(path: str, globals_met: list[str]) -> CheckpointError:
    shown = ", ".join(globals_met[:8]) + (f" (+{len(globals_met) - 8} more)" if len(globals_met) > 8 else "")
    return CheckpointError(
        f"{path}: refused to unpickle: the safe loader (weights_only) does not allow the globals "
        f"{shown or '(unknown)'}; if you trust this file, rerun with --trust-checkpoint "
        "(runs its pickled code)"
    )


def _torch_load(path: str, *, trust: bool, zipped: bool) -> Any:
    try:
        return torch_load(path, trust=trust, zipped=zipped)
    except UnsafeGlobals as exc:
        raise _refuse_unsafe(path, exc.names) from None
    except FormatError as exc:
        raise CheckpointError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - every failure becomes one user-facing line
        text = str(exc)
        protocol, unsafe = pickle_protocol(path, zipped=zipped) if "Unsupported operand" in text else (None, [])
        if unsafe:
            raise _refuse_unsafe(path, unsafe) from None
        if protocol is not None and protocol >= 4:
            # torch's safe unpickler reads protocols 0-3 only (FRAME, STACK_GLOBAL... are refused): an honest
            # torch.save(..., pickle_protocol=4) file lands here, and it is not "not a torch checkpoint"
            raise CheckpointError(f"{path}: was saved with pickle protocol {protocol}, which torch's safe loader "
                                  "(weights_only) cannot read; re-save it with the default protocol "
                                  "(torch.save(obj, f)), or rerun with --trust-checkpoint if you trust this file "
                                  "(runs its pickled code)") from None
        if "Unsupported operand" in text or isinstance(exc, (EOFError, KeyError)):
            raise CheckpointError(f"{path}: not a torch checkpoint (the pickle stream is not one torch.save "
                                  "writes); expected .pt/.pth/.ckpt/.safetensors/.npy/.npz") from None
        raise CheckpointError(f"{path}: cannot be read as a torch checkpoint ({_one_line(exc)})") from None


def _load_plain_pickle(path: str, trust: bool) -> Any:
    if not trust:
        with open(path, "rb") as f:
            globals_met = [g for g in pickle_globals(f.read(1 << 26)) if g not in allowed_global_names()]
        if globals_met:
            raise _refuse_unsafe(path, globals_met)
    try:
        return _torch_load(path, trust=trust, zipped=False)
    except CheckpointError:
        if not trust:
            raise
    import pickle  # only reached with --trust-checkpoint: the user vouched for this file

    with open(path, "rb") as f:
        return pickle.load(f)  # noqa: S301 - explicit opt-in


@contextlib.contextmanager
def _utf8_name(path: str) -> Iterator[str]:
    """A name the safetensors library (Rust, UTF-8 only) can open: ``path`` itself, or for a name with
    undecodable bytes the open file's ``/proc/self/fd`` entry (Linux); elsewhere the name is passed as is."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        if os.path.isdir("/proc/self/fd"):
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                yield f"/proc/self/fd/{fd}"
            finally:
                os.close(fd)
            return
    yield path


def _safetensors(path: str, size: int) -> Checkpoint:
    from safetensors import safe_open

    try:
        header, _ = read_safetensors_header(path, size)
    except FormatError as exc:
        raise CheckpointError(str(exc)) from None
    tensors: dict[str, TensorRef] = {}

    def getter(key: str) -> Callable[[], torch.Tensor]:
        def get() -> torch.Tensor:
            try:
                with _utf8_name(path) as name, safe_open(name, framework="pt", device="cpu") as sf:
                    return sf.get_tensor(key)
            except Exception as exc:  # noqa: BLE001 - the library's own checks, as one line
                raise CheckpointError(f"{path}: safetensors tensor {key[:60]!r} unreadable "
                                      f"({_one_line(exc)})") from None

        return get

    def sampler(key: str, rows: int) -> Callable[[int, int], torch.Tensor]:
        def sample(n: int, seed: int) -> torch.Tensor:
            if rows <= n:
                return getter(key)()
            idx = np.sort(np.random.default_rng(seed).choice(rows, size=n, replace=False))
            parts, step = [], 4096
            with _utf8_name(path) as name, safe_open(name, framework="pt", device="cpu") as sf:
                sl = sf.get_slice(key)
                for start in range(0, rows, step):  # chunks: never the whole tensor in memory
                    lo, hi = np.searchsorted(idx, [start, start + step])
                    if hi > lo:
                        chunk = sl[start:min(rows, start + step)]
                        parts.append(chunk[torch.from_numpy(idx[lo:hi] - start)])
            return torch.cat(parts)

        return sample

    for key, info in header.items():
        if key == "__metadata__":
            continue
        shape = tuple(info["shape"])
        tensors[key] = TensorRef(key, shape, info["dtype"] in ST_FLOAT, getter(key),
                                 sampler(key, shape[0]) if shape else None)
    return Checkpoint(path, "safetensors", tensors, {"__metadata__": header.get("__metadata__", {})})


def _numpy_ref(m: NpyMember, key: str) -> TensorRef | None:
    if m.target is None:
        return None

    def get() -> torch.Tensor:
        try:
            return m.load()
        except FormatError as exc:
            raise CheckpointError(str(exc)) from None

    def sample(n: int, seed: int) -> torch.Tensor:
        try:
            return m.sample(n, seed)
        except FormatError as exc:
            raise CheckpointError(str(exc)) from None

    return TensorRef(key, m.shape, m.target.kind == "f", get, sample)


def _numpy(path: str, zipped: bool) -> Checkpoint:
    try:
        if zipped:
            members = [(m.member[:-4], m) for m in npz_members(path, path)]
        else:
            members = [(os.path.splitext(os.path.basename(path))[0], NpyMember(path, None, path))]
    except FormatError as exc:
        raise CheckpointError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path}: is truncated or not a valid numpy file ({_one_line(exc)})") from None
    tensors = {}
    for k, m in members:
        ref = _numpy_ref(m, k)
        if ref is not None:
            tensors[k] = ref
    return Checkpoint(path, "numpy", tensors, None)


_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".ckpt", ".bin", ".th", ".npy", ".npz")


def _folder_hint(path: str) -> str | None:
    """For a folder that holds weight files (a ``save_pretrained`` folder has ``model.safetensors`` or
    ``diffusion_pytorch_model.safetensors``): which of its files to pass. Never names a file that is absent."""
    try:
        files = sorted(f for f in os.listdir(path) if f.endswith(_WEIGHT_SUFFIXES)
                       and os.path.isfile(os.path.join(path, f)))
    except OSError:
        return None
    if not files:
        return None
    shown = ", ".join(os.path.join(path, f) for f in files[:3]) + (" ..." if len(files) > 3 else "")
    return f"pass one of its checkpoint files: {shown}"


def _regular_file(p: str) -> int:
    hint = (os.path.isdir(p) and _folder_hint(p)) or \
        "pass a checkpoint file (.pt/.pth/.ckpt/.bin/.safetensors/.npy/.npz)"
    try:
        size = regular_file(p, hint=hint)
    except FormatError as exc:
        raise CheckpointError(str(exc)) from None
    if size == 0:
        raise CheckpointError(f"{p}: is empty (0 bytes)")
    return size


def load_checkpoint(path: str | os.PathLike, *, trust: bool = False) -> Checkpoint:
    """Open a checkpoint file safely and flatten its tensors.

    Args:
        path: ``.pt/.pth/.bin/.ckpt/.th`` (torch), ``.safetensors``, ``.npy`` or ``.npz``; the format is
            recognised from the file's bytes, not its name.
        trust: allow unsafe unpickling (``weights_only=False``). Only for files you trust.

    Returns:
        A ``Checkpoint`` whose ``tensors`` map dotted keys (``state_dict.quantize.embedding.weight``) to
        lazy ``TensorRef`` objects; ``raw`` is an acyclic, bounded copy of the file's containers.

    Raises:
        CheckpointError: missing path, directory, FIFO/device, empty/truncated file, unknown format,
            unsafe pickle, malformed header, a tensor or archive member that would inflate past its bound.
    """
    p = os.fspath(path)
    size = _regular_file(p)
    guard = _unchanged_since(p)
    try:
        with open(p, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise CheckpointError(f"{p}: cannot be read ({exc.strerror or exc})") from None
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(p) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            raise CheckpointError(f"{p}: is truncated or corrupt (zip archive without a central "
                                  "directory)") from None
        if any(n.endswith("data.pkl") for n in names):
            ckpt = Checkpoint(p, "torch", {}, _torch_load(p, trust=trust, zipped=True))
        elif names and all(n.endswith(".npy") for n in names):
            return _numpy(p, zipped=True)
        elif any(n.startswith(".data/") or "/.data/" in n for n in names):
            raise CheckpointError(f"{p}: is a torch.package archive (code, not weights); shrinkscope never "
                                  "imports packages; export a state dict: torch.save(model.state_dict(), f)")
        else:
            raise CheckpointError(f"{p}: is a zip archive but not a torch checkpoint or .npz")
    elif head.startswith(b"\x93NUMPY"):
        return _numpy(p, zipped=False)
    elif len(head) >= 9 and head[8:9] == b"{":
        return _safetensors(p, size)
    elif head[:1] == b"\x80":
        ckpt = Checkpoint(p, "torch", {}, _load_plain_pickle(p, trust))
    else:
        raise CheckpointError(f"{p}: not a checkpoint (unrecognised bytes); expected a torch file "
                              "(.pt/.pth/.ckpt), .safetensors, .npy or .npz")
    top = type(ckpt.raw).__name__
    try:
        ckpt.raw = bounded_tree(ckpt.raw, source=p)
    except FormatError as exc:
        raise CheckpointError(str(exc)) from None
    # A bare tensor saved with torch.save(codebook, path) is taken as a codebook.
    _flatten(ckpt.raw, "codebook" if isinstance(ckpt.raw, torch.Tensor) else "", ckpt.tensors, guard=guard)
    if not ckpt.tensors:
        raise CheckpointError(f"{p}: holds no dense tensors (top-level {top}); not a model checkpoint")
    return ckpt


def take_rows(ref: TensorRef, max_rows: int | None, seed: int = 0) -> torch.Tensor:
    """The whole array, or with ``max_rows`` just enough items along axis 0 for that many latent rows."""
    if max_rows is None:
        return ref.load()
    return ref.sample(items_for_rows(ref.shape, max_rows), seed=seed)


def load_arrays(path: str | os.PathLike, *, what: str = "latents", max_rows: int | None = None,
                seed: int = 0) -> torch.Tensor | dict[str, torch.Tensor]:
    """Like ``load_array``, but a file with several float arrays (one per codebook, as
    ``Monitor.save_latents`` writes for residual/multi-head quantizers) comes back as ``{name: array}``.

    Raises:
        CheckpointError: unreadable file, no floating array of >= 2 dims.
    """
    try:
        return load_array(path, what=what, max_rows=max_rows, seed=seed)
    except CheckpointError:
        ckpt = load_checkpoint(path)
        refs = [r for r in ckpt.tensors.values() if len(r.shape) >= 2 and r.floating]
        if len(refs) < 2:
            raise
        return {r.key: take_rows(r, max_rows, seed) for r in refs}


def load_array(path: str | os.PathLike, *, what: str = "latents", max_rows: int | None = None,
               seed: int = 0) -> torch.Tensor:
    """Load one float array (latents) from ``.npy``, ``.npz``, ``.pt`` or ``.safetensors`` safely.

    A file with several arrays must hold one named ``latents`` (or exactly one float array of >= 2 dims).

    Args:
        path: the file.
        what: the array's role, for messages and as a preferred name.
        max_rows: keep a uniform random subset of items along axis 0 that gives at least this many latent
            rows (all of a 2-D array's rows up to it), read without loading the rest where the format
            allows, so memory follows ``max_rows`` rather than the file size. None: everything.
        seed: seed of that subset.

    Raises:
        CheckpointError: unreadable file, no suitable array, non-floating data.
    """
    ckpt = load_checkpoint(path)
    refs = [r for r in ckpt.tensors.values() if len(r.shape) >= 2]
    named = [r for r in refs if r.key.split(".")[-1] in (what, "latents", "z", "z_e")]
    pick = named[:1] or (refs if len(refs) == 1 else [])
    if not pick:
        names = ", ".join(r.key for r in refs[:6]) or "none"
        raise CheckpointError(f"{ckpt.source}: expected one {what} array of shape (N, D) or channel-first "
                              f"maps (or one named '{what}'); found arrays with >= 2 dims: {names}")
    if not pick[0].floating:
        raise CheckpointError(f"{ckpt.source}: {what} array {pick[0].key} is not floating point")
    return take_rows(pick[0], max_rows, seed)


from .discovery import FoundCodebook, find_codebooks  # noqa: E402 - discovery builds on the loader above

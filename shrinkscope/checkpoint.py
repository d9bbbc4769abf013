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

import argparse
from dataclasses import dataclass, field
import json
import os
import pickletools
import re
import struct
from typing import Any, Callable, Mapping
import zipfile

import numpy as np
import torch

__all__ = [
    "CheckpointError", "TensorRef", "Checkpoint", "FoundCodebook", "load_checkpoint", "find_codebooks",
    "from_state_dict", "load_array"
]

# Containers walked when flattening; optimizer/scheduler state is skipped (never a codebook, often huge).
SKIP_CONTAINERS = {
    "optimizer", "optimizer_states", "optimizer_disc", "lr_schedulers", "lr_scheduler", "scheduler", "scaler",
    "callbacks", "loops", "opt", "optim"
}
# Known-benign globals allowed through the safe loader (LlamaGen stores its argparse.Namespace under "args").
SAFE_EXTRA_GLOBALS = [argparse.Namespace]
_SAFETENSORS_FLOAT = {"F16", "BF16", "F32", "F64", "F8_E4M3", "F8_E5M2"}


class CheckpointError(ValueError):
    """A checkpoint or latents file that cannot be used; the message is one line meant for the user."""


@dataclass
class TensorRef:
    """One tensor of a checkpoint, read only when ``load()`` is called."""

    key: str
    shape: tuple[int, ...]
    floating: bool
    _get: Callable[[], torch.Tensor] = field(repr=False)

    def load(self) -> torch.Tensor:
        """Materialise the tensor (for safetensors: read just this tensor's bytes)."""
        return self._get()


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


def _ref(key: str, t: torch.Tensor) -> TensorRef:
    return TensorRef(key, tuple(t.shape), t.is_floating_point(), lambda t=t: t)


def _flatten(obj: Any, prefix: str, out: dict[str, TensorRef], depth: int = 0) -> None:
    if depth > 12:
        return
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, torch.Tensor):
        out[prefix] = _ref(prefix, obj)
    elif isinstance(obj, np.ndarray) and obj.dtype.kind in "fiub":
        out[prefix] = _ref(prefix, torch.from_numpy(obj))
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            if not isinstance(k, (str, int)) or (depth == 0 and str(k) in SKIP_CONTAINERS):
                continue
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out, depth + 1)
    elif isinstance(obj, (list, tuple)) and obj and all(isinstance(v, (torch.Tensor, Mapping)) for v in obj):
        for i, v in enumerate(obj):
            _flatten(v, f"{prefix}.{i}" if prefix else str(i), out, depth + 1)


def from_state_dict(obj: Any, *, source: str = "<state_dict>") -> Checkpoint:
    """Wrap an in-memory state dict (possibly nested), checkpoint dict or ``nn.Module``."""
    tensors: dict[str, TensorRef] = {}
    _flatten(obj, "", tensors)
    if not tensors:
        raise CheckpointError(f"{source}: holds no tensors (got {type(obj).__name__}); pass a state dict")
    return Checkpoint(source, "state_dict", tensors, obj if isinstance(obj, Mapping) else None)


def _pickle_globals(path: str, limit: int = 1 << 26) -> list[str]:
    """Globals a pickle stream references, found by reading opcodes (nothing is executed)."""
    names: list[str] = []
    strings: list[str] = []
    with open(path, "rb") as f:
        data = f.read(limit)
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                strings.append(str(arg))
            elif op.name == "GLOBAL":
                names.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # noqa: BLE001 - a damaged stream still yields the names met so far
        pass
    return sorted(set(names))


def _refuse_unsafe(path: str, globals_met: list[str]) -> CheckpointError:
    shown = ", ".join(globals_met[:8]) + (f" (+{len(globals_met) - 8} more)" if len(globals_met) > 8 else "")
    return CheckpointError(
        f"{path}: refused to unpickle: the safe loader (weights_only) does not allow the globals "
        f"{shown or '(unknown)'}; if you trust this file, rerun with --trust-checkpoint "
        "(runs its pickled code)"
    )


def _torch_load(path: str, *, trust: bool, zipped: bool) -> Any:
    kwargs = {"map_location": "cpu", "weights_only": not trust, "mmap": zipped}
    try:
        with torch.serialization.safe_globals(SAFE_EXTRA_GLOBALS):
            return torch.load(path, **kwargs)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one user-facing line
        text = str(exc)
        if "GLOBAL" in text or "Unsupported global" in text:
            found = []
            if zipped:
                try:
                    found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
                except Exception:  # noqa: BLE001
                    found = []
            found = found or sorted(set(re.findall(r"GLOBAL ([\w.]+)", text)))
            allowed = {f"{c.__module__}.{c.__qualname__}" for c in SAFE_EXTRA_GLOBALS}
            found = [g for g in found if g not in allowed]
            raise _refuse_unsafe(path, found) from None
        if "Unsupported operand" in text or isinstance(exc, (EOFError, KeyError)):
            raise CheckpointError(f"{path}: not a torch checkpoint (the pickle stream is not one torch.save "
                                  "writes); expected .pt/.pth/.ckpt/.safetensors/.npy/.npz") from None
        raise CheckpointError(f"{path}: cannot be read as a torch checkpoint ({_one_line(exc)})") from None


def _load_plain_pickle(path: str, trust: bool) -> Any:
    if not trust:
        globals_met = _pickle_globals(path)
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


def _safetensors(path: str, size: int) -> Checkpoint:
    from safetensors import safe_open

    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(
                f"{path}: safetensors header is not valid JSON ({_one_line(exc)})"
            ) from None
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise CheckpointError(f"{path}: is truncated: its safetensors header describes {8 + n + end} bytes "
                              f"but the file has {size}")
    tensors: dict[str, TensorRef] = {}

    def getter(key: str) -> Callable[[], torch.Tensor]:
        def get() -> torch.Tensor:
            with safe_open(path, framework="pt", device="cpu") as sf:
                return sf.get_tensor(key)

        return get

    for key, info in header.items():
        if key == "__metadata__" or not isinstance(info, dict):
            continue
        tensors[key] = TensorRef(
            key, tuple(int(s) for s in info.get("shape", ())), info.get("dtype") in _SAFETENSORS_FLOAT,
            getter(key)
        )
    return Checkpoint(path, "safetensors", tensors, {"__metadata__": header.get("__metadata__", {})})


def _numpy(path: str, zipped: bool) -> Checkpoint:
    try:
        data = np.load(path, allow_pickle=False)
        stem = os.path.splitext(os.path.basename(path))[0]
        arrays = {k: data[k] for k in data.files} if zipped else {stem: data}
    except ValueError as exc:
        raise CheckpointError(f"{path}: numpy file refused ({_one_line(exc)}); object arrays need pickle, "
                              "which shrinkscope does not load") from None
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path}: is truncated or not a valid numpy file ({_one_line(exc)})") from None
    tensors = {}
    for k, a in arrays.items():
        if a.dtype.kind in "fiub":
            tensors[k] = _ref(k, torch.from_numpy(np.ascontiguousarray(a)))
    return Checkpoint(path, "numpy", tensors, None)


def load_checkpoint(path: str | os.PathLike, *, trust: bool = False) -> Checkpoint:
    """Open a checkpoint file safely and flatten its tensors.

    Args:
        path: ``.pt/.pth/.bin/.ckpt/.th`` (torch), ``.safetensors``, ``.npy`` or ``.npz``; the format is
            recognised from the file's bytes, not its name.
        trust: allow unsafe unpickling (``weights_only=False``). Only for files you trust.

    Returns:
        A ``Checkpoint`` whose ``tensors`` map dotted keys (``state_dict.quantize.embedding.weight``) to
        lazy ``TensorRef`` objects.

    Raises:
        CheckpointError: missing path, directory, empty/truncated file, unknown format, unsafe pickle.
    """
    p = os.fspath(path)
    if not os.path.exists(p):
        raise CheckpointError(f"{p}: no such file")
    if os.path.isdir(p):
        raise CheckpointError(f"{p}: is a directory; pass a checkpoint file "
                              f"(e.g. {os.path.join(p, 'model.pt')})")
    size = os.path.getsize(p)
    if size == 0:
        raise CheckpointError(f"{p}: is empty (0 bytes)")
    with open(p, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(p) as z:
                names = z.namelist()
        except zipfile.BadZipFile:
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
        if struct.unpack("<Q", head[:8])[0] + 8 > size:
            raise CheckpointError(f"{p}: is truncated: its safetensors header is longer than the file "
                                  f"({size} bytes)")
        return _safetensors(p, size)
    elif head[:1] == b"\x80":
        ckpt = Checkpoint(p, "torch", {}, _load_plain_pickle(p, trust))
    else:
        raise CheckpointError(f"{p}: not a checkpoint (unrecognised bytes); expected a torch file "
                              "(.pt/.pth/.ckpt), .safetensors, .npy or .npz")
    # A bare tensor saved with torch.save(codebook, path) is taken as a codebook.
    _flatten(ckpt.raw, "codebook" if isinstance(ckpt.raw, torch.Tensor) else "", ckpt.tensors)
    if not ckpt.tensors:
        raise CheckpointError(f"{p}: holds no tensors (top-level {type(ckpt.raw).__name__}); not a model "
                              "checkpoint")
    return ckpt


def load_arrays(path: str | os.PathLike, *, what: str = "latents") -> torch.Tensor | dict[str, torch.Tensor]:
    """Like ``load_array``, but a file with several float arrays (one per codebook, as
    ``Monitor.save_latents`` writes for residual/multi-head quantizers) comes back as ``{name: array}``.

    Raises:
        CheckpointError: unreadable file, no floating array of >= 2 dims.
    """
    try:
        return load_array(path, what=what)
    except CheckpointError:
        ckpt = load_checkpoint(path)
        refs = [r for r in ckpt.tensors.values() if len(r.shape) >= 2 and r.floating]
        if len(refs) < 2:
            raise
        return {r.key: r.load() for r in refs}


def load_array(path: str | os.PathLike, *, what: str = "latents") -> torch.Tensor:
    """Load one float array (latents) from ``.npy``, ``.npz``, ``.pt`` or ``.safetensors`` safely.

    A file with several arrays must hold one named ``latents`` (or exactly one float array of >= 2 dims).

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
    return pick[0].load()


from .discovery import FoundCodebook, find_codebooks  # noqa: E402 - discovery builds on the loader above

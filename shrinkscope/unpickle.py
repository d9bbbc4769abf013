"""Torch files without running their code, and a bounded walk of what comes out.

``torch_load(path)`` is ``torch.load(weights_only=True)`` with three additions, each of which runs no code
from the file:

- numpy arrays and scalars, as training checkpoints store them: numpy's array reconstruction
  (``_reconstruct``, ``ndarray``, ``dtype`` and the dtype classes, ``scalar``) under both the numpy 1
  (``numpy.core``) and numpy 2 (``numpy._core``) names. These build an array from a dtype and bytes;
  every other global stays refused.
- PyTorch Lightning 1.0-era checkpoints whose ``callbacks`` dict is keyed by the callback *class*: each
  class named only there becomes an inert marker (it cannot be called or instantiated, so a file that uses
  it for anything but a dict key still fails), and the load is accepted only when the markers sit nowhere
  but as keys of the top-level ``callbacks`` dict, which is never read.
- a zip whose members are compressed is never memory-mapped (``mmap=True`` would hand back the compressed
  bytes as tensor data) and its declared sizes are checked before anything is inflated.

``bounded_tree(obj)`` copies the containers of the result into an acyclic tree of bounded size and depth,
so no later walk over it (discovery, config lookups) can loop or explode: a 2 KB pickle can make a dict
that contains itself eight times, which a naive walk visits 8^depth times.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import pickletools
import re
import warnings
from typing import Any, Mapping
import zipfile

import numpy as np
import torch

from .formats import FormatError, InflationBudget, check_materialise

MAX_NODES = 1_000_000
"""Containers and leaves a checkpoint's object tree may hold (counted along every path)."""
MAX_DEPTH = 32
"""Nesting kept; deeper levels are dropped (no checkpoint layout nests a tensor this deep)."""
CALLBACK_KEYS = ("callbacks",)
_LIGHTNING = ("pytorch_lightning.", "lightning.pytorch.", "lightning.")


def _numpy_globals() -> list[Any]:
    """numpy's array/scalar reconstruction under the names pickles written by numpy 1 and 2 use."""
    from numpy.lib import format as _  # noqa: F401 - makes sure numpy's core is fully imported

    core = getattr(np, "_core", None) or np.core
    multiarray = core.multiarray
    out: list[Any] = [np.ndarray, np.dtype]
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out += [(multiarray._reconstruct, f"{mod}._reconstruct"), (multiarray.scalar, f"{mod}.scalar")]
    dtypes = getattr(np, "dtypes", None)
    for name in dir(dtypes) if dtypes is not None else []:
        cls = getattr(dtypes, name)
        if isinstance(cls, type) and issubclass(cls, np.dtype):
            out.append((cls, f"numpy.dtypes.{name}"))
    return out


SAFE_GLOBALS: list[Any] = [argparse.Namespace, *_numpy_globals()]
"""Globals allowed through the safe loader besides torch's own: argparse.Namespace (LlamaGen stores its
arguments under ``args``) and numpy's array reconstruction."""


class _MarkerMeta(type):
    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"{cls.__qualname__} is an inert marker; it cannot be called")


class _Marker(metaclass=_MarkerMeta):
    """Stands for a class a checkpoint names only as a dict key; never callable, never instantiated."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"{cls.__qualname__} is an inert marker; it cannot be instantiated")


def _markers(names: list[str]) -> list[tuple[type, str]]:
    return [(_MarkerMeta(n.rsplit(".", 1)[-1], (_Marker,), {"__module__": __name__}), n) for n in names]


class UnsafeGlobals(Exception):
    """The safe loader met globals it does not allow; ``names`` lists them (nothing was run)."""

    def __init__(self, names: list[str]):
        super().__init__(", ".join(names))
        self.names = names


def pickle_globals(data: bytes) -> list[str]:
    """Globals named by a pickle stream (or by consecutive pickles, as legacy torch files hold), found by
    reading opcodes (nothing is executed). ``STACK_GLOBAL`` (protocol 4+) takes its module and name from the
    stack, often through the memo, so string pushes and memo slots are tracked."""
    names: list[str] = []
    f = io.BytesIO(data)
    for _ in range(8):  # a legacy torch file: magic number, protocol, system info, the object
        pushed: list[str | None] = []
        memo: dict[int, str | None] = {}
        try:
            for op, arg, _ in pickletools.genops(f):
                if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                    pushed.append(str(arg))
                elif op.name in ("BINGET", "LONG_BINGET", "GET"):
                    pushed.append(memo.get(int(arg)))
                elif op.name == "MEMOIZE":
                    memo[len(memo)] = pushed[-1] if pushed else None
                elif op.name in ("BINPUT", "LONG_BINPUT", "PUT"):
                    memo[int(arg)] = pushed[-1] if pushed else None
                elif op.name == "GLOBAL":
                    names.append(str(arg).replace(" ", "."))
                    pushed.append(None)
                elif op.name == "STACK_GLOBAL":
                    if len(pushed) >= 2 and pushed[-2] is not None and pushed[-1] is not None:
                        names.append(f"{pushed[-2]}.{pushed[-1]}")
                    else:
                        names.append("(a global whose name is computed)")
                    pushed.append(None)
                elif op.name not in ("FRAME", "PROTO", "MARK", "STOP"):
                    pushed.append(None)
                del pushed[:-4]  # STACK_GLOBAL reads the two most recent pushes only
        except Exception:  # noqa: BLE001 - a damaged stream (or raw storage bytes) ends the scan
            break
    return sorted(set(names))


def _pickle_head(path: str, *, zipped: bool, size: int) -> bytes:
    """The first ``size`` bytes of a torch file's object stream (``data.pkl`` of a zip)."""
    if zipped:
        with zipfile.ZipFile(path) as z:
            name = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
            return z.open(name).read(size) if name else b""
    with open(path, "rb") as f:
        return f.read(size)


def pickle_protocol(path: str, *, zipped: bool) -> tuple[int | None, list[str]]:
    """The pickle protocol of a torch file's object stream, read from its first two bytes (None: no ``PROTO``
    opcode, or unreadable), and the globals it names that the safe loader would refuse anyway."""
    try:
        head = _pickle_head(path, zipped=zipped, size=1 << 26)
    except Exception:  # noqa: BLE001 - unknown, the caller keeps its own message
        return None, []
    if len(head) < 2 or head[0] != 0x80:
        return None, []
    allowed = allowed_global_names()
    return head[1], [g for g in pickle_globals(head) if g not in allowed]


def allowed_global_names() -> set[str]:
    """Dotted names the safe loader accepts: torch's own allowlist and ``SAFE_GLOBALS``."""
    out = set()
    for g in SAFE_GLOBALS:
        out.add(g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}")
    try:
        from torch._weights_only_unpickler import _get_allowed_globals  # private: names only, never called

        out |= set(_get_allowed_globals())
    except Exception:  # noqa: BLE001 - without torch's list, torch's own refusal names the globals
        pass
    return out


def zip_compressed(path: str) -> bool:
    """True when a torch zip stores any member compressed; raises before a decompression bomb."""
    with zipfile.ZipFile(path) as z:
        infos = z.infolist()
    compressed = [i for i in infos if i.compress_type != zipfile.ZIP_STORED]
    budget = InflationBudget()  # torch inflates every member: the bound is on their sum
    for i in compressed:
        check_materialise(f"{path}: archive member {i.filename[-60:]}", i.file_size, i.compress_size, budget)
    return bool(compressed)


def _needs_file_object(path: str) -> bool:
    """torch.load takes a name as UTF-8 text: a name with undecodable bytes (``bad\\xff.pt``, which Python
    holds as surrogates) must be opened by Python; so must a torch zip named ``.safetensors`` (torch.load
    picks the safetensors reader from the name)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return path.endswith(".safetensors")


@contextlib.contextmanager
def _quiet_torch() -> Any:
    """Torch's loader warns about pickle protocols and deprecated storages on stderr; those warnings are about
    the file's writer, not something the user can act on, and would break the one-line contract of the CLI."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _load(path: str, *, weights_only: bool, mmap: bool, extra: list[Any]) -> Any:
    with torch.serialization.safe_globals(SAFE_GLOBALS + extra), _quiet_torch():
        if _needs_file_object(path):
            with open(path, "rb") as f:  # never memory-mapped: mmap needs a name torch can open
                return torch.load(f, map_location="cpu", weights_only=weights_only)
        return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=mmap)


def _unsafe_names(path: str, zipped: bool, text: str) -> list[str]:
    found: list[str] = []
    if zipped:
        try:
            with open(path, "rb") as f, _quiet_torch():
                found = torch.serialization.get_unsafe_globals_in_checkpoint(f)
        except Exception:  # noqa: BLE001 - fall back to the names in the error text
            found = []
    else:
        with open(path, "rb") as f:
            found = pickle_globals(f.read(1 << 26))
    found = found or sorted(set(re.findall(r"GLOBAL ([\w.]+)", text)))
    allowed = allowed_global_names()
    return [g for g in found if g not in allowed]


def _walkable(o: Any) -> bool:
    return isinstance(o, (Mapping, list, tuple, set, type))


def _markers_only_as_callback_keys(obj: Any, markers: set[type]) -> bool:
    """True when every marker class in ``obj`` is a key of its top-level ``callbacks`` dict."""
    seen: set[int] = set()
    stack: list[tuple[Any, bool]] = [(obj, True)]
    nodes = 0
    while stack:
        o, top = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            return False
        if isinstance(o, type) and o in markers:
            return False
        if id(o) in seen or not isinstance(o, (Mapping, list, tuple, set)):
            continue
        seen.add(id(o))
        if isinstance(o, Mapping):
            for k, v in o.items():
                if top and k in CALLBACK_KEYS and isinstance(v, Mapping):
                    stack.extend((x, False) for x in v.values() if _walkable(x))  # class keys allowed here only
                else:
                    stack.extend((x, False) for x in (k, v) if _walkable(x))
        else:
            stack.extend((x, False) for x in o if _walkable(x))
    return True


def torch_load(path: str, *, trust: bool, zipped: bool) -> Any:
    """``torch.load`` on CPU: safe (weights_only) unless ``trust``; mmap for stored zips only.

    Raises:
        UnsafeGlobals: the safe loader refused globals (their names; nothing ran).
        FormatError: a compressed member would inflate past the bound.
        Exception: whatever torch raises for a damaged file (the caller turns it into one line).
    """
    mmap = zipped and not zip_compressed(path)
    try:
        return _load(path, weights_only=not trust, mmap=mmap, extra=[])
    except Exception as exc:  # noqa: BLE001 - sorted below
        text = str(exc)
        if trust or not ("GLOBAL" in text or "Unsupported global" in text):
            raise
        names = _unsafe_names(path, zipped, text)
    lightning = [n for n in names if n.startswith(_LIGHTNING) and ".callbacks" in n]
    if not names or len(lightning) != len(names):
        raise UnsafeGlobals(names)
    markers = _markers(lightning)
    try:
        obj = _load(path, weights_only=True, mmap=mmap, extra=list(markers))
    except Exception:  # noqa: BLE001 - the classes were used for more than keys
        raise UnsafeGlobals(names) from None
    if not _markers_only_as_callback_keys(obj, {m for m, _ in markers}):
        raise UnsafeGlobals(names)
    if isinstance(obj, dict):
        obj = {k: v for k, v in obj.items() if k not in CALLBACK_KEYS}
    return obj


def _is_node(o: Any) -> bool:
    """Objects a walk descends into or reads: containers, modules and arrays (not scalars or strings)."""
    return isinstance(o, (Mapping, list, tuple, torch.Tensor, np.ndarray, torch.nn.Module)) \
        and not isinstance(o, (str, bytes))


def bounded_tree(obj: Any, *, source: str) -> Any:
    """An acyclic copy of the containers in ``obj`` (leaves shared), at most ``MAX_NODES`` nodes counted
    along every path and ``MAX_DEPTH`` levels; a container met again on its own path becomes None.

    A container that holds only scalars and strings (a loss history, a vocabulary) is kept as one leaf,
    so honest metadata of any length costs one node; only nesting can multiply paths.

    Raises:
        FormatError: the tree (expanded along every path) holds more than ``MAX_NODES`` nodes.
    """
    count = [0]
    flat: dict[int, bool] = {}  # id -> container holds no nodes (computed once, however often it is shared)

    def is_flat(o: Any) -> bool:
        if id(o) not in flat:
            values = o.values() if isinstance(o, Mapping) else o
            flat[id(o)] = not any(_is_node(v) for v in values)
        return flat[id(o)]

    def walk(o: Any, depth: int, path: set[int]) -> Any:
        count[0] += 1
        if count[0] > MAX_NODES:
            raise FormatError(f"{source}: holds more than {MAX_NODES:,} nested objects (or containers that "
                              "refer to themselves); not a model checkpoint")
        if isinstance(o, torch.nn.Module):
            o = o.state_dict()
        if not isinstance(o, (Mapping, list, tuple)) or isinstance(o, (str, bytes)):
            return o
        if id(o) in path or depth >= MAX_DEPTH:
            return None
        if is_flat(o):
            return dict(o) if isinstance(o, Mapping) else o
        path.add(id(o))
        try:
            if isinstance(o, Mapping):
                return {k: walk(v, depth + 1, path) for k, v in o.items()
                        if isinstance(k, (str, int, float, bool)) or k is None}
            return [walk(v, depth + 1, path) for v in o]
        finally:
            path.discard(id(o))

    return walk(obj, 0, set())


__all__ = ["SAFE_GLOBALS", "UnsafeGlobals", "torch_load", "bounded_tree", "pickle_globals", "pickle_protocol",
           "zip_compressed",
           "allowed_global_names"]

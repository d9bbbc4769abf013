"""Safe checkpoint loading and codebook discovery.

``load_checkpoint(path)`` opens ``.pt/.pth/.bin/.ckpt`` (torch zip or legacy pickle), ``.safetensors``,
``.npy`` and ``.npz`` files without running code from them, and flattens nested containers
(``state_dict``, ``model``, ``ema``, ``best_state``, ...) into dotted keys whose tensors are read lazily.
``find_codebooks(checkpoint)`` then finds every codebook by key name and shape, following the conventions
of the VQ libraries in use (docs/cli.md lists them), and returns each as its *effective* ``(K, D)``
codebook plus usage counts when the checkpoint stores them.

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


@dataclass
class FoundCodebook:
    """One effective codebook found in a checkpoint.

    Attributes:
        name: display name (module path without wrappers; ``/headN`` for separate heads).
        codebook: ``(K, D)`` float tensor, the space the lookup happens in.
        counts: ``(K,)`` usage (shares or counts) from a buffer, or None.
        family: convention recognised (``lucidrains``, ``taming``, ``llamagen``, ``dac``, ...).
        key: state-dict key the codebook came from.
        notes: plain-words remarks (normalisation applied, usage source, caveats).
        usage_source: buffer the counts came from, or None.
        ema_counts: True when counts are an EMA (dead codes decay towards zero without reaching it).
    """

    name: str
    codebook: torch.Tensor
    counts: torch.Tensor | None
    family: str
    key: str
    notes: list[str] = field(default_factory=list)
    usage_source: str | None = None
    ema_counts: bool = False


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


# ---------------------------------------------------------------------------------------------------
# Discovery: key-name and shape conventions of the VQ libraries (research: ecosystem.md sections 1, 1.3).

_WRAPPERS = {"module", "_orig_mod"}
_CONTAINERS = {
    "state_dict", "model", "ema", "best_state", "params_ema", "params", "net", "model_state_dict",
    "state_dict_ema", "ema_state_dict", "model_ema", "first_stage_model"
}
_STATS = {
    "cluster_size", "embed_avg", "initted", "inited", "_initialized", "initialized", "cluster_usage",
    "codebook_used", "ema_vocab_hit_SV", "usage_ema", "usage", "counts", "active"
}
_INIT_FLAGS = ("initted", "inited", "_initialized", "initialized")
_QUANTISH = re.compile(r"quant|vq|codebook", re.IGNORECASE)
# Token/position tables of language models: never codebooks unless asked (--include-embeddings).
_LM_TABLE = re.compile(r"^(tok_embeddings|wte|wpe|embed_tokens|word_embeddings|token_embedding|tok_emb|"
                       r"token_emb|embed_positions|position_embedding|pos_emb|pos_embed|shared|lm_head)$")
_NORMALISED = {"llamagen": "LlamaGen looks codes up l2-normalised (codebook_l2_norm)",
               "dac": "DAC looks codes up l2-normalised"}


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _module_of(key: str) -> str:
    """Quantizer module path of a codebook key (``quantize.embedding.weight`` -> ``quantize``)."""
    if "." not in key:
        return key
    seg = key.split(".")[:-1]
    if key.endswith(".weight") and seg and seg[-1] in ("embedding", "embed", "codebook"):
        seg = seg[:-1]
    elif seg and seg[-1] in ("_codebook", "codebook"):
        seg = seg[:-1]
    return ".".join(seg)


def _display(path: str, *, keep_containers: bool = False) -> str:
    seg = [s for s in path.split(".") if s and s not in _WRAPPERS]
    while not keep_containers and seg and seg[0] in _CONTAINERS:
        seg = seg[1:]
    if not keep_containers:
        seg = [s for s in seg if s != "first_stage_model"]
    return ".".join(seg) or "codebook"


def _config_flag(obj: Any, name: str, depth: int = 0) -> bool | None:
    if not isinstance(obj, Mapping) or depth > 4:
        return None
    if isinstance(obj.get(name), bool):
        return obj[name]
    for v in obj.values():
        hit = _config_flag(v, name, depth + 1)
        if hit is not None:
            return hit
    return None


def _classify(key: str, ref: TensorRef, tensors: Mapping[str, TensorRef],
              include_embeddings: bool) -> str | None:
    seg = key.split(".")
    leaf, par, nd = seg[-1], ".".join(seg[:-1]), len(ref.shape)
    if not ref.floating or nd not in (2, 3) or leaf in _STATS:
        return None
    if leaf in ("embedding_sum", "embed_sum") and nd == 2 and _join(par, "cluster_usage") in tensors:
        return "moshi"
    if leaf == "frozen_codebook" and nd == 2:
        return "simvq"
    siblings = ("cluster_size", "embed_avg", *_INIT_FLAGS)
    if leaf == "embed" and (seg[-2:-1] in (["_codebook"], ["codebook"])
                            or any(_join(par, s) in tensors for s in siblings)):
        if nd == 3:
            return "lucidrains"
        return "encodec" if seg[-2:-1] in (["_codebook"], ["codebook"]) else "ema"
    if nd == 2 and leaf == "weight" and len(seg) >= 2 and seg[-2] in ("embedding", "embed") \
            and any(_QUANTISH.search(s) for s in seg[:-2]):
        gpar = ".".join(seg[:-2])
        if _join(gpar, "codebook_used") in tensors:
            return "llamagen"
        if _join(gpar, "ema_vocab_hit_SV") in tensors:
            return "var"
        if _join(par, "cluster_size") in tensors:
            return "taming-ema"
        return "taming-gumbel" if seg[-2] == "embed" else "taming"
    if nd == 2 and key.endswith("codebook.weight"):
        return "dac"
    if any(_LM_TABLE.match(s) for s in seg):
        return "token-embedding" if include_embeddings and nd == 2 else None
    if any("codebook" in s.lower() for s in seg) or (
            any(s in ("embed", "embedding", "embeddings", "codes") for s in seg[-2:])
            and any(_QUANTISH.search(s) for s in seg)):
        return "generic"
    if include_embeddings and nd == 2 and any("emb" in s.lower() for s in seg[-2:]):
        return "token-embedding"
    return None


def _usage(family: str, key: str, k: int,
           tensors: Mapping[str, TensorRef]) -> tuple[torch.Tensor | None, str | None]:
    seg = key.split(".")
    par, gpar = ".".join(seg[:-1]), ".".join(seg[:-2])
    if family == "llamagen":
        buf = tensors[_join(gpar, "codebook_used")].load().reshape(-1).long()
        buf = buf[(buf >= 0) & (buf < k)]
        return torch.bincount(buf, minlength=k).double(), "codebook_used"
    if family == "var":
        hits = tensors[_join(gpar, "ema_vocab_hit_SV")].load().double()
        return (hits.sum(0) if hits.dim() == 2 else hits.reshape(-1)), "ema_vocab_hit_SV"
    for name in ("cluster_usage", "cluster_size", "counts", "usage"):
        if _join(par, name) in tensors:
            return tensors[_join(par, name)].load().double(), name
    return None, None


def _candidate_keys(ckpt: Checkpoint, keys: list[str]) -> list[tuple[str, str]]:
    out = []
    for want in keys:
        hits = [k for k in ckpt.tensors if want in (k, _display(k), k.removesuffix(".weight"))
                or k.endswith(("." + want, "." + want + ".weight"))]
        if not hits:
            raise CheckpointError(f"{ckpt.source}: key '{want}' not found; run without --key to list the "
                                  "codebooks shrinkscope finds")
        ref = ckpt.tensors[hits[0]]
        if not ref.floating or len(ref.shape) not in (2, 3):
            raise CheckpointError(f"{ckpt.source}: key '{hits[0]}' has shape {list(ref.shape)}; a codebook "
                                  "is a 2-D (K, D) or 3-D (heads, K, D) float tensor")
        out.append((hits[0], "explicit"))
    return out


def _effective(family: str, key: str, ckpt: Checkpoint) -> tuple[torch.Tensor, list[str]]:
    t, notes = ckpt.tensors, []
    seg = key.split(".")
    par = ".".join(seg[:-1])
    cb = t[key].load().detach()
    if family == "moshi":
        usage = t[_join(par, "cluster_usage")].load().to(cb.dtype)
        cb = cb / usage.clamp(min=1e-5)[:, None]
        notes.append("codebook derived as embedding_sum / cluster_usage (Moshi/Mimi)")
    elif family == "simvq":
        w, b = t.get(_join(par, "code_transform.weight")), t.get(_join(par, "code_transform.bias"))
        if w is not None and len(w.shape) == 2 and w.shape[1] == cb.shape[1]:
            cb = cb.float() @ w.load().float().t() + (b.load().float() if b is not None else 0.0)
            notes.append("SimVQ: effective codebook = code_transform(frozen_codebook)")
        else:
            notes.append("SimVQ code_transform is not a single Linear: measured the frozen basis")
    vq_module = par.rsplit(".", 1)[0] if "." in par else ""
    if family == "lucidrains" and _join(vq_module, "project_in.weight") in t:
        notes.append("codes live in the projected codebook_dim space: latents must come after project_in")
    return cb.to(torch.float64 if cb.dtype == torch.float64 else torch.float32), notes


def _discover(ckpt: Checkpoint, *, keys: list[str] | None, include_embeddings: bool,
              l2_normalize: bool | None) -> list[FoundCodebook]:
    tensors = ckpt.tensors
    if keys:
        picked = _candidate_keys(ckpt, keys)
    else:
        picked = [(k, f) for k, r in tensors.items() if (f := _classify(k, r, tensors, include_embeddings))]
        if not picked and ckpt.kind == "numpy":
            picked = [(k, "array") for k, r in tensors.items() if r.floating and len(r.shape) == 2]
    raw = ckpt.raw if isinstance(ckpt.raw, Mapping) else {}
    is_reference = str(raw.get("format", "")).startswith("shrinkscope.reference")
    ref_l2 = _config_flag(raw.get("config"), "l2_normalize") if is_reference else None
    found: list[FoundCodebook] = []
    seen: set[tuple] = set()
    for key, family in picked:
        cb, notes = _effective(family, key, ckpt)
        ident = (cb.untyped_storage().data_ptr(), cb.storage_offset(), tuple(cb.shape))
        if ckpt.kind != "safetensors" and ident in seen:
            continue  # the same tensor under two keys (ResidualVQ shared_codebook)
        seen.add(ident)
        heads = cb if cb.dim() == 3 else cb.unsqueeze(0)
        k = heads.shape[1]
        par = key.rsplit(".", 1)[0] if "." in key else ""
        counts, source = _usage(family, key, k, tensors)
        flag = next((tensors[_join(par, f)] for f in _INIT_FLAGS if _join(par, f) in tensors), None)
        if flag is not None and not bool(flag.load().any()):
            counts, source = None, None
            notes.append("not initialised yet (k-means init pending): usage buffers ignored")
        active = tensors.get(_join(par, "active"))
        if active is not None and active.shape == () and not bool(active.load()):
            notes.append("quantization not switched on yet (deferred phase)")
        normalise = l2_normalize if l2_normalize is not None else (family in _NORMALISED or bool(ref_l2))
        if normalise:
            heads = torch.nn.functional.normalize(heads, dim=-1)
            why = f" ({_NORMALISED[family]})" if family in _NORMALISED else ""
            notes.append("measured the l2-normalised codebook" + why)
        if counts is not None:
            counts = counts.reshape(heads.shape[0], -1) if counts.numel() == heads.shape[0] * k else None
        base = _module_of(key)
        for h in range(heads.shape[0]):
            c = counts[h] if counts is not None else None
            ema = source in ("cluster_size", "cluster_usage", "ema_vocab_hit_SV")
            extra = [f"usage from the {source} buffer" + (" (EMA)" if ema else "")] if c is not None else []
            found.append(FoundCodebook(
                name=base + (f"/head{h}" if heads.shape[0] > 1 else ""), codebook=heads[h].contiguous(),
                counts=c, family=family, key=key, notes=notes + extra,
                usage_source=source if c is not None else None, ema_counts=ema and c is not None))
    names = [_display(f.name) for f in found]
    for f, n in zip(found, names):
        f.name = n if names.count(n) == 1 else _display(f.name, keep_containers=True)
    return found


def find_codebooks(ckpt: Checkpoint, *, keys: list[str] | None = None, include_embeddings: bool = False,
                   l2_normalize: bool | None = None) -> list[FoundCodebook]:
    """Find every codebook of a checkpoint by key name and shape (conventions: docs/cli.md).

    Args:
        ckpt: from ``load_checkpoint`` or ``from_state_dict``.
        keys: explicit codebook keys (full, without wrappers, or a suffix); disables automatic discovery.
        include_embeddings: also report token-embedding tables of language models.
        l2_normalize: force (True) or forbid (False) l2-normalising codebooks; None follows the convention.

    Returns:
        One ``FoundCodebook`` per codebook (heads and residual layers separately), in key order.

    Raises:
        CheckpointError: no codebook found, a named key missing, NaN/Inf in a codebook.
    """
    found = _discover(ckpt, keys=keys, include_embeddings=include_embeddings, l2_normalize=l2_normalize)
    if not found:
        floats = sorted((r for r in ckpt.tensors.values() if r.floating and len(r.shape) == 2),
                        key=lambda r: -int(np.prod(r.shape)))[:5]
        hint = ", ".join(f"{r.key} {list(r.shape)}" for r in floats) or "none"
        raise CheckpointError(f"{ckpt.source}: no codebook found among {len(ckpt.tensors)} tensors; name one "
                              f"with --key KEY (largest 2-D float tensors: {hint})")
    for fc in found:
        bad = ~torch.isfinite(fc.codebook)
        if bool(bad.any()):
            n_nan = int(torch.isnan(fc.codebook).sum())
            raise CheckpointError(f"{ckpt.source}: codebook {fc.key} contains {n_nan} NaN and "
                                  f"{int(bad.sum()) - n_nan} Inf values; the training run diverged or the "
                                  "file is damaged")
    return found


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

"""The CLI's ``analyze CKPT --model package.module:factory --data FILE``: build the user's model from their own
code, load the checkpoint into it safely, read the data. ``shrinkscope.live.analyze_model`` then runs it.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from .live_labels import LiveError

__all__ = ["build_model", "load_data", "load_weights"]


_CONTAINERS = ("state_dict", "model", "model_state_dict", "module", "net", "generator", "ema")
_PREFIXES = ("module.", "model.", "_orig_mod.")


def build_model(spec: str) -> nn.Module:
    """Import ``package.module:factory`` and call ``factory()`` (the user's own code: an explicit opt-in).

    Raises:
        LiveError: a malformed spec, an import error, or a factory that does not return an ``nn.Module``.
    """
    import importlib
    import os
    import sys

    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: a module in the current folder is found
    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name or not attr:
        raise LiveError(f"--model: expected package.module:factory (a function or class that builds the model "
                        f"with no arguments), got {spec!r}")
    try:
        obj: Any = importlib.import_module(mod_name)
    except Exception as exc:
        raise LiveError(f"--model: cannot import {mod_name!r} ({type(exc).__name__}: {exc}); is its folder on "
                        "PYTHONPATH?") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise LiveError(f"--model: {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise LiveError(f"--model: {spec} is not callable")
    try:
        model = obj()
    except Exception as exc:
        raise LiveError(f"--model: {spec}() failed ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
                        ) from exc
    if not isinstance(model, nn.Module):
        raise LiveError(f"--model: {spec}() returned {type(model).__name__}, expected a torch.nn.Module")
    return model


def _candidates(raw: Any) -> Iterator[dict[str, Any]]:
    """State dicts a checkpoint may hold: itself or a usual container key, with wrapper prefixes stripped."""
    if not isinstance(raw, dict):
        return
    for sd in [raw] + [raw[k] for k in _CONTAINERS if isinstance(raw.get(k), dict)]:
        yield sd
        for p in _PREFIXES:
            if any(isinstance(k, str) and k.startswith(p) for k in sd):
                yield {k[len(p):]: v for k, v in sd.items() if isinstance(k, str) and k.startswith(p)}


def load_weights(model: nn.Module, path: str, *, trust: bool = False) -> str:
    """Load a checkpoint's state dict into ``model`` (strict: every key must match). The file is read with
    ``checkpoint.load_checkpoint``, so it is never unpickled unsafely unless ``trust`` is set.

    Returns:
        Where in the file the weights were found (for the report's notes).

    Raises:
        CheckpointError / LiveError (ValueErrors): unreadable file, or no state dict that fits the model.
    """
    from .checkpoint import load_checkpoint

    ckpt = load_checkpoint(path, trust=trust)
    raw = ckpt.raw if isinstance(ckpt.raw, dict) else {k: r.load() for k, r in ckpt.tensors.items()}
    want = set(model.state_dict())
    best: tuple[int, int] | None = None
    for sd in _candidates(raw):
        keys = {k for k, v in sd.items() if isinstance(v, torch.Tensor)}
        if keys == want:
            model.load_state_dict({k: sd[k] for k in keys}, strict=True)
            return f"weights: {len(keys)} tensors from {path}"
        miss = (len(want - keys), len(keys - want))
        best = miss if best is None or sum(miss) < sum(best) else best
    detail = "" if best is None else f" (closest: {best[0]} of the model's keys missing, {best[1]} unexpected)"
    raise LiveError(f"{path}: no state dict in the file matches the model built by --model{detail}; the factory "
                    "must build the same architecture the checkpoint was saved from")


def load_data(path: str) -> torch.Tensor:
    """One float array ``(N, ...)`` of model inputs from ``.npy``, ``.npz`` (one array, or one named ``data``),
    ``.pt`` (a tensor, or a dict with one such tensor; loaded with ``weights_only=True``) or ``.safetensors``."""
    from .checkpoint import load_array

    return load_array(path, what="data")

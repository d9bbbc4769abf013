"""shrinkscope: diagnose and fix codebook shrinkage in vector-quantized tokenizers.

Entry points (imported lazily, so ``import shrinkscope`` stays light):

- ``shrinkscope.metrics`` / ``codebook_health``: the metric suite (pure functions on tensors);
- ``shrinkscope.watch(model)``: hooks that stream codebook health from a training loop;
- ``shrinkscope.analyze(path)``: diagnose a checkpoint; the ``shrinkscope`` CLI wraps it;
- ``shrinkscope.defer(quantizer)``: deferred quantization for anyone's quantizer.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "codebook_health": ("shrinkscope.metrics", "codebook_health"),
    "CodebookHealth": ("shrinkscope.metrics", "CodebookHealth"),
    "HealthThresholds": ("shrinkscope.metrics", "HealthThresholds"),
    "kmeans": ("shrinkscope.kmeans", "kmeans"),
    "watch": ("shrinkscope.watch", "watch"),
    "Monitor": ("shrinkscope.watch", "Monitor"),
    "analyze": ("shrinkscope.analyze", "analyze"),
    "compare": ("shrinkscope.analyze", "compare"),
    "defer": ("shrinkscope.defer", "defer"),
    "unwrap": ("shrinkscope.defer", "unwrap"),
    "DeferredQuantizer": ("shrinkscope.defer", "DeferredQuantizer"),
}

__all__ = ["__version__", "metrics", *_LAZY]


def __getattr__(name: str) -> Any:
    if name == "metrics":
        return importlib.import_module("shrinkscope.metrics")
    if name in _LAZY:
        mod, attr = _LAZY[name]
        value = getattr(importlib.import_module(mod), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'shrinkscope' has no attribute {name!r}")

"""shrinkscope: diagnose and fix codebook shrinkage in vector-quantized tokenizers.

Entry points (``import shrinkscope`` needs torch, never matplotlib or umap):

- ``shrinkscope.metrics`` / ``codebook_health``: the metric suite (pure functions on tensors);
- ``shrinkscope.watch(model)``: hooks that stream codebook health from a training loop;
- ``shrinkscope.analyze(path)``: diagnose a checkpoint; the ``shrinkscope`` CLI wraps it;
- ``shrinkscope.defer(quantizer)``: deferred quantization for anyone's quantizer.
"""
from __future__ import annotations

__version__ = "0.1.0"

# Public names are bound eagerly: several share their module's name (shrinkscope.watch.watch, ...), and a
# lazy binding would be replaced by the submodule as soon as anything imported it. These imports pull in
# torch but not matplotlib or umap, which only the plotting functions import. (``shrinkscope.metrics`` is
# bound by the import of its names below.)
from .analyze import analyze, compare  # noqa: E402
from .defer import DeferredQuantizer, defer, unwrap  # noqa: E402
from .kmeans import kmeans  # noqa: E402
from .metrics import CodebookHealth, HealthThresholds, codebook_health  # noqa: E402
from .watch import Monitor, watch  # noqa: E402

__all__ = [
    "__version__", "analyze", "codebook_health", "CodebookHealth", "compare", "defer", "DeferredQuantizer",
    "HealthThresholds", "kmeans", "metrics", "Monitor", "unwrap", "watch",
]


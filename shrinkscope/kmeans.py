"""``shrinkscope.kmeans``: the public home of k-means (codebook init), implemented in ``shrinkscope.metrics.kmeans``.

The implementation sits with the metrics because the k-means reference of the verdict (metrics/reference.py)
needs it and the metrics layer imports nothing above it; this module keeps the documented import path.
"""
from __future__ import annotations

from .metrics.kmeans import kmeans, kmeans_plusplus

__all__ = ["kmeans", "kmeans_plusplus"]

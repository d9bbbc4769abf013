"""Optional third-party packages, imported inside the test that uses them.

``vqp.VectorQuantize`` imports vector-quantize-pytorch on first use; when it is not installed,
``pytest.importorskip`` skips that one test, never a whole module (and never hides an import error of
shrinkscope itself).
"""
from __future__ import annotations

from typing import Any

import pytest


class OptionalModule:
    """A module imported with ``pytest.importorskip`` on first attribute access."""

    def __init__(self, name: str):
        self.name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(pytest.importorskip(self.name), attr)


vqp = OptionalModule("vector_quantize_pytorch")

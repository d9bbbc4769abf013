"""diveq (DiVeQ, differentiable vector quantization; PyPI ``diveq``): ``DIVEQ``, ``DIVEQDetach``,
``ProductDIVEQ`` and ``ResidualDIVEQ``.

Facts used (the installed package, 0.1.3): the codebook is the parameter ``codebook``, ``(K, D)`` for
``DIVEQ`` / ``DIVEQDetach`` and ``(C, K, D)`` for the product (C codebooks, each on its slice of ``D/C``
features, ``pvq_dim`` wide) and residual (C stages on the full ``D``) variants. ``forward(z (N, D))``
returns ``(z_q, ids (N,), perplexity)``, or ``(z_q, [ids (N,)] * C, [perplexity] * C)``; the residual
stage i looks up ``z - sum_{j<i} codebook[j][ids_j]``. ``codebook_usage`` ``(K,)`` / ``(C, K)`` counts the
picks since the last dead-code replacement (every ``replacement_iters`` steps it is zeroed). The
space-filling variants (``SFDIVEQ``, ...) quantize onto segments between codes and are not read.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .base import Capture, Family, as_index_tensor, class_name, first_arg, join, own_codebook

__all__ = ["Diveq"]


class Diveq(Family):
    """DiVeQ's quantizers (single, product, residual): codebooks ``""`` or ``part{i}`` / ``stage{i}``."""

    name = "diveq"
    why_no_defer = "deferral is not implemented for diveq's quantizers (they carry no EMA state to write)"
    _classes = ("DIVEQ", "DIVEQDetach", "ProductDIVEQ", "ResidualDIVEQ")

    def matches(self, module: nn.Module) -> bool:
        cb = getattr(module, "codebook", None)
        return (class_name(module) in self._classes and isinstance(cb, torch.Tensor)
                and cb.ndim == (2 if class_name(module).startswith("DIVEQ") else 3))

    def _kind(self, module: nn.Module) -> str:
        return {"ProductDIVEQ": "part", "ResidualDIVEQ": "stage"}.get(class_name(module), "")

    def codebooks(self, module: nn.Module) -> dict[str, torch.Tensor]:
        kind, cb = self._kind(module), module.codebook
        if not kind:
            return {"": own_codebook(cb)}
        return {f"{kind}{i}": own_codebook(cb[i]) for i in range(cb.shape[0])}

    def extract(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> list[Capture]:
        z = first_arg(args, kwargs, "z")
        if not isinstance(z, torch.Tensor) or z.ndim != 2 or not isinstance(output, tuple) or len(output) < 2:
            return []
        kind = self._kind(module)
        if not kind:
            return [Capture("", as_index_tensor(output[1]), z.detach())]
        ids = list(output[1]) if isinstance(output[1], (list, tuple)) else []
        if len(ids) != module.codebook.shape[0]:
            return []
        if kind == "part":
            parts = torch.split(z.detach(), int(module.pvq_dim), dim=1)
            return [Capture(f"part{i}", as_index_tensor(ids[i]), parts[i]) for i in range(len(ids))]
        # residual: stage i sees what stages 0..i-1 left; rebuilt from their ids (a gather per stage)
        caps, res = [], z.detach()
        with torch.no_grad():
            for i, idx in enumerate(ids):
                caps.append(Capture(f"stage{i}", as_index_tensor(idx), res))
                res = res - module.codebook[i].detach()[idx]
        return caps

    # checkpoints: ``...codebook`` beside ``...codebook_usage``
    def claims(self, seg: list[str], shape: tuple[int, ...], tensors: Mapping[str, Any]) -> bool:
        par = ".".join(seg[:-1])
        return seg[-1] == "codebook" and len(shape) in (2, 3) and join(par, "codebook_usage") in tensors

    def stored_usage(self, key: str, k: int, tensors: Mapping[str, Any]) -> tuple[torch.Tensor | None, str | None]:
        usage = tensors.get(join(key.rsplit(".", 1)[0] if "." in key else "", "codebook_usage"))
        if usage is None:
            return None, None
        return usage.load().double(), "codebook_usage"

"""Input checks shared by the metric functions.

Every public metric accepts torch tensors or numpy arrays. These helpers turn them into floating
torch tensors, upcast half precision (bfloat16/float16 lose too much in sums of squares), and raise
clear errors for the inputs a user can get wrong: wrong rank, integer/complex dtypes, NaN/Inf,
mismatched dimensions, too few rows.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

_HALF = (torch.float16, torch.bfloat16)


def to_tensor(x: Any, name: str) -> torch.Tensor:
    """Return ``x`` as a torch tensor (numpy arrays and nested lists are converted, not copied if possible)."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    try:
        return torch.as_tensor(np.asarray(x))
    except Exception as exc:  # pragma: no cover - message path
        raise TypeError(f"{name}: expected a torch.Tensor or numpy array, got {type(x).__name__}") from exc


def as_float(x: Any, name: str, *, ndim: int | None = 2, min_rows: int = 0, check_finite: bool = True) -> torch.Tensor:
    """Validate a floating input and return it as float32/float64 (half precision is upcast).

    Args:
        x: tensor or array.
        name: argument name used in error messages.
        ndim: required number of dimensions (``None`` skips the check).
        min_rows: minimum size of the first dimension.
        check_finite: reject NaN/Inf.

    Raises:
        TypeError: integer, bool or complex dtype.
        ValueError: wrong rank, too few rows, NaN or Inf values.
    """
    t = to_tensor(x, name)
    if t.is_complex():
        raise TypeError(f"{name}: expected a real floating tensor, got complex dtype {t.dtype}; "
                        "pass the real part or the magnitude explicitly")
    if not t.is_floating_point():
        raise TypeError(f"{name}: expected a floating tensor (float16/bfloat16/float32/float64), got {t.dtype}; "
                        "integer tensors look like code indices - pass them as `counts`/`indices` instead")
    if ndim is not None and t.dim() != ndim:
        shape = "(K, D)" if name == "codebook" else "(N, D)"
        raise ValueError(f"{name}: expected a {ndim}-D tensor of shape {shape}, got shape {tuple(t.shape)}; "
                         "flatten channel-first maps with x.movedim(1, -1).reshape(-1, D)")
    if ndim is not None and t.shape[0] < min_rows:
        why = " (a pairwise or spectral metric compares rows)" if min_rows >= 2 else ""
        raise ValueError(f"{name}: needs at least {min_rows} rows{why}, got {t.shape[0]}")
    if t.dtype in _HALF:
        t = t.float()
    if check_finite and t.numel():
        bad = ~torch.isfinite(t)
        if bool(bad.any()):
            n_nan = int(torch.isnan(t).sum())
            n_inf = int(bad.sum()) - n_nan
            raise ValueError(f"{name}: contains {n_nan} NaN and {n_inf} Inf values (of {t.numel()}); "
                             "fix the source or drop those rows before measuring")
    return t


def same_dim(codebook: torch.Tensor, latents: torch.Tensor) -> None:
    """Raise if codes and latents live in spaces of different dimension."""
    if codebook.shape[1] != latents.shape[1]:
        raise ValueError(f"codebook has dimension D={codebook.shape[1]} but latents have D={latents.shape[1]}; "
                         "pass the pre-quantization latents in the codebook's space (after any projection)")


def common(codebook: torch.Tensor, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Put two validated tensors on one device and the wider of their two dtypes."""
    dtype = torch.promote_types(codebook.dtype, latents.dtype)
    return codebook.to(dtype), latents.to(device=codebook.device, dtype=dtype)


def as_counts(x: Any, name: str = "counts") -> torch.Tensor:
    """Validate a 1-D non-negative usage histogram and return it as float64."""
    t = to_tensor(x, name)
    if t.is_complex():
        raise TypeError(f"{name}: expected real usage counts, got complex dtype {t.dtype}")
    if t.dim() != 1:
        raise ValueError(f"{name}: expected a 1-D histogram of length K, got shape {tuple(t.shape)}; "
                         "for multi-head codebooks pass one head's counts at a time")
    if t.numel() == 0:
        raise ValueError(f"{name}: is empty; expected one count per code (length K >= 1)")
    t = t.to(torch.float64)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: contains {int((~torch.isfinite(t)).sum())} NaN/Inf values")
    if bool((t < 0).any()):
        raise ValueError(f"{name}: contains {int((t < 0).sum())} negative values; counts must be >= 0")
    return t


def row_chunk(num_cols: int, *, budget: int = 1 << 23) -> int:
    """Rows per chunk so that a (rows, num_cols) block holds about ``budget`` elements (32 MiB of float32)."""
    return max(1, budget // max(1, num_cols))

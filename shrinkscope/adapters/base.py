"""The adapter contract: how the monitor reads one family of quantizers.

An adapter answers three questions about a quantizer module without changing it:
which modules it is (``matches``), what its *effective* codebooks are right now (``codebooks``), and
which code ids and pre-quantization latents one forward call produced (``extract``).

Everything an adapter returns on the per-step path must be cheap and free of GPU-host syncs: no
``.item()``, no ``int(tensor)``, no ``nonzero`` and no boolean-mask indexing. Latents may be handed
over as a view of the forward input (``(..., D_in)``, any layout) plus a ``transform`` that maps
gathered rows into codebook space; the streaming reservoir gathers a fixed number of rows first and
transforms only those, so projections and normalisations cost O(reservoir) instead of O(batch).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn


class Capture(NamedTuple):
    """What one forward call of a quantizer produced for one codebook.

    Attributes:
        codebook: codebook name within the quantizer (``""`` for a single codebook, ``"layers.0"``,
            ``"head1"``, ...).
        indices: code ids of any shape (``-1`` = masked/dropped, ignored), or None when the family does
            not expose ids (usage then comes from assigning the sampled latents).
        latents: pre-quantization latents, detached, ``(..., D_in)`` (rows = all leading dims), or None.
        valid: optional bool tensor with one entry per latent row (False = padding, never sampled).
        transform: optional function mapping gathered rows ``(R, D_in)`` to codebook space ``(R, D)``
            (projection, l2-normalisation). Called under ``torch.no_grad``.
    """

    codebook: str
    indices: torch.Tensor | None
    latents: torch.Tensor | None
    valid: torch.Tensor | None = None
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None


class Adapter:
    """Base class of every family adapter. Subclasses override what differs.

    Attributes:
        family: short family id shown in reports (``"lucidrains.vq"``, ``"taming"``, ...).
        usage_only: True when the family has no learned codebook (FSQ, LFQ): only usage metrics apply.
    """

    family: str = "base"
    usage_only: bool = False

    def matches(self, module: nn.Module) -> bool:
        """True when ``module`` is a quantizer this adapter can read."""
        return False

    def codebooks(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """Effective codebooks, detached: ``{codebook name: (K, D)}``, one entry per head/layer."""
        raise NotImplementedError(f"{type(self).__name__} does not implement codebooks()")

    def num_codes(self, module: nn.Module) -> dict[str, int]:
        """``{codebook name: K}``; by default read from ``codebooks``."""
        return {name: int(cb.shape[0]) for name, cb in self.codebooks(module).items()}

    def taps(self, module: nn.Module) -> dict[str, nn.Module]:
        """Sub-modules to hook instead of ``module`` itself: ``{prefix: submodule}``.

        Residual quantizers return their stages here, because each stage's input (the residual) is the
        latent its codebook sees and is not visible from the outer call. Empty: hook ``module``.
        """
        return {}

    def extract(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> list[Capture]:
        """Captures of one forward call of ``module`` (arguments and output as the hook saw them)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement extract()")

    def extract_tap(self, prefix: str, submodule: nn.Module, args: tuple, kwargs: dict,
                    output: Any) -> list[Capture]:
        """Captures of one forward call of the tap ``submodule`` registered under ``prefix``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement extract_tap()")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(family={self.family!r})"


# Helpers shared by the family modules ---------------------------------------------------------------


def first_arg(args: tuple, kwargs: dict, *names: str) -> Any:
    """The first positional argument, or the first of ``names`` found in kwargs."""
    if args:
        return args[0]
    for n in names:
        if n in kwargs:
            return kwargs[n]
    return None


def channels_last(x: torch.Tensor, channel_dim: int = 1) -> torch.Tensor:
    """A detached view of ``x`` with the channel axis moved last (no copy)."""
    return x.detach().movedim(channel_dim, -1)


def l2norm(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit length (the lookups of cosine/l2-normalised codebooks)."""
    return nn.functional.normalize(x, dim=-1)


def as_index_tensor(x: Any) -> torch.Tensor | None:
    """``x`` when it is an integer tensor, else None."""
    if isinstance(x, torch.Tensor) and not x.is_floating_point() and not x.is_complex() and x.dtype != torch.bool:
        return x.detach()
    return None


def class_name(module: nn.Module) -> str:
    return type(module).__name__

"""The family contract: everything shrinkscope knows about one kind of quantizer, in one object.

A family answers, for one quantizer class of one VQ library, without changing the module:

- **reading** (``watch``): which modules it is (``matches``), what its *effective* codebooks are right now
  (``codebooks``), and which code ids and pre-quantization latents one forward call produced (``extract``);
- **checkpoints** (``analyze``): which state-dict keys hold its codebooks (``claims``), how a stored tensor
  becomes the effective codebook (``effective``), where its usage buffer is (``stored_usage``);
- **deferral** (``defer``, optional): the output the module would return, in exactly its structure, with
  the latents passed through (``passthrough``), and the codebook + EMA writes at the switch (``write``).

Everything on the per-step path (``extract``, ``passthrough``) must be cheap and free of GPU-host syncs:
no ``.item()``, no ``int(tensor)``, no ``nonzero`` and no boolean-mask indexing in ``extract``. Latents may
be handed over as a view of the forward input (``(..., D_in)``, any layout) plus a ``transform`` that maps
gathered rows into codebook space; the streaming reservoir gathers a fixed number of rows first and
transforms only those, so projections and normalisations cost O(reservoir) instead of O(batch).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

from ..kmeans import kmeans
from ..metrics.usage import _assign, assign

__all__ = ["Capture", "Family", "Fitted", "Passed", "Staged"]

Fitted = dict[str, tuple[torch.Tensor, torch.Tensor]]  # codebook name -> (centroids (K, D), counts (K,))
Passed = tuple[Any, dict[str, torch.Tensor]]  # (the output, {reservoir stream: (N, D) latents})


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


class Family:
    """Base class of every family. Subclasses override what differs; the defaults read nothing.

    Attributes:
        name: the family id, one vocabulary everywhere (JSONL ``family``, ``FoundCodebook.family``,
            ``DeferredQuantizer.family.name``): ``"lucidrains.vq"``, ``"taming.ema"``, ``"dac.vq"``, ...
        usage_only: True when the family has no learned codebook (FSQ, LFQ): only usage metrics apply.
        usage_written: False when the library keeps a usage buffer it never updates (its counts say
            nothing); discovery then ignores the buffer.
        checkpoint_normalized: why the stored codebook is looked up l2-normalised (empty: it is not).
        latent_layout: where the code axis of the encoder output this family quantizes lies:
            ``"channels_first"`` (``(B, D, ...)``), ``"channels_last"`` (``(..., D)``) or None (either:
            ``analyze`` accepts whichever axis has size D).
        hook_method: the module method whose calls ``watch`` reads (``extract`` gets that call's arguments
            and return value): ``"forward"`` (a forward hook), or another method name for libraries that
            quantize outside ``forward`` (transformers' Encodec/Mimi call ``.encode()``), which ``watch``
            wraps on the instance and restores on ``remove()``.
        why_no_defer: for a family that reads a module but cannot defer it, why not (one clause, added to
            ``defer``'s refusal).
    """

    name: str = "base"
    usage_only: bool = False
    usage_written: bool = True
    checkpoint_normalized: str = ""
    latent_layout: str | None = None
    hook_method: str = "forward"
    why_no_defer: str = ""

    # -- reading a live module -------------------------------------------------------------------------

    def matches(self, module: nn.Module) -> bool:
        """True when ``module`` is a quantizer of this family."""
        return False

    def is_normalized(self, module: nn.Module) -> bool:
        """True when the lookup compares l2-normalised latents with l2-normalised codes."""
        return False

    def codebooks(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """Effective codebooks, detached float copies: ``{codebook name: (K, D)}``, one per head/layer."""
        raise NotImplementedError(f"{type(self).__name__} does not implement codebooks()")

    def num_codes(self, module: nn.Module) -> dict[str, int]:
        """``{codebook name: K}``; by default read from ``codebooks``."""
        return {name: int(cb.shape[0]) for name, cb in self.codebooks(module).items()}

    def scales(self, module: nn.Module) -> dict[str, tuple[int, int]]:
        """``{codebook name: (h, w)}`` for codebooks that are the scales of a multi-scale quantizer (VAR: one
        shared codebook, one token map per scale), in scale order; empty for any other quantizer."""
        return {}

    def taps(self, module: nn.Module) -> dict[str, nn.Module]:
        """Sub-modules to hook instead of ``module`` itself: ``{prefix: submodule}`` (``Staged``: the
        stages of a residual quantizer). Empty: hook ``module``."""
        return {}

    def extract(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> list[Capture]:
        """Captures of one forward call of ``module`` (arguments and output as the hook saw them)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement extract()")

    def extract_tap(self, prefix: str, submodule: nn.Module, args: tuple, kwargs: dict,
                    output: Any) -> list[Capture]:
        """Captures of one forward call of the tap ``submodule`` registered under ``prefix``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement extract_tap()")

    # -- checkpoint discovery (state-dict key conventions) ---------------------------------------------

    def claims(self, seg: list[str], shape: tuple[int, ...], tensors: Mapping[str, Any]) -> bool:
        """True when the floating 2-D/3-D tensor at key ``".".join(seg)`` is a codebook of this family
        (``tensors``: every key of the checkpoint -> lazy reference; statistics buffers never reach here)."""
        return False

    def effective(self, cb: torch.Tensor, key: str, tensors: Mapping[str, Any]) -> tuple[torch.Tensor, list[str]]:
        """The effective codebook from the stored tensor at ``key``, plus notes in plain words."""
        return cb, []

    def stored_usage(self, key: str, k: int, tensors: Mapping[str, Any]) -> tuple[torch.Tensor | None, str | None]:
        """Usage counts stored beside the codebook at ``key`` and the buffer's name, or ``(None, None)``."""
        par = key.rsplit(".", 1)[0] if "." in key else ""
        for buf in ("cluster_usage", "cluster_size", "counts", "usage"):
            if join(par, buf) in tensors:
                return tensors[join(par, buf)].load().double(), buf
        return None, None

    def checkpoint_latents(self, rows: torch.Tensor, key: str, tensors: Mapping[str, Any]) -> torch.Tensor:
        """User-supplied latents ``(N, D)`` mapped into the space the codebook at ``key`` is looked up in
        (the library's projection/normalisation); identity by default."""
        return rows

    # -- deferral (optional) ----------------------------------------------------------------------------

    def can_defer(self, module: nn.Module) -> bool:
        """True when ``shrinkscope.defer`` supports this module (the family implements pass-through)."""
        return type(self).passthrough is not Family.passthrough

    def check(self, module: nn.Module) -> None:
        """Raise ValueError for configurations deferral cannot handle."""

    def initted(self, module: nn.Module) -> bool:
        """False while the library's own codebook initialisation (k-means on a first batch) is pending."""
        return True

    def streams(self, module: nn.Module) -> dict[str, int]:
        """Reservoir streams ``{name: D}``; one per codebook unless a family needs fewer."""
        return {n: int(cb.shape[1]) for n, cb in self.codebooks(module).items()}

    def passthrough(self, module: nn.Module, args: tuple, kwargs: dict) -> Passed:
        """The output ``module(*args, **kwargs)`` would return, with latents in place of the quantized
        tensor, ids from a no-grad nearest-code lookup (``-1`` while uninitialised) and zero losses; plus
        ``{stream: (N, D)}`` latents in codebook space for the reservoir. Never calls ``module.forward``."""
        raise NotImplementedError(f"{type(self).__name__} does not support deferral")

    @torch.no_grad()
    def fit(self, module: nn.Module, reservoirs: dict[str, torch.Tensor], *, iters: int, seed: int) -> Fitted:
        """k-means on each stream's reservoir (normalised centres for normalised lookups)."""
        sizes = self.num_codes(module)
        return {name: fit_codes(rows, sizes[name], self.is_normalized(module), iters=iters, seed=seed)[:2]
                for name, rows in reservoirs.items()}

    def write(self, module: nn.Module, fitted: Fitted, *, tokens_per_step: float) -> None:
        """Write the fitted centroids (and the EMA state the library keeps) into ``module``."""
        raise NotImplementedError(f"{type(self).__name__} does not support deferral")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class Staged(Family):
    """A residual wrapper read stage by stage: each stage's input (the residual) is the latent its codebook
    sees and is not visible from the outer call. Codebooks are named ``{stage prefix}[/{head}]``."""

    def _stages(self, module: nn.Module) -> dict[str, nn.Module]:
        raise NotImplementedError

    def _stage_family(self, stage: nn.Module) -> Family:
        raise NotImplementedError

    def codebooks(self, module: nn.Module) -> dict[str, torch.Tensor]:
        return {(f"{prefix}/{name}" if name else prefix): cb
                for prefix, stage in self._stages(module).items()
                for name, cb in self._stage_family(stage).codebooks(stage).items()}

    def taps(self, module: nn.Module) -> dict[str, nn.Module]:
        return self._stages(module)

    def extract(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> list[Capture]:
        return []  # everything comes from the stage taps

    def extract_tap(self, prefix: str, submodule: nn.Module, args: tuple, kwargs: dict,
                    output: Any) -> list[Capture]:
        return prefixed(prefix, self._stage_family(submodule).extract(submodule, args, kwargs, output))


# Helpers shared by the family modules ---------------------------------------------------------------


def join(*parts: str) -> str:
    """Dotted key from non-empty parts."""
    return ".".join(p for p in parts if p)


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


def own_codebook(t: torch.Tensor, normalized: bool = False) -> torch.Tensor:
    """A detached float32 copy of a stored codebook, l2-normalised when the lookup is."""
    t = t.detach().float()
    return (l2norm(t) if normalized else t).clone()


def prefixed(prefix: str, caps: list[Capture]) -> list[Capture]:
    """Captures of a stage renamed under the stage's prefix (``layers.0``, ``layers.0/head1``)."""
    return [c._replace(codebook=prefix if not c.codebook else f"{prefix}/{c.codebook}") for c in caps]


# Deferral helpers -----------------------------------------------------------------------------------


def nearest(codebook: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``(N,)`` int64 nearest-code ids on ``rows``' device (chunked, no grad)."""
    if rows.shape[0] == 0:
        return torch.empty(0, dtype=torch.long, device=rows.device)
    # a NaN/Inf latent (a diverging step) must not raise out of the pass-through: it gets some code id
    rows = torch.nan_to_num(rows.detach(), nan=0.0, posinf=0.0, neginf=0.0)
    # The rows are finite now, so the unchecked search: the public ``assign``'s NaN/Inf scan would wait for
    # the GPU on every warm-up step of the pass-through. Half precision is searched in float32, as there.
    cb = codebook.detach()
    dtype = torch.promote_types(torch.promote_types(cb.dtype, rows.dtype), torch.float32)
    idx, _ = _assign(cb.to(dtype), rows.to(device=cb.device, dtype=dtype))
    return idx.to(rows.device)


def fit_codes(rows: torch.Tensor, k: int, normalized: bool, *, iters: int, seed: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """k-means centroids ``(K, D)`` of ``rows`` (unit rows for a normalised lookup), each code's count
    ``(K,)`` and each row's code ``(N,)``."""
    centers = kmeans(rows, k, iters=iters, seed=seed)
    centers = l2norm(centers) if normalized else centers
    idx, _ = assign(centers, rows)
    return centers, torch.bincount(idx, minlength=k).to(centers.dtype), idx


@torch.no_grad()
def fit_residual(rows: torch.Tensor, sizes: list[int], normalized: bool, *, iters: int, seed: int
                 ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Stage-wise k-means of a residual stack, in the greedy order its forward uses: stage q is fitted on
    the residual ``rows`` leave after the fitted stages 0..q-1.

    Args:
        rows: ``(N, D)`` stage-0 inputs in codebook space.
        sizes: K of each stage.
        normalized: the stages look up l2-normalised residuals with unit codes.

    Returns:
        ``[(centroids (K, D), counts (K,)), ...]`` per stage.
    """
    out, res = [], rows
    for q, k in enumerate(sizes):
        look = l2norm(res) if normalized else res
        centers, counts, idx = fit_codes(look, k, normalized, iters=iters, seed=seed + q)
        out.append((centers, counts))
        res = res - centers[idx.to(centers.device)].to(res)
    return out


def zero_loss(module: nn.Module, like: torch.Tensor) -> torch.Tensor:
    """Zeros shaped like ``like``, tied to the module's trainable parameters with weight 0.

    The tie keeps every parameter in the autograd graph (gradient exactly 0), so DistributedDataParallel
    does not stop on parameters the pass-through never used (``project_in``, a learnable codebook).
    """
    z = torch.zeros_like(like)
    if torch.is_grad_enabled() and module.training:
        for p in module.parameters():
            if p.requires_grad:
                z = z + p.sum() * 0
    return z


def per_step(counts: torch.Tensor, tokens_per_step: float) -> torch.Tensor:
    """Reservoir shares scaled to per-step token counts (the unit of these libraries' EMA cluster sizes)."""
    return counts / counts.sum().clamp_min(1) * tokens_per_step


def copy_into(dst: torch.Tensor, src: torch.Tensor) -> None:
    dst.data.copy_(src.to(device=dst.device, dtype=dst.dtype))


UNCHOSEN_COUNT = 1e-3
"""EMA count written for a code no reservoir row chose (in tokens per step)."""


def write_ema(embed: torch.Tensor, cluster_size: torch.Tensor, embed_avg: torch.Tensor,
              centers: torch.Tensor, size: torch.Tensor) -> None:
    """Codes plus EMA statistics with ``embed == embed_avg / cluster_size``, as an EMA step expects.

    A code with a zero count gets ``UNCHOSEN_COUNT`` instead: with ``embed_avg = 0`` the library's next EMA
    step would divide a zero sum by its smoothed count and send the code to the origin; with the small count
    it stays at its centroid (and still falls under any dead-code threshold, so expiry can replace it).
    """
    size = size.to(cluster_size).clamp_min(UNCHOSEN_COUNT)
    copy_into(embed, centers)
    copy_into(cluster_size, size)
    copy_into(embed_avg, centers.to(size) * size[:, None])


# Discovery helpers ----------------------------------------------------------------------------------

INIT_FLAGS = ("initted", "inited", "_initialized", "initialized")


def ema_embed_key(seg: list[str], tensors: Mapping[str, Any]) -> bool:
    """An ``embed`` tensor stored as EMA codebooks are: under ``_codebook``/``codebook`` or beside its
    ``cluster_size`` / ``embed_avg`` / init-flag buffers (lucidrains, EnCodec, the reference quantizer)."""
    par = ".".join(seg[:-1])
    return seg[-1] == "embed" and (seg[-2:-1] in (["_codebook"], ["codebook"]) or any(
        join(par, s) in tensors for s in ("cluster_size", "embed_avg", *INIT_FLAGS)))

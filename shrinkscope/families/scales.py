"""Multi-scale quantizers: one codebook shared by a pyramid of token maps, each scale read as its own codebook.

VAR (FoundationVision, ``models/quant.py``) quantizes a feature map ``f (B, C, H, W)`` coarse to fine: for
each patch size ``pn`` of ``v_patch_nums`` (e.g. 1, 2, 3, 4, 5, 6, 8, 10, 13, 16) it area-pools what earlier
scales left (the residual) to ``pn x pn``, looks each row up in the one codebook ``embedding.weight`` (cosine on
l2-normalised rows with ``using_znorm``, else squared Euclidean), upsamples the chosen codes back to
``H x W`` (bicubic; the last scale is full size), passes them through ``quant_resi`` (a conv picked by the
scale's position ``si / (S - 1)``) and subtracts them from the residual. Its ``forward`` returns
``(f_hat, usages, loss)``: no ids. Each scale sees different latents (a coarse residual at 1x1, a fine one at
16x16), so one pooled row per codebook would hide a dead coarse scale behind a healthy fine one.

``VarScales`` reads VAR's quantizer scale by scale: each scale ``si`` becomes the codebook ``scales.{si}`` (the
shared codebook, that scale's ids, that scale's residual rows as latents). The ids are those VAR itself passes
to ``embedding`` (a hook on it keeps the ids of its latest calls, ``(B, h, w)`` per scale); the forward hook
then rebuilds each scale's residual from the input and those ids (pooling, upsampling, ``quant_resi``; no
grad, autocast off, float32 as VAR works) without any codebook search. When the embedding calls were not seen
it falls back to replaying VAR's lookup too (about one no-grad quantizer forward). Nothing touches the module,
nothing syncs the host.

``MultiScale`` is the generic mechanism for your own multi-scale quantizer: wrap the family that reads it
(``"generic"`` by default) and give the scales; each call's ids are split by scale from their shapes (a list
with one id tensor per scale, or one token stream whose last axis is ``sum(h * w)``), and so are the latents
when they come as the same token stream ``(..., L, D)``. A quantizer that computes each scale's residual inside
its ``forward`` (as VAR does) shows it by calling a ``ScaleTap`` (a no-op module) with it, scale by scale; the
tap's hook keeps references to the latest calls and the forward hook hands them over as the scales' latents.
"""
from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .base import Capture, Family, as_index_tensor, class_name, join, l2norm, own_codebook
from .taming import VarVQ

__all__ = ["MultiScale", "ScaleTap", "VarScales", "scale_info", "scale_name", "scale_sizes", "with_scales"]


def scale_name(index: int, codebook: str = "") -> str:
    """Codebook name of scale ``index`` (``scales.3``, or ``layers.0/scales.3`` under a base codebook)."""
    return f"{codebook}/scales.{index}" if codebook else f"scales.{index}"


def scale_sizes(scales: Sequence[int | Sequence[int]]) -> list[tuple[int, int]]:
    """``(h, w)`` per scale from patch numbers (``4`` -> ``(4, 4)``) or pairs.

    Raises:
        ValueError: an empty list, or a size that is not one or two positive integers.
    """
    if isinstance(scales, (str, bytes)) or not isinstance(scales, Sequence) or len(scales) == 0:
        raise ValueError(f"scales: expected a non-empty list of patch numbers such as (1, 2, 4, 8) or (h, w) "
                         f"pairs, got {scales!r}")
    out = []
    for s in scales:
        hw = (s, s) if isinstance(s, int) and not isinstance(s, bool) else tuple(s) if isinstance(s, Sequence) else ()
        if len(hw) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in hw):
            raise ValueError(f"scales: each scale is a patch number >= 1 or an (h, w) pair of them, got {s!r}")
        out.append((int(hw[0]), int(hw[1])))
    return out


def scale_info(family: Family, module: nn.Module) -> dict[str, dict[str, Any]]:
    """``{codebook name: {"index": scale index, "size": [h, w]}}`` of a multi-scale quantizer (the ``scale``
    field of JSON and JSONL records); empty for other quantizers."""
    return {name: {"index": int(name.rsplit(".", 1)[1]), "size": [int(h), int(w)]}
            for name, (h, w) in family.scales(module).items()}


def with_scales(found: list[tuple[str, nn.Module, Family]], scales: Sequence[int | Sequence[int]] | None
                ) -> list[tuple[str, nn.Module, Family]]:
    """The ``scales=`` option of ``watch`` / ``analyze``: every quantizer that is not multi-scale already is
    read through ``MultiScale(its family, scales=scales)``."""
    if scales is None:
        return found
    sizes = scale_sizes(scales)
    return [(n, m, f if f.scales(m) else MultiScale(f, scales=sizes)) for n, m, f in found]


def _nearest_rows(rows: torch.Tensor, codebook: torch.Tensor, normalized: bool, chunk: int = 8192) -> torch.Tensor:
    """Ids of VAR's lookup: argmax of cosine similarity (normalised rows and codes) or argmin of
    ``|z|^2 + |e|^2 - 2 z.e`` (the expanded squared distance, as the library computes it)."""
    out = torch.empty(rows.shape[0], dtype=torch.long, device=rows.device)
    e_sq = codebook.square().sum(1)
    for s in range(0, rows.shape[0], chunk):
        z = rows[s:s + chunk]
        if normalized:
            out[s:s + chunk] = (z @ codebook.t()).argmax(1)
        else:
            d = z.square().sum(1, keepdim=True) + e_sq
            out[s:s + chunk] = d.addmm_(z, codebook.t(), alpha=-2, beta=1).argmin(1)
    return out


class VarScales(VarVQ):
    """VAR's multi-scale ``VectorQuantizer2``, live: one codebook per scale (``scales.{si}``), read by replay.

    Checkpoints: ``VarVQ`` reads the shared codebook with usage summed over scales; ``stored_scale_usage``
    gives the per-scale hits, from which ``analyze`` makes one row per scale.
    """

    @staticmethod
    def stored_scale_usage(key: str, tensors: Mapping[str, Any]) -> torch.Tensor | None:
        """``(S, V)`` per-scale EMA hit counts (``ema_vocab_hit_SV``) beside the codebook at ``key``
        (``quantize.embedding.weight``), or None when the checkpoint has no such 2-D buffer."""
        ref = tensors.get(join(key.rsplit(".", 2)[0], "ema_vocab_hit_SV")) if key.count(".") >= 2 else None
        if ref is None or len(ref.shape) != 2:
            return None
        return ref.load().double()

    def matches(self, module: nn.Module) -> bool:
        w = getattr(getattr(module, "embedding", None), "weight", None)
        return (class_name(module) == "VectorQuantizer2" and isinstance(w, torch.Tensor) and w.ndim == 2
                and isinstance(getattr(module, "v_patch_nums", None), Sequence) and len(module.v_patch_nums) > 0
                and hasattr(module, "quant_resi"))

    def is_normalized(self, module: nn.Module) -> bool:
        return bool(getattr(module, "using_znorm", False))

    def _sizes(self, module: nn.Module) -> list[tuple[int, int]]:
        return scale_sizes(list(module.v_patch_nums))

    def codebooks(self, module: nn.Module) -> dict[str, torch.Tensor]:
        cb = own_codebook(module.embedding.weight, self.is_normalized(module))
        return {scale_name(i): cb for i in range(len(module.v_patch_nums))}  # one tensor, shared

    def num_codes(self, module: nn.Module) -> dict[str, int]:
        k = int(module.embedding.weight.shape[0])
        return {scale_name(i): k for i in range(len(module.v_patch_nums))}

    def scales(self, module: nn.Module) -> dict[str, tuple[int, int]]:
        return {scale_name(i): hw for i, hw in enumerate(self._sizes(module))}

    def taps(self, module: nn.Module) -> dict[str, nn.Module]:
        # the codebook lookup module: VAR embeds each scale's ids through it, (B, h, w) per scale, in order
        return {"embedding": module.embedding, "": module}

    def extract_tap(self, prefix: str, submodule: nn.Module, args: tuple, kwargs: dict,
                    output: Any) -> list[Capture]:
        if prefix == "embedding":  # keep the ids of the last calls (bounded); the forward's hook reads them
            ids = as_index_tensor(args[0] if args else kwargs.get("input"))
            if ids is not None:
                _recent_ids.setdefault(submodule, deque(maxlen=_KEEP_CALLS)).append(ids)
            return []
        return self.extract(submodule, args, kwargs, output)

    def extract(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> list[Capture]:
        f = args[0] if args else kwargs.get("f_BChw")
        recent = _recent_ids.pop(module.embedding, None)
        if not isinstance(f, torch.Tensor) or f.ndim != 4:
            return []
        ids = _forward_ids(recent, self._sizes(module), f.shape[0])
        with torch.no_grad(), torch.autocast(f.device.type, enabled=False):
            return self._replay(module, f.detach().float(), ids)

    def _replay(self, module: nn.Module, f: torch.Tensor, ids: list[torch.Tensor] | None = None) -> list[Capture]:
        """Each scale's residual rows (the latents its lookup saw) and ids: the ids VAR embedded in this call
        when the embedding hook saw them, else recomputed by VAR's lookup (about one quantizer forward)."""
        sizes, norm = self._sizes(module), self.is_normalized(module)
        b, c, h, w = f.shape
        emb = module.embedding.weight.detach().float()
        look = l2norm(emb) if norm else emb
        rest, last, caps = f.clone(), len(sizes) - 1, []
        for si, (ph, pw) in enumerate(sizes):
            z = rest if si == last else F.interpolate(rest, size=(ph, pw), mode="area")
            rows = z.permute(0, 2, 3, 1).reshape(-1, c)
            rows = l2norm(rows) if norm else rows
            idx = ids[si].reshape(-1) if ids is not None else _nearest_rows(rows, look, norm)
            caps.append(Capture(scale_name(si), idx.view(b, z.shape[2], z.shape[3]),
                                rows.view(b, z.shape[2], z.shape[3], c)))
            if si == last:
                break
            up = emb[idx].view(b, z.shape[2], z.shape[3], c).permute(0, 3, 1, 2)
            up = F.interpolate(up, size=(h, w), mode="bicubic")
            rest = rest - module.quant_resi[si / last](up)
        return caps


_KEEP_CALLS = 64  # embedding calls remembered per quantizer (VAR makes one per scale in a forward; bounded)
_recent_ids: weakref.WeakKeyDictionary[nn.Module, deque[torch.Tensor]] = weakref.WeakKeyDictionary()
"""Ids of the latest embedding calls per VAR quantizer (keyed by its embedding module), emptied by each forward."""


def _forward_ids(recent: deque[torch.Tensor] | None, sizes: list[tuple[int, int]], b: int) -> list[torch.Tensor] | None:
    """The ids of the forward that just ran: its last ``S`` embedding calls, when they have the scales' shapes
    ``(B, h, w)`` in scale order (other callers of the embedding, e.g. VAR's teacher-forcing input, do not)."""
    if recent is None or len(recent) < len(sizes):
        return None
    got = list(recent)[-len(sizes):]
    if all(tuple(t.shape) == (b, ph, pw) for t, (ph, pw) in zip(got, sizes)):
        return got
    return None


def _id_list(output: Any, n: int, depth: int = 0) -> list[torch.Tensor] | None:
    """A list/tuple of ``n`` integer tensors (one per scale) anywhere in a (nested) output."""
    if isinstance(output, dict):
        output = list(output.values())
    if not isinstance(output, (list, tuple)) or depth > 3:
        return None
    ids = [as_index_tensor(o) for o in output]
    if len(output) == n and all(i is not None for i in ids):
        return ids  # type: ignore[return-value]
    for o in output:
        found = _id_list(o, n, depth + 1)
        if found is not None:
            return found
    return None


class MultiScale(Family):
    """Any quantizer whose calls cover several scales, split into one codebook per scale.

    Args:
        base: the family that reads the quantizer as one codebook (a ``Family`` or a name; ``"generic"``).
        scales: token-map sizes in the order the quantizer emits them: patch numbers (``(1, 2, 4, 8)``)
            or ``(h, w)`` pairs.

    Per call, the ids are split by scale from their shapes: a list/tuple of one id tensor per scale anywhere
    in the output (VAR's ``f_to_idxBl_or_fhat`` returns such a list), else the base family's ids when their
    last axis (or, flat, their length) is ``L = sum(h * w)``. Latents are split the same way when the base
    family hands them over as the token stream ``(..., L, D)``. A quantizer whose per-scale residuals stay
    inside its forward shows them through a ``ScaleTap``: when the quantizer holds one, each forward's last
    ``S`` calls of it are the scales' latents (checked against the scales' sizes; usage only when they do not
    match). Without one, such a quantizer gives usage per scale only.
    """

    name = "multiscale"

    def __init__(self, base: Family | str = "generic", *, scales: Sequence[int | Sequence[int]]):
        from . import get_family

        self.base = get_family(base) if isinstance(base, str) else base
        if not isinstance(self.base, Family):
            raise TypeError(f"MultiScale: base must be a Family or a family name, got {type(base).__name__}")
        self.sizes = scale_sizes(scales)
        self.tokens = sum(h * w for h, w in self.sizes)
        self.usage_only = self.base.usage_only
        self.hook_method = self.base.hook_method

    def __repr__(self) -> str:
        return f"MultiScale({self.base!r}, scales={self.sizes})"

    def matches(self, module: nn.Module) -> bool:
        return self.base.matches(module)

    def is_normalized(self, module: nn.Module) -> bool:
        return self.base.is_normalized(module)

    def codebooks(self, module: nn.Module) -> dict[str, torch.Tensor]:
        return {scale_name(i, c): cb for c, cb in self.base.codebooks(module).items() for i in range(len(self.sizes))}

    def num_codes(self, module: nn.Module) -> dict[str, int]:
        return {scale_name(i, c): k for c, k in self.base.num_codes(module).items() for i in range(len(self.sizes))}

    def scales(self, module: nn.Module) -> dict[str, tuple[int, int]]:
        return {scale_name(i, c): hw for c in self.base.num_codes(module) for i, hw in enumerate(self.sizes)}

    def _split(self, t: torch.Tensor | None, *, rows: bool) -> list[torch.Tensor | None]:
        """Per-scale pieces of a token stream: the last axis (ids) or the axis before the last (rows)."""
        none: list[torch.Tensor | None] = [None] * len(self.sizes)
        if t is None:
            return none
        if rows:  # only an explicit token axis: a flattened feature map could divide by L by chance
            if t.ndim < 3 or t.shape[-2] != self.tokens:
                return none
        elif t.ndim == 0 or t.shape[-1] != self.tokens:
            if t.ndim != 1 or t.numel() % self.tokens:
                return none
            t = t.view(-1, self.tokens)  # flat ids (B * L,): sample-major, as a reshape of (B, L) gives
        return list(t.split([h * w for h, w in self.sizes], dim=-2 if rows else -1))

    def taps(self, module: nn.Module) -> dict[str, nn.Module]:
        base, tap = self.base.taps(module), _scale_tap(module)
        if base or tap is None or self.hook_method != "forward":  # a base read through its own taps (residual
            return base  # stages), or through another method than forward (the tap is hooked like it), keeps them
        return {"": module, _TAP: tap}

    def extract(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> list[Capture]:
        tap = _scale_tap(module) if self.hook_method == "forward" else None
        residuals = _tapped.pop(tap, None) if tap is not None else None
        rows = self._residual_rows(residuals, tap) if residuals else None
        transform = (l2norm if self.base.is_normalized(module) else None) if rows else None
        return self._by_scale(self.base.extract(module, args, kwargs, output), output, rows, transform)

    def extract_tap(self, prefix: str, submodule: nn.Module, args: tuple, kwargs: dict,
                    output: Any) -> list[Capture]:
        if prefix == _TAP:  # a ScaleTap call: keep a reference (bounded) until the quantizer's forward ends
            x = args[0] if args else next(iter(kwargs.values()), None)
            if isinstance(x, torch.Tensor) and x.is_floating_point():
                _tapped.setdefault(submodule, deque(maxlen=_KEEP_CALLS)).append(x.detach())
            return []
        if prefix == "" and _scale_tap(submodule) is not None and not self.base.taps(submodule) \
                and self.hook_method == "forward":
            return self.extract(submodule, args, kwargs, output)
        return self._by_scale(self.base.extract_tap(prefix, submodule, args, kwargs, output), output)

    def _residual_rows(self, calls: deque[torch.Tensor], tap: ScaleTap) -> list[torch.Tensor] | None:
        """The last ``S`` ScaleTap calls as per-scale rows ``(..., D)`` when each has its scale's size (a
        channels-first ``(B, D, h, w)`` map, or channels-last ``(B, h, w, D)`` / ``(B, h * w, D)``), else None."""
        if len(calls) < len(self.sizes):
            return None
        out = []
        for t, (h, w) in zip(list(calls)[-len(self.sizes):], self.sizes):
            if tap.layout == "channels_first" and t.ndim == 4 and tuple(t.shape[-2:]) == (h, w):
                out.append(t.movedim(1, -1))  # a view: the reservoir gathers its few rows from it
            elif tap.layout == "channels_last" and t.ndim >= 3 and (
                    tuple(t.shape[-3:-1]) == (h, w) or t.shape[-2] == h * w):
                out.append(t)
            else:
                return None
        return out if len({t.shape[-1] for t in out}) == 1 else None

    def _by_scale(self, found: list[Capture], output: Any, residuals: list[torch.Tensor] | None = None,
                  transform: Any = None) -> list[Capture]:
        listed = _id_list(output, len(self.sizes))
        caps = []
        for cap in found:
            ids = listed if listed is not None else self._split(cap.indices, rows=False)
            if residuals is not None:
                lat, tf = residuals, transform
            else:
                lat = self._split(cap.latents, rows=True) if cap.valid is None else [None] * len(self.sizes)
                tf = cap.transform
            caps += [Capture(scale_name(i, cap.codebook), ids[i], lat[i], None, tf)
                     for i in range(len(self.sizes)) if ids[i] is not None or lat[i] is not None]
        return caps


class ScaleTap(nn.Identity):
    """A no-op point in your own multi-scale quantizer where ``watch`` reads each scale's residual.

    Give your quantizer one (``self.scale_tap = ScaleTap()``) and call it in ``forward`` with each scale's
    residual as its lookup sees it, coarse to fine: ``self.scale_tap(residual)``. It returns its input (no
    copy, no parameters: the state dict does not change). Unwatched it does nothing else; under
    ``watch(..., scales=...)`` or ``MultiScale`` its hook keeps a reference to the latest calls (at most 64)
    and the quantizer's forward hook takes the last ``S`` of them as the scales' latents.

    Args:
        layout: ``"channels_first"`` for ``(B, D, h, w)`` maps (VAR-style), ``"channels_last"`` for
            ``(B, h, w, D)`` or ``(B, h * w, D)`` tokens.
    """

    def __init__(self, layout: str = "channels_first"):
        super().__init__()
        if layout not in ("channels_first", "channels_last"):
            raise ValueError(f"ScaleTap: layout is 'channels_first' or 'channels_last', got {layout!r}")
        self.layout = layout


_TAP = "<scale residuals>"  # the ScaleTap's prefix among the taps (no module path looks like it)
_tapped: weakref.WeakKeyDictionary[nn.Module, deque[torch.Tensor]] = weakref.WeakKeyDictionary()
"""The latest ScaleTap calls per tap, emptied by the quantizer's forward hook."""


def _scale_tap(module: nn.Module) -> ScaleTap | None:
    """The first ``ScaleTap`` inside ``module`` (itself excluded), or None."""
    return next((m for m in module.modules() if isinstance(m, ScaleTap) and m is not module), None)

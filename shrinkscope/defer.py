"""Deferred quantization for anyone's quantizer: ``shrinkscope.defer`` and ``shrinkscope.unwrap``.

``model.quantizer = shrinkscope.defer(model.quantizer)`` trains the autoencoder continuously first: the
wrapper hands the encoder's latents straight to the decoder, in exactly the output structure of the wrapped
module, and keeps a bounded reservoir of recent latents. When the latents have matured (``switch="auto"``)
or after a fixed number of training steps (``switch=STEPS``), it runs k-means on the reservoir, writes the
centroids and the family's EMA state into the wrapped module and from then on simply calls it.

Why "recent": k-means must see the mature encoder (Zhao et al. 2026; Zhao, Karagodin et al. 2026,
research/papers.md), so the reservoir is a ring buffer refreshed over the last ``recent_steps`` steps (the
check period under ``"auto"``, the last quarter of a fixed warm-up) rather than a uniform sample of the whole
run, which would mix in the latents of the untrained encoder: when the encoder's output scale drifts during
the warm-up, centroids fitted to such a mix sit where the encoder no longer puts anything.

Per-library code (pass-through outputs, codebook and EMA writes) lives in the library's family
(``shrinkscope.families``).
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .defer_setup import check_options, recent_horizon, residual_owner
from .families import Family, deferral_family
from .metrics.spectrum import effective_dimension, effective_rank, singular_spectrum

__all__ = ["DeferredQuantizer", "STATE_FORMAT", "defer", "strip_deferred", "unwrap", "water_filling_dimension"]

logger = logging.getLogger("shrinkscope.defer")

STATE_FORMAT = "shrinkscope.defer/1"


def _dist_world(group: Any) -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(group)
    return 1


def _is_main(group: Any) -> bool:
    return _dist_world(group) == 1 or dist.get_rank(group) == 0


def _src(group: Any) -> int:
    """Global rank of the group's rank 0 (the rank that decides and runs k-means)."""
    return dist.get_global_rank(group, 0) if group is not None else 0


def _growth(now: float, before: float) -> float:
    """Relative increase ``(now - before) / before``; a drop counts as no growth."""
    return (now - before) / max(abs(before), 1e-12)


class DeferredQuantizer(nn.Module):
    """A quantizer that passes latents through until a switch, then k-means-initialises and quantizes.

    Build it with :func:`defer`. The wrapped module is the child ``wrapped``; :func:`unwrap` puts it back.

    Attributes:
        wrapped: the original quantizer (untouched before the switch except for reading its codebook).
        family: the :class:`~shrinkscope.families.Family` handling the wrapped class.
        switched: True once the codebook has been initialised and quantization is on.
        phase: ``"warmup"`` or ``"quantized"``.
        step: training forward calls seen so far (eval calls do not count).
        history: one dict per maturity check: ``step``, ``effective_dimension``, ``effective_rank``,
            ``water_filling_dimension`` (means over streams), ``rows``.
        switch_info: the evidence recorded at the switch (empty before it).
    """

    def __init__(self, quantizer: nn.Module, *, switch: str | int = "auto", reservoir_size: int | None = None,
                 check_every: int = 100, min_steps: int = 500, max_steps: int = 20000, tol: float = 0.02,
                 window: int = 3, kmeans_iters: int = 20, water_filling: bool = False, monitor: Any = None,
                 seed: int = 0, process_group: Any = None, recent_steps: int | None = None):
        super().__init__()
        if isinstance(quantizer, DeferredQuantizer):
            raise TypeError("defer: the quantizer is already deferred; wrap the original module once")
        if not isinstance(quantizer, nn.Module):
            raise TypeError(f"defer: expected a torch.nn.Module quantizer, got {type(quantizer).__name__}")
        fam = deferral_family(quantizer)
        fam.check(quantizer)
        owner = residual_owner(quantizer)
        if owner is not None:
            raise ValueError(
                f"defer: this {type(quantizer).__name__} is one stage of a residual quantizer ({owner}); "
                "deferring one stage passes its input through, so the stages after it see a zero residual "
                f"and their codebooks never train. Defer the {owner} itself where its family supports it "
                "(docs/defer.md)")
        check_options(switch=switch, reservoir_size=reservoir_size, check_every=check_every,
                       min_steps=min_steps, max_steps=max_steps, tol=tol, window=window,
                       kmeans_iters=kmeans_iters, seed=seed, recent_steps=recent_steps)
        sizes = {n: int(cb.shape[0]) for n, cb in fam.codebooks(quantizer).items()}
        k_max = max(sizes.values())
        if reservoir_size is None:
            reservoir_size = max(4096, 4 * k_max)
        if reservoir_size < k_max:
            raise ValueError(f"defer: reservoir_size={reservoir_size} is smaller than the codebook "
                             f"(K={k_max}); k-means needs at least K latents - use reservoir_size >= {k_max} "
                             "(4*K or more is better)")
        self.wrapped = quantizer
        self.family: Family = fam
        self.switch = switch
        self.reservoir_size, self.check_every = int(reservoir_size), check_every
        self.min_steps, self.max_steps, self.tol, self.window = min_steps, max_steps, tol, window
        self.kmeans_iters, self.water_filling, self.seed = kmeans_iters, water_filling, seed
        self.monitor, self.process_group = monitor, process_group
        self._num_codes = sizes
        self._dims = fam.streams(quantizer)
        # rows kept per step: enough to refresh the whole reservoir over the recent steps it must represent
        self.recent_steps = recent_horizon(switch, check_every, recent_steps)
        self._per_step = max(1, math.ceil(self.reservoir_size / self.recent_steps))
        self.step = 0
        self.switched = False
        self._decided = False
        self.history: list[dict[str, float]] = []
        self.switch_info: dict[str, Any] = {}
        self._tokens_per_step = 0.0
        self._gen = torch.Generator().manual_seed(seed)
        self._res: dict[str, torch.Tensor] = {}
        self._fill: dict[str, int] = {n: 0 for n in self._dims}
        self._pos: dict[str, int] = {n: 0 for n in self._dims}

    # -- public state ---------------------------------------------------------------------------------

    @property
    def phase(self) -> str:
        return "quantized" if self.switched else "warmup"

    def reservoir(self, stream: str = "") -> torch.Tensor:
        """The latents held for ``stream``: ``(rows, D)`` in ring-buffer order; empty after the switch."""
        if stream not in self._dims:
            raise KeyError(f"defer: no stream {stream!r}; streams are {sorted(self._dims)}")
        buf = self._res.get(stream)
        return buf[: self._fill[stream]] if buf is not None else torch.empty(0, self._dims[stream])

    def __getattr__(self, name: str) -> Any:
        """Attributes the wrapper lacks are the wrapped module's: models call their quantizer's other methods
        (``decode``, ``from_codes``, ``encode``, ``get_codes_from_indices``) and read its settings
        (``codebook_size``), and those must keep working with the wrapper in place. Before the switch they
        act on the not-yet-initialised codebook; only ``forward`` passes latents through."""
        try:
            return super().__getattr__(name)  # the wrapper's own parameters, buffers and submodules
        except AttributeError:
            wrapped = self.__dict__.get("_modules", {}).get("wrapped")
            if wrapped is None or name.startswith("__"):
                raise
            return getattr(wrapped, name)

    def extra_repr(self) -> str:
        return (f"family={self.family.name!r}, switch={self.switch!r}, phase={self.phase!r}, "
                f"step={self.step}, reservoir_size={self.reservoir_size}")

    # -- forward ----------------------------------------------------------------------------------------

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.switched:
            return self.wrapped(*args, **kwargs)
        if self.training and self._due() and self._enough_rows():
            self.switch_now(reason="max_steps" if self.switch == "auto" and not self._decided else None)
            return self.wrapped(*args, **kwargs)
        out, latents = self.family.passthrough(self.wrapped, args, kwargs)
        if self.training:
            self._observe(latents)
            self.step += 1
            if self.switch == "auto" and self.step % self.check_every == 0:
                self._check()
        return out

    def _enough_rows(self) -> bool:
        """True when every stream holds K finite-looking rows; otherwise the switch waits (warned once).

        Rows are counted per rank; under DDP the decision is rank 0's, shared with the others, so all
        ranks switch at the same step.
        """
        k_max = max(self._num_codes.values())
        ok = all(self._fill[n] >= self._num_codes.get(n, k_max) for n in self._dims)
        group = self.process_group
        if _dist_world(group) > 1:
            flag = [ok]
            dist.broadcast_object_list(flag, src=_src(group), group=group)
            ok = bool(flag[0])
        if not ok:
            self.switch_info["postponed"] = self.switch_info.get("postponed", 0) + 1
            if self.switch_info["postponed"] == 1:
                logger.warning("defer: switch postponed at step %d: the reservoir holds %s latents, fewer than "
                               "the codebook size %s; warming up until it does (use larger batches or a later "
                               "switch to avoid this)", self.step, dict(self._fill), self._num_codes)
        return ok

    def _due(self) -> bool:
        if self.switch == "auto":
            return self._decided or self.step >= self.max_steps
        return self.step >= self.switch

    # -- reservoir ------------------------------------------------------------------------------------

    @torch.no_grad()
    def _observe(self, latents: dict[str, torch.Tensor]) -> None:
        n_tokens = 0
        for name, rows in latents.items():
            rows = rows.detach()
            n_tokens = max(n_tokens, rows.shape[0])
            if rows.shape[0] == 0:
                continue
            take = min(rows.shape[0], self._per_step)
            pick = torch.randperm(rows.shape[0], generator=self._gen)[:take].to(rows.device)
            rows = rows[pick].float()
            buf = self._res.get(name)
            if buf is None or buf.device != rows.device:
                new = torch.zeros(self.reservoir_size, self._dims[name], device=rows.device)
                if buf is not None:
                    new.copy_(buf)
                self._res[name] = buf = new
            pos = self._pos[name]
            first = min(take, self.reservoir_size - pos)
            buf[pos:pos + first] = rows[:first]
            if take > first:
                buf[: take - first] = rows[first:]
            self._pos[name] = (pos + take) % self.reservoir_size
            self._fill[name] = min(self._fill[name] + take, self.reservoir_size)
        # the EMA families count tokens per step; a running mean keeps ragged batches from skewing it
        seen = self.step
        self._tokens_per_step = (self._tokens_per_step * seen + n_tokens) / (seen + 1)

    # -- auto switch ----------------------------------------------------------------------------------

    @torch.no_grad()
    def measure(self) -> dict[str, float]:
        """Maturity of the current reservoir: means over streams of effective dimension, effective rank
        and the water-filling dimension at ``log2 K`` bits (see docs/defer.md)."""
        dims, ranks, wf, rows = [], [], [], []
        for name in self._dims:
            x = self.reservoir(name)
            if x.shape[0] < 2:
                continue
            sv = singular_spectrum(x)
            dims.append(effective_dimension(x))
            ranks.append(effective_rank(x))
            k = self._num_codes.get(name) or max(self._num_codes.values())
            wf.append(water_filling_dimension(sv.pow(2) / (x.shape[0] - 1), k))
            rows.append(x.shape[0])
        if not dims:
            return {"step": self.step, "effective_dimension": 0.0, "effective_rank": 0.0,
                    "water_filling_dimension": 0.0, "rows": 0}
        return {"step": self.step, "effective_dimension": sum(dims) / len(dims),
                "effective_rank": sum(ranks) / len(ranks), "water_filling_dimension": sum(wf) / len(wf),
                "rows": min(rows)}

    def _plateaued(self) -> tuple[bool, dict[str, float]]:
        if len(self.history) <= self.window:
            return False, {}
        now, before = self.history[-1], self.history[-1 - self.window]
        keys = ["effective_dimension", "effective_rank"]
        if self.water_filling:
            keys.append("water_filling_dimension")
        growth = {k: _growth(now[k], before[k]) for k in keys}
        return all(g < self.tol for g in growth.values()), growth

    def _check(self) -> None:
        group = self.process_group
        payload = [None]
        if _is_main(group):
            entry = self.measure()
            self.history.append(entry)
            flat, growth = self._plateaued()
            ready = min(self._fill.values()) >= max(self._num_codes.values())
            decided = flat and ready and self.step >= self.min_steps
            payload = [(entry, growth, decided)]
        if _dist_world(group) > 1:
            # rank 0 decides so that every rank switches at the same step (collectives must line up)
            dist.broadcast_object_list(payload, src=_src(group), group=group)
            if not _is_main(group):
                self.history.append(payload[0][0])
        entry, growth, decided = payload[0]
        logger.debug("defer check at step %d: %s growth=%s", self.step, entry, growth)
        if decided:
            self._decided = True
            self.switch_info["growth"] = growth

    # -- the switch -----------------------------------------------------------------------------------

    @torch.no_grad()
    def _gathered(self) -> dict[str, torch.Tensor]:
        group, world = self.process_group, _dist_world(self.process_group)
        out = {}
        for name, d in self._dims.items():
            local = self.reservoir(name).float()
            if world == 1:
                out[name] = local
                continue
            dev = local.device if local.numel() else self._device()
            padded = torch.zeros(self.reservoir_size, d, device=dev)
            padded[: local.shape[0]] = local.to(dev)
            fills = [torch.zeros(1, dtype=torch.long, device=dev) for _ in range(world)]
            dist.all_gather(fills, torch.tensor([local.shape[0]], device=dev), group=group)
            parts = [torch.zeros_like(padded) for _ in range(world)]
            dist.all_gather(parts, padded, group=group)
            out[name] = torch.cat([p[: int(f)] for p, f in zip(parts, fills)])
        return out

    def _device(self) -> torch.device:
        for t in list(self.wrapped.parameters()) + list(self.wrapped.buffers()):
            return t.device
        return torch.device("cpu")

    @torch.no_grad()
    def switch_now(self, reason: str | None = None) -> None:
        """Initialise the codebook from the reservoir now and start quantizing.

        Under ``torch.distributed`` every rank must call this at the same step (``forward`` does): the
        reservoirs are gathered, k-means runs on rank 0 and the result is broadcast, so all ranks write
        identical codebooks.

        Raises:
            RuntimeError: the reservoir holds fewer latents than the codebook has codes.
        """
        if self.switched:
            return
        group, world = self.process_group, _dist_world(self.process_group)
        if reason is None:
            reason = "plateau" if self._decided else ("fixed_step" if self.switch != "auto" else "manual")
        pool = self._gathered()
        dropped = {}
        for name, rows in pool.items():
            finite = torch.isfinite(rows).all(1)
            if not bool(finite.all()):  # one Inf latent would turn every centroid it touches into NaN
                dropped[name] = int((~finite).sum())
                pool[name] = rows[finite]
        if dropped:
            self.switch_info["nonfinite_rows_dropped"] = dropped
        k_max = max(self._num_codes.values())
        short = {n: r.shape[0] for n, r in pool.items() if r.shape[0] < self._num_codes.get(n, k_max)}
        if short:
            raise RuntimeError(f"defer: cannot switch at step {self.step}: the reservoir holds {short} "
                               f"latents, fewer than the codebook size {self._num_codes}; train more steps "
                               "before the switch, use a smaller check_every or a larger batch")
        tokens = torch.tensor([self._tokens_per_step], dtype=torch.float64)
        seconds = 0.0
        fitted = {}
        if _is_main(group):
            start = time.perf_counter()
            fitted = self.family.fit(self.wrapped, pool, iters=self.kmeans_iters, seed=self.seed)
            seconds = time.perf_counter() - start
        if world > 1:
            dev = self._device()
            received = {}
            for name, cb in self.family.codebooks(self.wrapped).items():
                if name in fitted:
                    centers, counts = (t.to(dev).float() for t in fitted[name])
                else:  # receiving ranks: buffers of the right shape
                    centers, counts = torch.zeros(cb.shape, device=dev), torch.zeros(cb.shape[0], device=dev)
                dist.broadcast(centers, src=_src(group), group=group)
                dist.broadcast(counts, src=_src(group), group=group)
                received[name] = (centers, counts)
            fitted = received
            # EMA families count tokens summed over ranks (they all-reduce their statistics)
            tok = tokens.to(dev)
            dist.all_reduce(tok, group=group)
            tokens = tok.cpu()
        self.family.write(self.wrapped, fitted, tokens_per_step=float(tokens))
        self.switched = True
        measured = self.history[-1] if self.history else {}
        self.switch_info.update(step=self.step, reason=reason, kmeans_seconds=seconds,
                                reservoir_rows={n: int(r.shape[0]) for n, r in pool.items()},
                                family=self.family.name, evidence=measured)
        self._res.clear()  # the reservoir is no longer needed; its memory goes back
        self._fill = {n: 0 for n in self._dims}
        self._pos = {n: 0 for n in self._dims}
        logger.info("defer: switched %s to quantization at step %d (%s); k-means on %s latents took %.3fs; "
                    "evidence %s", self.family.name, self.step, reason, self.switch_info["reservoir_rows"],
                    seconds, measured)
        if self.monitor is not None:
            try:
                self.monitor.log_event("defer_switch", **{k: v for k, v in self.switch_info.items()},
                                       history=list(self.history))
            except Exception as exc:  # noqa: BLE001 - a sink failure must not stop training
                logger.warning("defer: could not log the switch to the monitor: %s", exc)

    # -- state ------------------------------------------------------------------------------------------

    def get_extra_state(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT, "step": self.step, "switched": self.switched, "decided": self._decided,
            "history": [dict(h) for h in self.history], "switch_info": dict(self.switch_info),
            "tokens_per_step": self._tokens_per_step, "rng": self._gen.get_state(),
            "reservoir": {n: self.reservoir(n).detach().cpu().clone() for n in self._dims},
            "pos": dict(self._pos),
        }

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"defer: expected extra state of format {STATE_FORMAT!r}, got "
                             f"{state.get('format') if isinstance(state, dict) else type(state).__name__}")
        self.step, self.switched = int(state["step"]), bool(state["switched"])
        self._decided = bool(state["decided"])
        self.history = [dict(h) for h in state["history"]]
        self.switch_info = dict(state["switch_info"])
        self._tokens_per_step = float(state["tokens_per_step"])
        self._gen.set_state(state["rng"])
        self._res.clear()
        for name, rows in state["reservoir"].items():
            if name not in self._dims:
                raise ValueError(f"defer: checkpoint has reservoir stream {name!r}, this quantizer has "
                                 f"{sorted(self._dims)}")
            self._fill[name] = int(rows.shape[0])
            if rows.shape[0]:
                buf = torch.zeros(self.reservoir_size, self._dims[name], device=self._device())
                buf[: rows.shape[0]] = rows[: self.reservoir_size].to(buf.device)
                self._res[name] = buf
        self._pos = {n: int(state["pos"].get(n, 0)) % self.reservoir_size for n in self._dims}

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> DeferredQuantizer:
        super()._apply(fn, *args, **kwargs)
        # the reservoir is plain tensors (not buffers, so DDP does not broadcast it): move it along
        self._res = {n: fn(t) for n, t in self._res.items()}
        return self


def water_filling_dimension(variances: torch.Tensor, num_codes: int) -> int:
    """Dimensions reverse water-filling keeps at a rate of ``log2(num_codes)`` bits per vector.

    Solves ``sum_i max(0, 1/2 log2(lambda_i / theta)) = log2 K`` for the water level ``theta`` by
    bisection and counts the components above it (Zhao, Karagodin et al. 2026, research/papers.md B.3).

    Args:
        variances: ``(D,)`` PCA variances (any order, non-negative).
        num_codes: K.

    Returns:
        The number of components with variance above the water level (0 when all variances are 0).
    """
    lam = variances.double().clamp_min(0)
    lam = lam[lam > 0]
    if lam.numel() == 0:
        return 0
    rate = math.log2(max(num_codes, 2))
    lo, hi = float(lam.min()) * 2.0 ** (-2 * rate) * 0.5, float(lam.max())
    for _ in range(200):
        mid = math.sqrt(lo * hi)  # the level spans many decades: bisect in log space
        bits = float(0.5 * torch.log2(lam / mid).clamp_min(0).sum())
        lo, hi = (mid, hi) if bits > rate else (lo, mid)
    return int((lam > hi).sum())


def defer(quantizer: nn.Module, *, switch: str | int = "auto", reservoir_size: int | None = None,
          check_every: int = 100, min_steps: int = 500, max_steps: int = 20000, tol: float = 0.02,
          window: int = 3, kmeans_iters: int = 20, water_filling: bool = False, monitor: Any = None,
          seed: int = 0, process_group: Any = None, recent_steps: int | None = None) -> DeferredQuantizer:
    """Wrap a quantizer so that it quantizes only after a continuous warm-up.

    Args:
        quantizer: the quantizer module (a supported family, see docs/defer.md).
        switch: ``"auto"`` (switch when the latents stop maturing) or a number of training steps.
        reservoir_size: latents kept per codebook stream (default ``max(4096, 4*K)``); at least K.
        check_every: steps between maturity checks; the reservoir is refreshed over this many steps.
        min_steps, max_steps: bounds on the warm-up under ``"auto"``.
        tol: relative growth below which a maturity measure counts as flat.
        window: number of checks over which the growth is measured.
        kmeans_iters: Lloyd iterations at the switch.
        water_filling: also require the water-filling dimension at ``log2 K`` bits to be flat.
        monitor: a ``shrinkscope.watch`` Monitor (or anything with ``log_event``); gets ``defer_switch``.
        seed: seed of the reservoir sampling and of the k-means++ draw.
        process_group: the ``torch.distributed`` group to gather reservoirs over (default: the world).
        recent_steps: the training steps whose latents the reservoir holds at the switch: it is refilled
            with ``ceil(reservoir_size / recent_steps)`` rows per step (fewer when a batch has fewer, which
            stretches the span). Default: ``check_every`` under ``"auto"``; for a fixed switch S the last
            quarter of the warm-up, ``min(check_every, ceil(S / 4))``.

    Returns:
        A :class:`DeferredQuantizer`; assign it where the quantizer was.

    Raises:
        TypeError: the module is not a quantizer deferral supports.
        ValueError: bad options, or a reservoir smaller than the codebook.

    Example:
        >>> from vector_quantize_pytorch import VectorQuantize
        >>> q = defer(VectorQuantize(dim=8, codebook_size=16), switch=3, reservoir_size=64, check_every=1)
        >>> x = torch.randn(2, 32, 8)
        >>> torch.equal(q(x)[0], x), q.phase
        (True, 'warmup')
    """
    return DeferredQuantizer(quantizer, switch=switch, reservoir_size=reservoir_size, check_every=check_every,
                             min_steps=min_steps, max_steps=max_steps, tol=tol, window=window,
                             kmeans_iters=kmeans_iters, water_filling=water_filling, monitor=monitor,
                             seed=seed, process_group=process_group, recent_steps=recent_steps)


def unwrap(model: nn.Module) -> nn.Module:
    """Replace every :class:`DeferredQuantizer` in ``model`` by the module it wraps.

    After the switch the wrapped module holds the k-means codebook and its own EMA state, so
    ``unwrap(model).state_dict()`` loads into the original, never-wrapped model class.

    Args:
        model: a model containing deferred quantizers, or a DeferredQuantizer itself.

    Returns:
        The same model object with the wrappers removed (or the inner quantizer when ``model`` is a wrapper).
    """
    if isinstance(model, DeferredQuantizer):
        return model.wrapped
    for name, child in list(model.named_children()):
        if isinstance(child, DeferredQuantizer):
            setattr(model, name, child.wrapped)
        else:
            unwrap(child)
    return model


def strip_deferred(state_dict: dict[str, Any]) -> dict[str, Any]:
    """A state dict of a model with deferred quantizers, as the unwrapped model would save it.

    Drops each wrapper's ``_extra_state`` entry and removes the ``wrapped.`` segment from its keys, so a
    checkpoint saved from the wrapped model loads into the original class with ``load_state_dict``.

    Args:
        state_dict: from ``model.state_dict()`` (or ``torch.load`` of one).

    Returns:
        A new ordered dict; the input is not changed.
    """
    prefixes = [k[: -len("_extra_state")] for k, v in state_dict.items()
                if k.endswith("_extra_state") and isinstance(v, dict) and v.get("format") == STATE_FORMAT]
    out: dict[str, Any] = type(state_dict)() if isinstance(state_dict, dict) else {}
    for key, value in state_dict.items():
        owner = max((p for p in prefixes if key.startswith(p)), key=len, default=None)
        if owner is None:
            out[key] = value
        elif key == owner + "_extra_state":
            continue
        elif key.startswith(owner + "wrapped."):
            out[owner + key[len(owner) + len("wrapped."):]] = value
        else:
            out[key] = value
    return out

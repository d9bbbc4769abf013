"""``watch(model)``: stream codebook health out of someone else's training loop.

Two lines::

    monitor = shrinkscope.watch(model, every=500, log_to="runs/x/shrinkscope.jsonl")
    ...  # train as usual; a report is written every 500 steps
    monitor.remove()

Forward hooks only collect: they copy detached code ids and a reservoir sample of pre-quantization
latents into ``CodebookStream``s, never change outputs, never print, never touch the global RNG, never
make the host wait for the GPU, and never raise into the training loop (an error disables that
codebook and logs one warning). Host work happens only in reports.

Hooks survive what training code does to models (why each rule exists):

- forwards under ``torch.inference_mode()`` are collected with inference mode switched off inside the
  hook, so the streaming state never becomes inference tensors (which later in-place updates would
  reject, failing every report after);
- ``copy.deepcopy(model)`` (an EMA copy) and ``torch.save(model)`` get inert hooks in place of the
  monitor's: a copy's forwards are never counted by the original monitor, and nothing of the monitor (an
  open JSONL file) is copied or pickled; every hook also checks that it was called by the module it was
  put on;
- a family that quantizes outside ``forward`` (``Family.hook_method``, e.g. transformers' Encodec/Mimi
  ``.encode()``) gets a per-instance wrapper of that method instead of a forward hook: it returns the
  library's own return value untouched, is restored on ``remove()``, and every copy of the model (deep,
  shallow ``copy.copy`` or unpickled) gets the plain method back, bound to the copy, so it runs unwatched
  (a shallow copy still shares its submodules: calls into watched stages are the stages' own calls);
- a non-finite latent is dropped from the report in which it was sampled (and counted), not allowed to
  disable its codebook; a report that fails for one codebook skips that codebook in that report only.

Step rule: one step = one training-mode forward of the first watched quantizer (``monitor.step`` may
also be set by hand). A report runs when the step reaches a multiple of ``every`` (right after the first
quantizer's call of that step, so quantizers called later in the same step land in the next window)
and whenever ``monitor.report()`` is called.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import time
from pathlib import Path
import types
from typing import Any, Callable
import weakref

import torch
from torch import nn

from .divergence import rank_divergence
from .families import Capture, Family, find_quantizers, get_family
from .implicit import EXACT_COUNT_LIMIT, BitUsageStream, bit_usage_health
from .metrics import (
    CodebookHealth,
    HealthThresholds,
    codebook_health,
    dead_code_ratio,
    judge_health,
    utilization_perplexity,
)
from .sinks import Sink, make_sinks
from .stream import CodebookStream, reduce_streams

__all__ = ["Monitor", "watch"]

logger = logging.getLogger("shrinkscope")

_COLLECT = ("train", "eval", "all")


class _Inert:
    """What a copied or unpickled model gets in place of a monitor's hook: does nothing."""

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        pass


class _Hook:
    """A monitor's forward hook: runs only for the module it was put on, with inference mode off.

    ``copy.deepcopy`` and pickling turn it into ``_Inert`` so a model copy neither feeds the monitor nor
    drags the monitor (and its open files) along.
    """

    def __init__(self, fn: Callable[..., None], module: nn.Module):
        self.fn = fn
        self.owner = weakref.ref(module)

    def __call__(self, mod: nn.Module, *args: Any) -> None:
        if self.owner() is not mod:
            return  # a shallow copy of the module shares our hook dict: not ours to count
        if torch.is_inference_mode_enabled():
            with torch.inference_mode(False), torch.no_grad():
                self.fn(mod, *args)
        else:
            self.fn(mod, *args)

    def __deepcopy__(self, memo: dict) -> _Inert:
        return _Inert()

    def __reduce__(self) -> tuple:
        return (_Inert, ())


class _MethodTap:
    """A per-instance wrapper of ``module.<name>`` that calls the class's method, then the hooks with
    ``(module, args, kwargs, output)``; the output is returned as the library made it.

    Put in the instance ``__dict__`` (an instance attribute shadows the class method). A deep copy or an
    unpickled copy gets the class method bound to the copy, so copies run exactly as before, unwatched.
    """

    def __init__(self, module: nn.Module, name: str):
        self.owner = weakref.ref(module)
        self.name = name
        self.func = getattr(type(module), name)
        self.hooks: list[Callable[..., None]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        mod = self.owner()
        out = self.func(mod, *args, **kwargs)
        for h in list(self.hooks):
            try:
                h(mod, args, kwargs, out)
            except Exception as e:  # noqa: BLE001 - must never raise into training
                logger.warning("shrinkscope: a %s() hook failed (training is not affected): %r", self.name, e)
        return out

    def __deepcopy__(self, memo: dict) -> types.MethodType:
        mod = self.owner()
        twin = memo.get(id(mod)) if mod is not None else None
        return types.MethodType(self.func, twin if twin is not None else copy.deepcopy(mod, memo))

    def __reduce__(self) -> tuple:
        return (getattr, (self.owner(), self.name))  # unpickles to the class method bound to the copy


class _UntappedState:
    """An instance-level ``__getstate__`` of a tapped module: its state without the taps.

    ``copy.copy``, ``copy.deepcopy`` and pickling all build the copy from ``__getstate__``, which Python
    looks up on the instance first. Leaving the taps out gives every copy, shallow ones included, the
    class's plain methods bound to itself: a shallow copy runs unwatched on its own attributes instead
    of calling the original through a shared wrapper.
    """

    def __init__(self, module: nn.Module):
        self.owner = weakref.ref(module)

    def __call__(self) -> dict:
        mod = self.owner()
        state = type(mod).__getstate__(mod)
        return {k: v for k, v in state.items() if not isinstance(v, (_MethodTap, _UntappedState))}


class _TapHandle:
    """``remove()`` takes one hook off a ``_MethodTap``; the last one restores the class method."""

    def __init__(self, tap: _MethodTap, hook: Callable[..., None]):
        self.tap, self.hook = tap, hook

    def remove(self) -> None:
        if self.hook in self.tap.hooks:
            self.tap.hooks.remove(self.hook)
        mod = self.tap.owner()
        if not self.tap.hooks and mod is not None and mod.__dict__.get(self.tap.name) is self.tap:
            del mod.__dict__[self.tap.name]
            if isinstance(mod.__dict__.get("__getstate__"), _UntappedState) and not any(
                    isinstance(v, _MethodTap) for v in mod.__dict__.values()):
                del mod.__dict__["__getstate__"]


def _hook_method(module: nn.Module, method: str, hook: Callable[..., None]) -> Any:
    """Call ``hook(module, args, kwargs, output)`` after every call of ``module.<method>``; returns a handle."""
    if method == "forward":
        return module.register_forward_hook(hook, with_kwargs=True)
    tap = module.__dict__.get(method)
    if not isinstance(tap, _MethodTap):
        if method in module.__dict__:
            raise ValueError(f"watch: {type(module).__name__}.{method} is already replaced on the instance")
        tap = _MethodTap(module, method)
        module.__dict__[method] = tap
        if "__getstate__" not in module.__dict__:
            module.__dict__["__getstate__"] = _UntappedState(module)
    tap.hooks.append(hook)
    return _TapHandle(tap, hook)


@dataclasses.dataclass
class _Watched:
    name: str
    module: nn.Module
    adapter: Family
    streams: dict[str, CodebookStream]  # codebook name -> stream
    dims: dict[str, int | None]
    handles: list = dataclasses.field(default_factory=list)
    captured: bool = False  # any capture yet (a Python flag: no device sync)
    silent_reported: bool = False

    def key(self, codebook: str) -> str:
        return self.name if not codebook else f"{self.name}/{codebook}"


class Monitor:
    """Hooks plus streaming state for every watched quantizer. Build it with ``watch``.

    Attributes:
        step: steps counted so far (settable).
        every: report period in steps (0/None: only on ``report()``).
        last_report: ``{"window": [...], "cumulative": [...]}`` health of the latest report.
        events: event records logged with ``log_event``.
    """

    def __init__(self, quantizers: list[tuple[str, nn.Module, Family]], *, every: int | None = 500,
                 sinks: list[Sink] | None = None, reservoir_size: int = 4096, collect: str = "train",
                 thresholds: HealthThresholds | None = None, seed: int = 0, process_group: Any = None,
                 health_kwargs: dict[str, Any] | None = None):
        if collect not in _COLLECT:
            raise ValueError(f"collect must be one of {_COLLECT}, got {collect!r}")
        if every is not None and int(every) < 0:
            raise ValueError(f"every must be >= 0 (0 or None: report only when asked), got {every}")
        self.every = int(every or 0)
        self.collect = collect
        self.sinks = list(sinks or [])
        self.thresholds = thresholds or HealthThresholds()
        self.seed = int(seed)
        self.group = process_group
        self.health_kwargs = dict(health_kwargs or {})
        self.step = 0
        self.last_report: dict[str, list[CodebookHealth]] = {"window": [], "cumulative": []}
        self.events: list[dict[str, Any]] = []
        self._disabled: set[str] = set()
        self.skipped: dict[str, int] = {}  # report-time failures per codebook
        self.nonfinite: dict[str, int] = {}  # sampled latent rows dropped for NaN/Inf, per codebook
        self._last_latents: dict[str, torch.Tensor] = {}
        self._estimates: dict[str, dict[str, Any]] = {}
        self._removed = False
        self.watched: list[_Watched] = []
        for i, (name, module, adapter) in enumerate(quantizers):
            label = name or type(module).__name__
            ks = adapter.num_codes(module)
            cbs = adapter.codebooks(module)
            dims = {c: (None if adapter.usage_only or c not in cbs else int(cbs[c].shape[1])) for c in ks}
            # implicit codebooks too large for a histogram keep bit statistics instead (shrinkscope/implicit.py)
            streams = {c: BitUsageStream(k) if adapter.usage_only and k > EXACT_COUNT_LIMIT else
                       CodebookStream(k, reservoir_size=reservoir_size, seed=self.seed + 7919 * i + j)
                       for j, (c, k) in enumerate(ks.items())}
            w = _Watched(label, module, adapter, streams, dims)
            self._attach(w, first=(i == 0))
            self.watched.append(w)

    # ---- hooks -----------------------------------------------------------------------------------

    def _wanted(self, module: nn.Module) -> bool:
        if self._removed:
            return False
        return self.collect == "all" or (module.training == (self.collect == "train"))

    def _attach(self, w: _Watched, *, first: bool) -> None:
        taps = w.adapter.taps(w.module)
        method = w.adapter.hook_method
        if taps:
            for prefix, sub in taps.items():
                def tap_hook(mod, args, kwargs, output, prefix=prefix):
                    if self._wanted(mod):
                        self._collect(w, lambda: w.adapter.extract_tap(prefix, mod, args, kwargs, output))
                w.handles.append(_hook_method(sub, method, _Hook(tap_hook, sub)))
        else:
            def hook(mod, args, kwargs, output):
                if self._wanted(mod):
                    self._collect(w, lambda: w.adapter.extract(mod, args, kwargs, output))
            w.handles.append(_hook_method(w.module, method, _Hook(hook, w.module)))
        if first:
            w.handles.append(_hook_method(w.module, method, _Hook(self._step_hook, w.module)))

    def _step_hook(self, module: nn.Module, *_: Any) -> None:
        if self._removed or not module.training:
            return
        self.step += 1
        if self.every and self.step % self.every == 0:
            try:
                self.report()
            except Exception as e:  # noqa: BLE001 - a report must never break training
                logger.warning("shrinkscope: report at step %d failed and was skipped: %r", self.step, e)

    def _collect(self, w: _Watched, extract) -> None:
        if w.name in self._disabled:
            return
        try:
            caps: list[Capture] = extract()
        except Exception as e:  # noqa: BLE001 - must never raise into training
            self._disable(w.name, e)
            return
        if caps:
            w.captured = True
        for cap in caps:
            key = w.key(cap.codebook)
            if key in self._disabled:
                continue
            try:
                stream = w.streams[cap.codebook]
                if cap.indices is not None:
                    stream.update_indices(cap.indices)
                if cap.latents is not None and w.dims.get(cap.codebook) is not None:
                    stream.update_latents(cap.latents, valid=cap.valid, transform=cap.transform)
            except Exception as e:  # noqa: BLE001 - must never raise into training
                self._disable(key, e)

    def _skip(self, key: str, error: BaseException) -> None:
        """A report-time failure: this codebook is left out of this report only (first one logged)."""
        self.skipped[key] = self.skipped.get(key, 0) + 1
        if self.skipped[key] == 1:
            logger.warning("shrinkscope: %r left out of a report after an error (monitoring goes on; further "
                           "failures are counted in monitor.skipped): %r", key, error)

    def _disable(self, key: str, error: BaseException) -> None:
        if key not in self._disabled:
            self._disabled.add(key)
            logger.warning("shrinkscope: stopped monitoring %r after an error in its hook (training is not "
                           "affected): %r", key, error)

    @property
    def disabled(self) -> set[str]:
        """Names of quantizers/codebooks switched off after an error."""
        return set(self._disabled)

    # ---- reports ---------------------------------------------------------------------------------

    def _distributed(self) -> tuple[bool, int]:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size(self.group) > 1:
            return True, dist.get_rank(self.group)
        return False, 0

    def _device(self, w: _Watched) -> torch.device:
        for t in list(w.module.parameters()) + list(w.module.buffers()):
            return t.device
        return torch.device("cpu")

    def report(self, step: int | None = None) -> list[CodebookHealth]:
        """Measure every watched codebook now, hand the records to the sinks, start a new window.

        Under DDP every rank must call it at the same step (automatic reports do): counts are summed
        and reservoirs gathered across ranks, every rank gets the same results, only rank 0 writes.

        Args:
            step: step label of the records (default ``monitor.step``).

        Returns:
            Window-scope ``CodebookHealth`` per codebook (cumulative ones: ``monitor.last_report``); an
            empty list when the report failed as a whole (logged, never raised).
        """
        try:
            with torch.inference_mode(False), torch.no_grad():
                return self._report(step)
        except Exception as e:  # noqa: BLE001 - a report must never raise into training
            logger.warning("shrinkscope: report at step %s failed and was skipped: %r", self.step, e)
            return []

    def _report(self, step: int | None) -> list[CodebookHealth]:
        step = self.step if step is None else int(step)
        distributed, rank = self._distributed()
        diverged: dict[str, dict[str, Any]] = {}
        if distributed:
            for w in self.watched:
                names = [c for c, s in w.streams.items() if not isinstance(s, BitUsageStream)]
                reduce_streams([w.streams[c] for c in names], [w.dims[c] for c in names],
                               device=self._device(w), group=self.group, seed=self.seed + step)
                for s in w.streams.values():
                    if isinstance(s, BitUsageStream):
                        s.all_reduce(device=self._device(w), group=self.group)
                diverged.update(self._rank_divergence(w))
        now = time.time()
        window, cumulative, records = [], [], []
        dev_type = "cuda" if any(self._device(w).type == "cuda" for w in self.watched) else "cpu"
        with torch.autocast(dev_type, enabled=False):
            for w in self.watched:
                try:
                    cbs = {} if w.name in self._disabled else w.adapter.codebooks(w.module)
                except Exception as e:  # noqa: BLE001 - must never raise into training
                    self._disable(w.name, e)
                    cbs = {}
                for c, stream in w.streams.items():
                    key = w.key(c)
                    wc = None
                    try:
                        if w.name not in self._disabled and key not in self._disabled:
                            pair = self._measure(w, c, key, cbs.get(c), stream)
                            if pair is not None:
                                (hw, hc), wc = pair
                                for h in (hw, hc):
                                    h.warnings.extend([dict(diverged[key])] if key in diverged else [])
                                window.append(hw)
                                cumulative.append(hc)
                                for scope, h in (("window", hw), ("cumulative", hc)):
                                    records.append((self._record(step, now, scope, h, w.adapter), h.counts))
                    except Exception as e:  # noqa: BLE001 - must never raise into training
                        self._skip(key, e)
                    stream.close_window(wc)
        self.last_report = {"window": window, "cumulative": cumulative}
        if rank == 0:
            for r, counts in records:
                self._emit(r, counts)
        if self.step > 0:
            self._report_silent(rank, step)
        return window

    def _report_silent(self, rank: int, step: int) -> None:
        """One warning and one ``no_data`` event per quantizer that is hooked but has yielded nothing.

        A hook can attach and still see nothing: the library may quantize through a method the family does
        not wrap (``Family.hook_method``), or the output may not be the structure the adapter reads. An empty log would look like a quiet codebook, so say it.
        """
        for w in self.watched:
            if w.captured or w.silent_reported or w.name in self._disabled:
                continue
            w.silent_reported = True
            msg = (f"{w.name} ({w.adapter.name}) is hooked but yielded no data after {self.step} training "
                   "steps: its library may quantize through a method other than the one watched "
                   f"({w.adapter.hook_method}()), or its output is not the structure this adapter reads. "
                   "Training is not affected; point watch at the module whose forward() quantizes, or pass "
                   "adapter=... (docs/adding-a-library.md)")
            logger.warning("shrinkscope: %s", msg)
            if rank == 0:
                self._emit({"step": step, "time": time.time(), "event": "no_data", "name": w.name,
                            "family": w.adapter.name, "message": msg})

    def _rank_divergence(self, w: _Watched) -> dict[str, dict[str, Any]]:
        """``{key: rank_divergence warning}`` for this quantizer's codebooks (collectives on every rank)."""
        if w.adapter.usage_only:
            return {}
        try:
            cbs = w.adapter.codebooks(w.module)
        except Exception:  # noqa: BLE001 - this rank still joins the collectives (as "could not read")
            cbs = {}
        ks = {c: s.num_codes for c, s in w.streams.items()}
        found = rank_divergence(cbs, ks, device=self._device(w), group=self.group)
        return {w.key(c): v for c, v in found.items()}

    def _measure(self, w: _Watched, c: str, key: str, cb: torch.Tensor | None, stream: CodebookStream):
        if isinstance(stream, BitUsageStream):
            return self._measure_bits(key, stream)
        wc = stream.window_counts()
        if stream.overflow() > 0:
            raise ValueError(f"{stream.overflow()} ids >= K={stream.num_codes}: the captured integers are not code ids")
        lat = stream.reservoir()
        if lat is not None:
            finite = torch.isfinite(lat).all(1)
            if not bool(finite.all()):  # one Inf latent must not cost the codebook its report
                self.nonfinite[key] = self.nonfinite.get(key, 0) + int((~finite).sum())
                lat = lat[finite]
            self._last_latents[key] = lat.cpu()
        has_counts = bool(wc.sum() > 0)
        if not has_counts and (lat is None or lat.shape[0] < 2):
            return None  # nothing captured in this window
        if w.adapter.usage_only or cb is None:
            if not has_counts:
                return None
            hw = self._usage_health(key, stream.num_codes, 0 if cb is None else int(cb.shape[1]), wc)
        else:
            use_lat = lat.to(cb.device) if lat is not None and lat.shape[0] >= 2 and lat.shape[1] == cb.shape[1] \
                else None
            hw = codebook_health(cb, latents=use_lat, counts=wc if has_counts else None, name=key,
                                 thresholds=self.thresholds, seed=self.seed, **self.health_kwargs)
            if not has_counts and hw.counts is not None:
                wc = hw.counts.round().to(torch.int64)  # ids not exposed: counts of the sampled latents
        hc = self._with_counts(hw, stream.cumulative + wc, w.adapter.usage_only or cb is None)
        return (hw, hc), wc

    def _measure_bits(self, key: str, stream: BitUsageStream):
        """Window health of an implicit codebook too large to count per code: bounds, no exact usage."""
        n, ones, pair = stream.window_stats()
        if n == 0:
            return None
        hw, est = bit_usage_health(key, stream.num_codes, n, ones, pair, self.thresholds)
        self._estimates[key] = est
        hc = dataclasses.replace(hw, warnings=[])  # no cumulative statistics: bits describe one window
        return (hw, hc), None

    def _usage_health(self, key: str, k: int, d: int, counts: torch.Tensor) -> CodebookHealth:
        h = CodebookHealth(name=key, num_codes=k, dim=d)
        self._set_usage(h, counts.double())
        judge_health(h, self.thresholds, all_zero=False, usage=True)
        return h

    def _set_usage(self, h: CodebookHealth, c: torch.Tensor) -> None:
        h.counts = c.cpu()
        if float(c.sum()) > 0:
            h.utilization_perplexity = utilization_perplexity(c)
            h.utilization = h.utilization_perplexity / h.num_codes
            h.dead_code_ratio = dead_code_ratio(c, threshold=self.thresholds.max_dead_usage)
            h.codes_used = 1.0 - h.dead_code_ratio
        else:
            h.utilization_perplexity = h.utilization = h.dead_code_ratio = h.codes_used = None

    def _with_counts(self, h: CodebookHealth, counts: torch.Tensor, usage_only: bool) -> CodebookHealth:
        """The same geometry with usage metrics (and warnings) from other counts."""
        hc = dataclasses.replace(h, warnings=[])
        self._set_usage(hc, counts.double())
        all_zero = any(wr["code"] == "uninitialized" for wr in h.warnings)
        judge_health(hc, self.thresholds, all_zero=all_zero and not usage_only, usage=True)
        return hc

    def _record(self, step: int, now: float, scope: str, h: CodebookHealth, adapter: Family) -> dict[str, Any]:
        d = h.to_dict()
        rec = {"step": step, "time": now, "name": d["name"], "scope": scope, "num_codes": d["num_codes"],
               "dim": d["dim"], "metrics": d["metrics"], "warnings": d["warnings"], "family": adapter.name}
        if d.get("verdict") is not None:  # the report's timeline cards show the verdict at the last step
            rec["verdict"] = d["verdict"]
        if adapter.usage_only:
            rec["usage_only"] = True
        if scope == "window" and h.name in self._estimates:
            rec["estimates"] = self._estimates.pop(h.name)
        return rec

    def _emit(self, record: dict[str, Any], counts: torch.Tensor | None = None) -> None:
        for s in list(self.sinks):
            try:
                # usage counts only for sinks that draw them (W&B, MLflow): the JSONL stays one line per record
                s.write({**record, "counts": counts} if counts is not None and getattr(s, "wants_counts", False)
                        else record)
            except Exception as e:  # noqa: BLE001 - must never raise into training
                self.sinks.remove(s)
                logger.warning("shrinkscope: sink %s failed and was dropped: %r", type(s).__name__, e)

    # ---- other public API ------------------------------------------------------------------------

    def log_event(self, event: str, **payload: Any) -> None:
        """Record an event (e.g. deferred quantization switching on) and forward it to the sinks.

        Args:
            event: event name.
            **payload: JSON-able details, written next to ``step``, ``time`` and ``event``.
        """
        if not isinstance(event, str) or not event:
            raise ValueError(f"log_event: event must be a non-empty string, got {event!r}")
        rec = {"step": self.step, "time": time.time(), "event": event, **payload}
        self.events.append(rec)
        if self._distributed()[1] == 0:
            self._emit(rec)

    def names(self) -> list[str]:
        """Full names of every watched codebook (``quantizer`` or ``quantizer/codebook``)."""
        return [w.key(c) for w in self.watched for c in w.streams]

    def _stream(self, name: str) -> CodebookStream:
        for w in self.watched:
            for c, s in w.streams.items():
                if name == w.key(c) or (name == w.name and len(w.streams) == 1):
                    return s
        raise KeyError(f"no watched codebook named {name!r}; watched: {self.names()}")

    def counts(self, name: str) -> torch.Tensor:
        """``(K,)`` int64 usage counts of codebook ``name`` since watching began (this rank's, on host)."""
        s = self._stream(name)
        if isinstance(s, BitUsageStream):
            raise ValueError(f"{name}: K={s.num_codes} codes are too many to count one by one "
                             f"(> {EXACT_COUNT_LIMIT}); its reports carry bit-statistics estimates instead")
        return s.cumulative + s.window_counts()

    def save_latents(self, path: str | Path) -> Path:
        """Write the sampled latents (``.pt`` or ``.npz``) for ``shrinkscope analyze --latents``.

        One codebook: ``.pt`` holds the ``(N, D)`` tensor, ``.npz`` the array ``latents``. Several: a dict
        / arrays keyed by codebook name. Uses the current window's sample, or the last report's when the
        current window has none yet.
        """
        path = Path(path)
        if path.suffix not in (".pt", ".npz"):
            raise ValueError(f"save_latents: expected a .pt or .npz path, got {str(path)!r}")
        out: dict[str, torch.Tensor] = {}
        for name in self.names():
            cur = self._stream(name).reservoir()
            lat = cur.cpu() if cur is not None and cur.shape[0] > 0 else self._last_latents.get(name)
            if lat is not None:
                out[name] = lat
        if not out:
            raise ValueError("save_latents: no latents captured yet (run some training steps first; "
                             "codebook-free quantizers such as FSQ/LFQ and GumbelQuantize have none)")
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".pt":
            torch.save(next(iter(out.values())) if len(out) == 1 else out, path)
        else:
            import numpy as np

            arrays = {"latents": next(iter(out.values())).numpy()} if len(out) == 1 else \
                {k: v.numpy() for k, v in out.items()}
            np.savez(path, **arrays)
        return path

    def remove(self) -> None:
        """Detach every hook and close the sinks; the model is left exactly as before."""
        if not self._removed:
            try:
                self._report_silent(self._distributed()[1], self.step)
            except Exception as e:  # noqa: BLE001 - must never raise into training
                logger.warning("shrinkscope: the no-data check at remove() failed: %r", e)
        for w in self.watched:
            for h in w.handles:
                h.remove()
            w.handles.clear()
        self._removed = True
        for s in self.sinks:
            try:
                s.close()
            except Exception as e:  # noqa: BLE001 - must never raise into training
                logger.warning("shrinkscope: closing sink %s failed: %r", type(s).__name__, e)

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"Monitor(step={self.step}, every={self.every}, codebooks={self.names()})"


def watch(model: nn.Module, *, every: int | None = 500, log_to: str | Path | None = None, sinks: Any = (),
          adapter: Family | str | None = None, reservoir_size: int = 4096, collect: str = "train",
          thresholds: HealthThresholds | None = None, seed: int = 0, log_warnings: bool = True,
          process_group: Any = None, health_kwargs: dict[str, Any] | None = None) -> Monitor:
    """Attach codebook-health monitoring to every quantizer inside ``model``.

    Args:
        model: any ``nn.Module`` (a whole model, a DDP wrapper, or a quantizer).
        every: report every this many steps (0/None: only on ``monitor.report()``).
        log_to: JSONL file for the records (input of ``shrinkscope report``).
        sinks: more sinks: ``Sink`` objects, ``SummaryWriter``s, ``.jsonl`` paths or callables.
        adapter: read ``model`` itself with this family (a ``Family`` or a family name such as
            ``"generic"``) instead of searching for quantizers.
        reservoir_size: latents kept per codebook per window (memory: this x D floats).
        collect: which forwards to collect: ``"train"`` (training mode), ``"eval"`` or ``"all"``.
        thresholds: warning cut-offs for ``codebook_health``.
        seed: seed of the reservoir sampling (a private generator; the global RNG is untouched).
        log_warnings: also send health warnings to the ``shrinkscope`` logger.
        process_group: DDP process group for report-time reductions (default: the world).
        health_kwargs: extra keyword arguments of ``codebook_health`` (``k``, ``coverage_max_latents``, ...).

    Returns:
        A ``Monitor`` (also a context manager that removes its hooks on exit).

    Raises:
        ValueError: no quantizer found, or the given adapter cannot read ``model``.

    Example:
        >>> from vector_quantize_pytorch import VectorQuantize
        >>> vq = VectorQuantize(dim=8, codebook_size=32)
        >>> with watch(vq, every=0) as m:
        ...     _ = vq(torch.randn(4, 16, 8))
        ...     [h.name for h in m.report()]
        ['VectorQuantize']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"watch: expected an nn.Module, got {type(model).__name__}")
    if adapter is not None:
        a = get_family(adapter) if isinstance(adapter, str) else adapter
        if not isinstance(a, Family):
            raise TypeError(f"watch: adapter must be a Family or a family name, got {type(adapter).__name__}")
        if not a.usage_only and not a.codebooks(model):
            raise ValueError(f"watch: adapter {a.name!r} found no codebook in {type(model).__name__}")
        quantizers = [("", model, a)]
    else:
        quantizers = find_quantizers(model)
        if not quantizers:
            quantish = sorted({type(m).__name__ for m in model.modules() if "quantiz" in type(m).__name__.lower()})
            seen = (f" (quantizer-like modules no family reads: {', '.join(quantish[:3])}; a library that quantizes "
                    "through methods such as .encode() instead of forward() cannot be hooked)") if quantish else ""
            raise ValueError(f"watch: no quantizer found inside {type(model).__name__}{seen}; point at the quantizer "
                             "module with watch(module, adapter='generic') or write a Family (docs/adding-a-library.md)")
    return Monitor(quantizers, every=every, sinks=make_sinks(log_to, sinks, log_warnings=log_warnings),
                   reservoir_size=reservoir_size, collect=collect, thresholds=thresholds, seed=seed,
                   process_group=process_group, health_kwargs=health_kwargs)

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

import dataclasses
import inspect
import logging
import numbers
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .families import Capture, Family, find_quantizers, get_family
from .families.scales import scale_info, with_scales
from .hooks import Hook, _Inert, hook_method  # noqa: F401 - _Inert: old pickles of watched models name it here
from . import implicit as _implicit
from .implicit import BitUsageStream
from .metrics import CodebookHealth, HealthThresholds, codebook_health
from .sinks import Sink, make_sinks
from .stream import CodebookStream
from .watch_report import Reporting

__all__ = ["Monitor", "watch"]

logger = logging.getLogger("shrinkscope")

_COLLECT = ("train", "eval", "all")


@dataclasses.dataclass
class _Watched:
    name: str
    module: nn.Module
    adapter: Family
    streams: dict[str, CodebookStream]  # codebook name -> stream
    dims: dict[str, int | None]
    scales: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # codebook -> {"index", "size"}
    handles: list = dataclasses.field(default_factory=list)
    captured: bool = False  # any capture yet (a Python flag: no device sync)
    silent_reported: bool = False

    def key(self, codebook: str) -> str:
        return self.name if not codebook else f"{self.name}/{codebook}"


class Monitor(Reporting):
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
        every = _whole("every", 0 if every is None else every, low=0, hint=" (0 or None: report only when asked)")
        reservoir_size = _whole("reservoir_size", reservoir_size, low=0)
        seed = _whole("seed", seed, low=0)
        _check_health_options(thresholds, health_kwargs)
        self.every = every
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
            # implicit codebooks too large for a histogram keep bit statistics instead (shrinkscope/implicit.py;
            # its EXACT_COUNT_LIMIT is read here, at watch() time, so a user can raise it)
            streams = {c: BitUsageStream(k) if adapter.usage_only and k > _implicit.EXACT_COUNT_LIMIT else
                       CodebookStream(k, reservoir_size=reservoir_size, seed=self.seed + 7919 * i + j)
                       for j, (c, k) in enumerate(ks.items())}
            w = _Watched(label, module, adapter, streams, dims, scale_info(adapter, module))
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
                w.handles.append(hook_method(sub, method, Hook(tap_hook, sub)))
        else:
            def hook(mod, args, kwargs, output):
                if self._wanted(mod):
                    self._collect(w, lambda: w.adapter.extract(mod, args, kwargs, output))
            w.handles.append(hook_method(w.module, method, Hook(hook, w.module)))
        if first:
            w.handles.append(hook_method(w.module, method, Hook(self._step_hook, w.module)))

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

    def _disable(self, key: str, error: BaseException) -> None:
        if key not in self._disabled:
            self._disabled.add(key)
            logger.warning("shrinkscope: stopped monitoring %r after an error in its hook (training is not "
                           "affected): %r", key, error)

    @property
    def disabled(self) -> set[str]:
        """Names of quantizers/codebooks switched off after an error."""
        return set(self._disabled)

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
                             f"(> {_implicit.EXACT_COUNT_LIMIT}); its reports carry bit-statistics estimates instead")
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


def _whole(name: str, value: Any, *, low: int, hint: str = "") -> int:
    """An integer option checked when ``watch`` is called, not hours later inside a hook or a report.
    Integral floats (``every=1e3``) are accepted; booleans, fractions, strings and NaN are not."""
    ok = isinstance(value, numbers.Integral) or isinstance(value, float) and value.is_integer()
    if isinstance(value, bool) or not ok:
        raise TypeError(f"watch: {name} must be an integer >= {low}{hint}, got {value!r}")
    if int(value) < low:
        raise ValueError(f"watch: {name} must be >= {low}{hint}, got {value!r}")
    return int(value)


def _check_health_options(thresholds: Any, health_kwargs: dict[str, Any] | None) -> None:
    """A typo in these would otherwise skip every report of the run, one warning at a time."""
    if thresholds is not None and not isinstance(thresholds, HealthThresholds):
        raise TypeError(f"watch: thresholds must be a shrinkscope.HealthThresholds, got {type(thresholds).__name__}")
    if health_kwargs is not None and not isinstance(health_kwargs, dict):
        raise TypeError(f"watch: health_kwargs must be a dict, got {type(health_kwargs).__name__}")
    accepted = set(inspect.signature(codebook_health).parameters) - {"codebook", "latents", "counts", "labels",
                                                                    "name", "thresholds", "seed"}
    unknown = sorted(set(health_kwargs or {}) - accepted)
    if unknown:
        raise ValueError(f"watch: health_kwargs {unknown} are not options of codebook_health; accepted: "
                         f"{sorted(accepted)}")


def watch(model: nn.Module, *, every: int | None = 500, log_to: str | Path | None = None, sinks: Any = (),
          adapter: Family | str | None = None, reservoir_size: int = 4096, collect: str = "train",
          thresholds: HealthThresholds | None = None, seed: int = 0, log_warnings: bool = True,
          process_group: Any = None, health_kwargs: dict[str, Any] | None = None,
          scales: Any = None) -> Monitor:
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
        scales: token-map sizes of a multi-scale quantizer of your own, in the order it emits them (patch
            numbers such as ``(1, 2, 3, 4, 5, 6, 8, 10, 13, 16)`` or ``(h, w)`` pairs): each scale becomes its
            own codebook ``.../scales.N`` (``families.MultiScale``). VAR's quantizer is split by scale
            without it.

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
    quantizers = with_scales(quantizers, scales)
    return Monitor(quantizers, every=every, sinks=make_sinks(log_to, sinks, log_warnings=log_warnings),
                   reservoir_size=reservoir_size, collect=collect, thresholds=thresholds, seed=seed,
                   process_group=process_group, health_kwargs=health_kwargs)

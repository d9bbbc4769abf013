"""The report half of a ``Monitor``: measure the watched codebooks, reduce them over DDP ranks, write records.

``watch.py`` holds the per-step half (hooks that collect into streams, never syncing the host); everything
here runs only when a report is due or asked for. Under DDP each report first sums the window counts and
gathers the reservoirs over the ranks (every rank then measures the same merged window and gets the same
health), checks that the ranks hold the same codebooks (``rank_divergence``), and only rank 0 writes.
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

from .divergence import rank_divergence
from .families import Family
from .implicit import BitUsageStream, bit_usage_health
from .measure import usage_health, with_counts
from .metrics import CodebookGeometry, CodebookHealth, codebook_geometry, codebook_health
from .metrics.geometry import DEFAULT_MAX_POINTS
from .stream import CodebookStream, reduce_streams

if TYPE_CHECKING:
    from .watch import _Watched

__all__ = ["Reporting"]

logger = logging.getLogger("shrinkscope")


class Reporting:
    """Report-time methods of ``Monitor`` (a mixin: the state lives on the monitor, see ``watch.Monitor``)."""

    def _skip(self, key: str, error: BaseException) -> None:
        """A report-time failure: this codebook is left out of this report only (first one logged)."""
        self.skipped[key] = self.skipped.get(key, 0) + 1
        if self.skipped[key] == 1:
            logger.warning("shrinkscope: %r left out of a report after an error (monitoring goes on; further "
                           "failures are counted in monitor.skipped): %r", key, error)

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
        diverged = self._reduce(seed=self.seed + step) if distributed else {}
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
                shared: dict[int, tuple] = {}  # one tensor, several codebooks (VAR's scales)
                for c, stream in w.streams.items():
                    key = w.key(c)
                    wc = None
                    try:
                        if w.name not in self._disabled and key not in self._disabled:
                            pair = self._measure(w, c, key, cbs.get(c), stream, shared)
                            if pair is not None:
                                (hw, hc), wc = pair
                                for h in (hw, hc):
                                    h.warnings.extend([dict(diverged[key])] if key in diverged else [])
                                window.append(hw)
                                cumulative.append(hc)
                                for scope, h in (("window", hw), ("cumulative", hc)):
                                    records.append((self._record(step, now, scope, h, w.adapter, w.scales.get(c)),
                                                    h.counts))
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

    def _reduce(self, *, seed: int, extra_columns: int = 0) -> dict[str, dict[str, Any]]:
        """Under DDP: sum every window's counts and gather its reservoir over the ranks, so that every rank
        holds the merged window, then check that the ranks hold the same codebooks. Collectives: every rank
        must call it, in the same order of quantizers.

        Args:
            seed: seed of the reservoir merge (the same on every rank, so the merged samples agree).
            extra_columns: columns the reservoir rows carry beyond D (the live analysis appends labels).

        Returns:
            ``{key: rank_divergence warning}`` of the codebooks whose ranks disagree.
        """
        diverged: dict[str, dict[str, Any]] = {}
        for w in self.watched:
            names = [c for c, s in w.streams.items() if not isinstance(s, BitUsageStream)]
            dims = [None if w.dims[c] is None else w.dims[c] + extra_columns for c in names]
            reduce_streams([w.streams[c] for c in names], dims, device=self._device(w), group=self.group,
                           seed=seed)
            for s in w.streams.values():
                if isinstance(s, BitUsageStream):
                    s.all_reduce(device=self._device(w), group=self.group)
            diverged.update(self._rank_divergence(w))
        return diverged

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

    def _geometry(self, cb: torch.Tensor, shared: dict[int, tuple]) -> CodebookGeometry:
        """The codes-only measurements of ``cb``, once per tensor per report: a family that hands out one
        tensor for several codebooks (VAR's scales) has its spreads and spectrum measured once, not per scale.
        Keyed by ``id``, with the tensor kept beside it so that the id cannot be reused while the dict lives."""
        if id(cb) not in shared:
            shared[id(cb)] = (cb, codebook_geometry(
                cb, max_points=self.health_kwargs.get("max_points", DEFAULT_MAX_POINTS), seed=self.seed))
        return shared[id(cb)][1]

    def _measure(self, w: _Watched, c: str, key: str, cb: torch.Tensor | None, stream: CodebookStream,
                 shared: dict[int, tuple] | None = None):
        if isinstance(stream, BitUsageStream):
            return self._measure_bits(key, stream)
        if cb is not None and not w.adapter.usage_only and int(cb.shape[0]) != stream.num_codes:
            self._resized(w, c, key, stream, cb)  # the user changed K: follow it instead of failing every report
            return None
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
            hw = self._usage_health(key, stream.num_codes, 0 if cb is None else int(cb.shape[1]), wc,
                                    implicit=w.adapter.usage_only)
        else:
            use_lat = lat.to(cb.device) if lat is not None and lat.shape[0] >= 2 and lat.shape[1] == cb.shape[1] \
                else None
            hw = codebook_health(cb, latents=use_lat, counts=wc if has_counts else None, name=key,
                                 thresholds=self.thresholds, seed=self.seed,
                                 geometry=self._geometry(cb, {} if shared is None else shared), **self.health_kwargs)
            if not has_counts and hw.counts is not None:
                wc = hw.counts.round().to(torch.int64)  # ids not exposed: counts of the sampled latents
        hc = self._with_counts(hw, stream.cumulative + wc, w.adapter.usage_only or cb is None)
        return (hw, hc), wc

    def _resized(self, w: _Watched, c: str, key: str, stream: CodebookStream, cb: torch.Tensor) -> None:
        """One warning and one ``codebook_resized`` event; the window that mixes both sizes is dropped."""
        old = stream.num_codes
        stream.resize(int(cb.shape[0]))
        w.dims[c] = int(cb.shape[1]) if cb.dim() == 2 else w.dims.get(c)
        logger.warning("shrinkscope: %s changed from K=%d to K=%d codes; its report at step %d is skipped and "
                       "counting goes on with the new codebook", key, old, stream.num_codes, self.step)
        if self._distributed()[1] == 0:
            self._emit({"step": self.step, "time": time.time(), "event": "codebook_resized", "name": key,
                        "old_num_codes": old, "num_codes": stream.num_codes})

    def _measure_bits(self, key: str, stream: BitUsageStream):
        """Window health of an implicit codebook too large to count per code: bounds, no exact usage."""
        n, ones, pair = stream.window_stats()
        if n == 0:
            return None
        hw, est = bit_usage_health(key, stream.num_codes, n, ones, pair, self.thresholds)
        self._estimates[key] = est
        hc = replace(hw, warnings=[])  # no cumulative statistics: bits describe one window
        return (hw, hc), None

    def _usage_health(self, key: str, k: int, d: int, counts: torch.Tensor, *,
                      implicit: bool = False) -> CodebookHealth:
        return usage_health(key, k, d, counts, self.thresholds, implicit=implicit)

    def _with_counts(self, h: CodebookHealth, counts: torch.Tensor, usage_only: bool) -> CodebookHealth:
        return with_counts(h, counts, self.thresholds, usage_only=usage_only)

    def _record(self, step: int, now: float, scope: str, h: CodebookHealth, adapter: Family,
                scale: dict[str, Any] | None = None) -> dict[str, Any]:
        d = h.to_dict()
        rec = {"step": step, "time": now, "name": d["name"], "scope": scope, "num_codes": d["num_codes"],
               "dim": d["dim"], "metrics": d["metrics"], "warnings": d["warnings"], "family": adapter.name}
        if d.get("verdict") is not None:  # the report's timeline cards show the verdict at the last step
            rec["verdict"] = d["verdict"]
        if adapter.usage_only:
            rec["usage_only"] = True
        if scale is not None:  # one scale of a multi-scale quantizer (VAR): its index and token-map size
            rec["scale"] = scale
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

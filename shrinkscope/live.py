"""``analyze(model, data)``: diagnose a live model by running data through it under the watch hooks.

A checkpoint alone holds the codes and, at best, an EMA of their usage. Running the model over data adds
the two pieces of evidence a verdict needs: the encoder's latents (spread ratio, coverage, quantization
error) and exact usage counts. This module does that with the same hooks ``watch`` uses:

- every batch is seen (nothing is skipped); usage counts are exact integer histograms over all batches;
- latents are a uniform reservoir sample (Algorithm R) of at most ``max_latents`` rows per codebook, so
  memory stays ``max_latents x D`` floats whatever the size of the data;
- the model runs under ``torch.no_grad()`` in eval mode by default (a training-mode forward would update
  EMA codebooks and so change the model being measured); every module's own train/eval flag and every
  quantizer's state are restored afterwards and the hooks are removed, also when the user's forward raises.
  Some libraries change a quantizer even in eval mode (vector-quantize-pytorch k-means-initialises an untrained
  codebook on its first forward): the measurement would then describe a codebook fitted to the analysis data,
  so that is an error, not a result.

The result is the ``AnalysisResult`` that ``analyze(checkpoint)`` returns (same table, JSON and report).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn

from .analyze import ANALYZE_MAX_POINTS, AnalysisResult, Entry
from .checkpoint import FoundCodebook
from .families import Family, find_quantizers, get_family
from .families.scales import with_scales
from .implicit import BitUsageStream, bit_usage_health
from .live_dist import agree, distributed, from_rank0, world_size
from .live_labels import BatchLabels, LiveError, LiveMonitor
from .measure import usage_health
from .metrics import HealthThresholds, codebook_geometry, codebook_health
from .watch import Monitor

__all__ = ["LiveError", "analyze_model", "build_model", "iter_batches", "load_data", "load_weights"]


def iter_batches(data: Any, *, batch_size: int = 64) -> Iterator[Any]:
    """Batches of ``data``: a tensor or array is cut along its first axis; anything else is iterated.

    Args:
        data: ``torch.Tensor`` / ``np.ndarray`` ``(N, ...)`` (cut into ``batch_size`` rows), or any iterable
            of batches (a ``DataLoader``, a list of tensors, a generator).
        batch_size: rows per batch when ``data`` is one tensor or array.
    """
    if isinstance(data, np.ndarray):
        if data.dtype.kind not in "fiub":
            raise LiveError(f"data: expected a numeric array, got dtype {data.dtype}")
        data = torch.from_numpy(data)
    if isinstance(data, torch.Tensor):
        if data.dim() == 0 or data.shape[0] == 0:
            raise LiveError(f"data: expected a tensor (N, ...) with N >= 1, got shape {list(data.shape)}")
        if int(batch_size) < 1:
            raise LiveError(f"batch_size must be >= 1, got {batch_size}")
        yield from data.split(int(batch_size))
        return
    if isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
        raise LiveError(f"data: expected a tensor, an array or an iterable of batches (e.g. a DataLoader), "
                        f"got {type(data).__name__}")
    yield from data


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(b, device) for b in batch) if not hasattr(batch, "_fields") \
            else type(batch)(*(_to(b, device) for b in batch))
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    return batch


def default_forward(model: nn.Module, batch: Any) -> Any:
    """``model(batch)`` for a tensor, ``model(batch[0])`` for ``(inputs, targets, ...)``, ``model(**batch)``
    for a dict: the usual shapes of a DataLoader's items."""
    if isinstance(batch, (list, tuple)):
        return model(batch[0])
    if isinstance(batch, dict):
        return model(**batch)
    return model(batch)


def _device_of(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _quantizers(model: nn.Module, adapter: Family | str | None) -> list[tuple[str, nn.Module, Family]]:
    if adapter is not None:
        a = get_family(adapter) if isinstance(adapter, str) else adapter
        if not isinstance(a, Family):
            raise TypeError(f"analyze: adapter must be a Family or a family name, got {type(adapter).__name__}")
        return [("", model, a)]
    found = find_quantizers(model)
    if not found:
        raise LiveError(f"no quantizer found inside {type(model).__name__}; pass adapter='generic' (or a "
                        "Family) to read the model itself as a quantizer (docs/hooks.md)")
    return found


def analyze_model(
    model: nn.Module, data: Any, *, forward: Callable[[nn.Module, Any], Any] | None = None,
    batch_size: int = 64, max_batches: int | None = None, device: torch.device | str | None = None,
    eval_mode: bool = True, adapter: Family | str | None = None, thresholds: HealthThresholds | None = None,
    max_latents: int | None = 20_000, max_points: int | None = ANALYZE_MAX_POINTS,
    progress: bool | None = None, seed: int = 0, source: str | None = None, labels: Any = None,
    scales: Any = None, process_group: Any = None
) -> AnalysisResult:
    """Run ``model`` over ``data`` under the watch hooks and measure every codebook it uses.

    Args:
        model: the model (or just the part that ends in the quantizer); never modified.
        data: a ``DataLoader`` or any iterable of batches, or one tensor/array ``(N, ...)``.
        forward: ``forward(model, batch)`` runs one batch, e.g. ``lambda m, x: m.quantize(m.encode(x))`` to
            skip a decoder; default: ``model(x)`` for a tensor, ``model(x)`` for ``(x, y, ...)``,
            ``model(**batch)`` for a dict. Batches are moved to ``device`` first.
        batch_size: rows per batch when ``data`` is one tensor or array.
        max_batches: stop after this many batches (None: all of them).
        device: where to run (default: the model's own device; the model is not moved).
        eval_mode: run in eval mode (default). False keeps each module's current mode, so a model in
            training mode updates its EMA codebooks during the run as in training (measured after the run).
            Either way the quantizers' state is restored afterwards; in eval mode a change of it (a library
            that k-means-initialises an untrained codebook on its first forward) is an error.
        adapter: read ``model`` itself with this adapter instead of searching for quantizers.
        thresholds: warning cut-offs (``HealthThresholds()`` by default).
        max_latents: latents kept per codebook (a uniform reservoir sample of every latent seen).
        max_points: pairwise spreads exact up to this many rows, estimated above (as in ``analyze``).
        progress: tqdm progress bar on stderr (None: only when stderr is a terminal).
        seed: seed of the reservoir and of every subsample.
        source: label of the result (default: the model's class name).
        labels: data-mode ids of the inputs, for the mode-level metrics (``token_mode_entropy``,
            ``shrunk_mode_share``): an integer array ``(N,)`` with one id per input row, in the order the data
            yields its rows, or ``True`` to take them from each ``(x, y, ...)`` batch (``y``: ``(B,)``
            integers). Every latent row of an input carries its label (all positions of a map).
        scales: token-map sizes of a multi-scale quantizer of your own (as in ``watch``): one codebook per scale.
        process_group: under ``torch.distributed``, the group whose ranks each run their own shard of the
            data (default: the world when initialised). Counts are summed and latents merged over the ranks,
            so every rank returns the same result as one process over all the shards (write it from rank 0).

    Returns:
        An ``AnalysisResult`` whose usage counts are exact over every batch run.

    Raises:
        LiveError (a ValueError): bad data or labels, no quantizer, the forward failed (on any rank), or no
            quantizer call was seen.
    """
    from tqdm.auto import tqdm

    if not isinstance(model, nn.Module):
        raise TypeError(f"analyze: expected an nn.Module, got {type(model).__name__}")
    if max_latents is None or int(max_latents) < 2:
        raise LiveError(f"max_latents: a live analysis keeps a bounded sample of latents; pass an integer >= 2, "
                        f"got {max_latents}")
    if max_batches is not None and int(max_batches) < 1:
        raise LiveError(f"max_batches must be >= 1 (or None for all), got {max_batches}")
    run = forward or default_forward
    dev = torch.device(device) if device is not None else _device_of(model)
    quantizers = with_scales(_quantizers(model, adapter), scales)
    take_labels = BatchLabels(labels) if labels is not None and labels is not False else None
    is_dist, rank = distributed(process_group)
    modes = [(m, m.training) for m in model.modules()]
    saved = _snapshot(quantizers)
    monitor = LiveMonitor(quantizers, every=0, sinks=[], reservoir_size=int(max_latents), collect="all",
                           thresholds=thresholds, seed=seed, process_group=process_group)
    batches, error = 0, None
    try:
        if eval_mode:
            model.eval()
        with torch.no_grad():
            try:
                for batch in tqdm(iter_batches(data, batch_size=batch_size), desc="batches", unit="batch",
                                  disable=True if rank else (None if progress is None else not progress),
                                  leave=False):
                    if take_labels is not None:
                        monitor.batch_labels = take_labels.next(batch, batches)
                    try:
                        run(model, _to(batch, dev))
                    except Exception as exc:  # the user's model: name the batch, keep the cause
                        raise LiveError(f"running the model on batch {batches} failed: {type(exc).__name__}: "
                                        f"{' '.join(str(exc).split())[:300]}") from exc
                    batches += 1
                    if max_batches is not None and batches >= int(max_batches):
                        break
                if take_labels is not None and max_batches is None:
                    take_labels.finish()
            except LiveError as exc:
                if not is_dist:
                    raise
                error = exc  # raised after the other ranks learn of it, so that none waits forever
        if batches == 0:
            monitor._removed = True  # nothing ran: the empty-data error below says it, without a warning on top
        monitor.remove()
        changed = [name or type(q).__name__ for (name, q, _), before in zip(quantizers, saved)
                   if _changed(q, before)]
        total = batches
        if is_dist:
            total = agree(error, bool(changed and eval_mode), batches, dev, process_group)
        if changed and eval_mode:
            raise LiveError(
                f"running the data changed the state of {', '.join(changed)} even in eval mode (e.g. "
                "vector-quantize-pytorch k-means-initialises an untrained codebook on its first forward); the "
                "model was restored. An uninitialised codebook cannot be diagnosed on data: analyze the "
                "checkpoint itself, or train first")
        if total == 0:
            raise LiveError("data: no batch to run (empty data)")
        diverged = monitor._reduce(seed=seed, extra_columns=int(take_labels is not None)) if is_dist else {}
        result = _result(monitor, quantizers, thresholds or HealthThresholds(), max_points, seed,
                         source or f"<{type(model).__name__}>", total, labelled=take_labels is not None,
                         diverged=diverged)
        for e in result.entries if changed else []:
            e.notes.append("the codebook changed during the run (training-mode forwards); measured after the run; "
                           "the model was then restored")
        if is_dist:
            for e in result.entries:
                e.notes.append(f"distributed: {world_size(process_group)} ranks, each on its own shard; counts "
                               "summed and latents merged over the ranks")
        return result
    finally:
        # an error ends the run: detach without the "yielded no data" warning, which would only add a second,
        # misleading line to the error the user has to act on
        monitor._removed = True
        monitor.remove()
        for m, was in modes:
            m.training = was  # each module's own flag: a frozen submodule stays in eval
        _restore(quantizers, saved)


def _snapshot(quantizers: list[tuple[str, nn.Module, Family]]) -> list[dict[str, torch.Tensor]]:
    """Copies of each quantizer's state: some libraries change it even in eval mode (k-means init on the
    first forward), and a diagnosis must leave the model as it found it. Quantizer states are small."""
    return [{k: v.detach().clone() for k, v in q.state_dict().items()} for _, q, _ in quantizers]


def _changed(q: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    now = q.state_dict()
    return set(now) != set(before) or any(
        v.shape != before[k].shape or not torch.equal(v.detach(), before[k]) for k, v in now.items())


def _restore(quantizers: list[tuple[str, nn.Module, Family]], saved: list[dict[str, torch.Tensor]]) -> None:
    with torch.no_grad():
        for (_, q, _), before in zip(quantizers, saved):
            if _changed(q, before):
                q.load_state_dict(before)


def _display(qname: str, codebook: str, module: nn.Module) -> str:
    """Dotted names like the checkpoint's (``rvq.layers.0``), so live and file analyses pair in ``compare``."""
    return ".".join(p for p in (qname, codebook) if p) or type(module).__name__


def _bit_entry(name: str, key: str, adapter: Family, stream: BitUsageStream, t: HealthThresholds,
               batches: int) -> Entry | None:
    """An implicit codebook too large to count code by code: bounds from bit statistics (shrinkscope/implicit.py)."""
    n, ones, pair = stream.window_stats()
    if n == 0:
        return None
    h, est = bit_usage_health(name, stream.num_codes, n, ones, pair, t)
    found = FoundCodebook(name, torch.zeros(0, 0), None, adapter.name, key, usage_source="live hooks")
    return Entry(h, found, None, [
        f"live: {batches} batch(es) run; K={stream.num_codes} is too many codes to count one by one",
        (f"usage from per-bit and pairwise statistics of {n} ids: perplexity <= {est['perplexity_bound']:.4g} "
         f"(utilization <= {est['utilization_bound']:.2%}); {est['constant_bits']} of {stream.bits} id bits "
         "constant"),
    ])


LABELS_HOW = ("pass labels=... to analyze(model, data) (one mode id per input row, or labels=True for (x, y) "
              "batches), or --labels FILE with --model/--data (one integer per --data row)")


def _live_hints(h: Any) -> None:
    """The verdict's "how to get it" in live terms: labels describe the inputs here, not rows of a latents file."""
    v = h.verdict
    if v is not None and any(m.get("input") == "labels" for m in v.missing):
        h.verdict = replace(v, missing=tuple({**m, "how": LABELS_HOW} if m.get("input") == "labels" else m
                                             for m in v.missing))


def _canonical(rows: torch.Tensor) -> torch.Tensor:
    """Rows in lexicographic order: the sample is a set, and a fixed order makes every order-dependent step
    after it (k-means seeding, subsets) independent of batch order and of how the data was sharded."""
    if rows.shape[0] < 2:
        return rows
    order = np.lexsort(rows.double().cpu().numpy().T[::-1])
    return rows[torch.from_numpy(order.copy()).to(rows.device)]


def _result(monitor: Monitor, quantizers: list[tuple[str, nn.Module, Family]], t: HealthThresholds,
            max_points: int | None, seed: int, source: str, batches: int, *, labelled: bool = False,
            diverged: dict[str, dict[str, Any]] | None = None) -> AnalysisResult:
    entries: list[Entry] = []
    silent: list[str] = []
    diverged = diverged or {}
    for (qname, module, adapter), w in zip(quantizers, monitor.watched):
        cbs = {} if adapter.usage_only else adapter.codebooks(module)
        shared: dict[int, Any] = {}  # codes-only geometry once per tensor (VAR's scales share one codebook)
        for c, stream in w.streams.items():
            key = w.key(c)
            cb = cbs.get(c)
            if key in diverged and cb is not None:  # first: every rank joins this broadcast, whatever comes next
                cb = from_rank0(cb, monitor._device(w), monitor.group)
            if key in monitor.disabled or w.name in monitor.disabled:
                silent.append(f"{key} (its hook failed; see the shrinkscope log)")
                continue
            name = _display(qname, c, module)
            if isinstance(stream, BitUsageStream):
                entry = _bit_entry(name, key, adapter, stream, t, batches)
                silent += [] if entry else [key]
                entries += [entry] if entry else []
                continue
            counts = stream.cumulative + stream.window_counts()
            if stream.overflow() > 0:
                raise LiveError(f"{key}: {stream.overflow()} captured ids >= K={stream.num_codes}: the "
                                "adapter does not read code ids from this model")
            lat, lab = stream.reservoir(), None
            if lat is not None:
                lat = _canonical(lat)
                if labelled:  # the last column is each row's label (see live_labels.LiveMonitor)
                    lat, lab = lat[:, :-1], lat[:, -1].round().long()
            n_ids, n_lat = int(counts.sum()), stream.seen()
            if n_ids == 0 and n_lat < 2:
                silent.append(key)
                continue
            notes = [f"live: {batches} batch(es) run; usage counted exactly over {n_ids} code ids" if n_ids
                     else f"live: {batches} batch(es) run; ids not exposed: usage from assigning the sampled "
                          "latents to their nearest code"]
            if lat is not None and lat.shape[0] >= 2:
                notes.append(f"latents: uniform sample of {lat.shape[0]} of the {n_lat} seen")
            scale = w.scales.get(c)
            if scale is not None:
                notes.append(f"scale {scale['index']} ({scale['size'][0]}x{scale['size'][1]} tokens per input) of "
                             "a multi-scale quantizer: its ids and the residual it quantizes")
            if cb is None:  # codebook-free quantizer (FSQ, LFQ): usage only
                h = usage_health(name, stream.num_codes, 0, counts, t, implicit=adapter.usage_only)
                found = FoundCodebook(name, torch.zeros(0, 0), h.counts, adapter.name, key,
                                      usage_source="live hooks")
                entries.append(Entry(h, found, None, notes + ["implicit codebook: usage metrics only"],
                                     scale=scale))
                continue
            if key in diverged:  # ranks disagree: rank 0's codebook (the one it saves) is measured everywhere
                notes.append("the ranks hold different codebooks (rank_divergence): measured with rank 0's")
            ok = lat is not None and lat.shape[0] >= 2 and lat.shape[1] == cb.shape[1]
            x = lat.to(cb.device) if ok else None
            y = lab if ok and lab is not None and bool((lab >= 0).any()) else None
            if labelled and ok and y is None:
                notes.append("labels: no latent row of this codebook could be matched to an input row")
            if id(cb) not in shared:  # the tensor is kept with it, so its id cannot be reused meanwhile
                shared[id(cb)] = (cb, codebook_geometry(cb, max_points=max_points, seed=seed))
            h = codebook_health(cb, latents=x, counts=counts.double() if n_ids else None, name=name, thresholds=t,
                                seed=seed, max_points=max_points, labels=y, geometry=shared[id(cb)][1])
            if key in diverged:
                h.warnings.append(dict(diverged[key]))
            _live_hints(h)
            found = FoundCodebook(name, cb.cpu(), counts if n_ids else None, adapter.name, key,
                                  usage_source="live hooks" if n_ids else None)
            entries.append(Entry(h, found, None if x is None else x.cpu(), notes, scale=scale, labels=y))
    if not entries:
        raise LiveError("no quantizer call was seen while running the data (" + ", ".join(silent) + "); "
                        "check that forward reaches the quantizer")
    return AnalysisResult(source, entries, "live model" if any(e.latents is not None for e in entries) else None)


from .user_model import build_model, load_data, load_weights  # the CLI's helpers, importable from here too

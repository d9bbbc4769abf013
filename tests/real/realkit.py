"""Shared checks of the real-library tier: train a model built from its library's config, then check
analyze, watch and defer on it the way a new user would.

A ``Case`` describes one model: how to build it (random init, no download), tiny data, the training loss,
where its quantizer sits, which codebooks ``analyze``/``watch`` must find (name suffix -> (K, D)), which of
them store usage, and how to read held-out latents in codebook space for the defer checks.
"""
from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import shrinkscope
from shrinkscope.metrics import quantization_error
from shrinkscope.metrics.usage import assign


@dataclass
class Case:
    """One real model under test.

    Attributes:
        build: returns the model, seeded inside (the same call gives the same weights).
        data: ``data(step) -> batch``; step < 0 gives held-out batches.
        loss: ``loss(model, batch) -> scalar`` of one training step.
        output: ``output(model, batch)`` -> the library's own forward result (compared bitwise).
        codebooks: ``{name suffix: (K, D)}`` that analyze and watch must find.
        usage_stored: name suffixes whose usage a checkpoint really stores and training really writes.
        quantizer: attribute path of the quantizer inside the model (for defer).
        latents: ``latents(model, batch) -> (N, D)`` held-out latents in codebook space (for defer).
        codebook: ``codebook(model) -> (K, D)`` effective codebook the lookup uses (for defer).
        lr: learning rate of the tiny Adam loop.
    """

    build: Callable[[], nn.Module]
    data: Callable[[int], Any]
    loss: Callable[[nn.Module, Any], torch.Tensor]
    output: Callable[[nn.Module, Any], Any]
    codebooks: dict[str, tuple[int, int]]
    usage_stored: set[str] = field(default_factory=set)
    quantizer: str = "quantize"
    latents: Callable[[nn.Module, Any], torch.Tensor] | None = None
    codebook: Callable[[nn.Module], torch.Tensor] | None = None
    lr: float = 1e-2


def train(case: Case, model: nn.Module, steps: int, *, start: int = 0) -> nn.Module:
    """A few Adam steps on ``case.data(start..start+steps-1)``, in place."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=case.lr)
    for s in range(start, start + steps):
        opt.zero_grad()
        loss = case.loss(model, case.data(s))
        loss.backward()
        opt.step()
    return model


def get_module(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path) if path else model


def set_module(model: nn.Module, path: str, value: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(get_module(model, parent), leaf, value)


def tensors_of(x: Any) -> list[torch.Tensor]:
    """Every tensor inside a (nested) output, in order."""
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, dict):
        return [t for v in x.values() for t in tensors_of(v)]
    if hasattr(x, "to_tuple"):  # transformers ModelOutput
        return [t for v in x.to_tuple() for t in tensors_of(v)]
    if hasattr(x, "__dataclass_fields__"):
        return [t for f in x.__dataclass_fields__ for t in tensors_of(getattr(x, f))]
    if isinstance(x, (tuple, list)):
        return [t for v in x for t in tensors_of(v)]
    return []


def structure(x: Any) -> Any:
    """The nesting of an output with tensors replaced by (dtype, ndim): what a caller unpacks."""
    if isinstance(x, torch.Tensor):
        return ("tensor", x.dtype, x.dim())
    if isinstance(x, dict):
        return (type(x).__name__, tuple((k, structure(v)) for k, v in x.items()))
    if hasattr(x, "__dataclass_fields__"):
        return (type(x).__name__, tuple(structure(getattr(x, f)) for f in x.__dataclass_fields__))
    if isinstance(x, (tuple, list)):
        return (type(x).__name__, tuple(structure(v) for v in x))
    return type(x).__name__


def find(names: list[str], suffix: str) -> str:
    hits = [n for n in names if n.replace("/", ".").endswith(suffix)]
    assert len(hits) == 1, f"expected one codebook named like {suffix!r}, found {hits} among {names}"
    return hits[0]


# ---- analyze ------------------------------------------------------------------------------------------


def check_analyze(case: Case, source: Any) -> Any:
    """analyze finds every expected codebook with its K and D, and usage exactly where it is stored."""
    res = shrinkscope.analyze(source)
    names = [e.health.name for e in res.entries]
    assert len(names) == len(case.codebooks), f"found {names}, expected {sorted(case.codebooks)}"
    for suffix, (k, d) in case.codebooks.items():
        e = res.entries[names.index(find(names, suffix))]
        assert (e.health.num_codes, e.health.dim) == (k, d), (suffix, e.health.num_codes, e.health.dim)
        stored = suffix in case.usage_stored
        assert (e.found.counts is not None) == stored, (
            f"{suffix}: usage {'missing' if stored else 'claimed'} (source {e.found.usage_source!r})")
    return res


def check_trained_state_dict(case: Case, tmp_path, *, steps: int = 3) -> Any:
    """Train ``steps`` steps, ``torch.save`` the state dict, and run ``check_analyze`` on the file."""
    model = train(case, case.build(), steps)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    return check_analyze(case, str(tmp_path / "m.pt"))


# ---- watch --------------------------------------------------------------------------------------------


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def check_watch(case: Case, tmp_path, *, steps: int = 6, latents: bool = True) -> list[dict]:
    """Bitwise-identical training with and without watch; sane JSONL; clean removal.

    Returns:
        The JSONL metric records.
    """
    plain = case.build()
    watched = copy.deepcopy(plain)
    log = tmp_path / "watch.jsonl"
    hooks_before = _hooks(watched)
    monitor = shrinkscope.watch(watched, every=steps // 2, log_to=log, seed=0)
    assert monitor.names(), "watch found no codebook"
    torch.manual_seed(1)
    train(case, plain, steps)
    torch.manual_seed(1)
    train(case, watched, steps)
    for (n, a), b in zip(plain.state_dict().items(), watched.state_dict().values()):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b), f"watch changed {n}"
    held = case.data(-1)
    plain.eval(), watched.eval()
    with torch.no_grad():
        torch.manual_seed(3)  # sampling quantizers (Gumbel) draw in eval too
        out_plain = tensors_of(case.output(plain, held))
        torch.manual_seed(3)
        out_watched = tensors_of(case.output(watched, held))
        for a, b in zip(out_plain, out_watched):
            assert torch.equal(a, b), "watch changed the output"
    monitor.remove()
    assert _hooks(watched) == hooks_before, "watch left hooks behind"
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    metric = [r for r in recs if "metrics" in r]
    names = sorted({r["name"] for r in metric})
    for suffix, (k, d) in case.codebooks.items():
        name = find(names, suffix)
        mine = [r for r in metric if r["name"] == name]
        assert mine, f"no record for {name}"
        for r in mine:
            assert (r["num_codes"], r["dim"]) == (k, d), (name, r["num_codes"], r["dim"])
            m = r["metrics"]
            assert m["utilization_perplexity"] is not None and 1 <= m["utilization_perplexity"] <= k + 1e-6
            if latents:
                assert m["spread_ratio"] is not None and m["spread_ratio"] > 0, f"{name}: no latents in {m}"
                assert m["quantization_error"] is not None
    return metric


# ---- defer --------------------------------------------------------------------------------------------


def held_out_fit(case: Case, model: nn.Module, *, batches: int = 2) -> tuple[float, float]:
    """(quantization error, share of codes used) of held-out latents against the effective codebook."""
    model.eval()
    with torch.no_grad():
        z = torch.cat([case.latents(model, case.data(-1 - i)) for i in range(batches)]).float()
        cb = case.codebook(model).float()
    ids, _ = assign(cb, z)
    return float(quantization_error(cb, z)), float(ids.unique().numel() / cb.shape[0])


def check_defer(case: Case, *, warmup: int, after: int, reservoir: int | None = None,
                min_used: float = 0.3, slack: float = 1.05) -> dict[str, float]:
    """Pass-through in the library's own structure; after the switch, a fit no worse than from step 0.

    Returns:
        ``{"deferred_qe", "baseline_qe", "deferred_used", "baseline_used"}`` on held-out data.
    """
    base = case.build()
    model = copy.deepcopy(base)
    q = get_module(model, case.quantizer)
    dq = shrinkscope.defer(q, switch=warmup, reservoir_size=reservoir, check_every=max(1, warmup // 2))
    set_module(model, case.quantizer, dq)
    x = case.data(0)
    model.train()
    with torch.no_grad():
        got = case.output(model, x)
        want = case.output(copy.deepcopy(base).train(), x)
    assert structure(got) == structure(want), "pass-through changed the output structure"
    torch.manual_seed(2)
    train(case, model, warmup + after)
    assert dq.switched, "defer did not switch"
    torch.manual_seed(2)
    train(case, base, warmup + after)
    qe, used = held_out_fit(case, model)
    qe0, used0 = held_out_fit(case, base)
    out = {"deferred_qe": qe, "baseline_qe": qe0, "deferred_used": used, "baseline_used": used0}
    assert qe <= qe0 * slack + 1e-6, f"deferred fit worse than quantizing from step 0: {out}"
    assert used >= min_used, f"deferred codebook uses too few codes on held-out data: {out}"
    return out


# ---- tiny data ----------------------------------------------------------------------------------------


def blobs(step: int, shape: tuple[int, ...], *, centers: int = 24, seed: int = 0) -> torch.Tensor:
    """Gaussian blobs along axis 1 of ``shape`` (channels first), a fresh draw per step.

    The same ``seed`` gives the same centres for every step; ``step < 0`` draws held-out batches.
    """
    c = shape[1]
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(centers, c, generator=g) * 2
    g.manual_seed(seed * 100_003 + 7 + (step if step >= 0 else 1_000_000 - step))
    rows = int(torch.tensor(shape).prod()) // c
    pick = torch.randint(centers, (rows,), generator=g)
    x = mu[pick] + 0.3 * torch.randn(rows, c, generator=g)
    b, rest = shape[0], shape[2:]
    return x.reshape(b, *rest, c).movedim(-1, 1).contiguous()

"""Class 2 of the adversarial sweep: ordinary training idioms around ``watch``.

The contract: outputs, gradients and parameters are bit-identical with and without the monitor; the
monitor counts each training forward exactly once; nothing raises into the loop.
Run: pytest tests/adversarial/test_training_idioms.py -q
"""
from __future__ import annotations

import json
import logging

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import shrinkscope
from shrinkscope.watch import Monitor

vqp = pytest.importorskip("vector_quantize_pytorch")

BATCHES = [torch.randn(2, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(4)]
TOKENS = sum(x.shape[0] * x.shape[1] for x in BATCHES)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 8), vqp.VectorQuantize(dim=8, codebook_size=32))


def _train(model, forward):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    outs = []
    for x in BATCHES:
        q, idx, loss = forward(model, x)
        (q.pow(2).mean() + loss.sum()).backward()
        opt.step()
        opt.zero_grad()
        outs.append((q.detach().clone(), idx.clone()))
    return outs, {k: v.clone() for k, v in model.state_dict().items()}


def _identical(a, b) -> bool:
    (oa, sa), (ob, sb) = a, b
    return all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(oa, ob)) \
        and sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _reentrant(m, x):
    return checkpoint(m[1], m[0](x), use_reentrant=True)


def _non_reentrant(m, x):
    return checkpoint(m[1], m[0](x), use_reentrant=False)


def _whole_model(m, x):
    return checkpoint(m, x.requires_grad_(), use_reentrant=True)


@pytest.mark.parametrize("forward", [_reentrant, _non_reentrant, _whole_model])
def test_gradient_checkpointing_counts_each_forward_once(forward):
    # the recomputation in backward runs the quantizer's forward (and its hooks) a second time
    reference = _train(_model(), forward)
    model = _model()
    m = shrinkscope.watch(model, every=2, log_warnings=False)
    assert _identical(reference, _train(model, forward))
    assert m.step == len(BATCHES)
    assert int(m.counts(m.names()[0]).sum()) == TOKENS
    assert not m.disabled and not m.skipped


def test_torch_compile_never_traces_the_hooks():
    seen: list[bool] = []
    real = Monitor._collect

    def spy(self, w, extract):
        seen.append(torch.compiler.is_compiling())  # True when dynamo traces the hook into the user's graph
        return real(self, w, extract)

    reference = _train(torch.compile(_model(), backend="eager"), lambda m, x: m(x))
    model = _model()
    m = shrinkscope.watch(model, every=2, log_warnings=False)
    Monitor._collect = spy
    try:
        got = _train(torch.compile(model, backend="eager"), lambda mod, x: mod(x))
    finally:
        Monitor._collect = real
    assert _identical(reference, got)
    assert seen and not any(seen)
    assert m.step == len(BATCHES) and int(m.counts(m.names()[0]).sum()) == TOKENS


def test_autocast_bf16_and_eval_loops():
    def forward(m, x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return m(x)

    reference = _train(_model(), forward)
    model = _model()
    m = shrinkscope.watch(model, every=2, log_warnings=False)
    assert _identical(reference, _train(model, forward))
    model.eval()
    with torch.no_grad():
        model(BATCHES[0])
    with torch.inference_mode():
        model(BATCHES[0])
    model.train()
    assert m.step == len(BATCHES) and int(m.counts(m.names()[0]).sum()) == TOKENS  # collect="train"
    assert m.report() is not None and not m.skipped


def test_dataparallel_replicas_are_not_counted_and_say_so_once(caplog):
    vq = vqp.VectorQuantize(dim=8, codebook_size=32)
    m = shrinkscope.watch(vq, every=0, log_warnings=False)
    replica = vq._replicate_for_data_parallel()  # what nn.DataParallel runs on each GPU (shares the hooks)
    with caplog.at_level(logging.WARNING, logger="shrinkscope"):
        for x in BATCHES:
            replica(x)
    assert m.step == 0 and int(m.counts(m.names()[0]).sum()) == 0
    assert len([r for r in caplog.records if "DataParallel" in r.getMessage()]) == 1
    vq(BATCHES[0])
    assert m.step == 1


def test_a_codebook_whose_k_changes_is_followed(tmp_path, caplog):
    torch.manual_seed(0)
    vq = vqp.VectorQuantize(dim=8, codebook_size=32)
    m = shrinkscope.watch(vq, every=0, log_to=tmp_path / "run.jsonl", log_warnings=False)
    vq(BATCHES[0])
    assert m.report()[0].num_codes == 32
    cb = vq._codebook
    with torch.no_grad():  # the user grows the codebook (a new tensor object, K 32 -> 64)
        cb.embed = torch.randn(1, 64, 8)
        cb.embed_avg = cb.embed.clone()
        cb.cluster_size = torch.ones(1, 64)
    cb.codebook_size = 64
    vq(BATCHES[1])
    with caplog.at_level(logging.WARNING, logger="shrinkscope"):
        assert m.report() == []  # the window that mixes both sizes is dropped, once
    assert any("K=32 to K=64" in r.getMessage() for r in caplog.records)
    vq(BATCHES[2])
    (h,) = m.report()
    assert h.num_codes == 64 and not m.skipped and not m.disabled
    assert m.counts(m.names()[0]).shape == (64,)
    events = [json.loads(ln) for ln in (tmp_path / "run.jsonl").read_text().splitlines()]
    assert [e["num_codes"] for e in events if e.get("event") == "codebook_resized"] == [64]


@pytest.mark.parametrize("shape", [(0, 8, 8), (2, 0, 8), (1, 1, 8)])
def test_empty_and_single_token_batches(shape):
    vq = vqp.VectorQuantize(dim=8, codebook_size=32)
    m = shrinkscope.watch(vq, every=1, log_warnings=False)
    vq(torch.randn(*shape))
    vq(BATCHES[0])
    assert not m.disabled and not m.skipped and m.report() is not None


def test_watch_twice_and_remove_twice():
    model = _model()
    a = shrinkscope.watch(model, every=0, log_warnings=False)
    b = shrinkscope.watch(model, every=0, log_warnings=False)
    model(BATCHES[0])
    assert a.step == b.step == 1
    for mon in (a, a, b, b):
        mon.remove()
    assert not model[1]._forward_hooks


@pytest.mark.parametrize("kw, fragment", [
    ({"every": 2.5}, "every"), ({"every": True}, "every"), ({"every": "10"}, "every"), ({"every": float("nan")}, "every"),
    ({"reservoir_size": 2.5}, "reservoir_size"), ({"reservoir_size": "5"}, "reservoir_size"),
    ({"seed": -1}, "seed"), ({"thresholds": "strict"}, "thresholds"), ({"health_kwargs": {"kk": 3}}, "kk"),
])
def test_options_are_checked_when_watch_is_called(kw, fragment):
    # accepted, these would skip every report of the run (or truncate 2.5 to 2) hours into training
    with pytest.raises((TypeError, ValueError), match=fragment):
        shrinkscope.watch(vqp.VectorQuantize(dim=8, codebook_size=32), **kw)


def test_integral_floats_and_numpy_integers_are_fine():
    import numpy as np

    m = shrinkscope.watch(vqp.VectorQuantize(dim=8, codebook_size=32), every=1e3, reservoir_size=np.int64(64))
    assert m.every == 1000


def test_log_event_payloads_that_refer_to_themselves(tmp_path):
    vq = vqp.VectorQuantize(dim=8, codebook_size=32)
    m = shrinkscope.watch(vq, every=1, log_to=tmp_path / "run.jsonl", log_warnings=False)
    loop: dict = {}
    loop["self"] = loop
    dag: dict = {}
    for _ in range(40):  # 2^40 paths through a few dozen dicts
        dag = {"a": dag, "b": dag}
    m.log_event("loop", payload=loop)
    m.log_event("dag", payload=dag)
    vq(BATCHES[0])  # the JSONL sink is still there and still writes
    m.remove()
    records = [json.loads(ln) for ln in (tmp_path / "run.jsonl").read_text().splitlines()]
    assert records[0]["payload"] == {"self": "<cycle>"}
    assert [r.get("event") for r in records[:2]] == ["loop", "dag"] and any("metrics" in r for r in records)


class _Nearest(nn.Module):
    """A plain nearest-code quantizer that torch.compile captures in one graph."""

    def __init__(self):
        super().__init__()
        self.codebook = nn.Parameter(torch.randn(32, 8, generator=torch.Generator().manual_seed(0)))

    def forward(self, z):
        idx = torch.cdist(z, self.codebook[None].expand(z.shape[0], -1, -1)).argmin(-1)
        q = self.codebook[idx]
        return z + (q - z).detach(), idx


def test_fullgraph_compile_of_a_watched_quantizer():
    # dynamo used to meet the hook's is_inference_mode_enabled() and raise Unsupported into the loop
    bare = torch.compile(_Nearest(), backend="eager", fullgraph=True)
    q = _Nearest()
    m = shrinkscope.watch(q, adapter="generic", every=0, log_warnings=False)
    compiled = torch.compile(q, backend="eager", fullgraph=True)
    for x in BATCHES:
        a, b = bare(x), compiled(x)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert m.step == len(BATCHES) and int(m.counts(m.names()[0]).sum()) == TOKENS

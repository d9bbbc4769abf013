"""The training loop must never break: inference mode, model copies, pickling, Inf latents, report errors,
deferral options.  Run: pytest tests/hardening/test_training_loop.py -q"""
from __future__ import annotations

import copy
import io
import json
import logging

import pytest
import torch

import shrinkscope

vqp = pytest.importorskip("vector_quantize_pytorch")


def _vq(**kw):
    torch.manual_seed(0)
    return vqp.VectorQuantize(dim=8, codebook_size=32, **kw)


def test_inference_mode_forward_does_not_poison_the_stream(tmp_path):
    vq = _vq()
    m = shrinkscope.watch(vq, every=0, collect="all", log_to=tmp_path / "run.jsonl")
    with torch.inference_mode():
        vq(torch.randn(2, 16, 8))  # first forward: the stream's state is created here
    for _ in range(3):
        vq(torch.randn(2, 16, 8))
        assert [h.name for h in m.report()] == ["VectorQuantize"]
    assert not m.disabled and not m.skipped
    with torch.inference_mode():
        assert m.report() is not None  # a report inside inference mode works too
    vq(torch.randn(2, 16, 8))
    assert m.report() and m.counts("VectorQuantize").sum() > 0


def test_deepcopy_of_a_watched_model_is_not_counted_and_does_not_raise(tmp_path):
    vq = _vq()
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), vq)
    m = shrinkscope.watch(model, every=0, log_to=tmp_path / "run.jsonl")
    model(torch.randn(2, 16, 8))
    m.report()  # the JSONL file is open now
    ema = copy.deepcopy(model)  # the EMA-model idiom
    before, step = m.counts(m.names()[0]).sum(), m.step
    ema.train()
    for _ in range(3):
        ema(torch.randn(2, 16, 8))
    assert m.counts(m.names()[0]).sum() == before and m.step == step
    model(torch.randn(2, 16, 8))
    assert m.counts(m.names()[0]).sum() > before and m.step == step + 1
    m.remove()
    lines = (tmp_path / "run.jsonl").read_text().splitlines()
    assert all(json.loads(ln)["step"] <= step for ln in lines)


def test_shallow_copy_shares_hooks_but_is_not_counted():
    vq = _vq()
    m = shrinkscope.watch(vq, every=0)
    twin = copy.copy(vq)
    twin(torch.randn(2, 16, 8))
    assert m.step == 0 and m.counts(m.names()[0]).sum() == 0


def test_torch_save_of_a_watched_model(tmp_path):
    vq = _vq()
    m = shrinkscope.watch(vq, every=1, log_to=tmp_path / "run.jsonl")
    vq(torch.randn(2, 16, 8))
    buf = io.BytesIO()
    torch.save(vq, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    loaded(torch.randn(2, 16, 8))  # its hooks are inert
    assert m.step == 1
    torch.save(vq.state_dict(), tmp_path / "sd.pt")


def test_one_inf_latent_does_not_disable_the_codebook(caplog):
    vq = _vq()
    vq.eval()  # no EMA update: the codebook stays finite, only the sampled latents carry the Inf
    m = shrinkscope.watch(vq, every=0, collect="all", reservoir_size=64)
    x = torch.randn(2, 16, 8)
    x[0, 0, 0] = float("inf")
    vq(x)
    with caplog.at_level(logging.WARNING, logger="shrinkscope"):
        (h,) = m.report()
    assert h.latent_coverage is not None and m.nonfinite["VectorQuantize"] >= 1
    vq(torch.randn(2, 16, 8))
    (h,) = m.report()
    assert not m.disabled and h.latent_coverage is not None


def test_report_errors_skip_one_report_only(monkeypatch):
    vq = _vq()
    m = shrinkscope.watch(vq, every=0)
    vq(torch.randn(2, 16, 8))
    monkeypatch.setattr(m, "_measure", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    assert m.report() == []
    monkeypatch.undo()
    vq(torch.randn(2, 16, 8))
    assert len(m.report()) == 1 and m.skipped == {"VectorQuantize": 1} and not m.disabled


def test_report_never_raises(monkeypatch):
    vq = _vq()
    m = shrinkscope.watch(vq, every=0)
    monkeypatch.setattr(m, "_distributed", lambda: (_ for _ in ()).throw(RuntimeError("collective")))
    assert m.report() == []


def test_deepcopy_of_the_jsonl_sink(tmp_path):
    from shrinkscope.sinks import JSONLSink

    s = JSONLSink(tmp_path / "a.jsonl")
    s.write({"step": 1})
    c = copy.deepcopy(s)
    c.write({"step": 2})
    s.close(), c.close()
    assert [json.loads(x)["step"] for x in (tmp_path / "a.jsonl").read_text().splitlines()] == [1, 2]


# --- defer: validate at construction, never raise mid-run ------------------------------------------------


@pytest.mark.parametrize("kw, fragment", [
    ({"max_steps": 0, "min_steps": 0}, "max_steps"),
    ({"max_steps": 0}, "max_steps"),
    ({"switch": 0}, "switch"),
    ({"switch": True}, "switch"),
    ({"tol": float("nan")}, "tol"),
    ({"min_steps": -1}, "min_steps"),
    ({"reservoir_size": 0}, "reservoir_size"),
    ({"check_every": 2.5}, "check_every"),
    ({"seed": "x"}, "seed"),
])
def test_defer_rejects_bad_options_at_construction(kw, fragment):
    with pytest.raises((ValueError, TypeError), match=fragment):
        shrinkscope.defer(_vq(), **kw)


def test_fixed_switch_with_too_few_rows_waits_with_a_warning(caplog):
    q = shrinkscope.defer(_vq(), switch=2, reservoir_size=64, check_every=1)
    with caplog.at_level(logging.WARNING, logger="shrinkscope.defer"):
        for _ in range(6):
            q(torch.randn(1, 4, 8))  # 4 rows a step: K=32 rows arrive only after 8 steps
    assert q.phase == "warmup" and q.switch_info.get("postponed", 0) >= 1
    assert sum("postponed" in r.message for r in caplog.records) == 1  # warned once, not every step
    for _ in range(6):
        q(torch.randn(1, 4, 8))
    assert q.phase == "quantized"


def test_nonfinite_latents_are_left_out_of_kmeans():
    q = shrinkscope.defer(_vq(), switch=3, reservoir_size=64, check_every=1)
    for i in range(4):
        x = torch.randn(2, 32, 8)
        if i == 0:
            x[0, :, 0] = float("inf")
        q(x)
    assert q.phase == "quantized"
    assert torch.isfinite(q.wrapped.codebook).all()

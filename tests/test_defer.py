"""shrinkscope.defer: pass-through before the switch, exact delegation after it, state, auto switch."""
from __future__ import annotations

import copy
import io
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import shrinkscope
from shrinkscope.defer import DeferredQuantizer, strip_deferred, unwrap, water_filling_dimension
from shrinkscope.kmeans import kmeans
from shrinkscope.metrics import assign
from shrinkscope.reference.quantizer import EMAQuantizer, QuantizerOutput

from defer_testutil import TinyAE  # noqa: E402


# the faithful stand-ins for libraries not installed here, shared with the family tests
sys.path.insert(0, str(Path(__file__).resolve().parent / "families"))
import fakes
from optional import vqp


def _roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _train(q, make, steps):
    q.train()
    for s in range(steps):
        q(make(s))


# Each case: (constructor, input maker for step s, index of the quantized output, index of the ids)
def _grid(s, c=4):
    return torch.randn(2, c, 4, 4, generator=torch.Generator().manual_seed(s)) + 2.0


def _seq(s, d=4):
    return torch.randn(2, 16, d, generator=torch.Generator().manual_seed(s)) + 2.0


def _chan_first_seq(s, d=4):
    return _seq(s, d).transpose(1, 2).contiguous()


CASES = {
    "lucid_vq": (lambda: vqp.VectorQuantize(dim=4, codebook_size=8), _seq),
    "lucid_vq_kmeans_init": (lambda: vqp.VectorQuantize(dim=4, codebook_size=8, kmeans_init=True,
                                                         threshold_ema_dead_code=1), _seq),
    "lucid_vq_cosine_proj": (lambda: vqp.VectorQuantize(dim=4, codebook_size=8, codebook_dim=3,
                                                         use_cosine_sim=True), _seq),
    "lucid_vq_heads": (lambda: vqp.VectorQuantize(dim=4, codebook_size=8, heads=2,
                                                   separate_codebook_per_head=True), _seq),
    "lucid_vq_image": (lambda: vqp.VectorQuantize(dim=4, codebook_size=8, accept_image_fmap=True), _grid),
    "lucid_rvq": (lambda: vqp.ResidualVQ(dim=4, codebook_size=8, num_quantizers=2), _seq),
    "taming": (lambda: fakes.VectorQuantizer2(8, 4, 0.25, sane_index_shape=True), _grid),
    "taming_legacy": (lambda: fakes.VectorQuantizer(8, 4, 0.25), _grid),
    "taming_ema": (lambda: fakes.EMAVectorQuantizer(8, 4, 0.25), _grid),
    "llamagen": (lambda: fakes.LlamaGenVectorQuantizer(8, 4, 0.25, 0.1, True, True), _grid),
    "diffusers": (lambda: fakes.DiffusersVectorQuantizer(8, 4, 0.25), _grid),
    "encodec_codebook": (lambda: fakes.EuclideanCodebook(4, 8, kmeans_init=True), _seq),
    "encodec_vq": (lambda: fakes.VectorQuantization(4, 8, codebook_dim=3), _chan_first_seq),
    "reference": (lambda: EMAQuantizer(8, 4), _grid),
}


def _tensors(out):
    """Flatten a (nested) output structure into its leaves, with their types."""
    if isinstance(out, torch.Tensor) or out is None or isinstance(out, (int, float)):
        return [out]
    return [leaf for item in out for leaf in _tensors(item)]


def _structure(out):
    if isinstance(out, torch.Tensor):
        return ("T", tuple(out.shape), out.dtype)
    if isinstance(out, (tuple, list)):
        return (type(out).__name__, tuple(_structure(o) for o in out))
    return (type(out).__name__,)


def _quantized(out):
    return out.quantized if isinstance(out, QuantizerOutput) else out[0]


LOSSES = {  # where each family returns its auxiliary losses
    "lucid_vq": lambda o: [o[2]], "lucid_vq_kmeans_init": lambda o: [o[2]],
    "lucid_vq_cosine_proj": lambda o: [o[2]],
    "lucid_vq_heads": lambda o: [o[2]], "lucid_vq_image": lambda o: [o[2]], "lucid_rvq": lambda o: [o[2]],
    "taming": lambda o: [o[1]], "taming_legacy": lambda o: [o[1]], "taming_ema": lambda o: [o[1]],
    "diffusers": lambda o: [o[1]], "llamagen": lambda o: list(o[1][:3]),
    "encodec_codebook": lambda o: [], "encodec_vq": lambda o: [o[2]], "reference": lambda o: [o.loss],
}


TRANSFORMED = {"lucid_vq_cosine_proj", "lucid_vq_heads"}  # VectorQuantize with project_in/out or cosine


@pytest.mark.parametrize("case", sorted(CASES))
def test_passthrough_keeps_structure_and_state(case):
    make_q, make_x = CASES[case]
    torch.manual_seed(0)
    bare = make_q()
    if case == "reference":
        bare.init_codebook(torch.randn(64, 4) + 2.0)
        bare.active.fill_(True)
    wrapped = copy.deepcopy(bare)
    q = shrinkscope.defer(wrapped, switch=1000, reservoir_size=64, check_every=4)
    before = {k: v.clone() for k, v in wrapped.state_dict().items()}
    x = make_x(0).requires_grad_(True)
    out = q.train()(x)
    # the latents come back unchanged, in the wrapped module's exact output structure (types, shapes, dtypes);
    # families that project or normalise send them through the module's own transforms instead
    if case in TRANSFORMED:
        with torch.no_grad():
            z = wrapped.project_in(x.detach())
            if wrapped._codebook.use_cosine_sim:  # l2-normalised per head, as the lookup sees it
                z = torch.nn.functional.normalize(z.unflatten(-1, (wrapped.heads, -1)), dim=-1).flatten(-2)
            assert torch.allclose(_quantized(out), wrapped.project_out(z), atol=1e-6)
    else:
        assert _quantized(out) is x
    assert _structure(out) == _structure(bare.train()(make_x(0)))
    # no EMA step, no k-means init, no usage FIFO update happened inside the wrapped module
    for k, v in wrapped.state_dict().items():
        assert torch.equal(v, before[k]), k
    # auxiliary losses are zeros on the input's device that still backpropagate (gradient 0)
    losses = LOSSES[case](out)
    assert all(float(loss.detach().abs().sum()) == 0.0 and loss.device == x.device for loss in losses)
    (_quantized(out).sum() + sum(loss.sum() for loss in losses)).backward()
    if case not in TRANSFORMED:
        assert torch.equal(x.grad, torch.ones_like(x))
    else:  # the gradient flows through project_in/project_out, which train during the warm-up
        assert x.grad is not None and bool(torch.isfinite(x.grad).all())
    assert q.step == 1 and q.phase == "warmup"
    assert q.reservoir(next(iter(q._dims))).shape[0] > 0


IDS = {  # where each family returns its code ids
    "lucid_vq": lambda o: o[1], "lucid_vq_kmeans_init": lambda o: o[1],
    "lucid_vq_cosine_proj": lambda o: o[1],
    "lucid_vq_heads": lambda o: o[1], "lucid_vq_image": lambda o: o[1], "lucid_rvq": lambda o: o[1],
    "taming": lambda o: o[2][2], "taming_legacy": lambda o: o[2][2], "taming_ema": lambda o: o[2][2],
    "diffusers": lambda o: o[2][2], "llamagen": lambda o: o[2][2], "encodec_codebook": lambda o: o[1],
    "encodec_vq": lambda o: o[1], "reference": lambda o: o.indices,
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_passthrough_ids_are_the_bare_modules_lookup(case):
    make_q, make_x = CASES[case]
    torch.manual_seed(0)
    bare = make_q()
    if case == "reference":
        bare.init_codebook(torch.randn(64, 4) + 2.0)
    q = shrinkscope.defer(copy.deepcopy(bare), switch=1000, reservoir_size=64)
    ids = IDS[case](q.train()(make_x(3)))
    if not q.family.initted(q.wrapped):
        assert bool((ids == -1).all())  # no codebook yet: nothing to look up
    else:
        assert torch.equal(ids, IDS[case](bare.eval()(make_x(3))))


def test_defer_and_the_monitor_use_one_family_object():
    from shrinkscope.families import get_family

    for case, (make_q, _) in CASES.items():
        module = make_q()
        assert shrinkscope.defer(module, reservoir_size=64).family is get_family(module), case


@pytest.mark.parametrize("case", sorted(CASES))
def test_after_switch_outputs_equal_bare_module(case):
    make_q, make_x = CASES[case]
    torch.manual_seed(0)
    q = shrinkscope.defer(make_q(), switch=6, reservoir_size=64, check_every=4)
    _train(q, make_x, 6)
    q(make_x(6))  # the switch happens at the start of this call
    assert q.switched and q.phase == "quantized"
    bare = copy.deepcopy(q.wrapped)
    bare_state = copy.deepcopy(q.wrapped.state_dict())
    for s in range(7, 10):
        torch.manual_seed(s)
        a = q(make_x(s))
        torch.manual_seed(s)
        b = bare(make_x(s))
        for la, lb in zip(_tensors(a), _tensors(b)):
            if isinstance(la, torch.Tensor):
                assert torch.equal(la, lb)
            else:
                assert la == lb
    for k, v in bare.state_dict().items():
        assert torch.equal(v, q.wrapped.state_dict()[k]), k
    assert bare_state.keys() == q.wrapped.state_dict().keys()


def test_switch_writes_kmeans_centroids_and_consistent_ema_state():
    torch.manual_seed(0)
    vq = vqp.VectorQuantize(dim=4, codebook_size=8, kmeans_init=True, decay=0.9)
    q = shrinkscope.defer(vq, switch=5, reservoir_size=64, check_every=5, seed=3)
    _train(q, _seq, 5)
    pool = q.reservoir("").clone()
    assert pool.shape == (64, 4)
    q.switch_now()  # what forward does at step 5, without the EMA step of the delegated call after it
    assert q.switch_info["reason"] == "fixed_step"
    expected = kmeans(pool, 8, iters=20, seed=3)
    cb = vq._codebook
    assert torch.allclose(cb.embed[0], expected)
    assert bool(cb.initted)
    # EMA state: embed_avg / cluster_size reproduces the codebook; sizes sum to one step's tokens
    assert torch.allclose(cb.cluster_size.sum(), torch.tensor(2 * 16.0))
    mask = cb.cluster_size[0] > 0
    assert torch.allclose(cb.embed_avg[0][mask] / cb.cluster_size[0][mask, None], expected[mask], atol=1e-5)
    counts = torch.bincount(assign(expected, pool)[0], minlength=8).float()
    assert torch.allclose(cb.cluster_size[0], counts / counts.sum() * 32)


def test_residual_vq_is_initialised_stage_wise():
    torch.manual_seed(0)
    rvq = vqp.ResidualVQ(dim=4, codebook_size=8, num_quantizers=2)
    q = shrinkscope.defer(rvq, switch=4, reservoir_size=64, check_every=4, seed=1)
    _train(q, _seq, 4)
    pool = q.reservoir("").clone()
    q.switch_now()
    c0 = kmeans(pool, 8, iters=20, seed=1)
    residual = pool - c0[assign(c0, pool)[0]]
    c1 = kmeans(residual, 8, iters=20, seed=2)
    assert torch.allclose(rvq.layers[0]._codebook.embed[0], c0)
    assert torch.allclose(rvq.layers[1]._codebook.embed[0], c1)


def test_passthrough_ids_match_bare_lookup_and_masks():
    torch.manual_seed(0)
    bare = vqp.VectorQuantize(dim=4, codebook_size=8).eval()
    q = shrinkscope.defer(copy.deepcopy(bare), switch=1, reservoir_size=64)
    x = _seq(1)
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[1, 10:] = False
    out = q.train()(x, mask=mask)
    ref = bare(x, mask=mask)
    assert torch.equal(out[1], ref[1])
    assert torch.equal(out[0][1, 10:], torch.zeros(6, 4)) and torch.equal(out[0][0], x[0])
    assert q.reservoir("").shape[0] == 16 + 10  # only the valid rows reach the reservoir


def test_eval_calls_do_not_count_or_collect():
    q = shrinkscope.defer(vqp.VectorQuantize(dim=4, codebook_size=8), switch=2, reservoir_size=64)
    q.eval()
    for s in range(5):
        q(_seq(s))
    assert q.step == 0 and not q.switched and q.reservoir("").shape[0] == 0


def test_resume_mid_warmup_continues_identically():
    def make():
        torch.manual_seed(0)
        # window=50: the checks record history but never decide, so the switch comes at max_steps
        return shrinkscope.defer(vqp.VectorQuantize(dim=4, codebook_size=8), switch="auto", reservoir_size=32,
                                 check_every=2, min_steps=0, max_steps=14, window=50, seed=5)

    def run(steps_a, steps_b):
        q = make()
        _train(q, _seq, steps_a)
        if steps_b is None:
            return q
        state = _roundtrip(q.state_dict())
        fresh = make()
        fresh.load_state_dict(state)
        assert fresh.step == steps_a and fresh.phase == "warmup"
        _train(fresh, lambda s: _seq(s + steps_a), steps_b)
        return fresh

    straight, resumed = run(16, None), run(7, 9)
    assert straight.switched and resumed.switched
    assert straight.switch_info["step"] == resumed.switch_info["step"] == 14
    assert straight.history == resumed.history
    assert torch.equal(straight.wrapped._codebook.embed, resumed.wrapped._codebook.embed)


def test_unwrap_and_checkpoint_load_into_original_class():
    torch.manual_seed(0)
    model = TinyAE(vqp.VectorQuantize(dim=4, codebook_size=8))
    model.quantizer = shrinkscope.defer(model.quantizer, switch=3, reservoir_size=32, check_every=1)
    for s in range(5):
        recon, loss = model(_seq(s))
        (recon.pow(2).mean() + loss).backward()
    assert model.quantizer.switched
    saved = _roundtrip(model.state_dict())
    assert any(k.startswith("quantizer.wrapped.") for k in saved)
    plain = TinyAE(vqp.VectorQuantize(dim=4, codebook_size=8))
    plain.load_state_dict(strip_deferred(saved))  # strict: no missing or unexpected keys
    assert torch.equal(plain.quantizer._codebook.embed, model.quantizer.wrapped._codebook.embed)
    unwrapped = unwrap(model)
    assert unwrapped is model and type(model.quantizer).__name__ == "VectorQuantize"
    assert unwrapped.state_dict().keys() == plain.state_dict().keys()


def test_auto_switch_fires_after_plateau_and_not_before_min_steps():
    # latents whose rank grows by one dimension every 10 steps up to 6, then stays
    def stream(s):
        g = torch.Generator().manual_seed(s)
        rank = min(1 + s // 10, 6)
        z = torch.zeros(64, 8)
        z[:, :rank] = torch.randn(64, rank, generator=g)
        return z + 0.001 * torch.randn(64, 8, generator=g)

    q = shrinkscope.defer(vqp.VectorQuantize(dim=8, codebook_size=16), switch="auto", reservoir_size=256,
                          check_every=5, min_steps=20, max_steps=500, window=3, tol=0.02)
    _train(q, stream, 200)
    assert q.switched and q.switch_info["reason"] == "plateau"
    step = q.switch_info["step"]
    assert 60 <= step <= 120, step  # plateau starts at step 50; the reservoir needs a refresh + window checks
    dims = [h["effective_dimension"] for h in q.history]
    assert dims[0] < dims[-1] and round(dims[-1]) == 6

    early = shrinkscope.defer(vqp.VectorQuantize(dim=8, codebook_size=16), switch="auto", reservoir_size=256,
                              check_every=5, min_steps=80, max_steps=500, window=2, tol=0.02)
    _train(early, lambda s: stream(1000 + s), 100)  # flat from the start
    assert early.switched and early.switch_info["step"] >= 80


def test_auto_switch_forced_at_max_steps():
    q = shrinkscope.defer(vqp.VectorQuantize(dim=4, codebook_size=8), switch="auto", reservoir_size=32,
                          check_every=2, min_steps=0, max_steps=6, window=50)
    _train(q, _seq, 7)
    assert q.switched and q.switch_info == {**q.switch_info, "reason": "max_steps", "step": 6}


def test_switch_is_logged_to_monitor_and_python_logging(caplog):
    events = []

    class Sink:
        def log_event(self, event, **payload):
            events.append((event, payload))

    q = shrinkscope.defer(vqp.VectorQuantize(dim=4, codebook_size=8), switch=2, reservoir_size=32,
                          monitor=Sink())
    with caplog.at_level("INFO", logger="shrinkscope.defer"):
        _train(q, _seq, 3)
    assert events and events[0][0] == "defer_switch"
    assert events[0][1]["step"] == 2 and events[0][1]["kmeans_seconds"] >= 0
    assert "switched" in caplog.text


def test_bad_use_gives_clear_errors():
    with pytest.raises(TypeError, match="no deferral support"):
        shrinkscope.defer(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="smaller than the codebook"):
        shrinkscope.defer(vqp.VectorQuantize(dim=4, codebook_size=64), reservoir_size=32)
    with pytest.raises(ValueError, match="switch must be"):
        shrinkscope.defer(vqp.VectorQuantize(dim=4, codebook_size=8), switch="later")
    with pytest.raises(TypeError, match="already deferred"):
        shrinkscope.defer(shrinkscope.defer(vqp.VectorQuantize(dim=4, codebook_size=8)))
    q = shrinkscope.defer(vqp.VectorQuantize(dim=4, codebook_size=8), switch=1, reservoir_size=32,
                          check_every=100)
    q.train()(torch.randn(1, 2, 4))  # one step gives 2 latents, fewer than K=8
    q(torch.randn(1, 2, 4))  # the switch is due but waits (with one warning): never raises mid-run
    assert q.phase == "warmup" and q.switch_info["postponed"] == 1
    with pytest.raises(RuntimeError, match="fewer than the codebook size"):
        q.switch_now()  # asked for explicitly: a clear error


@pytest.mark.parametrize("switch,recent,check_every,expect", [
    (40, None, 100, 10),  # a fixed warm-up: its last quarter
    (4000, None, 20, 20),  # at most one check period
    ("auto", None, 25, 25),  # auto: the check period the checks measure
    (40, 5, 100, 5),  # explicit
])
def test_reservoir_at_the_switch_holds_the_recent_steps(switch, recent, check_every, expect):
    """Rows tagged with their step: the reservoir holds exactly the last ``recent_steps`` steps when batches
    bring enough rows, nothing from before."""
    q = shrinkscope.defer(vqp.VectorQuantize(dim=4, codebook_size=8), switch=switch, reservoir_size=40,
                          recent_steps=recent, check_every=check_every, min_steps=1000, max_steps=5000)
    assert q.recent_steps == expect
    q.train()
    steps = 30
    for s in range(steps):
        q(torch.full((1, 64, 4), float(s)) + 0.01 * torch.randn(1, 64, 4))
    held = q.reservoir("")[:, 0].round()
    assert held.shape[0] == 40
    assert int(held.min()) >= steps - expect and int(held.max()) == steps - 1, held.unique()


def test_recent_steps_default_and_check():
    assert shrinkscope.defer(vqp.VectorQuantize(dim=4, codebook_size=8), switch=3).recent_steps == 1
    with pytest.raises(ValueError, match="recent_steps"):
        shrinkscope.defer(vqp.VectorQuantize(dim=4, codebook_size=8), recent_steps=0)


def test_water_filling_dimension():
    lam = torch.tensor([16.0, 4.0, 1.0, 1e-6])
    # 1 bit: only the largest component gets rate; 8 bits spread over the three real components
    assert water_filling_dimension(lam, 2) == 1
    assert water_filling_dimension(lam, 256) == 3
    assert water_filling_dimension(torch.zeros(3), 16) == 0


def test_wrapper_is_a_deferred_quantizer_and_lazy_export_works():
    q = shrinkscope.defer(EMAQuantizer(8, 4))
    assert isinstance(q, shrinkscope.DeferredQuantizer) and isinstance(q, DeferredQuantizer)
    assert callable(shrinkscope.unwrap)


def test_switch_event_reaches_a_watch_monitor_jsonl(tmp_path):
    import json

    model = TinyAE(shrinkscope.defer(vqp.VectorQuantize(dim=4, codebook_size=8), switch=3, reservoir_size=32))
    path = tmp_path / "run.jsonl"
    monitor = shrinkscope.watch(model, every=100, log_to=str(path))
    model.quantizer.monitor = monitor  # attach after watch() so the monitor sees the final model
    try:
        for s in range(5):
            recon, loss = model(_seq(s))
            (recon.pow(2).mean() + loss).backward()
    finally:
        monitor.remove()
    events = [json.loads(line) for line in path.read_text().splitlines() if '"event"' in line]
    assert [e["event"] for e in events] == ["defer_switch"]
    assert events[0]["step"] == 3 and events[0]["reason"] == "fixed_step"
    assert events[0]["family"] == "lucidrains.vq"

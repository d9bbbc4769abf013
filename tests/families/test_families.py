"""Every family in a real few-step training loop: detection, codebooks, counts, and bitwise-identical
training with and without the monitor (outputs, losses, gradients, parameters, buffers; train and eval)."""
from __future__ import annotations

import copy

import fakes
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from shrinkscope import watch
from shrinkscope.families import find_quantizers, get_family
from shrinkscope.reference.quantizer import EMAQuantizer
from optional import vqp


B, HW, N, C_IN = 2, 4, 12, 6


class MyQuantizer(nn.Module):
    """A home-made quantizer only the generic family can read: codebook param, dict output."""

    def __init__(self, k, d):
        super().__init__()
        self.codebook = nn.Parameter(torch.randn(k, d))

    def forward(self, x):
        flat = x.reshape(-1, x.shape[-1])
        ids = torch.cdist(flat, self.codebook).argmin(1)
        q = self.codebook[ids].view_as(x)
        return {"quantized": x + (q - x).detach(), "ids": ids.view(x.shape[:-1]),
                "loss": F.mse_loss(q, x.detach())}


def _sum_losses(*xs):
    return sum(x.sum() for x in xs if isinstance(x, torch.Tensor))


def _reference():
    q = EMAQuantizer(16, 4)
    q.init_codebook(torch.randn(200, 4))
    q.active.fill_(True)
    return q


# name, factory, layout, post(out) -> (quantized, aux loss), family, codebook names, tokens/step/codebook
CASES = [
    ("vq", lambda: vqp.VectorQuantize(dim=4, codebook_size=16, decay=0.8), "seq",
     lambda o: (o[0], o[2]), "lucidrains.vq", [""], B * N),
    ("vq_image_cosine", lambda: vqp.VectorQuantize(dim=4, codebook_size=16, accept_image_fmap=True,
                                                   use_cosine_sim=True, codebook_dim=3), "img",
     lambda o: (o[0], o[2]), "lucidrains.vq", [""], B * HW * HW),
    ("vq_heads", lambda: vqp.VectorQuantize(dim=4, codebook_size=16, heads=2, separate_codebook_per_head=True,
                                            codebook_dim=3, kmeans_init=True), "seq",
     lambda o: (o[0], o[2]), "lucidrains.vq", ["head0", "head1"], B * N),
    ("vq_shared_heads", lambda: vqp.VectorQuantize(dim=4, codebook_size=16, heads=2), "seq",
     lambda o: (o[0], o[2]), "lucidrains.vq", [""], 2 * B * N),
    ("rvq", lambda: vqp.ResidualVQ(dim=4, codebook_size=16, num_quantizers=3), "seq",
     lambda o: (o[0], o[2].sum()), "lucidrains.rvq", ["layers.0", "layers.1", "layers.2"], B * N),
    ("grouped_rvq", lambda: vqp.GroupedResidualVQ(dim=4, codebook_size=16, num_quantizers=2, groups=2), "seq",
     lambda o: (o[0], o[2].sum()), "lucidrains.grouped_rvq",
     ["rvqs.0.layers.0", "rvqs.0.layers.1", "rvqs.1.layers.0", "rvqs.1.layers.1"], B * N),
    ("simvq", lambda: vqp.SimVQ(dim=4, codebook_size=16), "seq", lambda o: (o[0], o[2]),
     "lucidrains.simvq", [""], B * N),
    ("fsq", lambda: vqp.FSQ(levels=[4, 4], dim=4), "seq", lambda o: (o[0], None), "lucidrains.fsq", [""], B * N),
    ("lfq", lambda: vqp.LFQ(dim=4, codebook_size=16), "seq", lambda o: (o[0], o[2]), "lucidrains.lfq",
     [""], B * N),
    ("taming_vq2", lambda: fakes.VectorQuantizer2(16, 4, 0.25, sane_index_shape=True), "img",
     lambda o: (o[0], o[1]), "taming", [""], B * HW * HW),
    ("taming_legacy", lambda: fakes.VectorQuantizer(16, 4, 0.25), "img", lambda o: (o[0], o[1]), "taming.legacy",
     [""], B * HW * HW),
    ("taming_ema", lambda: fakes.EMAVectorQuantizer(16, 4, 0.25), "img", lambda o: (o[0], o[1]), "taming.ema",
     [""], B * HW * HW),
    ("taming_gumbel", lambda: fakes.GumbelQuantize(5, 4, 16), "img", lambda o: (o[0], o[1]), "taming.gumbel",
     [""], B * HW * HW),
    ("llamagen", lambda: fakes.LlamaGenVectorQuantizer(16, 4, 0.25, 0.1, True, True), "img",
     lambda o: (o[0], _sum_losses(*o[1][:3])), "llamagen", [""], B * HW * HW),
    ("diffusers", lambda: fakes.DiffusersVectorQuantizer(16, 4, 0.25), "img", lambda o: (o[0], o[1]),
     "diffusers", [""], B * HW * HW),
    ("encodec_vq", lambda: fakes.VectorQuantization(4, 16, codebook_dim=3), "cf", lambda o: (o[0], o[2].sum()),
     "encodec.vq", [""], B * N),
    ("encodec_rvq", lambda: fakes.ResidualVectorQuantization(num_quantizers=2, dim=4, codebook_size=16), "cf",
     lambda o: (o[0], o[2].sum()), "encodec.rvq", ["layers.0", "layers.1"], B * N),
    ("dac_vq", lambda: fakes.DACVectorQuantize(4, 16, 3), "cf", lambda o: (o[0], o[1].mean() + o[2].mean()),
     "dac.vq", [""], B * N),
    ("dac_rvq", lambda: fakes.ResidualVectorQuantize(4, 3, 16, 2, quantizer_dropout=0.5), "cf",
     lambda o: (o["z"], o["vq/commitment_loss"] + o["vq/codebook_loss"]), "dac.rvq",
     ["quantizers.0", "quantizers.1", "quantizers.2"], B * N),
    ("reference", _reference, "img", lambda o: (o.quantized, o.loss), "reference", [""], B * HW * HW),
    ("generic", lambda: MyQuantizer(16, 4), "seq", lambda o: (o["quantized"], o["loss"]), "generic", [""], B * N),
]


class Host(nn.Module):
    """encoder -> quantizer -> decoder, in the layout the quantizer expects."""

    def __init__(self, quantizer, layout, post, width, out_width=4):
        super().__init__()
        self.layout, self.post = layout, post
        if layout == "img":
            self.enc, self.dec = nn.Conv2d(C_IN, width, 1), nn.Conv2d(out_width, C_IN, 1)
        elif layout == "cf":
            self.enc, self.dec = nn.Conv1d(C_IN, width, 1), nn.Conv1d(out_width, C_IN, 1)
        else:
            self.enc, self.dec = nn.Linear(C_IN, width), nn.Linear(out_width, C_IN)
        self.quantizer = quantizer

    def forward(self, x):
        q, aux = self.post(self.quantizer(self.enc(x)))
        y = self.dec(q)
        loss = F.mse_loss(y, x) + (aux.sum() if isinstance(aux, torch.Tensor) else 0.0)
        return y, loss


def _data(layout, steps=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = {"img": (B, C_IN, HW, HW), "cf": (B, C_IN, N), "seq": (B, N, C_IN)}[layout]
    return [torch.randn(*shape, generator=g) for _ in range(steps)]


def _make(case):
    name, factory, layout, post, *_ = case
    torch.manual_seed(0)
    q = factory()
    width = 5 if name == "taming_gumbel" else 4
    return Host(q, layout, post, width)


def _train(model, xs):
    """A few SGD steps then an eval forward; returns everything that must be identical."""
    torch.manual_seed(1234)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    rec = []
    model.train()
    for x in xs:
        y, loss = model(x)
        opt.zero_grad()
        loss.backward()
        grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
        rec.append((y.detach().clone(), loss.detach().clone(), grads))
        opt.step()
    model.eval()
    with torch.no_grad():
        y_eval, loss_eval = model(xs[0])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return rec, (y_eval, loss_eval), state


def _assert_same(a, b):
    rec_a, ev_a, st_a = a
    rec_b, ev_b, st_b = b
    for (ya, la, ga), (yb, lb, gb) in zip(rec_a, rec_b):
        assert torch.equal(ya, yb) and torch.equal(la, lb)
        for x, y in zip(ga, gb):
            assert (x is None) == (y is None) and (x is None or torch.equal(x, y))
    assert torch.equal(ev_a[0], ev_b[0]) and torch.equal(ev_a[1], ev_b[1])
    assert st_a.keys() == st_b.keys()
    for k in st_a:
        assert torch.equal(st_a[k], st_b[k]), k


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_detect_and_codebooks(case):
    _, _, _, _, family, names, _ = case
    model = _make(case)
    found = find_quantizers(model)
    assert [(n, a.name) for n, _, a in found] == [("quantizer", family)]
    adapter = found[0][2]
    ks = adapter.num_codes(model.quantizer)
    assert sorted(ks) == sorted(names)
    if not adapter.usage_only:
        cbs = adapter.codebooks(model.quantizer)
        assert sorted(cbs) == sorted(names)
        for cb in cbs.values():
            assert cb.ndim == 2 and cb.shape[0] == 16 and not cb.requires_grad
    assert get_family(model.quantizer).name == family


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bitwise_identical_training_and_counts(case):
    _, _, layout, _, family, names, tokens = case
    xs = _data(layout)
    plain = _make(case)
    watched = copy.deepcopy(plain)
    base = _train(plain, xs)
    records = []
    monitor = watch(watched, every=2, sinks=[records.append], reservoir_size=64, collect="all",
                    log_warnings=False)
    got = _train(watched, xs)
    _assert_same(base, got)
    assert monitor.step == len(xs) and not monitor.disabled
    full = [f"quantizer/{n}" if n else "quantizer" for n in names]
    assert sorted(monitor.names()) == sorted(full)
    for n in full:
        assert int(monitor.counts(n).sum()) == tokens * (len(xs) + 1)  # 4 training steps + 1 eval forward
    steps = sorted({r["step"] for r in records})
    assert steps == [2, 4]
    assert {r["name"] for r in records} == set(full)
    monitor.report()
    window = {h.name: h for h in monitor.last_report["window"]}
    for n in full:
        h = window[n]
        assert h.utilization_perplexity is not None and h.utilization_perplexity >= 1
        if family not in ("lucidrains.fsq", "lucidrains.lfq"):
            assert h.spread_cosine is not None
        if family not in ("lucidrains.fsq", "lucidrains.lfq", "taming.gumbel"):
            assert h.spread_ratio is not None and h.quantization_error is not None
    monitor.remove()
    for m in watched.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


def test_get_family_errors():
    with pytest.raises(ValueError, match="no shrinkscope family"):
        get_family(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="unknown adapter family"):
        get_family("nope")
    with pytest.raises(TypeError):
        get_family(3)


def test_generic_by_name_accepts_any_class_name():
    class Lookup(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Parameter(torch.randn(8, 3))

        def forward(self, x):
            return x, torch.cdist(x, self.embed).argmin(-1)

    mod = Lookup()
    assert not find_quantizers(mod)
    m = watch(mod, adapter="generic", every=0, log_warnings=False)
    mod(torch.randn(5, 3))
    assert int(m.counts("Lookup").sum()) == 5
    m.remove()


def test_outermost_only_and_multiple_quantizers():
    model = nn.Sequential(vqp.ResidualVQ(dim=4, codebook_size=8, num_quantizers=2),
                          nn.Linear(4, 4), vqp.VectorQuantize(dim=4, codebook_size=8))
    found = find_quantizers(model)
    assert [(n, a.name) for n, _, a in found] == [("0", "lucidrains.rvq"), ("2", "lucidrains.vq")]

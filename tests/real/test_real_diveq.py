"""diveq (DiVeQ), the installed package: its single, product and residual quantizers under watch, analyze
of a saved state dict, and defer's refusal."""
import copy
import json
import warnings

import pytest
import torch
from torch import nn

import shrinkscope
from shrinkscope.families import get_family
from shrinkscope.metrics.usage import assign

diveq = pytest.importorskip("diveq")

K, D = 32, 8
CLASSES = {
    "DIVEQ": (lambda: diveq.DIVEQ(K, D, verbose=False, allow_warning=False), {"": (K, D)}),
    "DIVEQDetach": (lambda: diveq.DIVEQDetach(K, D, verbose=False, allow_warning=False), {"": (K, D)}),
    "ProductDIVEQ": (lambda: diveq.ProductDIVEQ(K, D, num_codebooks=2, verbose=False, allow_warning=False),
                     {"part0": (K, D // 2), "part1": (K, D // 2)}),
    "ResidualDIVEQ": (lambda: diveq.ResidualDIVEQ(K, D, num_codebooks=2, verbose=False, allow_warning=False),
                      {"stage0": (K, D), "stage1": (K, D)}),
}


class Net(nn.Module):
    def __init__(self, q):
        super().__init__()
        self.enc, self.quantize, self.dec = nn.Linear(D, D), q, nn.Linear(D, D)

    def forward(self, x):
        return self.dec(self.quantize(self.enc(x))[0])


def _build(name):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Net(CLASSES[name][0]())


def _data(step):
    g = torch.Generator().manual_seed(step)
    mu = torch.randn(12, D, generator=torch.Generator().manual_seed(0))
    return mu[torch.randint(12, (128,), generator=g)] + 0.2 * torch.randn(128, D, generator=g)


def _train(model, steps):
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for s in range(steps):
        opt.zero_grad()
        x = _data(s)
        (model(x) - x).pow(2).mean().backward()
        opt.step()
    return model


@pytest.mark.parametrize("name", list(CLASSES))
def test_watch(name, tmp_path):
    """Bitwise-identical training (DiVeQ draws its noise from the global RNG: watch must not); a record per
    codebook with its K and D and latent metrics."""
    plain = _build(name)
    watched = copy.deepcopy(plain)
    monitor = shrinkscope.watch(watched, every=2, log_to=tmp_path / "w.jsonl", log_warnings=False)
    torch.manual_seed(1)
    _train(plain, 4)
    torch.manual_seed(1)
    _train(watched, 4)
    monitor.remove()
    for a, b in zip(plain.state_dict().values(), watched.state_dict().values()):
        assert torch.equal(a, b)
    recs = [json.loads(line) for line in (tmp_path / "w.jsonl").read_text().splitlines()]
    recs = [r for r in recs if "metrics" in r]
    for cb, (k, d) in CLASSES[name][1].items():
        mine = [r for r in recs if r["name"] == ("quantize/" + cb if cb else "quantize")]
        assert mine and all((r["num_codes"], r["dim"]) == (k, d) for r in mine), sorted({r["name"] for r in recs})
        assert all(r["metrics"]["quantization_error"] is not None for r in mine)


@pytest.mark.parametrize("name", ["ProductDIVEQ", "ResidualDIVEQ"])
def test_latents_reproduce_the_ids_of_every_codebook(name):
    """Product: each codebook's slice of the features; residual: what the earlier stages left."""
    q = _build(name).quantize
    with torch.no_grad():  # spread codes (a trained codebook): the tiny uniform start makes near-ties
        q.codebook.copy_(torch.randn_like(q.codebook))
    z = _data(0)
    out = q(z)
    fam = get_family(q)
    cbs = fam.codebooks(q)
    for cap in fam.extract(q, (z,), {}, out):
        ids, _ = assign(cbs[cap.codebook], cap.latents)
        assert torch.equal(ids, cap.indices), cap.codebook


@pytest.mark.parametrize("name", list(CLASSES))
def test_analyze_state_dict(name, tmp_path):
    """Every codebook with its K and D; usage from ``codebook_usage`` (the picks since the last replacement)."""
    model = _train(_build(name), 3)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    res = shrinkscope.analyze(str(tmp_path / "m.pt"))
    assert sorted((e.health.num_codes, e.health.dim) for e in res.entries) == sorted(CLASSES[name][1].values())
    assert all(e.found.usage_source == "codebook_usage" for e in res.entries)


def test_defer_refused_with_the_reason():
    with pytest.raises(TypeError, match="diveq"):
        shrinkscope.defer(_build("DIVEQ").quantize, switch=3)

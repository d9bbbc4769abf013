"""Multi-scale quantizers: VAR's quantizer read scale by scale (a look-alike written from its public layout), and
the generic ``MultiScale`` / ``scales=`` mechanism for a user's own multi-scale quantizer.

References: the look-alike records the ids and residual rows it computed (``last_ids``, ``last_rows``); counts
are ``bincount`` of those, latents are those rows.
"""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from var_lookalike import TinyVQVAE, VectorQuantizer2

import shrinkscope
from shrinkscope.families import MultiScale, find_quantizers
from shrinkscope.families.scales import VarScales, scale_sizes
from shrinkscope.report import analysis_text

PATCHES = (1, 2, 3, 4)


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def _sorted_rows(x: torch.Tensor) -> torch.Tensor:
    import numpy as np

    return x[torch.from_numpy(np.lexsort(x.double().numpy().T[::-1]).copy())]


def test_var_is_found_as_one_multiscale_quantizer_with_a_codebook_per_scale():
    torch.manual_seed(0)
    model = TinyVQVAE(patch_nums=PATCHES)
    ((name, module, fam),) = find_quantizers(model)
    assert name == "quantize" and isinstance(fam, VarScales) and fam.name == "var"
    cbs = fam.codebooks(module)
    assert list(cbs) == [f"scales.{i}" for i in range(4)]
    assert all(torch.equal(cb, module.embedding.weight.detach()) for cb in cbs.values())
    assert fam.scales(module) == {f"scales.{i}": (p, p) for i, p in enumerate(PATCHES)}


@pytest.mark.parametrize("znorm", [False, True])
def test_watch_counts_and_latents_per_scale_equal_the_quantizers_own(tmp_path, znorm):
    torch.manual_seed(0)
    model = TinyVQVAE(patch_nums=PATCHES, znorm=znorm)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    log = tmp_path / "run.jsonl"
    monitor = shrinkscope.watch(model, every=0, log_to=log, reservoir_size=10_000, log_warnings=False)
    ids = [torch.zeros(32, dtype=torch.long) for _ in PATCHES]
    rows: list[list[torch.Tensor]] = [[] for _ in PATCHES]
    for step in range(3):
        x = _images(6, seed=step)
        rec, _, loss = model(x)
        ((rec - x).square().mean() + loss).backward()
        for i, (got, r) in enumerate(zip(model.quantize.last_ids, model.quantize.last_rows)):
            ids[i] += torch.bincount(got, minlength=32)
            rows[i].append(r)
        opt.step()
        opt.zero_grad()
    window = monitor.report()
    monitor.remove()
    assert [h.name for h in window] == [f"quantize/scales.{i}" for i in range(4)]
    for i, p in enumerate(PATCHES):
        assert torch.equal(monitor.counts(f"quantize/scales.{i}"), ids[i])
        assert int(ids[i].sum()) == 3 * 6 * p * p
        lat = monitor._last_latents[f"quantize/scales.{i}"]
        assert torch.allclose(_sorted_rows(lat), _sorted_rows(torch.cat(rows[i])), atol=1e-6)
        if znorm:
            assert torch.allclose(lat.norm(dim=1), torch.ones(lat.shape[0]), atol=1e-5)
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    assert {(r["name"], r["scope"]) for r in recs} == {(f"quantize/scales.{i}", s) for i in range(4)
                                                        for s in ("window", "cumulative")}
    assert all(r["scale"] == {"index": int(r["name"][-1]), "size": [PATCHES[int(r["name"][-1])]] * 2}
               and r["family"] == "var" for r in recs)


def test_watching_var_changes_no_output_and_no_gradient():
    torch.manual_seed(0)
    model = TinyVQVAE(patch_nums=PATCHES)
    x = _images(4)

    def run():
        model.zero_grad()
        rec, _, loss = model(x)
        ((rec - x).square().mean() + loss).backward()
        return rec.detach().clone(), [p.grad.clone() for p in model.parameters()]

    rec0, grads0 = run()
    with shrinkscope.watch(model, every=0, log_warnings=False):
        rec1, grads1 = run()
    assert torch.equal(rec0, rec1)
    assert all(torch.equal(a, b) for a, b in zip(grads0, grads1))


def test_live_analysis_gives_a_row_per_scale_in_table_json_and_depth_summary():
    torch.manual_seed(0)
    model = TinyVQVAE(patch_nums=PATCHES)
    result = shrinkscope.analyze(model, _images(40), batch_size=8)
    assert [e.health.name for e in result.entries] == [f"quantize.scales.{i}" for i in range(4)]
    d = result.to_dict()
    assert [c["scale"] for c in d["codebooks"]] == [{"index": i, "size": [p, p]} for i, p in enumerate(PATCHES)]
    json.dumps(d)
    with torch.no_grad():
        model.eval()
        model(_images(40))
    for e, ids in zip(result.entries, model.quantize.last_ids):
        assert torch.equal(e.found.counts, torch.bincount(ids, minlength=32))
    text = analysis_text(result)
    assert "quantize.scales.3 4x4" in text and "Scales:" in text
    assert "quantize (4 scales): utilization" in text and "at scale 0 (1x1)" in text


def test_scale_sizes_and_options_are_checked():
    assert scale_sizes([1, (2, 3)]) == [(1, 1), (2, 3)]
    for bad in ([], "124", [0], [(1, 2, 3)], [True], None):
        with pytest.raises(ValueError, match="scales"):
            scale_sizes(bad)


class ListScaleQuantizer(nn.Module):
    """A user's multi-scale quantizer: per scale, pool the map, look up the codebook; returns ids as a list."""

    def __init__(self, k: int = 16, d: int = 3, sizes=(1, 2, 4)):
        super().__init__()
        self.sizes = sizes
        self.register_buffer("codebook", torch.randn(k, d, generator=torch.Generator().manual_seed(3)))

    def forward(self, f):
        ids = []
        for s in self.sizes:
            z = nn.functional.adaptive_avg_pool2d(f, s).permute(0, 2, 3, 1).reshape(f.shape[0], -1, f.shape[1])
            ids.append(torch.cdist(z, self.codebook.expand(f.shape[0], -1, -1)).argmin(-1))
        return f, ids


class StreamQuantizer(nn.Module):
    """A quantizer fed the concatenated multi-scale token stream ``(B, L, D)``; returns ``(z_q, ids (B, L))``."""

    def __init__(self, k: int = 16, d: int = 3):
        super().__init__()
        self.register_buffer("codebook", torch.randn(k, d, generator=torch.Generator().manual_seed(4)))

    def forward(self, tokens):
        ids = torch.cdist(tokens, self.codebook.expand(tokens.shape[0], -1, -1)).argmin(-1)
        return self.codebook[ids], ids


def test_multiscale_splits_a_list_of_ids_per_scale():
    q = ListScaleQuantizer()
    f = torch.randn(5, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    with shrinkscope.watch(q, adapter=MultiScale("generic", scales=(1, 2, 4)), every=0, collect="all",
                           log_warnings=False) as m:
        _, ids = q(f)
        window = m.report()
    assert [h.name for h in window] == [f"ListScaleQuantizer/scales.{i}" for i in range(3)]
    for i, got in enumerate(ids):
        assert torch.equal(m.counts(f"ListScaleQuantizer/scales.{i}"), torch.bincount(got.reshape(-1), minlength=16))
    assert m.watched[0].scales["scales.2"] == {"index": 2, "size": [4, 4]}


def test_scales_option_splits_a_token_stream_and_its_latents():
    q = StreamQuantizer()
    sizes = (1, 2, 3)
    tokens = torch.randn(4, 1 + 4 + 9, 3, generator=torch.Generator().manual_seed(1))
    with shrinkscope.watch(q, adapter="generic", scales=sizes, every=0, collect="all", reservoir_size=100,
                           log_warnings=False) as m:
        _, ids = q(tokens)
        m.report()
    bounds = [0, 1, 5, 14]
    for i in range(3):
        part = ids[:, bounds[i]:bounds[i + 1]]
        assert torch.equal(m.counts(f"StreamQuantizer/scales.{i}"), torch.bincount(part.reshape(-1), minlength=16))
        lat = m._last_latents[f"StreamQuantizer/scales.{i}"]
        want = tokens[:, bounds[i]:bounds[i + 1]].reshape(-1, 3)
        assert torch.equal(_sorted_rows(lat), _sorted_rows(want))
    # a call whose token axis is not sum(h * w) yields nothing rather than wrong scales
    fam = MultiScale("generic", scales=sizes)
    out = q(torch.randn(2, 13, 3))
    assert fam.extract(q, (torch.randn(2, 13, 3),), {}, out) == []


def test_a_var_model_in_eval_is_analysed_without_state_change():
    torch.manual_seed(0)
    model = TinyVQVAE(patch_nums=PATCHES)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    shrinkscope.analyze(model, _images(16), batch_size=8)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert isinstance(model.quantize, VectorQuantizer2)


def test_live_analysis_takes_the_scales_option():
    q = StreamQuantizer()
    tokens = torch.randn(12, 1 + 4 + 9, 3, generator=torch.Generator().manual_seed(2))
    result = shrinkscope.analyze(q, tokens, adapter="generic", scales=(1, 2, 3), batch_size=5)
    assert [e.health.name for e in result.entries] == [f"scales.{i}" for i in range(3)]
    assert [e.scale["size"] for e in result.entries] == [[1, 1], [2, 2], [3, 3]]
    _, ids = q(tokens)
    for e, (a, b) in zip(result.entries, [(0, 1), (1, 5), (5, 14)]):
        assert torch.equal(e.found.counts, torch.bincount(ids[:, a:b].reshape(-1), minlength=16))
        assert e.latents.shape == (12 * (b - a), 3)


def test_var_ids_come_from_its_own_embedding_calls_and_replay_is_the_fallback(monkeypatch):
    import shrinkscope.families.scales as scales_mod

    torch.manual_seed(0)
    model = TinyVQVAE(patch_nums=PATCHES)
    x = _images(5)

    def no_search(*a, **k):
        raise AssertionError("the codebook was searched again")

    monkeypatch.setattr(scales_mod, "_nearest_rows", no_search)
    with shrinkscope.watch(model, every=0, log_warnings=False) as m:
        model(x)
        m.report()
        assert not m.disabled and not m.skipped
        for i, ids in enumerate(model.quantize.last_ids):
            assert torch.equal(m.counts(f"quantize/scales.{i}"), torch.bincount(ids, minlength=32))
    monkeypatch.undo()
    # without the embedding calls seen (here: an unwatched call): the lookup is replayed, same ids
    fam = VarScales()
    f = model.quant_conv(model.encoder(x)).detach()
    out = model.quantize(f)
    caps = fam.extract(model.quantize, (f,), {}, out)
    assert [c.codebook for c in caps] == [f"scales.{i}" for i in range(4)]
    for c, ids in zip(caps, model.quantize.last_ids):
        assert torch.equal(c.indices.reshape(-1), ids)


class TappedResidualQuantizer(nn.Module):
    """A user's VAR-like quantizer: each scale quantizes what the coarser ones left, inside ``forward``; it shows
    each scale's residual through a ``ScaleTap`` and records what it computed (the reference)."""

    def __init__(self, k: int = 16, d: int = 3, sizes=(1, 2, 4), layout: str = "channels_first"):
        super().__init__()
        from shrinkscope.families import ScaleTap

        self.sizes, self.layout = sizes, layout
        self.scale_tap = ScaleTap(layout)
        self.register_buffer("codebook", torch.randn(k, d, generator=torch.Generator().manual_seed(5)))
        self.seen: list[torch.Tensor] = []

    def forward(self, f):
        rest, ids, self.seen = f, [], []
        for s in self.sizes:
            z = nn.functional.adaptive_avg_pool2d(rest, s)  # (B, D, s, s): this scale's residual
            rows = z.permute(0, 2, 3, 1)
            self.scale_tap(z if self.layout == "channels_first" else rows.reshape(f.shape[0], s * s, -1))
            self.seen.append(rows.reshape(-1, f.shape[1]).clone())
            idx = torch.cdist(rows.reshape(f.shape[0], -1, f.shape[1]), self.codebook.expand(f.shape[0], -1, -1))
            idx = idx.argmin(-1)
            ids.append(idx)
            q = self.codebook[idx].reshape(f.shape[0], s, s, -1).permute(0, 3, 1, 2)
            rest = rest - nn.functional.interpolate(q, size=f.shape[-2:], mode="nearest")
        return f - rest, ids


@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
def test_a_scale_tap_gives_each_scale_its_residual_as_latents(layout):
    from shrinkscope.families.scales import _tapped

    q = TappedResidualQuantizer(layout=layout)
    f = torch.randn(6, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    plain = q(f)[0].clone()
    assert len(_tapped) == 0  # unwatched, the tap keeps nothing
    with shrinkscope.watch(q, adapter="generic", scales=(1, 2, 4), every=0, collect="all", reservoir_size=500,
                           log_warnings=False) as m:
        watched, ids = q(f)
        m.report()
    assert torch.equal(watched, plain)  # the tap changes no output
    for i in range(3):
        name = f"TappedResidualQuantizer/scales.{i}"
        assert torch.equal(m.counts(name), torch.bincount(ids[i].reshape(-1), minlength=16))
        assert torch.allclose(_sorted_rows(m._last_latents[name]), _sorted_rows(q.seen[i]))
    assert len(_tapped) == 0  # each forward's calls are taken by its forward hook


def test_scale_tap_calls_of_the_wrong_size_give_usage_only():
    q = TappedResidualQuantizer(sizes=(1, 2, 4))
    f = torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    with shrinkscope.watch(q, adapter="generic", scales=(1, 2, 3), every=0, collect="all", log_warnings=False) as m:
        q(f)
        m.report()
    assert all(f"TappedResidualQuantizer/scales.{i}" not in m._last_latents for i in range(3))
    from shrinkscope.families import ScaleTap

    with pytest.raises(ValueError, match="layout"):
        ScaleTap("nchw")


def test_live_analysis_reads_scale_taps():
    q = TappedResidualQuantizer()
    f = torch.randn(20, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    result = shrinkscope.analyze(q, f, adapter="generic", scales=(1, 2, 4), batch_size=5)
    assert [e.latents.shape[0] for e in result.entries] == [20, 80, 320]
    assert all(e.health.latent_effective_rank is not None for e in result.entries)

"""vector-quantize-pytorch, every quantizer class it exports, through the three doors a user has: ``watch``,
``analyze`` of a saved file (``torch.save(state_dict)``, safetensors, a pickled whole model with
``trust_checkpoint``), and ``defer``. Each either works or refuses with one error that says why; none may
give numbers for a codebook it did not read. docs/compatibility.md has the resulting table.
"""
import copy
import json

import pytest
import torch
from realkit import tensors_of
from torch import nn

import shrinkscope
from shrinkscope.checkpoint import CheckpointError

vqp = pytest.importorskip("vector_quantize_pytorch")
safetensors_torch = pytest.importorskip("safetensors.torch")

D = 16


class Net(nn.Module):
    """Linear encoder -> the quantizer -> linear decoder; the loss adds every float the quantizer returns
    that carries a gradient (its commitment / entropy losses)."""

    def __init__(self, quantizer: nn.Module, *, channels_first: bool = False, ids_only: bool = False):
        super().__init__()
        self.enc, self.quantize, self.dec = nn.Linear(D, D), quantizer, nn.Linear(D, D)
        self.channels_first, self.ids_only = channels_first, ids_only

    def forward(self, x):  # x: (B, N, D)
        z = self.enc(x)
        out = self.quantize(z.transpose(1, 2) if self.channels_first else z)
        if self.ids_only:  # RandomProjectionQuantizer returns its target ids only
            return (self.dec(z) - x).pow(2).mean(), out
        q, *rest = tensors_of(out)
        q = q.transpose(1, 2) if self.channels_first else q
        aux = sum(t.sum() for t in rest if t.is_floating_point() and t.requires_grad)
        return (self.dec(q) - x).pow(2).mean() + aux, out


def _data(step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 + step)
    mu = torch.randn(24, D, generator=torch.Generator().manual_seed(0)) * 2
    return mu[torch.randint(24, (8 * 32,), generator=g)].reshape(8, 32, D) + 0.3 * torch.randn(8, 32, D, generator=g)


def _train(model: nn.Module, steps: int) -> nn.Module:
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for s in range(steps):
        opt.zero_grad()
        model(_data(s))[0].backward()
        opt.step()
    return model


# name -> (constructor, Net options, {codebook name suffix: (K, D)} that watch reports, how analyze reads a
# saved file: "same" (the same codebooks from every format) or "none" (nothing stored), how defer answers:
# "works" or the refusal's reason)
CLASSES = {
    "VectorQuantize kmeans_init": (lambda: vqp.VectorQuantize(dim=D, codebook_size=32, kmeans_init=True, kmeans_iters=3),
                                   {}, {"quantize": (32, D)}, "same", "works"),
    "VectorQuantize orthogonal_reg": (lambda: vqp.VectorQuantize(dim=D, codebook_size=32, orthogonal_reg_weight=1.0),
                                      {}, {"quantize": (32, D)}, "same", "works"),
    "VectorQuantize rotation_trick": (lambda: vqp.VectorQuantize(dim=D, codebook_size=32, rotation_trick=True),
                                      {}, {"quantize": (32, D)}, "same", "works"),
    "VectorQuantize stochastic_sample_codes": (
        lambda: vqp.VectorQuantize(dim=D, codebook_size=32, stochastic_sample_codes=True, sample_codebook_temp=0.1),
        {}, {"quantize": (32, D)}, "same", "works"),
    "VectorQuantize ema_update=False": (lambda: vqp.VectorQuantize(dim=D, codebook_size=32, ema_update=False),
                                        {}, {"quantize": (32, D)}, "same", "works"),
    "VectorQuantize learnable_codebook": (
        lambda: vqp.VectorQuantize(dim=D, codebook_size=32, learnable_codebook=True, ema_update=False),
        {}, {"quantize": (32, D)}, "same", "works"),
    "VectorQuantize sync_codebook=False": (lambda: vqp.VectorQuantize(dim=D, codebook_size=32, sync_codebook=False),
                                           {}, {"quantize": (32, D)}, "same", "works"),
    "VectorQuantize layernorm_after_project_in": (
        lambda: vqp.VectorQuantize(dim=D, codebook_size=32, codebook_dim=8, layernorm_after_project_in=True),
        {}, {"quantize": (32, 8)}, "same", "works"),
    "VectorQuantize channel_last=False": (lambda: vqp.VectorQuantize(dim=D, codebook_size=32, channel_last=False),
                                          {"channels_first": True}, {"quantize": (32, D)}, "same", "works"),
    "ResidualVQ quantize_dropout": (lambda: vqp.ResidualVQ(dim=D, codebook_size=32, num_quantizers=3, quantize_dropout=True),
                                    {}, {f"layers.{q}": (32, D) for q in range(3)}, "same", "works"),
    "ResidualVQ shared_codebook": (lambda: vqp.ResidualVQ(dim=D, codebook_size=32, num_quantizers=2, shared_codebook=True),
                                   {}, {"layers.0": (32, D), "layers.1": (32, D)}, "same", "shared_codebook"),
    "ResidualVQ implicit_neural_codebook": (
        lambda: vqp.ResidualVQ(dim=D, codebook_size=32, num_quantizers=2, implicit_neural_codebook=True),
        {}, {"layers.0": (32, D), "layers.1": (32, D)}, "same", "implicit_neural_codebook"),
    "GroupedResidualVQ": (lambda: vqp.GroupedResidualVQ(dim=D, codebook_size=32, num_quantizers=2, groups=2),
                          {}, {f"rvqs.{g}.layers.{q}": (32, D // 2) for g in range(2) for q in range(2)}, "same", "works"),
    "RandomProjectionQuantizer": (
        lambda: vqp.RandomProjectionQuantizer(dim=D, codebook_size=32, codebook_dim=8, num_codebooks=2),
        {"ids_only": True}, {"head0": (32, D), "head1": (32, D)}, "same", "random and frozen by design"),
    "SimVQ": (lambda: vqp.SimVQ(dim=D, codebook_size=32), {}, {"quantize": (32, D)}, "same", "code_transform"),
    "ResidualSimVQ": (lambda: vqp.ResidualSimVQ(dim=D, codebook_size=32, num_quantizers=2),
                      {}, {"layers.0": (32, D), "layers.1": (32, D)}, "same", "code_transform"),
    "HierarchicalVQ": (lambda: vqp.HierarchicalVQ(dim=D, codebook_size=32, scales=[1, 4, 32], kmeans_init=False),
                       {"channels_first": True}, {"vq": (32, D)}, "same", "no deferral support"),
    "FSQ": (lambda: vqp.FSQ(levels=[8, 5, 5, 5], dim=D), {}, {"quantize": (1000, None)}, "none", "fixed grid"),
    "ResidualFSQ": (lambda: vqp.ResidualFSQ(levels=[8, 5, 5], num_quantizers=2, dim=D),
                    {}, {"layers.0": (200, None), "layers.1": (200, None)}, "none", "no deferral support"),
    "LFQ": (lambda: vqp.LFQ(dim=D, codebook_size=256), {}, {"quantize": (256, None)}, "none", "fixed grid"),
    "LFQ spherical (BSQ)": (lambda: vqp.LFQ(dim=D, codebook_size=256, spherical=True),
                            {}, {"quantize": (256, None)}, "none", "fixed grid"),
    "ResidualLFQ": (lambda: vqp.ResidualLFQ(dim=D, codebook_size=256, num_quantizers=2),
                    {}, {"layers.0": (256, None), "layers.1": (256, None)}, "none", "no deferral support"),
    "LatentQuantize": (lambda: vqp.LatentQuantize(levels=[5, 5, 8], dim=D), {"channels_first": True},
                       {"quantize": (200, None)}, "none", "product grid"),
}


def _build(name: str) -> nn.Module:
    make, opts, *_ = CLASSES[name]
    torch.manual_seed(0)
    return Net(make(), **opts)


@pytest.mark.parametrize("name", list(CLASSES))
def test_watch(name, tmp_path):
    """Training is bitwise the same with the monitor; every codebook gets records with its K and D, and
    latent metrics wherever a learned codebook is read."""
    plain = _build(name)
    watched = copy.deepcopy(plain)
    monitor = shrinkscope.watch(watched, every=2, log_to=tmp_path / "w.jsonl", log_warnings=False)
    torch.manual_seed(1)  # seeds quantize_dropout's draws too: with this seed four steps reach every stage
    _train(plain, 4)
    torch.manual_seed(1)
    _train(watched, 4)
    monitor.remove()
    for (key, a), b in zip(plain.state_dict().items(), watched.state_dict().values()):
        assert torch.equal(a, b), f"watch changed {key}"
    recs = [json.loads(line) for line in (tmp_path / "w.jsonl").read_text().splitlines()]
    recs = [r for r in recs if "metrics" in r]
    for suffix, (k, d) in CLASSES[name][2].items():
        mine = [r for r in recs if r["name"].replace("/", ".").endswith(suffix)]
        assert mine, f"no record for {suffix} among {sorted({r['name'] for r in recs})}"
        for r in mine:
            assert r["num_codes"] == k
            assert r["metrics"]["utilization_perplexity"] is not None
            if d is not None:  # a learned codebook: its geometry and the latents are read
                assert r["dim"] == d
                # QINCo stages after the first look up MLP(codebook, quantized so far): no latents in its space
                qinco = "implicit_neural_codebook" in name and suffix != "layers.0"
                assert (r["metrics"]["quantization_error"] is None) == qinco
            else:
                assert r.get("usage_only") is True


def _saved(model: nn.Module, tmp_path) -> dict[str, str]:
    paths = {"state_dict": tmp_path / "m.pt", "safetensors": tmp_path / "m.safetensors", "pickled": tmp_path / "w.pt"}
    torch.save(model.state_dict(), paths["state_dict"])
    safetensors_torch.save_model(model, str(paths["safetensors"]))
    try:
        torch.save(model, paths["pickled"])
    except AttributeError as e:  # LFQ(spherical=True) holds a lambda: torch cannot pickle the model at all
        assert "local object" in str(e)
        del paths["pickled"]
    return {k: str(v) for k, v in paths.items()}


def _read(path: str, **kwargs) -> list[tuple]:
    res = shrinkscope.analyze(path, **kwargs)
    return sorted((e.health.name, e.health.num_codes, e.health.dim, e.found.counts is not None,
                   e.health.metrics["spread_euclidean"]) for e in res.entries)


@pytest.mark.parametrize("name", list(CLASSES))
def test_analyze_every_format(name, tmp_path):
    """The same codebooks, usage and numbers from the state dict, its safetensors and the pickled model;
    implicit grids (nothing stored) are refused with one error that says nothing was found."""
    paths = _saved(_train(_build(name), 2), tmp_path)
    if CLASSES[name][3] == "none":
        for kind, path in paths.items():
            with pytest.raises(CheckpointError, match="no codebook found"):
                shrinkscope.analyze(path, trust_checkpoint=kind == "pickled")
        return
    ref = _read(paths["state_dict"])
    assert ref, "no codebook found"
    assert _read(paths["safetensors"]) == ref
    if "pickled" in paths:
        assert _read(paths["pickled"], trust_checkpoint=True) == ref


@pytest.mark.parametrize("name", list(CLASSES))
def test_defer_works_or_says_why(name):
    """Deferred: the pass-through keeps the library's output structure and the switch happens; refused:
    a TypeError / ValueError naming the reason."""
    model = _build(name)
    expect = CLASSES[name][4]
    if expect != "works":
        with pytest.raises((TypeError, ValueError), match=expect):
            shrinkscope.defer(model.quantize, switch=3)
        return
    base = copy.deepcopy(model)
    dq = shrinkscope.defer(model.quantize, switch=3, reservoir_size=128, check_every=1)
    model.quantize = dq
    x = _data(0)
    with torch.no_grad():
        got, want = model(x)[1], base(x)[1]
    shapes = [(t.dtype, tuple(t.shape)) for t in tensors_of(got)]
    assert shapes == [(t.dtype, tuple(t.shape)) for t in tensors_of(want)], "pass-through changed the output"
    torch.manual_seed(2)
    _train(model, 4)
    assert dq.switched
    model.eval()
    with torch.no_grad():
        assert all(bool(torch.isfinite(t.float()).all()) for t in tensors_of(model(_data(-1))))


def test_random_projection_latents_reproduce_its_ids():
    """watch's latents for RandomProjectionQuantizer go through LayerNorm, the random projection and the
    inner projection + normalisation: their nearest codes are the ids the library returned."""
    from shrinkscope.families import get_family
    from shrinkscope.metrics.usage import assign

    rpq = vqp.RandomProjectionQuantizer(dim=D, codebook_size=32, codebook_dim=8, num_codebooks=2)
    fam = get_family(rpq)
    x = _data(0)
    ids = rpq(x)
    caps = fam.extract(rpq, (x,), {}, ids)
    cbs = fam.codebooks(rpq)
    assert [c.codebook for c in caps] == list(cbs) == ["head0", "head1"]
    for h, cap in enumerate(caps):
        with torch.no_grad():
            z = cap.transform(cap.latents.reshape(-1, D))
        got, _ = assign(cbs[cap.codebook], z)
        assert torch.equal(got, ids[..., h].reshape(-1)), f"head{h}: latents do not reproduce the ids"


def test_grouped_residual_vq_defer_fits_each_group():
    """After the switch every group's first stage fits its slice of held-out latents at least as well as
    the same model quantized from step 0."""
    from shrinkscope.metrics import quantization_error

    def fit(model):
        model.eval()
        with torch.no_grad():
            z = model.enc(torch.cat([_data(-1), _data(-2)])).reshape(-1, D)
            g = getattr(model.quantize, "wrapped", model.quantize)
            return [float(quantization_error(g.rvqs[i].layers[0]._codebook.embed[0], z[:, 8 * i: 8 * (i + 1)]))
                    for i in range(2)]

    base = _build("GroupedResidualVQ")
    model = copy.deepcopy(base)
    model.quantize = shrinkscope.defer(model.quantize, switch=20, reservoir_size=256, check_every=10)
    torch.manual_seed(2)
    _train(model, 40)
    torch.manual_seed(2)
    _train(base, 40)
    assert model.quantize.switched
    deferred, from_start = fit(model), fit(base)
    for g in range(2):
        assert deferred[g] <= from_start[g] * 1.05, (deferred, from_start)


def test_implicit_neural_codebook_stages_are_named_in_analyze(tmp_path):
    """A saved QINCo ResidualVQ: stages after the first say that their stored codebook is the MLP's input."""
    model = _train(_build("ResidualVQ implicit_neural_codebook"), 2)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    notes = {e.health.name: " ".join(e.notes) for e in shrinkscope.analyze(str(tmp_path / "m.pt")).entries}
    assert "QINCo" not in notes["quantize.layers.0"] and "QINCo" in notes["quantize.layers.1"], notes


@pytest.mark.parametrize("option", ["affine_param", "vq_bridge"])
def test_moved_codebooks_are_read_as_the_lookup_sees_them(option, tmp_path):
    """``affine_param`` moves the codes by running batch statistics, ``vq_bridge`` maps them through a module:
    watch reads the moved codebook (the latents' nearest codes are the library's ids), and analyze of the saved
    state dict applies the stored statistics (``affine_param``) or says it could not (``vq_bridge``)."""
    from shrinkscope.families import get_family
    from shrinkscope.metrics.usage import assign

    torch.manual_seed(0)
    extra = {"affine_param": True} if option == "affine_param" else {"vq_bridge": nn.Linear(D, D)}
    vq = vqp.VectorQuantize(dim=D, codebook_size=32, **extra)
    vq.train()
    for s in range(3):
        vq(_data(s))
    vq.eval()
    x = _data(-1)
    with torch.no_grad():
        _, ids, _ = vq(x)
    fam = get_family(vq)
    cb = fam.codebooks(vq)[""]
    got, _ = assign(cb, x.reshape(-1, D))
    assert torch.equal(got, ids.reshape(-1))
    torch.save(vq.state_dict(), tmp_path / "m.pt")
    (entry,) = shrinkscope.analyze(str(tmp_path / "m.pt")).entries
    notes = " ".join(entry.notes)
    if option == "affine_param":
        assert torch.allclose(entry.found.codebook.float(), cb, atol=1e-5) and "affine_param" in notes
    else:
        assert "vq_bridge" in notes

"""vector-quantize-pytorch, the installed library: VectorQuantize in its common configurations and ResidualVQ."""
import pytest
import torch
from realkit import Case, blobs, check_defer, check_trained_state_dict, check_watch, train
from torch import nn

import shrinkscope
from shrinkscope.metrics.usage import assign

vqp = pytest.importorskip("vector_quantize_pytorch")

DIM = 16


class AE(nn.Module):
    """Linear encoder -> quantizer on (B, N, D) tokens -> linear decoder."""

    def __init__(self, quantizer: nn.Module):
        super().__init__()
        self.enc = nn.Linear(DIM, DIM)
        self.quantize = quantizer
        self.dec = nn.Linear(DIM, DIM)

    def encode(self, x):
        return self.enc(x.movedim(1, -1))  # (B, C, N) -> (B, N, D)

    def forward(self, x):
        q, ids, loss = self.quantize(self.encode(x))
        return self.dec(q), ids, loss


def _loss(m, x):
    rec, _, loss = m(x)
    return (rec - x.movedim(1, -1)).pow(2).mean() + loss.sum()


def _case(make, codebooks, usage, *, latents=None, codebook=None, lr=1e-2) -> Case:
    def build():
        torch.manual_seed(0)
        return AE(make())
    return Case(build=build, data=lambda s: blobs(s, (8, DIM, 32)), loss=_loss, output=lambda m, x: m(x),
                codebooks=codebooks, usage_stored=usage, latents=latents, codebook=codebook, lr=lr)


def _plain_latents(m, x):
    return m.encode(x).reshape(-1, DIM)


def _vq(m):
    return getattr(m.quantize, "wrapped", m.quantize)  # the library's module, deferred or not


def _codebooks(m):
    """(heads, K, D) codebooks as the lookup sees them (unit rows for cosine codebooks)."""
    embed = _vq(m)._codebook.embed.detach()
    return nn.functional.normalize(embed, dim=-1) if _vq(m)._codebook.use_cosine_sim else embed


def _plain_codebook(m):
    return _codebooks(m)[0]


CASES = {
    "plain": lambda: _case(lambda: vqp.VectorQuantize(dim=DIM, codebook_size=32), {"quantize": (32, DIM)},
                           {"quantize"}, latents=_plain_latents, codebook=_plain_codebook),
    "cosine": lambda: _case(lambda: vqp.VectorQuantize(dim=DIM, codebook_size=32, use_cosine_sim=True),
                            {"quantize": (32, DIM)}, {"quantize"},
                            latents=lambda m, x: nn.functional.normalize(_plain_latents(m, x), dim=-1),
                            codebook=_plain_codebook),
    "codebook_dim": lambda: _case(lambda: vqp.VectorQuantize(dim=DIM, codebook_size=32, codebook_dim=4),
                                  {"quantize": (32, 4)}, {"quantize"},
                                  latents=lambda m, x: _vq(m).project_in(_plain_latents(m, x)),
                                  codebook=_plain_codebook),
    "separate_heads": lambda: _case(
        lambda: vqp.VectorQuantize(dim=DIM, codebook_size=32, heads=2, separate_codebook_per_head=True),
        {"head0": (32, DIM), "head1": (32, DIM)}, {"head0", "head1"}),
    "shared_heads": lambda: _case(
        lambda: vqp.VectorQuantize(dim=DIM, codebook_size=32, heads=2, separate_codebook_per_head=False),
        {"quantize": (32, DIM)}, {"quantize"},  # project_in maps DIM to 2 heads of DIM, one shared codebook
        latents=lambda m, x: _vq(m).project_in(_plain_latents(m, x)).reshape(-1, DIM), codebook=_plain_codebook),
    "learnable_no_ema": lambda: _case(
        lambda: vqp.VectorQuantize(dim=DIM, codebook_size=32, learnable_codebook=True, ema_update=False),
        {"quantize": (32, DIM)}, set()),
    "residual": lambda: _case(lambda: vqp.ResidualVQ(dim=DIM, codebook_size=32, num_quantizers=3),
                              {"layers.0": (32, DIM), "layers.1": (32, DIM), "layers.2": (32, DIM)},
                              {"layers.0", "layers.1", "layers.2"}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_analyze_state_dict(name, tmp_path):
    check_trained_state_dict(CASES[name](), tmp_path, steps=4)


@pytest.mark.parametrize("name", list(CASES))
def test_watch(name, tmp_path):
    check_watch(CASES[name](), tmp_path)


@pytest.mark.parametrize("name", ["plain", "cosine", "codebook_dim", "shared_heads"])
def test_defer_fits(name):
    check_defer(CASES[name](), warmup=30, after=30, reservoir=256)


@pytest.mark.parametrize("name", ["codebook_dim", "cosine"])
def test_defer_passthrough_keeps_reconstruction_continuous(name):
    """Reconstruction error does not jump at the switch when the family projects or normalises."""
    case = CASES[name]()
    model = case.build()
    dq = shrinkscope.defer(model.quantize, switch=20, reservoir_size=256, check_every=10)
    model.quantize = dq
    train(case, model, 20)
    x = case.data(-1)
    model.eval()
    with torch.no_grad():
        before = (model(x)[0] - x.movedim(1, -1)).pow(2).mean()
    assert not dq.switched
    model.train()
    train(case, model, 1, start=20)
    assert dq.switched
    model.eval()
    with torch.no_grad():
        after = (model(x)[0] - x.movedim(1, -1)).pow(2).mean()
    # a k-means codebook of 32 codes on 16-D blobs loses some detail, never the whole signal
    assert float(after) < 4 * float(before) + 0.1 * float(x.var()), (float(before), float(after))


def test_defer_separate_heads_fits():
    case = CASES["separate_heads"]()

    def lat(m, x):  # (N, heads, D): project_in maps DIM to heads * codebook_dim
        return _vq(m).project_in(_plain_latents(m, x)).reshape(-1, 2, DIM)

    model = case.build()
    model.quantize = shrinkscope.defer(model.quantize, switch=30, reservoir_size=256, check_every=15)
    train(case, model, 60)
    model.eval()
    with torch.no_grad():
        z = torch.cat([lat(model, case.data(-1 - i)) for i in range(2)])
        cbs = _codebooks(model)
    for h in range(2):
        ids, _ = assign(cbs[h], z[:, h])
        assert ids.unique().numel() / 32 >= 0.3, f"head{h} uses {ids.unique().numel()} of 32 codes"


def test_defer_one_stage_of_a_residual_vq_is_refused():
    rvq = vqp.ResidualVQ(dim=DIM, codebook_size=32, num_quantizers=3)
    with pytest.raises(ValueError, match="one stage of a residual quantizer \\(ResidualVQ\\)"):
        shrinkscope.defer(rvq.layers[1], switch=5)
    lone = vqp.VectorQuantize(dim=DIM, codebook_size=32)  # the same class on its own is accepted
    assert shrinkscope.defer(lone, switch=5).phase == "warmup"


def test_analyze_multihead_latents_message_names_the_projection(tmp_path):
    """Raw (B, D, H, W) encoder output for a shared-codebook multi-head VectorQuantize: the refusal says
    which projection to apply and how the heads split."""
    case = _case(lambda: vqp.VectorQuantize(dim=DIM, codebook_size=32, heads=2, codebook_dim=4),
                 {"quantize": (32, 4)}, {"quantize"})
    model = train(case, case.build(), 2)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    with pytest.raises(ValueError, match=r"quantize\.project_in \(16 -> 8\), then split into 2 heads of D=4"):
        shrinkscope.analyze(str(tmp_path / "m.pt"), latents=torch.randn(2, DIM, 5, 5))

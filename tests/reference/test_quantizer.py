"""EMAQuantizer contract (common brief, contract 1)."""
import pytest
import torch

from shrinkscope.reference.quantizer import EMAQuantizer, QuantizerOutput


def test_contract_attributes():
    q = EMAQuantizer(16, 4)
    assert type(q).shrinkscope_family == "reference"
    for name, shape in [("embed", (16, 4)), ("cluster_size", (16,)), ("embed_avg", (16, 4)), ("initted", ()),
                        ("active", ())]:
        assert getattr(q, name).shape == shape
    assert q.initted.dtype == torch.bool and not bool(q.active)


def test_uninitialised_inactive_is_identity_with_minus_one():
    q = EMAQuantizer(8, 3)
    z = torch.randn(2, 3, 4, 5, requires_grad=True)
    out = q(z)
    assert isinstance(out, QuantizerOutput)
    assert out.quantized is z and float(out.loss) == 0.0
    assert out.indices.shape == (2, 4, 5) and bool((out.indices == -1).all())


def test_initted_inactive_reports_nearest_codes_but_passes_through():
    q = EMAQuantizer(8, 3)
    lat = torch.randn(500, 3)
    q.init_codebook(lat)
    z = torch.randn(2, 3, 4, 4)
    out = q(z)
    assert out.quantized is z and float(out.loss) == 0.0
    flat = z.permute(0, 2, 3, 1).reshape(-1, 3)
    expect = torch.cdist(flat, q.embed).argmin(1).reshape(2, 4, 4)
    assert torch.equal(out.indices, expect)


def test_kmeans_init_finds_clusters_and_resets_state():
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    lat = centres.repeat_interleave(50, 0) + 0.1 * torch.randn(200, 2)
    q = EMAQuantizer(4, 2)
    q.init_codebook(lat)
    assert bool(q.initted)
    got = sorted(map(tuple, q.embed.round().tolist()))
    assert got == sorted(map(tuple, centres.tolist()))
    assert torch.allclose(q.cluster_size, torch.full((4,), 0.25))
    assert torch.allclose(q.embed_avg, q.embed * q.cluster_size[:, None])


def test_active_quantizes_with_straight_through_and_commitment():
    q = EMAQuantizer(4, 2, beta=0.5)
    q.init_codebook(torch.randn(100, 2))
    q.active.fill_(True)
    q.eval()  # no EMA step: the codebook stays fixed for the check
    z = torch.randn(3, 2, 2, 2, requires_grad=True)
    out = q(z)
    flat = z.detach().permute(0, 2, 3, 1).reshape(-1, 2)
    idx = torch.cdist(flat, q.embed).argmin(1)
    assert torch.allclose(out.quantized.permute(0, 2, 3, 1).reshape(-1, 2), q.embed[idx])
    assert torch.isclose(out.loss, 0.5 * (flat - q.embed[idx]).pow(2).mean())
    out.quantized.sum().backward()
    assert torch.allclose(z.grad, torch.ones_like(z))  # straight-through: identity gradient


def test_ema_update_moves_codes_towards_assigned_means():
    q = EMAQuantizer(2, 2, decay=0.5, eps=1e-9)
    q.init_codebook(torch.tensor([[0.0, 0.0], [0.0, 0.0], [4.0, 4.0], [4.0, 4.0]]))
    q.active.fill_(True)
    q.train()
    target = torch.tensor([[1.0, 1.0], [5.0, 5.0]])
    z = target.repeat(4, 1).reshape(8, 2, 1, 1)  # (B, D, 1, 1): four of each
    for _ in range(30):
        q(z)
    assert torch.allclose(q.embed.sort(0).values, target, atol=1e-3)
    assert torch.allclose(q.cluster_size.sum(), torch.tensor(1.0), atol=1e-6)


def test_l2_normalize_effective_codebook_unit_rows():
    q = EMAQuantizer(8, 4, l2_normalize=True)
    q.init_codebook(torch.randn(200, 4) * 3)
    cb = q.effective_codebook()
    assert torch.allclose(cb.norm(dim=1), torch.ones(8), atol=1e-5)
    assert not cb.requires_grad
    lat = q.flat_latents(torch.randn(2, 4, 3, 3) * 5)
    assert lat.shape == (18, 4) and torch.allclose(lat.norm(dim=1), torch.ones(18), atol=1e-5)


def test_bad_input():
    with pytest.raises(ValueError, match="num_codes"):
        EMAQuantizer(1, 4)
    with pytest.raises(ValueError, match=r"\(B, 4, H, W\)"):
        EMAQuantizer(8, 4)(torch.randn(2, 3, 4, 4))


def test_dead_code_expiry_moves_unused_codes_onto_latents():
    torch.manual_seed(0)
    z = torch.randn(4, 2, 4, 4)
    lat = z.permute(0, 2, 3, 1).reshape(-1, 2)
    moved = {}
    for threshold in (1.0, 0.0):
        q = EMAQuantizer(8, 2, dead_code_threshold=threshold)
        q.init_codebook(torch.randn(200, 2))
        with torch.no_grad():  # code 0: far from every latent and never used
            q.embed[0] = torch.tensor([100.0, 100.0])
            q.cluster_size[0] = 0.0
            q.embed_avg[0] = 0.0
        q.active.fill_(True)
        q.train()
        q(z)
        moved[threshold] = bool((torch.cdist(q.embed[:1], lat).min() == 0).item())
        if threshold:
            assert float(q.cluster_size[0]) == pytest.approx(threshold / len(lat))
    assert moved == {1.0: True, 0.0: False}  # expiry copies a latent of the batch; without it nothing does
    with pytest.raises(ValueError, match="dead_code_threshold"):
        EMAQuantizer(8, 2, dead_code_threshold=-1.0)

"""vector-quantize-pytorch families on the installed library: latents in codebook space, masks."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from optional import vqp
from shrinkscope import watch


def test_lucidrains_latents_are_in_codebook_space():
    """With codebook_dim projection and cosine lookup, sampled latents are projected unit vectors."""
    vq = vqp.VectorQuantize(dim=6, codebook_size=16, codebook_dim=3, use_cosine_sim=True)
    m = watch(vq, every=0, log_warnings=False, reservoir_size=1000)
    x = torch.randn(2, 10, 6)
    vq(x)
    lat = m._stream("VectorQuantize").reservoir()
    with torch.no_grad():
        expect = F.normalize(vq.project_in(x.reshape(-1, 6)), dim=-1)
    assert lat.shape == (20, 3)
    assert torch.allclose(lat.sort(0).values, expect.sort(0).values, atol=1e-6)
    m.remove()


def test_lucidrains_mask_padding_not_counted_nor_sampled():
    vq = vqp.VectorQuantize(dim=4, codebook_size=16)
    m = watch(vq, every=0, log_warnings=False, reservoir_size=100)
    x = torch.randn(2, 10, 4)
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0, :7] = True
    mask[1, :3] = True
    vq(x, mask=mask)
    s = m._stream("VectorQuantize")
    assert int(m.counts("VectorQuantize").sum()) == 10
    assert s.seen() == 10
    lat = s.reservoir()
    assert torch.allclose(lat.sort(0).values, x[mask].sort(0).values)
    m.remove()

"""taming-transformers families (on faithful stand-ins, tests/families/fakes.py): remap, l2_normalize."""
from __future__ import annotations

import fakes
import pytest
import torch

import shrinkscope
from shrinkscope import watch
from shrinkscope.families import get_family


def test_taming_remap_falls_back_to_assigned_counts():
    q = fakes.VectorQuantizer2(16, 4, 0.25)
    q.remap = "used.npy"  # ids would live in a remapped space; the family must not trust them
    m = watch(q, every=0, log_warnings=False, reservoir_size=50)
    q(torch.randn(2, 4, 4, 4))
    h = m.report()[0]
    assert h.utilization_perplexity is not None  # from assigning the sampled latents
    m.remove()


@pytest.mark.parametrize("l2", [False, True])
def test_taming_l2_normalize_is_honoured_by_reading_and_deferral(l2):
    """Open-MAGVIT2's taming fork looks up l2-normalised codes: the family reads and defers that space."""
    q = fakes.VectorQuantizer2(16, 4, 0.25)
    q.l2_normalize = l2
    cb = get_family(q).codebooks(q)[""]
    assert torch.allclose(cb.norm(dim=1), torch.ones(16)) == l2
    z = torch.randn(2, 4, 3, 3)
    _, _, (_, _, idx) = shrinkscope.defer(q, reservoir_size=16)(z)
    rows = z.permute(0, 2, 3, 1).reshape(-1, 4)
    rows = torch.nn.functional.normalize(rows, dim=-1) if l2 else rows
    assert torch.equal(idx, torch.cdist(rows, cb).argmin(1))

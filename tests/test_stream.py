"""Streaming state: counts (-1 ignored, overflow), Algorithm R reservoir (exact fill, uniformity,
masks, views, transforms), merging, no global RNG use, bounded memory."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from shrinkscope.stream import CodebookStream, merge_reservoirs


def test_counts_ignore_minus_one_and_flag_overflow():
    s = CodebookStream(4, reservoir_size=0)
    s.update_indices(torch.tensor([[0, 1, -1], [3, 3, -1]]))
    s.update_indices(torch.tensor([1, 7]))
    assert s.window_counts().tolist() == [1, 2, 0, 2]
    assert s.overflow() == 1
    s.close_window()
    assert s.cumulative.tolist() == [1, 2, 0, 2] and s.window_counts().tolist() == [0, 0, 0, 0]


def test_counts_match_bincount_any_shape():
    g = torch.Generator().manual_seed(0)
    s = CodebookStream(10, reservoir_size=0)
    all_ids = []
    for shape in [(3, 4), (5,), (2, 3, 2, 1)]:
        ids = torch.randint(-1, 10, shape, generator=g)
        s.update_indices(ids)
        all_ids.append(ids.reshape(-1))
    ids = torch.cat(all_ids)
    assert torch.equal(s.window_counts(), torch.bincount(ids[ids >= 0], minlength=10))


def test_reservoir_fill_phase_keeps_everything_in_order():
    s = CodebookStream(2, reservoir_size=10)
    x = torch.arange(14, dtype=torch.float32).reshape(7, 2)
    s.update_latents(x[:3])
    s.update_latents(x[3:])
    assert s.seen() == 7
    assert torch.equal(s.reservoir(), x)


def test_reservoir_is_uniform_over_the_stream():
    """Inclusion frequency of each of 200 items ~ R/N, whatever the batch it came in."""
    n_items, r, trials = 200, 20, 400
    hits = np.zeros(n_items)
    items = torch.arange(n_items, dtype=torch.float32)[:, None]
    sizes = [7, 50, 1, 30, 112]
    for t in range(trials):
        s = CodebookStream(1, reservoir_size=r, seed=t)
        start = 0
        for n in sizes:
            s.update_latents(items[start:start + n])
            start += n
        got = s.reservoir()[:, 0].long().numpy()
        assert len(set(got.tolist())) == r  # no duplicates
        hits[got] += 1
    freq = hits / trials
    assert abs(freq.mean() - r / n_items) < 1e-9
    # Each batch's mean inclusion rate within 25% of R/N (binomial noise at 400 trials is far smaller).
    start = 0
    for n in sizes:
        assert abs(freq[start:start + n].mean() / (r / n_items) - 1) < 0.25, (start, n)
        start += n


def test_valid_mask_rows_are_never_sampled_nor_counted():
    s = CodebookStream(1, reservoir_size=100)
    x = torch.arange(10, dtype=torch.float32)[:, None]
    valid = torch.tensor([1, 0, 1, 0, 0, 1, 1, 0, 1, 1], dtype=torch.bool)
    s.update_latents(x, valid=valid)
    assert s.seen() == 6
    assert s.reservoir()[:, 0].tolist() == [0, 2, 5, 6, 8, 9]


def test_non_contiguous_view_and_transform():
    s = CodebookStream(1, reservoir_size=1000)
    z = torch.randn(2, 3, 4, 5)  # (B, C, H, W)
    s.update_latents(z.movedim(1, -1), transform=lambda r: 2 * r)
    rows = z.movedim(1, -1).reshape(-1, 3)
    assert torch.equal(s.reservoir(), 2 * rows)


def test_global_rng_untouched_and_memory_bounded():
    s = CodebookStream(8, reservoir_size=16)
    state = torch.get_rng_state()
    for _ in range(50):
        s.update_latents(torch.randn(33, 4, generator=torch.Generator().manual_seed(1)))
        s.update_indices(torch.zeros(33, dtype=torch.long))
    assert torch.equal(state, torch.get_rng_state())
    assert s._res.shape == (17, 4) and s._hist.shape == (10,)  # R rows + a dump row; K + 2 bins
    assert s.seen() == 50 * 33


def test_merge_adds_counts_and_samples_union():
    a, b = CodebookStream(3, reservoir_size=8, seed=1), CodebookStream(3, reservoir_size=8, seed=2)
    a.update_indices(torch.tensor([0, 0, 1]))
    b.update_indices(torch.tensor([2, -1]))
    a.update_latents(torch.zeros(30, 2))
    b.update_latents(torch.ones(10, 2))
    a.merge(b)
    assert a.window_counts().tolist() == [2, 1, 1]
    assert a.seen() == 40
    res = a.reservoir()
    assert res.shape == (8, 2)
    assert set(res[:, 0].tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="K=3"):
        a.merge(CodebookStream(4))


def test_merge_reservoirs_proportions():
    big = torch.zeros(100, 1)
    small = torch.ones(100, 1)
    share = []
    for seed in range(200):
        m, total = merge_reservoirs([(big, 900), (small, 100)], 100, seed=seed)
        assert total == 1000 and m.shape == (100, 1)
        share.append(float(m.mean()))
    assert abs(np.mean(share) - 0.1) < 0.01
    assert merge_reservoirs([(None, 0), (None, 0)], 5) == (None, 0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_codes"):
        CodebookStream(0)
    with pytest.raises(ValueError, match="reservoir_size"):
        CodebookStream(3, reservoir_size=-1)


def test_many_rows_gather_path_on_a_view():
    """n > R: only the winners are gathered (and transformed) from a non-contiguous view."""
    z = torch.randn(2, 3, 4, 5)
    rows = z.movedim(1, -1).reshape(-1, 3)
    s = CodebookStream(1, reservoir_size=6, seed=3)
    calls = []

    def transform(r):
        calls.append(r.shape[0])
        return r + 100

    s.update_latents(z.movedim(1, -1), transform=transform)
    assert calls == [6] and s.seen() == 40
    res = s.reservoir()
    assert res.shape == (6, 3)
    # every sampled row is a distinct input row (shifted by the transform)
    matches = [(torch.isclose(rows + 100, r).all(1)).nonzero().flatten().tolist() for r in res]
    assert all(len(m) == 1 for m in matches) and len({m[0] for m in matches}) == 6

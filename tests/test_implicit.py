"""Implicit codebooks: exact counts up to the limit, bit-statistics bounds above it (shrinkscope/implicit.py).

References: ids counted bit by bit in Python, and the exact perplexity of the empirical id distribution.
"""
from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import shrinkscope
from shrinkscope import watch
from shrinkscope.families import Capture, Family
from shrinkscope.implicit import (
    BitUsageStream,
    bit_usage_estimates,
    pairwise_mutual_information,
)

vqp = pytest.importorskip("vector_quantize_pytorch")


def _exact_perplexity(ids: torch.Tensor) -> float:
    _, c = torch.unique(ids, return_counts=True)
    p = c.double() / c.sum()
    return math.exp(float(-(p * p.log()).sum()))


def _estimates(ids: torch.Tensor, k: int) -> dict:
    s = BitUsageStream(k)
    s.update_indices(ids)
    return bit_usage_estimates(*s.window_stats(), k)


def test_bit_counts_match_python_reference():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(-1, 1000, (3, 77), generator=g)
    s = BitUsageStream(1000)
    s.update_indices(ids[0])
    s.update_indices(ids[1:])
    n, ones, pair = s.window_stats()
    valid = [int(i) for i in ids.reshape(-1) if i >= 0]
    assert n == len(valid) and s.bits == 10
    for i in range(10):
        assert ones[i] == sum((v >> i) & 1 for v in valid)
        for j in range(10):
            assert pair[i, j] == sum(((v >> i) & 1) * ((v >> j) & 1) for v in valid)
    s.close_window()
    assert s.window_stats()[0] == 0 and s.cumulative_ids == n


def test_bounds_exact_on_a_full_product_and_tight_on_a_markov_chain():
    b = 8
    full = torch.arange(2 ** b).repeat(3)  # every code equally often: bits independent and fair
    e = _estimates(full, 2 ** b)
    assert e["perplexity_bound"] == pytest.approx(2 ** b, rel=1e-12)
    assert e["perplexity_bound_independent"] == pytest.approx(2 ** b, rel=1e-12)
    assert e["constant_bits"] == 0 and e["utilization_bound"] == pytest.approx(1.0)
    g = torch.Generator().manual_seed(1)
    n, b = 30000, 12
    bits = torch.zeros(n, b, dtype=torch.long)
    bits[:, 0] = (torch.rand(n, generator=g) < 0.3).long()
    for i in range(1, b):  # each bit copies the previous one, flipped with probability 0.1: a chain, a tree
        bits[:, i] = bits[:, i - 1] ^ (torch.rand(n, generator=g) < 0.1).long()
    ids = (bits << torch.arange(b)).sum(1)
    e = _estimates(ids, 2 ** b)
    exact = _exact_perplexity(ids)
    assert exact <= e["perplexity_bound"] <= 1.05 * exact
    assert e["perplexity_bound_independent"] > 10 * exact  # what the per-bit bound alone would claim


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 10), st.integers(1, 400), st.integers(0, 2 ** 31 - 1))
def test_chow_liu_bound_never_below_the_exact_perplexity(bits, n, seed):
    g = torch.Generator().manual_seed(seed)
    k = 2 ** bits
    skew = torch.rand(k, generator=g) ** 4  # skewed usage, correlated bits
    ids = torch.multinomial(skew / skew.sum(), n, replacement=True, generator=g)
    e = _estimates(ids, k)
    exact = _exact_perplexity(ids)
    assert exact <= e["perplexity_bound"] * (1 + 1e-9)
    assert e["perplexity_bound"] <= e["perplexity_bound_independent"] * (1 + 1e-9)


def test_mutual_information_matches_a_direct_2x2_table():
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 16, (500,), generator=g)
    s = BitUsageStream(16)
    s.update_indices(ids)
    mi = pairwise_mutual_information(*s.window_stats())
    a, c = (ids >> 1) & 1, (ids >> 3) & 1
    ref = 0.0
    for x in (0, 1):
        for y in (0, 1):
            pxy = float(((a == x) & (c == y)).double().mean())
            px, py = float((a == x).double().mean()), float((c == y).double().mean())
            ref += pxy * math.log(pxy / (px * py)) if pxy > 0 else 0.0
    assert float(mi[1, 3]) == pytest.approx(ref, abs=1e-12) and float(mi[2, 2]) == 0.0


class HugeBinaryQuantizer(nn.Module):
    """Sign quantization of 40 channels: an implicit codebook of 2^40 codes (as LFQ / BSQ would have)."""

    def forward(self, x):
        bits = (x > 0).long()
        return torch.sign(x), (bits << torch.arange(x.shape[-1])).sum(-1)


class HugeAdapter(Family):
    name = "test.huge"
    usage_only = True

    def codebooks(self, module):
        return {}

    def num_codes(self, module):
        return {"": 2 ** 40}

    def extract(self, module, args, kwargs, output):
        return [Capture("", output[1], None)]


def test_monitor_uses_bit_statistics_above_the_limit(tmp_path):
    q = HugeBinaryQuantizer()
    m = watch(q, adapter=HugeAdapter(), every=0, log_to=tmp_path / "run.jsonl", log_warnings=False)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4096, 40, generator=g)  # 4096 ids: over 100 per id bit, enough to judge
    x[:, :30] = x[:, :1]  # 30 channels copy the first: 29 redundant bits, usage far below K
    q(x)
    (h,) = m.report()
    assert h.utilization_perplexity is None  # not an exact number: the estimates say what is known
    rec = json.loads((tmp_path / "run.jsonl").read_text().splitlines()[0])
    est = rec["estimates"]
    assert est["ids"] == 4096 and len(est["bit_entropy"]) == 40
    assert est["perplexity_bound"] >= _exact_perplexity(q(x)[1]) * (1 - 1e-9)
    assert est["codes_used_bound"] == 2.0 ** -29  # 30 identical bits take 2 of their 2^30 patterns
    assert [w["code"] for w in rec["warnings"]] == ["dead_codes", "low_utilization"]
    assert rec["verdict"]["status"] == "underused" and rec["verdict"]["evidence"] == ["usage"]
    with pytest.raises(ValueError, match="too many to count"):
        m.counts("HugeBinaryQuantizer")
    m.remove()


def test_real_lfq_over_the_limit_live_and_watched(monkeypatch):
    monkeypatch.setattr(sys.modules["shrinkscope.implicit"], "EXACT_COUNT_LIMIT", 2 ** 8)  # LFQ with 2^10 codes takes the bit path
    lfq = vqp.LFQ(dim=10, codebook_size=2 ** 10)
    x = torch.randn(16, 32, 10, generator=torch.Generator().manual_seed(4))
    result = shrinkscope.analyze(lfq, x, batch_size=4)
    (e,) = result.entries
    assert "too many codes" in e.notes[0] and e.health.utilization is None
    v = e.health.verdict  # 512 ids for 10 id bits: under 100 per bit, too few for the bit statistics to judge
    assert v.status == "cannot_tell" and v.evidence == ("usage",) and [m["input"] for m in v.missing] == ["usage"]
    with torch.no_grad():
        lfq.eval()
        ids = lfq(x)[1]
    bound = float(e.notes[1].split("perplexity <= ")[1].split(" ")[0])
    assert bound >= _exact_perplexity(ids) * (1 - 1e-3)  # the note rounds to 4 significant digits


def test_exact_counts_at_2_18_codes():
    fsq = vqp.FSQ(levels=[8, 8, 8, 8, 8, 8])  # 2^18 codes: under the limit, counted code by code
    m = watch(fsq, every=0, log_warnings=False)
    x = torch.randn(4, 256, 6, generator=torch.Generator().manual_seed(5))
    ids = fsq(x)[1]
    counts = m.counts("FSQ")
    assert counts.numel() == 2 ** 18 and torch.equal(counts, torch.bincount(ids.reshape(-1), minlength=2 ** 18))
    (h,) = m.report()
    assert h.utilization_perplexity == pytest.approx(_exact_perplexity(ids), rel=1e-9)
    m.remove()


def _ddp_worker(rank, world, port, out_dir, shards):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        q = HugeBinaryQuantizer()
        m = watch(q, adapter=HugeAdapter(), every=0, log_to=f"{out_dir}/run_{rank}.jsonl", log_warnings=False)
        q(shards[rank])
        m.report()
        m.remove()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_bit_statistics_reduce_across_ranks(tmp_path):
    import socket

    import torch.multiprocessing as mp

    g = torch.Generator().manual_seed(6)
    shards = [torch.randn(9, 40, generator=g), torch.randn(5, 40, generator=g)]
    for s in shards:
        s[:, :20] = s[:, :1]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path), shards), nprocs=2, join=True)
    assert not (tmp_path / "run_1.jsonl").exists()
    got = json.loads((tmp_path / "run_0.jsonl").read_text().splitlines()[0])["estimates"]
    ids = HugeBinaryQuantizer()(torch.cat(shards))[1]
    assert got == _estimates(ids, 2 ** 40)  # the merged window is the union of the shards

"""The usage verdict of implicit codebooks (metrics/implicit_verdict.py), its uniform-use reference, the
codes-used bound from bit statistics, the batched bit counting and the window dead-code share under watch.

References: brute-force enumeration of every id sequence (the uniform reference), Monte Carlo draws,
distinct ids counted directly (the codes-used bound), one-pass counting (the batched stream).
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from shrinkscope import watch
from shrinkscope.families import Capture, Family
from shrinkscope.implicit import BitUsageStream, bit_usage_estimates, bit_usage_health, codes_used_bound
from shrinkscope.metrics import CodebookHealth, HealthThresholds, judge_health
from shrinkscope.metrics.health import judged_from
from shrinkscope.metrics.usage import expected_uniform_usage

T = HealthThresholds()


# ---------------------------------------------------------------------------------- uniform-use reference
@pytest.mark.parametrize("k,n", [(2, 1), (3, 4), (4, 3), (5, 5)])
def test_uniform_reference_matches_enumeration_of_every_sequence(k, n):
    used = ent = 0.0
    for seq in itertools.product(range(k), repeat=n):  # every sequence equally likely under uniform use
        c = torch.bincount(torch.tensor(seq), minlength=k).double()
        p = c[c > 0] / n
        used += float((c > 0).double().mean())
        ent += float(-(p * p.log()).sum())
    used, ent = used / k ** n, ent / k ** n
    got_used, got_util = expected_uniform_usage(k, n)
    assert got_used == pytest.approx(used, rel=1e-12)
    assert got_util == pytest.approx(math.exp(ent) / k, rel=1e-12)


@pytest.mark.parametrize("k,ratio", [(1024, 0.25), (1024, 4.0), (2 ** 14, 1.0)])
def test_uniform_reference_matches_monte_carlo(k, ratio):
    n = int(k * ratio)
    g = torch.Generator().manual_seed(0)
    used, util = [], []
    for _ in range(20):
        c = torch.bincount(torch.randint(0, k, (n,), generator=g), minlength=k).double()
        p = c[c > 0] / n
        used.append(float((c > 0).double().mean()))
        util.append(math.exp(float(-(p * p.log()).sum())) / k)
    e_used, e_util = expected_uniform_usage(k, n)
    assert e_used == pytest.approx(sum(used) / 20, rel=5e-3)
    assert e_util == pytest.approx(sum(util) / 20, rel=5e-3)


def test_uniform_reference_limits():
    assert expected_uniform_usage(100, 0) == (0.0, 0.0)
    used, util = expected_uniform_usage(100, 10 ** 7)
    assert used == pytest.approx(1.0) and util == pytest.approx(1.0, abs=1e-4)
    used, util = expected_uniform_usage(10 ** 6, 10)  # far fewer ids than codes: all distinct, perplexity ~ N
    assert used == pytest.approx(1e-5, rel=1e-4) and util == pytest.approx(1e-5, rel=1e-3)


# -------------------------------------------------------------------------------------- codes-used bound
def _stats(ids: torch.Tensor, k: int):
    s = BitUsageStream(k)
    s.update_indices(ids)
    return s.window_stats()


def test_codes_used_bound_exact_on_dead_and_copied_bits():
    g = torch.Generator().manual_seed(1)
    b, n = 12, 20000
    bits = torch.randint(0, 2, (n, b), generator=g)
    full = (bits << torch.arange(b)).sum(1)
    assert codes_used_bound(*_stats(full, 2 ** b), 2 ** b) == 1.0
    dead = bits.clone()
    dead[:, [1, 5, 7]] = 0  # three constant bits: at most 1/8 of the codes
    assert codes_used_bound(*_stats((dead << torch.arange(b)).sum(1), 2 ** b), 2 ** b) == pytest.approx(1 / 8)
    cop = bits.clone()
    cop[:, 6:] = cop[:, :6]  # six bits copy six others: at most 2^6 of 2^12 patterns
    assert codes_used_bound(*_stats((cop << torch.arange(b)).sum(1), 2 ** b), 2 ** b) == pytest.approx(2 ** -6)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 9), st.integers(1, 300), st.integers(0, 2 ** 31 - 1), st.integers(0, 3))
def test_codes_used_bound_never_below_the_distinct_ids(bits, n, seed, dead):
    g = torch.Generator().manual_seed(seed)
    k = 2 ** bits - int(torch.randint(0, 2 ** (bits - 1), (1,), generator=g))  # K need not be a power of two
    skew = torch.rand(k, generator=g) ** 6
    ids = torch.multinomial(skew / skew.sum(), n, replacement=True, generator=g)
    ids = ids & ~((1 << min(dead, bits - 1)) - 1)  # clear some low bits: constant bits
    used = torch.unique(ids).numel() / k
    assert codes_used_bound(*_stats(ids, k), k) >= used - 1e-12


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 10), st.integers(2, 500), st.integers(0, 2 ** 31 - 1))
def test_bit_estimates_invariant_under_a_permutation_of_the_id_bits(bits, n, seed):
    g = torch.Generator().manual_seed(seed)
    k = 2 ** bits
    skew = torch.rand(k, generator=g) ** 4
    ids = torch.multinomial(skew / skew.sum(), n, replacement=True, generator=g)
    perm = torch.randperm(bits, generator=g)
    moved = (((ids[:, None] >> torch.arange(bits)) & 1)[:, perm] << torch.arange(bits)).sum(1)
    a, b = bit_usage_estimates(*_stats(ids, k), k), bit_usage_estimates(*_stats(moved, k), k)
    for key in ("perplexity_bound", "perplexity_bound_independent", "utilization_bound", "codes_used_bound"):
        assert a[key] == pytest.approx(b[key], rel=1e-9)
    assert sorted(a["bit_entropy"]) == pytest.approx(sorted(b["bit_entropy"]), rel=1e-12)


# --------------------------------------------------------------------------------- batched bit counting
@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 300), min_size=1, max_size=8), st.integers(1, 700), st.integers(0, 2 ** 31 - 1))
def test_streaming_split_equals_one_pass(sizes, flush_rows, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(-1, 5000, (sum(sizes),), generator=g)
    s = BitUsageStream(5000)
    s.flush_rows, s.batch_on_cpu = flush_rows, True  # the batched (GPU) path, on the CPU
    for part in ids.split(sizes):
        s.update_indices(part.reshape(-1, 1) if part.numel() % 2 else part)
        assert s._pending_rows < flush_rows  # counted once flush_rows ids are kept: memory stays bounded
    one = _stats(ids, 5000)  # counted as the ids come (the CPU path)
    got = s.window_stats()
    assert got[0] == one[0] and torch.equal(got[1], one[1]) and torch.equal(got[2], one[2])


def test_chunked_counts_of_one_big_call_match_a_direct_count():
    ids = torch.randint(-1, 2 ** 20, (70000,), generator=torch.Generator().manual_seed(8))
    valid = ids[ids >= 0]
    bits = ((valid[:, None] >> torch.arange(20)) & 1).double()
    for batch in (False, True):  # CPU path: chunks of 2^14; batched path: chunks of 2^16
        s = BitUsageStream(2 ** 20)
        s.batch_on_cpu = batch
        s.update_indices(ids)
        n, ones, pair = s.window_stats()
        assert n == valid.numel() and torch.equal(ones, bits.sum(0)) and torch.equal(pair, bits.T @ bits)


def test_kept_ids_are_copies_and_windows_close_cleanly():
    s = BitUsageStream(2 ** 40)  # int64 ids
    s.batch_on_cpu = True  # keep ids until a flush, as on a GPU
    ids = torch.tensor([3, 5, -1, 2 ** 39 + 1])
    s.update_indices(ids)
    ids.fill_(0)  # the caller reuses its tensor: the stream counted its own copy
    n, ones, _ = s.window_stats()
    assert n == 3 and ones[0] == 3 and ones[39] == 1 and ones[2] == 1
    s.update_indices(torch.tensor([1]))
    assert s._pending_rows == 1
    s.close_window()  # ids kept but not yet counted belong to the closing window
    assert s.cumulative_ids == 4 and s.window_stats()[0] == 0


# ----------------------------------------------------------------------------------- verdict per status
def _exact_health(counts: torch.Tensor) -> CodebookHealth:
    h = CodebookHealth(name="fsq", num_codes=counts.numel(), dim=0)
    c = counts.double()
    from shrinkscope.metrics import dead_code_ratio, utilization_perplexity

    h.counts = c
    h.utilization_perplexity = utilization_perplexity(c)
    h.utilization = h.utilization_perplexity / c.numel()
    h.dead_code_ratio = dead_code_ratio(c)
    h.codes_used = 1 - h.dead_code_ratio
    h.judged = judged_from(h, evidence=("usage",), implicit=True)
    return judge_health(h, T)


def _never_asks_for_latents(v) -> None:
    assert v.evidence == ("usage",)
    assert all(m["input"] == "usage" for m in v.missing)
    assert "latent" not in v.summary


def test_exact_uniform_with_enough_ids_is_healthy():
    k = 4096
    c = torch.bincount(torch.randint(0, k, (16 * k,), generator=torch.Generator().manual_seed(2)), minlength=k)
    v = _exact_health(c).verdict
    assert v.status == "healthy" and not v.missing and len(v.reasons) == 2
    assert {r["reference_name"] for r in v.reasons} == {"uniform use of all K codes, same number of tokens"}
    _never_asks_for_latents(v)


def test_exact_uniform_with_too_few_ids_cannot_tell_and_says_how_many():
    k = 4096
    n = int(k * T.min_tokens_per_code / 4)
    c = torch.bincount(torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(3)), minlength=k)
    v = _exact_health(c).verdict
    assert v.status == "cannot_tell"
    (m,) = v.missing
    assert f"{math.ceil(T.min_tokens_per_code * k):,}" in m["how"]
    _never_asks_for_latents(v)


@pytest.mark.parametrize("ratio", [0.25, 16.0])
def test_exact_collapse_is_underused_at_any_window(ratio):
    k = 4096
    ids = torch.randint(0, 16, (int(k * ratio),), generator=torch.Generator().manual_seed(4)) * 7
    h = _exact_health(torch.bincount(ids, minlength=k))
    assert h.verdict.status == "underused"
    assert {w["code"] for w in h.warnings} == {"dead_codes", "low_utilization"}
    r = h.verdict.reasons[0]
    assert r["value"] < r["threshold"] and 0 < r["reference"] <= 1
    _never_asks_for_latents(h.verdict)


def test_exact_verdict_invariant_under_relabelling_codes():
    g = torch.Generator().manual_seed(5)
    c = torch.bincount(torch.randint(0, 300, (5000,), generator=g), minlength=1000)
    a, b = _exact_health(c).verdict, _exact_health(c[torch.randperm(1000, generator=g)]).verdict
    assert a == b


def _bits_verdict(ids: torch.Tensor, k: int):
    return bit_usage_health("lfq", k, *_stats(ids, k), T)[0]


def test_bits_dead_bits_are_underused_and_uniform_cannot_tell():
    g = torch.Generator().manual_seed(6)
    b, n = 24, 5000
    bits = torch.randint(0, 2, (n, b), generator=g)
    h = _bits_verdict((bits << torch.arange(b)).sum(1), 2 ** b)
    assert h.verdict.status == "cannot_tell" and "never healthy use" in h.verdict.missing[0]["why"]
    _never_asks_for_latents(h.verdict)
    bits[:, :4] = 0
    h = _bits_verdict((bits << torch.arange(b)).sum(1), 2 ** b)
    assert h.verdict.status == "underused" and "dead_codes" in {w["code"] for w in h.warnings}
    _never_asks_for_latents(h.verdict)


def test_bits_with_too_few_ids_judge_nothing():
    ids = torch.zeros(50, dtype=torch.long)  # every bit constant, but 50 ids for 24 bits is no evidence
    h = _bits_verdict(ids, 2 ** 24)
    assert h.verdict.status == "cannot_tell" and not h.warnings
    assert "per bit" in h.verdict.missing[0]["why"]


# ----------------------------------------------------------------------- dead-code share over a window
class GridQuantizer(nn.Module):
    """Rounds 1-D inputs to an implicit grid of 64 codes (ids 0..63), like a one-dimensional FSQ."""

    def forward(self, x):
        ids = x.round().clamp(0, 63).long()
        return ids.float(), ids


class GridAdapter(Family):
    name = "test.grid"
    usage_only = True

    def codebooks(self, module):
        return {}

    def num_codes(self, module):
        return {"": 64}

    def extract(self, module, args, kwargs, output):
        return [Capture("", output[1], None)]


def test_window_dead_share_and_cumulative_union_under_watch():
    q = GridQuantizer()
    m = watch(q, adapter=GridAdapter(), every=0, log_warnings=False)
    q(torch.arange(8).float().repeat(8))  # window 1: codes 0..7, 8 ids each
    (w1,) = m.report()
    q(torch.arange(8, 64).float().repeat(8))  # window 2: codes 8..63
    (w2,) = m.report()
    cum = m.last_report["cumulative"][0]
    assert w1.dead_code_ratio == 56 / 64 and w2.dead_code_ratio == 8 / 64 and cum.dead_code_ratio == 0.0
    assert w1.verdict.status == "underused"  # seven eighths of the grid unused in that window
    assert cum.verdict.status == "healthy"  # 512 ids, 8 per code, every code used equally
    assert cum.judged.tokens == 512 and w2.judged.tokens == 448
    for h in (w1, w2, cum):
        _never_asks_for_latents(h.verdict)
    m.remove()


@pytest.mark.parametrize("kind", ["fsq", "lfq"])
def test_real_implicit_verdict_rests_on_usage(kind):
    vqp = pytest.importorskip("vector_quantize_pytorch")
    q, d = (vqp.FSQ(levels=[5, 5]), 2) if kind == "fsq" else (vqp.LFQ(dim=5, codebook_size=32), 5)
    m = watch(q, every=0, log_warnings=False)
    x = torch.randn(8, 64, d, generator=torch.Generator().manual_seed(7))
    q(x)  # 512 ids for 25 / 32 codes: enough to judge
    (h,) = m.report()
    assert h.verdict.status == "healthy"  # every level / sign of Gaussian inputs is used about evenly
    _never_asks_for_latents(h.verdict)
    assert h.to_dict()["verdict"]["evidence"] == ["usage"]
    q(torch.zeros(8, 64, d) + 0.3)  # every input on one code
    (h,) = m.report()
    assert h.verdict.status == "underused" and {w["code"] for w in h.warnings} == {"dead_codes", "low_utilization"}
    m.remove()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("num_codes", [2 ** 18, 2 ** 40])  # int32 and int64 kept ids
def test_cuda_bit_stream_never_syncs_per_step(num_codes):
    dev = torch.device("cuda")
    s = BitUsageStream(num_codes)
    s.flush_rows = 3000  # a flush every third step below, so the counting runs inside the checked region
    steps = [torch.randint(-1, min(num_codes, 2 ** 62), (1024,), device=dev) for _ in range(7)]
    s.update_indices(steps[0])  # warm-up: lazy buffers
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for ids in steps[1:]:
            s.update_indices(ids)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    one = _stats(torch.cat(steps).cpu(), num_codes)
    got = s.window_stats()
    assert got[0] == one[0] and torch.equal(got[1], one[1]) and torch.equal(got[2], one[2])


# ----------------------------------------------------------------------------------------- calibration
def test_defaults_are_the_calibrated_run_in_the_docs():
    import json
    from pathlib import Path

    run = json.loads((Path(__file__).parents[1] / "docs" / "verdicts-implicit.json").read_text())
    for field, value in run["thresholds"].items():
        assert getattr(T, field) == value, field
    held = run["held_out"]["exact"]["status"]
    assert "underused" not in held["healthy"] and "healthy" not in held["underused"]


def test_calibration_script_quick_run(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parents[1]
    out = tmp_path / "i.json"
    subprocess.run([sys.executable, str(root / "bench" / "calibrate_implicit.py"), "--quick", "--out", str(out)],
                   check=True, capture_output=True, timeout=300)
    res = json.loads(out.read_text())
    assert res["split"][0] + res["split"][1] == res["cases"] and res["bits_only"] > 0
    assert 0 < res["thresholds"]["min_codes_used_vs_uniform"] < 1
    assert res["thresholds"]["min_tokens_per_code"] in (0.25, 1, 4, 16)
    assert "healthy" not in res["held_out"]["bits"]["status"]["healthy"]  # bounds never show healthy use


def test_no_ids_cannot_tell():
    from shrinkscope.metrics.implicit_verdict import judge_implicit
    from shrinkscope.metrics.verdict import Judged

    for bounds in (False, True):
        warns, v = judge_implicit(Judged(1024, 0, ("usage",), {}, implicit=True, tokens=0.0, bounds=bounds), T)
        assert not warns and v.status == "cannot_tell" and v.missing[0]["why"] == "no code ids were counted"

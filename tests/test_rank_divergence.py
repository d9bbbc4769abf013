"""Rank divergence: the fingerprint comparison against a direct one, and the known DDP failure on 2 gloo ranks.

The failure (vector-quantize-pytorch #222): a learnable codebook trained by an in-place codebook optimizer
whose gradients are not all-reduced (``sync_codebook=False``) drifts apart on each rank. The same run with
``sync_codebook=True`` (the fix) must raise no warning.
"""
from __future__ import annotations

import functools
import json
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ddp_testutil import free_port, init_gloo

from shrinkscope import watch
from shrinkscope.divergence import compare_fingerprints, fingerprint
from shrinkscope.metrics import WARNING_CODES

vqp = pytest.importorskip("vector_quantize_pytorch")


def test_fingerprint_equal_iff_codebooks_equal():
    g = torch.Generator().manual_seed(0)
    cb = torch.randn(64, 8, generator=g)
    assert compare_fingerprints([fingerprint(cb), fingerprint(cb.clone())]) is None
    moved = cb.clone()
    moved[[3, 40]] += 0.5 * torch.randn(2, 8, generator=g)
    rotated = cb.clone()
    rotated[7] = torch.flip(cb[7], [0])  # same norm, another direction: caught by the projection
    diff = compare_fingerprints([fingerprint(cb), fingerprint(cb), fingerprint(moved), fingerprint(rotated)])
    assert diff["ranks"] == [2, 3] and diff["codes_differing"] == 2
    # the size: slow obvious reference = the largest per-code fingerprint distance / mean code norm
    ref = max(float((fingerprint(x) - fingerprint(cb)).norm(dim=1).max()) for x in (moved, rotated))
    assert diff["relative_difference"] == pytest.approx(ref / float(cb.double().norm(dim=1).mean()), rel=1e-12)
    # a permutation of codes changes what the ids mean on that rank: a divergence too
    assert compare_fingerprints([fingerprint(cb), fingerprint(cb[torch.randperm(64, generator=g)])]) is not None
    # float noise far below the tolerance is not
    assert compare_fingerprints([fingerprint(cb), fingerprint(cb * (1 + 1e-7))]) is None
    # a rank that could not read its codebook sends NaN: reported, never silently equal
    nan = torch.full((64, 2), math.nan, dtype=torch.float64)
    assert compare_fingerprints([fingerprint(cb), nan])["relative_difference"] == math.inf


def _worker(rank, world, port, out_dir):
    init_gloo(rank, world, port)
    try:
        for synced in (False, True):  # both runs in one process group: one spawn, half the start-up cost
            torch.manual_seed(0)  # the same initial codebook on every rank
            vq = vqp.VectorQuantize(dim=4, codebook_size=16, learnable_codebook=True, ema_update=False,
                                    in_place_codebook_optimizer=functools.partial(torch.optim.SGD, lr=0.5),
                                    sync_codebook=synced)
            m = watch(vq, every=3, log_to=f"{out_dir}/{synced}_run_{rank}.jsonl", log_warnings=False)
            g = torch.Generator().manual_seed(100 + rank)  # each rank its own shard of data
            for _ in range(3):
                vq(torch.randn(2, 32, 4, generator=g) + 2.0 * rank)
            torch.save(vq._codebook.embed.detach().clone(), f"{out_dir}/{synced}_embed_{rank}.pt")
            m.remove()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(_worker, args=(2, free_port(), str(out)), nprocs=2, join=True)

    def load(synced):
        recs = [json.loads(x) for x in (out / f"{synced}_run_0.jsonl").read_text().splitlines()]
        assert not (out / f"{synced}_run_1.jsonl").exists()
        e0, e1 = (torch.load(out / f"{synced}_embed_{r}.pt", weights_only=True)[0] for r in (0, 1))
        return recs, e0, e1

    return {synced: load(synced) for synced in (False, True)}


@pytest.mark.slow
def test_unsynced_learnable_codebook_warns(runs):
    recs, e0, e1 = runs[False]
    assert not torch.equal(e0, e1)  # the known failure is real in this version
    assert [r["scope"] for r in recs] == ["window", "cumulative"]
    for r in recs:
        (w,) = [w for w in r["warnings"] if w["code"] == "rank_divergence"]
        assert w["code"] in WARNING_CODES
        assert w["ranks"] == [1]
        expected = float((e1 - e0).norm(dim=1).max() / e0.norm(dim=1).mean())
        # the fingerprint distance of a code is at most its full distance (norm and one projection)
        assert 0 < w["relative_difference"] <= expected * (1 + 1e-6) * math.sqrt(2)
        assert w["codes_differing"] == int(((e1 - e0).norm(dim=1) > 0).sum())


@pytest.mark.slow
def test_synced_learnable_codebook_no_false_alarm(runs):
    recs, e0, e1 = runs[True]
    assert torch.equal(e0, e1)
    assert recs and all(w["code"] != "rank_divergence" for r in recs for w in r["warnings"])

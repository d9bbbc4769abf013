"""DDP: 2 CPU processes (gloo). Merged counts equal the single-process counts exactly, usage metrics in
every report match the single-process run, reservoirs are gathered, and only rank 0 writes."""
from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ddp_testutil import free_port, init_gloo
from torch import nn

from shrinkscope import watch

STEPS, EVERY, K = 7, 3, 12


class FrozenQuantizer(nn.Module):
    """Nearest-code lookup on a fixed codebook: ids depend only on the data, not on the rank."""

    def __init__(self):
        super().__init__()
        self.register_buffer("codebook", torch.randn(K, 3, generator=torch.Generator().manual_seed(0)))

    def forward(self, x):
        ids = torch.cdist(x, self.codebook).argmin(-1)
        return self.codebook[ids], ids


def _data():
    g = torch.Generator().manual_seed(1)
    # per step, one shard per rank (uneven sizes on purpose)
    return [(torch.randn(9, 3, generator=g), torch.randn(5, 3, generator=g)) for _ in range(STEPS)]


def _worker(rank, world, port, out_dir):
    init_gloo(rank, world, port)
    try:
        q = FrozenQuantizer()
        m = watch(q, adapter="generic", every=EVERY, log_to=f"{out_dir}/run_{rank}.jsonl", reservoir_size=8,
                  log_warnings=False)
        for shards in _data():
            q(shards[rank])
        m.report()
        stream = m.watched[0].streams[""]
        torch.save({"counts": m.counts("FrozenQuantizer"),
                    "reservoir_rows": m._last_latents["FrozenQuantizer"].shape[0]}, f"{out_dir}/counts_{rank}.pt")
        assert stream.window_counts().sum() == 0
        m.remove()
    finally:
        dist.destroy_process_group()


def _usage(path):
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    return [(r["step"], r["scope"], r["metrics"]["utilization_perplexity"], r["metrics"]["dead_code_ratio"])
            for r in lines]


@pytest.mark.slow
def test_ddp_counts_equal_single_process(tmp_path):
    if not dist.is_available():
        pytest.skip("torch.distributed not available")
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)

    q = FrozenQuantizer()
    m = watch(q, adapter="generic", every=EVERY, log_to=tmp_path / "single.jsonl", reservoir_size=8,
              log_warnings=False)
    for a, b in _data():
        q(torch.cat([a, b]))
    m.report()
    single = m.counts("FrozenQuantizer")
    m.remove()

    for rank in (0, 1):
        got = torch.load(tmp_path / f"counts_{rank}.pt", weights_only=True)
        assert torch.equal(got["counts"], single)  # every rank holds the merged counts
        assert got["reservoir_rows"] == 8
    assert int(single.sum()) == STEPS * 14
    assert (tmp_path / "run_0.jsonl").exists() and not (tmp_path / "run_1.jsonl").exists()
    usage = _usage(tmp_path / "run_0.jsonl")
    assert [u[:2] for u in usage] == [(s, sc) for s in (3, 6, 7) for sc in ("window", "cumulative")]
    assert usage == _usage(tmp_path / "single.jsonl")

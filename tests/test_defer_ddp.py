"""shrinkscope.defer under torch.distributed: 2 CPU processes (gloo) end with identical codebooks."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ddp_testutil import free_port, init_gloo
from defer_testutil import TinyAE
from optional import vqp
from torch import nn

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    init_gloo(rank, world, port)
    try:
        for switch in (5, "auto"):  # one spawn for both modes: starting processes is the slow part
            _train_one(rank, out_dir, switch)
    finally:
        dist.destroy_process_group()


def _train_one(rank: int, out_dir: str, switch) -> None:
    import shrinkscope

    torch.manual_seed(0)  # same initial weights on every rank, as DDP expects
    # codebook_dim=3 gives the quantizer project_in/out parameters that the pass-through does not use:
    # DDP (without find_unused_parameters) must still find them in the graph
    vq = vqp.VectorQuantize(dim=4, codebook_size=8, kmeans_init=True, codebook_dim=3)
    inner = TinyAE(shrinkscope.defer(vq, switch=switch, reservoir_size=64, check_every=2, min_steps=4,
                                  max_steps=12, window=2, seed=0))
    # broadcast_buffers=False: DDP must not paper over diverging codebooks by copying rank 0's buffers
    model = nn.parallel.DistributedDataParallel(inner, broadcast_buffers=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(100 + rank)  # every rank sees different data
    for _ in range(16):
        x = torch.randn(2, 16, 4, generator=gen) + 3.0 * rank
        recon, loss = model(x)
        opt.zero_grad()
        (recon.sub(x).pow(2).mean() + loss).backward()
        opt.step()
    deferred = inner.quantizer
    torch.save({"embed": vq._codebook.embed.clone(), "cluster_size": vq._codebook.cluster_size.clone(),
                "switch_step": deferred.switch_info["step"],
                "rows": deferred.switch_info["reservoir_rows"][""],
                "history": deferred.history}, f"{out_dir}/{switch}-rank{rank}.pt")


def test_ranks_hold_identical_codebooks(tmp_path):
    world = 2
    mp.spawn(_worker, args=(world, free_port(), str(tmp_path)), nprocs=world, join=True)
    for switch in (5, "auto"):
        a, b = (torch.load(tmp_path / f"{switch}-rank{r}.pt", weights_only=True) for r in range(world))
        _check_identical(a, b)
    auto = torch.load(tmp_path / "auto-rank0.pt", weights_only=True)
    assert 4 <= auto["switch_step"] <= 12 and auto["history"]


def _check_identical(a: dict, b: dict) -> None:
    assert torch.equal(a["embed"], b["embed"])
    assert torch.equal(a["cluster_size"], b["cluster_size"])
    assert a["switch_step"] == b["switch_step"]
    assert a["history"] == b["history"]
    # k-means ran on both ranks' reservoirs gathered together
    assert a["rows"] == b["rows"] == 2 * 64
    assert bool(a["cluster_size"].sum() > 0)

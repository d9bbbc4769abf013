"""accelerate is DDP underneath: ``watch`` on a model prepared by a 2-process CPU ``Accelerator`` (gloo) merges
counts exactly as one process over the union of the shards, and only rank 0 writes; no rank_divergence."""
from __future__ import annotations

import json
import os

import pytest
import torch
import torch.multiprocessing as mp

pytest.importorskip("accelerate")
vqp = pytest.importorskip("vector_quantize_pytorch")

from ddp_testutil import free_port

from shrinkscope import watch

STEPS, EVERY = 4, 2


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = torch.nn.Linear(4, 4)  # DDP needs a trainable parameter
        self.vq = vqp.VectorQuantize(dim=4, codebook_size=16, ema_update=False, learnable_codebook=False)

    def forward(self, x):
        return self.vq(self.enc(x))


def _model():
    torch.manual_seed(0)  # the same weights and frozen codebook on every rank: ids depend only on the data
    return Tiny()


def _shards():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(3, 8, 4, generator=g), torch.randn(2, 8, 4, generator=g)) for _ in range(STEPS)]


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    model = acc.prepare(_model())
    assert acc.num_processes == world and type(model).__name__ == "DistributedDataParallel"
    m = watch(model, every=EVERY, log_to=f"{out_dir}/run_{rank}.jsonl", log_warnings=False)
    for shards in _shards():
        model(shards[rank])
    torch.save(m.counts(m.names()[0]), f"{out_dir}/counts_{rank}.pt")
    m.remove()
    acc.wait_for_everyone()
    acc.end_training()


@pytest.mark.slow
def test_accelerate_two_cpu_processes(tmp_path):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    vq = _model()
    m = watch(vq, every=EVERY, log_to=tmp_path / "single.jsonl", log_warnings=False)
    for a, b in _shards():
        vq(torch.cat([a, b]))
    single = m.counts("vq")
    m.remove()
    for rank in (0, 1):
        assert torch.equal(torch.load(tmp_path / f"counts_{rank}.pt", weights_only=True), single)
    assert not (tmp_path / "run_1.jsonl").exists()
    recs = [json.loads(x) for x in (tmp_path / "run_0.jsonl").read_text().splitlines()]
    ref = [json.loads(x) for x in (tmp_path / "single.jsonl").read_text().splitlines()]
    usage = ("utilization_perplexity", "dead_code_ratio")
    assert [(r["step"], r["scope"], [r["metrics"][k] for k in usage]) for r in recs] == \
        [(r["step"], r["scope"], [r["metrics"][k] for k in usage]) for r in ref]
    assert all(w["code"] != "rank_divergence" for r in recs for w in r["warnings"])

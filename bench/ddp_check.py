"""Multi-process check of ``shrinkscope.watch`` + ``shrinkscope.defer`` on the reference tokenizer (issue 6).

Run with torchrun, one process per GPU (NCCL) or per CPU process (gloo)::

    torchrun --nproc_per_node 2 bench/ddp_check.py --device cuda --steps 400
    torchrun --nproc_per_node 2 bench/ddp_check.py --device cpu --steps 40 --small

It trains the reference VQ tokenizer on stacked digits under DistributedDataParallel with the quantizer
wrapped by ``shrinkscope.defer(switch="auto")`` and the model watched by ``shrinkscope.watch`` on every rank,
then checks and prints (rank 0, one JSON object):

1. no hang: the run finishes (wrap the command in ``timeout``);
2. the monitor's merged usage counts equal the sum of every rank's local counts;
3. after the switch every rank holds the identical codebook (max |difference| = 0);
4. the step-time overhead of the monitor: median step time with / without it, alternating blocks.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
from torch import nn

import shrinkscope
from shrinkscope.defer import defer
from shrinkscope.reference.data import load_dataset
from shrinkscope.reference.tokenizer import VQTokenizer
from shrinkscope.reference.train import tokenizer_config_for
from shrinkscope.watch import watch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # timing only: the monitor itself never syncs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--num-codes", type=int, default=512)
    p.add_argument("--every", type=int, default=100, help="monitor report period")
    p.add_argument("--timing-blocks", type=int, default=6)
    p.add_argument("--timing-steps", type=int, default=25)
    p.add_argument("--small", action="store_true", help="tiny sizes for a CPU smoke run")
    p.add_argument("--out", default=None, help="directory for the JSONL log and the summary")
    a = p.parse_args()

    backend = "nccl" if a.device == "cuda" else "gloo"
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    if a.device == "cuda":
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}")
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(1)
    out = a.out or tempfile.mkdtemp(prefix="shrinkscope-ddp-")
    os.makedirs(out, exist_ok=True)

    torch.manual_seed(0)  # identical initial weights on every rank (DDP also broadcasts them)
    data = load_dataset("stacked-digits", seed=0)
    cfg = tokenizer_config_for(data, num_codes=a.num_codes)
    model = VQTokenizer(cfg).to(device)
    min_steps, max_steps = (10, 20) if a.small else (a.steps // 4, a.steps // 2)
    dq = defer(model.quantizer, switch="auto", check_every=5 if a.small else 25, min_steps=min_steps,
               max_steps=max_steps, reservoir_size=max(4 * a.num_codes, 2048), seed=0)
    model.quantizer = dq
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    monitor = watch(model, every=a.every, log_to=os.path.join(out, "watch.jsonl"), log_warnings=False)
    dq.monitor = monitor
    g = torch.Generator().manual_seed(1000 + rank)  # each rank draws its own batches

    def step() -> None:
        x = data.train[torch.randint(0, len(data.train), (a.batch_size,), generator=g)].to(device, non_blocking=True)
        o = ddp(x)
        loss = (o["recon"] - x).pow(2).mean() + o["commit_loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t0 = time.time()
    switched_at = None
    for s in range(a.steps):
        step()
        if switched_at is None and dq.switched:
            switched_at = s
    _sync(device)
    train_seconds = time.time() - t0

    # (2) merged counts == sum of local counts: a few more steps fill a fresh window, then read every rank's
    # local counts before the report merges them
    for _ in range(7):
        step()
    if monitor.disabled:
        raise RuntimeError(f"the monitor disabled {sorted(monitor.disabled)} after a hook error")
    name = monitor.names()[0]
    local = monitor._stream(name).window_counts().to(device)
    summed = local.clone()
    dist.all_reduce(summed)
    monitor.report()
    merged = monitor.last_report["window"][0].counts
    counts_equal = merged is not None and torch.equal(merged.to(torch.float64).cpu(), summed.double().cpu())

    # (3) identical codebooks on every rank
    cb = dq.wrapped.effective_codebook().contiguous()
    gathered = [torch.empty_like(cb) for _ in range(world)]
    dist.all_gather(gathered, cb)
    max_diff = max(float((gl - gathered[0]).abs().max()) for gl in gathered)

    # (4) overhead: alternate blocks without / with a monitor (no report inside the timed blocks)
    monitor.remove()
    times: dict[str, list[float]] = {"without": [], "with": []}
    for b in range(2 * a.timing_blocks):
        kind = "with" if b % 2 else "without"
        m = watch(model, every=0, log_warnings=False) if kind == "with" else None
        for _ in range(a.timing_steps):
            _sync(device)
            t = time.perf_counter()
            step()
            _sync(device)
            times[kind].append(time.perf_counter() - t)
        if m is not None:
            m.remove()
    med = {k: statistics.median(v[2:]) for k, v in times.items()}  # first steps of a block warm up

    summary = {
        "backend": backend, "world_size": world, "device": torch.cuda.get_device_name(device)
        if device.type == "cuda" else "cpu", "steps": a.steps, "train_seconds": round(train_seconds, 2),
        "switched_at_step": switched_at, "switch_reason": dq.switch_info.get("reason"),
        "kmeans_seconds": dq.switch_info.get("kmeans_seconds"),
        "merged_counts_equal_sum_over_ranks": bool(counts_equal), "merged_total": int(summed.sum()),
        "codebook_max_abs_diff_across_ranks": max_diff,
        "median_step_ms_without": round(med["without"] * 1e3, 3), "median_step_ms_with": round(med["with"] * 1e3, 3),
        "overhead_ratio": round(med["with"] / med["without"], 4), "shrinkscope": shrinkscope.__version__,
        "torch": torch.__version__,
    }
    ok = torch.tensor([int(counts_equal and max_diff == 0.0 and switched_at is not None)], device=device)
    dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    summary["all_checks_pass"] = bool(ok.item())
    if rank == 0:
        print(json.dumps(summary), flush=True)
        with open(os.path.join(out, "ddp_summary.json"), "w") as fh:
            json.dump(summary, fh, indent=2)
    dist.barrier()
    dist.destroy_process_group()
    return 0 if summary["all_checks_pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Per-step cost of the usage streams alone on the ids of a 2^18-code implicit codebook (64 x 256 ids a step).

Three streams get the same 16 steps of ids, in interleaved blocks (order alternating), each block ending with
every id counted: ``exact`` (``CodebookStream``, a 2^18-bin histogram), ``bits_cpu_default`` (``BitUsageStream``
as it runs on a CPU: ids counted as they come, in chunks of 2^14) and ``bits_gpu_policy`` (``BitUsageStream``
batching 2^17 ids before counting, as it does on a GPU). Prints medians over the blocks and the ratio of the
two bit policies. On a GPU the watch overhead is measured end to end by bench_implicit.py instead.

    python bench/bench_implicit_streams.py --blocks 31
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from shrinkscope.implicit import BitUsageStream
from shrinkscope.stream import CodebookStream


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="per-step cost of the implicit-codebook usage streams (CPU)")
    p.add_argument("--blocks", type=int, default=31)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    steps = [torch.randint(0, 2 ** 18, (64, 256), generator=g) for _ in range(16)]
    streams = {"exact": CodebookStream(2 ** 18, reservoir_size=0), "bits_cpu_default": BitUsageStream(2 ** 18),
               "bits_gpu_policy": BitUsageStream(2 ** 18)}
    streams["bits_gpu_policy"].batch_on_cpu = True
    times: dict[str, list[float]] = {k: [] for k in streams}
    for block in range(a.blocks):
        for name in (list(streams) if block % 2 == 0 else list(streams)[::-1]):
            s = streams[name]
            t0 = time.perf_counter()
            for ids in steps:
                s.update_indices(ids)
            if isinstance(s, BitUsageStream):
                s._flush()  # every id counted inside the timed block
            times[name].append((time.perf_counter() - t0) / len(steps) * 1e3)
    for name, v in times.items():
        print(f"{name:<17} median {statistics.median(v):.3f} ms/step (min {min(v):.3f}, max {max(v):.3f})")
    ratio = statistics.median(times["bits_gpu_policy"]) / statistics.median(times["bits_cpu_default"])
    print(f"gpu policy / cpu default: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

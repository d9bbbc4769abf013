"""Overhead of ``shrinkscope.watch`` on an implicit codebook of 2^18 codes (FSQ or LFQ): step ratio with / without.

The protocol of bench_watch.py (interleaved A/B trial blocks, device sync at both ends, reports off while
timing, report cost listed apart), on a conv autoencoder whose quantizer is vector-quantize-pytorch's
``FSQ(levels=[8] * 6)`` or ``LFQ(codebook_size=2**18)``. ``--path exact`` (default) counts every one of the
2^18 codes (a 2^18-bin histogram on the device); ``--path bits`` forces the per-bit and pairwise statistics used
above ``shrinkscope.implicit.EXACT_COUNT_LIMIT``, to time that path at the same size.

    python bench/bench_implicit.py --device cuda                      # batch 64, 16x16 tokens, 2^18 codes
    python bench/bench_implicit.py --device cuda --path bits
    python bench/bench_implicit.py --device cuda --path bits --flush-rows 1   # count every step (unbatched)
    python bench/bench_implicit.py --device cuda --quantizer lfq
    python bench/bench_implicit.py --batch 4 --image 16 --grid 4 --trials 6   # CPU smoke test

Target (issue #13): ratio <= 1.02 on an H200 at batch 64, 16x16 tokens, 2^18 codes.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys

import torch
import torch.nn.functional as F
from torch import nn

import shrinkscope
import shrinkscope.implicit
from shrinkscope.implicit import EXACT_COUNT_LIMIT, BitUsageStream

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_watch import _hook_cost, ab_medians, conv_codec, report_ms

BITS = 18
FLUSH_ROWS = BitUsageStream.flush_rows


class ConvFSQAE(nn.Module):
    """image (3, S, S) -> conv encoder -> (d, grid, grid) -> FSQ / LFQ (2^18 codes) -> conv decoder."""

    def __init__(self, image: int, grid: int, width: int, quantizer: str):
        super().__init__()
        from vector_quantize_pytorch import FSQ, LFQ

        if quantizer == "fsq":
            self.quantizer, dim = FSQ(levels=[8] * (BITS // 3)), BITS // 3
        else:
            self.quantizer, dim = LFQ(dim=BITS, codebook_size=2 ** BITS), BITS
        self.encoder, self.decoder = conv_codec(image, grid, width, dim)

    def forward(self, x):
        z = self.encoder(x)
        b, d, h, w = z.shape
        out = self.quantizer(z.permute(0, 2, 3, 1).reshape(b, h * w, d))
        q = out[0].reshape(b, h, w, d).permute(0, 3, 1, 2)
        loss = F.mse_loss(self.decoder(q), x)
        if len(out) > 2 and isinstance(out[2], torch.Tensor):
            loss = loss + out[2].sum()  # LFQ's auxiliary loss
        return loss


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="watch overhead on a 2^18-code implicit codebook")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--quantizer", default="fsq", choices=["fsq", "lfq"])
    p.add_argument("--path", default="exact", choices=["exact", "bits"],
                   help="exact per-code counts (default) or the bit statistics used above the exact limit")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--image", type=int, default=64)
    p.add_argument("--grid", type=int, default=16, help="token grid side (16: 16x16 tokens)")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--trials", type=int, default=31)
    p.add_argument("--steps", type=int, default=10, help="steps per trial block")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=1,
                   help="A/B measurements in this process; the ratio reported is their median")
    p.add_argument("--flush-rows", type=int, default=None,
                   help="bits path: ids kept before the bit counts are taken (default: BitUsageStream.flush_rows; "
                        "1 counts every step, as before batching)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    # set both every call, so several configurations can run in one process (main([...]) repeatedly)
    shrinkscope.implicit.EXACT_COUNT_LIMIT = 0 if args.path == "bits" else EXACT_COUNT_LIMIT
    BitUsageStream.flush_rows = args.flush_rows or FLUSH_ROWS
    torch.manual_seed(0)
    plain = ConvFSQAE(args.image, args.grid, args.width, args.quantizer).to(device)
    watched = copy.deepcopy(plain)
    opts = {n: torch.optim.Adam(m.parameters(), lr=1e-4) for n, m in (("A", plain), ("B", watched))}
    monitor = shrinkscope.watch(watched, every=0, log_warnings=False)
    g = torch.Generator(device=device).manual_seed(0)
    batches = [torch.rand(args.batch, 3, args.image, args.image, device=device, generator=g)
               for _ in range(args.steps)]
    models = {"A": plain, "B": watched}
    runs = [ab_medians(models, opts, batches, device, warmup=args.warmup, trials=args.trials)
            for _ in range(max(1, args.repeats))]
    ratios = [b / a for a, b in runs]
    med_a, med_b = runs[ratios.index(statistics.median_low(ratios))]
    hook_s = _hook_cost(monitor, watched, batches[0], device)
    rep_ms = report_ms(monitor, watched, opts["B"], batches[:1], device)
    stream = monitor.watched[0].streams[""]
    monitor.remove()
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "quantizer": args.quantizer, "codes": 2 ** BITS, "path": args.path, "stream": type(stream).__name__,
        "flush_rows": BitUsageStream.flush_rows if args.path == "bits" else None,
        "batch": args.batch, "tokens": args.grid * args.grid, "trials": args.trials, "steps_per_trial": args.steps,
        "step_ms_without": med_a * 1e3, "step_ms_with": med_b * 1e3, "ratio": med_b / med_a,
        "ratios": [round(r, 4) for r in ratios],
        "hook_ms": hook_s * 1e3, "report_ms": rep_ms,
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"shrinkscope.watch on {result['device']}: {args.quantizer.upper()} with 2^{BITS} codes "
          f"({result['stream']}), batch {args.batch}, {args.grid}x{args.grid} tokens")
    print(f"{args.trials} interleaved A/B trials x {args.steps} steps, {len(ratios)} repeat(s) (ratios "
          f"{result['ratios']}, median shown); automatic reports off while timing\n")
    for key in ("step_ms_without", "step_ms_with", "ratio", "hook_ms", "report_ms"):
        print(f"  {key:<16} {result[key]:>10.3f}")
    print(f"\ntarget ratio <= 1.02: {'met' if result['ratio'] <= 1.02 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

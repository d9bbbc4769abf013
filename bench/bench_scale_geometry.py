"""What measuring the shared codebook's geometry once saves on VAR's scales (ten scales, one 4096 x 32 codebook).

Two timings, each against a peer measured in the same run, interleaved:

- a ``watch`` report of the VAR look-alike (``tests/var_lookalike.py``) after one forward of a batch of
  images: geometry shared by the ten scales (what ``Monitor.report`` does) against geometry measured per scale
  (the monitor's per-report cache replaced by a fresh one per codebook);
- ``analyze`` of the look-alike's state dict (one row per scale from ``ema_vocab_hit_SV``), against the same
  plus nine more ``codebook_geometry`` calls (what measuring it per scale would add).

    python bench/bench_scale_geometry.py            # CPU, 1 thread
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

import shrinkscope
from shrinkscope.metrics import codebook_geometry
from shrinkscope.watch_report import Reporting

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
from var_lookalike import TinyVQVAE

PATCHES = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--cvae", type=int, default=32)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = TinyVQVAE(vocab=args.vocab, cvae=args.cvae, patch_nums=PATCHES)
    side = 2 * PATCHES[-1]
    x = torch.rand(args.batch, 3, side, side, generator=torch.Generator().manual_seed(0))
    mon = shrinkscope.watch(model, every=0, reservoir_size=4096, log_warnings=False)
    shared_geo = Reporting._geometry

    def per_scale(self, cb, shared):  # the peer: nothing shared between the scales
        return shared_geo(self, cb, {})

    t_shared, t_per_scale = [], []
    with torch.no_grad():
        for _ in range(args.reps):
            for out, patch in ((t_shared, shared_geo), (t_per_scale, per_scale)):
                model(x)
                Reporting._geometry = patch
                try:
                    out.append(_timed(mon.report))
                finally:
                    Reporting._geometry = shared_geo
    mon.remove()

    model.quantize.ema_vocab_hit_SV.copy_(torch.rand(len(PATCHES), args.vocab))
    sd = model.state_dict()
    cb = sd["quantize.embedding.weight"]
    t_analyze, t_geo = [], []
    for _ in range(args.reps):
        t_analyze.append(_timed(lambda: shrinkscope.analyze(sd)))
        t_geo.append(_timed(lambda: codebook_geometry(cb, max_points=4096)))
    res = {"threads": args.threads, "vocab": args.vocab, "cvae": args.cvae, "scales": len(PATCHES),
           "batch": args.batch, "reps": args.reps,
           "report_s_shared": statistics.median(t_shared), "report_s_per_scale": statistics.median(t_per_scale),
           "analyze_s": statistics.median(t_analyze), "geometry_s": statistics.median(t_geo)}
    res["report_ratio"] = res["report_s_per_scale"] / res["report_s_shared"]
    res["analyze_per_scale_s"] = res["analyze_s"] + (len(PATCHES) - 1) * res["geometry_s"]
    if args.json:
        print(json.dumps(res))
        return 0
    for k, v in res.items():
        print(f"  {k:<22} {v:10.3f}" if isinstance(v, float) else f"  {k:<22} {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

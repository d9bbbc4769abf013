"""Benchmark: ``shrinkscope analyze --out`` (the HTML report with every default plot) against its peers.

Writes one 512 x 64 codebook (``quantize.embedding.weight``, shrunk: 0.2x the scale of the latents) and
20,000 64-d latents, then times each command in a fresh process (wall seconds, median of ``--repeat`` runs,
the commands interleaved so that a change of machine load hits them all alike):

- ``analyze --json``: the analysis alone, no plots (the floor under every report);
- ``analyze --out``: the report as shipped (no UMAP by default);
- ``analyze --out --umap``: the same plus UMAP (what ``--out`` drew by default before, once numba's compile
  cache is warm; the first UMAP use ever also compiles for ~30 s);
- with ``--peer PATH`` (a checkout of an older shrinkscope, e.g. ``git archive OLD | tar -x -C /tmp/old``):
  that checkout's ``analyze --json``, ``analyze --out`` and ``analyze --out --no-umap`` on the same files.

The cost of the report itself is a row's time minus the ``--json`` row of the same checkout: the analysis
may differ between versions, the report is what this benchmark is about.

Run::

    python bench/bench_report.py                       # 5 repeats
    python bench/bench_report.py --peer /tmp/old --repeat 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build(folder: str, seed: int = 0) -> tuple[str, str]:
    import numpy as np
    import torch

    g = torch.Generator().manual_seed(seed)
    z = torch.randn(20_000, 64, generator=g) * torch.linspace(2.0, 0.1, 64)
    cb = 0.2 * z[torch.randperm(20_000, generator=g)[:512]]
    ckpt, lat = os.path.join(folder, "ckpt.pt"), os.path.join(folder, "z.npy")
    torch.save({"quantize.embedding.weight": cb}, ckpt)
    np.save(lat, z.numpy())
    return ckpt, lat


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    run = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if run.returncode != 0:
        raise SystemExit(f"failed ({run.returncode}): {' '.join(cmd)}\n{run.stderr[-800:]}")
    return wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5, help="runs per command (median reported)")
    ap.add_argument(
        "--peer", metavar="PATH", help="checkout of another shrinkscope version to time alongside"
    )
    ap.add_argument("--no-umap-run", action="store_true", help="skip the --umap command (it is the slow one)")
    args = ap.parse_args()
    env = dict(os.environ, MPLBACKEND="Agg")
    with tempfile.TemporaryDirectory(prefix="shrinkscope-bench-report-") as tmp:
        ckpt, lat = build(tmp)
        out = os.path.join(tmp, "out")
        base = [sys.executable, "-m", "shrinkscope.cli", "analyze", ckpt, "--latents", lat]
        here = dict(env, PYTHONPATH=ROOT)
        cmds = {
            "analyze --json (no report)": (base + ["--json"], here),
            "analyze --out (this checkout, default)": (base + ["--out", out], here),
        }
        if not args.no_umap_run:
            cmds["analyze --out --umap (this checkout)"] = (base + ["--out", out, "--umap"], here)
        if args.peer:
            peer = dict(env, PYTHONPATH=os.path.abspath(args.peer))
            cmds["peer: analyze --json (no report)"] = (base + ["--json"], peer)
            cmds["peer: analyze --out (its default)"] = (base + ["--out", out], peer)
            cmds["peer: analyze --out --no-umap"] = (base + ["--out", out, "--no-umap"], peer)
        for cmd, e in cmds.values():  # one untimed run each: page cache, numba's compile cache
            timed(cmd, e)
        walls: dict[str, list[float]] = {name: [] for name in cmds}
        for _ in range(args.repeat):
            for name, (cmd, e) in cmds.items():
                walls[name].append(timed(cmd, e))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{os.cpu_count()} CPUs, load average {load:.1f}; median of {args.repeat} runs each\n")
    floors = {"": statistics.median(walls["analyze --json (no report)"])}
    if args.peer:
        floors["peer: "] = statistics.median(walls["peer: analyze --json (no report)"])
    print(f"{'command':44s} {'median s':>9s} {'min s':>7s} {'max s':>7s} {'report s':>9s}")
    for name, w in walls.items():
        m = statistics.median(w)
        floor = floors["peer: " if name.startswith("peer: ") else ""]
        print(f"{name:44s} {m:9.2f} {min(w):7.2f} {max(w):7.2f} {m - floor:9.2f}")
    print("\nreport s: median minus the median of the same checkout's analyze --json")
    return 0


if __name__ == "__main__":
    sys.exit(main())

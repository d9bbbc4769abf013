"""Benchmark: ``shrinkscope analyze --json`` on a large checkpoint vs loading the whole file.

Writes a checkpoint of ``--size-gb`` (default 2 GB) holding one 16384 x 256 codebook
(``quantize.embedding.weight``) among filler decoder weights, as ``.pt`` and ``.safetensors``. Each command
runs in a fresh process under ``/usr/bin/time -f "%e %M"`` (wall seconds, peak RSS of that process alone;
the files are written by another subprocess so the benchmark's own memory never leaks into the figures).
Peers, measured in the same run on the same warm page cache:

- ``torch.load(path)`` (the PyTorch default, weights_only=True) of the ``.pt`` file;
- ``safetensors.torch.load_file(path)`` of the ``.safetensors`` file (lazy: it maps the file, so its RSS
  stays small), and the same followed by reading every tensor (``t.sum()``), i.e. loading the whole file;
- ``import torch`` alone (interpreter + torch start-up, included in every other number).

Run (about a minute plus disk writes; needs 2x the size on disk and ~size of free RAM while writing)::

    nice -n 10 python bench/bench_analyze.py                 # 2 GB
    nice -n 10 python bench/bench_analyze.py --size-gb 0.5   # quicker
    nice -n 10 python bench/bench_analyze.py --threads 1     # on a small, shared machine (see docs)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time


def build(path_pt: str, path_st: str, size_gb: float, seed: int = 0) -> int:
    """Write both files; returns the .pt size in bytes."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    sd = {"quantize.embedding.weight": torch.randn(16384, 256, generator=g)}
    filler = 4096 * 4096 * 4  # 64 MiB per filler tensor
    for i in range(max(0, int(size_gb * 2**30 - 16384 * 256 * 4) // filler)):
        sd[f"decoder.blocks.{i}.weight"] = torch.randn(4096, 4096, generator=g)
    torch.save(sd, path_pt)
    save_file(sd, path_st)
    del sd
    return os.path.getsize(path_pt)


def measure(cmd: list[str]) -> tuple[float, int, int]:
    """(wall seconds, peak RSS bytes, exit status) of one fresh process, from /usr/bin/time."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as out:
        proc = subprocess.run(
            ["/usr/bin/time", "-o", out.name, "-f", "%e %M", *cmd], stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True
        )
        wall, rss_kib = out.read().split()[-2:]
    if proc.returncode != 0:
        print(f"  command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-500:]}", file=sys.stderr)
    return float(wall), int(rss_kib) * 1024, proc.returncode


def best_of(cmd: list[str], repeat: int) -> tuple[float, int]:
    runs = [measure(cmd) for _ in range(repeat)]
    return min(r[0] for r in runs), max(r[1] for r in runs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gb", type=float, default=2.0, help="checkpoint size in GiB (default 2)")
    ap.add_argument("--dir", default=None, help="where to write the files (default: a temp folder)")
    ap.add_argument("--repeat", type=int, default=2, help="runs per command; best wall time, worst RSS")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoint files")
    ap.add_argument(
        "--threads", type=int, default=None,
        help="OMP/MKL threads of every measured process (default: leave the environment as is)"
    )
    ap.add_argument(
        "--build", nargs=2, metavar=("PT", "ST"), help=argparse.SUPPRESS
    )  # internal: writer process
    args = ap.parse_args()
    if args.build:
        print(build(*args.build, args.size_gb))
        return 0

    if args.threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.threads)  # inherited by every measured child
    folder = args.dir or tempfile.mkdtemp(prefix="shrinkscope-bench-")
    os.makedirs(folder, exist_ok=True)
    pt, st = os.path.join(folder, "big.pt"), os.path.join(folder, "big.safetensors")
    py = sys.executable
    try:
        t0 = time.perf_counter()
        subprocess.run(
            [py, __file__, "--size-gb", str(args.size_gb), "--build", pt, st], check=True,
            stdout=subprocess.DEVNULL
        )
        size = os.path.getsize(pt)
        print(f"wrote {size / 2**30:.2f} GiB .pt and {os.path.getsize(st) / 2**30:.2f} GiB .safetensors "
              f"in {time.perf_counter() - t0:.0f} s (one 16384x256 codebook)")
        cmds = {
            "python -c 'import torch'": [py, "-c", "import torch"],
            "torch.load(.pt)": [
                py, "-c", "import sys, torch; torch.load(sys.argv[1], map_location='cpu')", pt
            ],
            "shrinkscope analyze .pt --json": [py, "-m", "shrinkscope.cli", "analyze", pt, "--json"],
            "safetensors load_file": [
                py, "-c", "import sys; from safetensors.torch import load_file; load_file(sys.argv[1])", st
            ],
            "safetensors load_file + read all": [
                py,
                "-c",
                "import sys; from safetensors.torch import load_file; "
                "[t.sum() for t in load_file(sys.argv[1]).values()]",
                st,
            ],
            "shrinkscope analyze .safetensors --json": [py, "-m", "shrinkscope.cli", "analyze", st, "--json"],
        }
        measure(cmds["torch.load(.pt)"])  # warm the page cache for both files the same way
        measure(cmds["safetensors load_file"])
        res = {name: best_of(cmd, args.repeat) for name, cmd in cmds.items()}
        print(f"\n{'command':42s} {'wall s':>7s} {'peak RSS MiB':>13s} {'RSS / file':>10s}")
        for name, (wall, rss) in res.items():
            print(f"{name:42s} {wall:7.2f} {rss / 2**20:13.0f} {rss / size:10.3f}")
        for fmt, peer in (
            (".pt", "torch.load(.pt)"), (".safetensors", "safetensors load_file"),
            (".safetensors", "safetensors load_file + read all")
        ):
            a, p = res[f"shrinkscope analyze {fmt} --json"], res[peer]
            print(f"\n{fmt}: analyze / {peer}: wall x{a[0] / p[0]:.2f}, peak RSS x{a[1] / p[1]:.3f}; "
                  f"analyze peak RSS = {a[1] / size:.3f} of the file size (target < 0.25)")
    finally:
        if not args.keep:
            for f in (pt, st):
                if os.path.exists(f):
                    os.remove(f)
            if not args.dir:
                os.rmdir(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: what ``shrinkscope analyze --out`` spends on the report, against the old report code.

Input: one 512 x 64 codebook (``quantize.embedding.weight``, shrunk: 0.2x the scale of the latents) and
20,000 64-d latents. Two measurements, both printing medians over ``--repeat`` runs, with the contenders
interleaved run by run so that a change of machine load hits them alike, in wall and CPU seconds (CPU time
moves far less than wall time when other jobs share the cores):

1. **The report alone, in one process**, on one ``AnalysisResult``: ``write_analysis_report`` of this
   checkout against the one of an older checkout (``--old PATH``; its ``shrinkscope/report`` package is
   loaded under another name, on top of this checkout's metrics), with its default (UMAP whenever umap-learn
   is importable) and with ``umap=False``. Each contender runs once untimed first: imports, numba's compile
   cache. The first UMAP use on a machine also compiles for ~30 s; that is not in these numbers.
2. **The command end to end**, each run a fresh process: ``analyze --json`` (the analysis alone, the floor)
   and ``analyze --out`` of this checkout (and ``--umap`` with ``--with-umap``).

Run::

    git archive <old commit> | tar -x -C /tmp/old          # the old report code
    python bench/bench_report.py --old /tmp/old --repeat 5
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


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


def load_old_report(path: str) -> Any:
    """The old ``shrinkscope/report`` package as ``shrinkscope.old_report`` (its ``..metrics`` imports then
    resolve to this checkout's metrics)."""
    folder = os.path.join(os.path.abspath(path), "shrinkscope", "report")
    spec = importlib.util.spec_from_file_location(
        "shrinkscope.old_report", os.path.join(folder, "__init__.py"), submodule_search_locations=[folder]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["shrinkscope.old_report"] = module
    spec.loader.exec_module(module)
    return module


def in_process(fn: Callable[[], Any]) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def fresh_process(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    w = time.perf_counter()
    run = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - w
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if run.returncode != 0:
        raise SystemExit(f"failed ({run.returncode}): {' '.join(cmd)}\n{run.stderr[-800:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def table(title: str, runs: dict[str, list[tuple[float, float]]]) -> None:
    print(f"\n{title}\n{'':46s} {'wall s':>8s} {'(min-max)':>13s} {'CPU s':>7s}")
    for name, rs in runs.items():
        walls = [r[0] for r in rs]
        print(f"{name:46s} {statistics.median(walls):8.2f} ({min(walls):5.2f}-{max(walls):5.2f}) "
              f"{statistics.median(r[1] for r in rs):7.2f}")


def interleaved(contenders: dict[str, Callable[[], tuple[float, float]]], repeat: int) -> dict:
    for fn in contenders.values():  # untimed first run of each
        fn()
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in contenders}
    for _ in range(repeat):
        for name, fn in contenders.items():
            runs[name].append(fn())
    return runs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5, help="runs per contender (median reported)")
    ap.add_argument("--old", metavar="PATH", help="checkout whose shrinkscope/report to time alongside")
    ap.add_argument("--with-umap", action="store_true", help="also time --umap end to end (slow)")
    args = ap.parse_args()
    os.environ["MPLBACKEND"] = "Agg"
    from shrinkscope.analyze import analyze
    from shrinkscope.report import write_analysis_report

    with tempfile.TemporaryDirectory(prefix="shrinkscope-bench-report-") as tmp:
        ckpt, lat = build(tmp)
        out = os.path.join(tmp, "out")
        result = analyze(ckpt, latents=lat, progress=False)
        report = {"report, this checkout (default: no UMAP)": lambda: in_process(
            lambda: write_analysis_report(result, out, progress=False))}
        if args.old:
            old = load_old_report(args.old)
            report["report, old code, its default (UMAP)"] = lambda: in_process(
                lambda: old.write_analysis_report(result, out))
            report["report, old code, umap=False"] = lambda: in_process(
                lambda: old.write_analysis_report(result, out, umap=False))
        report_runs = interleaved(report, args.repeat)

        env = dict(os.environ, PYTHONPATH=ROOT)
        base = [sys.executable, "-m", "shrinkscope.cli", "analyze", ckpt, "--latents", lat]
        cli = {"analyze --json (the analysis alone)": lambda: fresh_process(base + ["--json"], env),
               "analyze --out (default plots)": lambda: fresh_process(base + ["--out", out, "--force"], env)}
        if args.with_umap:
            cli["analyze --out --umap"] = lambda: fresh_process(base + ["--out", out, "--force", "--umap"], env)
        cli_runs = interleaved(cli, args.repeat)
    load = os.getloadavg()[0]
    print(f"{os.cpu_count()} CPUs, load average {load:.1f} at the end; medians of {args.repeat} runs")
    table("1. write_analysis_report on one AnalysisResult (in process)", report_runs)
    table("2. the command, fresh process each run", cli_runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``shrinkscope demo``: the standard early recipe vs deferred quantization and the common fixes, on bundled data.

Four arms share the data, model, seed and step budget: ``early`` (the standard recipe: Euclidean codes,
k-means on the untrained encoder, quantized from step 0), ``deferred`` (continuous first), ``l2``
(l2-normalised codes) and ``expiry`` (dead-code expiry). Each arm runs with the settings its own validation
grid chose (``arms.TUNED``; docs/results.md "Tuning"). Codes have dimension 64, room for the dimensional
collapse that Paper B reports. Each arm trains a tokenizer (watched by ``shrinkscope.watch``, JSONL timeline
in ``DIR/<arm>.jsonl``), then a prior on its tokens; both are evaluated on held-out data and saved as
``DIR/<arm>.pt`` (ready for ``shrinkscope analyze`` / ``compare``). An optional arm, "deferred-auto"
(``--auto-arm``, on by default with the cuda preset), wraps the quantizer in
``shrinkscope.defer(..., switch="auto")``.

The table (``demo_table``) isolates the codebook first: each arm's verdict, what decides it, and its codebook
against its own latents and against the k-means codebook of the same size on those latents; then
reconstruction, the diversity of prior samples, and last the absolute geometry. ``--quick`` is a smoke run of
the pipeline: it says so and names no winner. ``--seeds 0,1,2`` runs several seeds side by side
(``DIR/seed-N/`` each) and writes their mean +- std table to ``DIR/seeds.md``.

The output folder is built aside and moved into place when the run is complete (``shrinkscope.output``); a
non-empty folder is refused without ``--force``. Outputs: a table on stdout, ``DIR/report.html``
(self-contained), ``DIR/results.json`` (with the CPU and wall seconds of every phase), checkpoints.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from .arms import ARM_NAMES, TUNED, ArmSettings
from .data import DATASETS, load_dataset
from .demo_arm import BETA, PRESETS, DemoPreset, auto_switch_options, run_arm
from .demo_table import ROWS, comparison_rows, format_table, seed_table, verdict_lines
from .phases import PhaseClock, work_units
from .train import TrainConfig, tokenizer_config_for
from .workers import cores, run_jobs

__all__ = ["BETA", "PRESETS", "ROWS", "DemoPreset", "add_arguments", "auto_switch_options", "comparison_rows",
           "format_table", "main", "run_arm", "seed_table"]


QUICK_BANNER = ("SMOKE RUN (--quick): far too short to compare the arms; this checks that the pipeline runs "
                "and draws no conclusion. Run without --quick for the comparison.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``shrinkscope demo`` (contract 4)."""
    parser.add_argument("--out", default="shrinkscope-demo", help="output folder (default: shrinkscope-demo); "
                        "built aside and moved into place when complete")
    parser.add_argument("--force", action="store_true", help="write into a non-empty --out folder, replacing "
                        "the files this run writes")
    parser.add_argument("--quick", action="store_true", help="tiny run (about a minute on CPU), used by the tests")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="cuda also picks the larger GPU preset unless --preset says otherwise")
    parser.add_argument("--preset", default=None, choices=tuple(PRESETS),
                        help="sizes of the run (default: quick with --quick, cuda with --device cuda, else "
                             "default); e.g. --preset default --device cuda runs the CPU table's preset on a GPU")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", default=None, metavar="S1,S2,...",
                        help="several seeds side by side: DIR/seed-N/ each and their mean +- std table in "
                             "DIR/seeds.md (replaces --seed)")
    parser.add_argument("--dataset", default="stacked-digits", choices=DATASETS)
    parser.add_argument("--data", default=None, metavar="PATH", help="your own data: folder of images or .npy")
    parser.add_argument("--steps", type=int, default=None, help="tokenizer steps per arm (preset default)")
    parser.add_argument("--prior-steps", type=int, default=None)
    parser.add_argument("--num-codes", type=int, default=None)
    parser.add_argument("--samples", type=int, default=None, help="prior samples per arm for diversity")
    parser.add_argument("--arms", default=",".join(ARM_NAMES),
                        help=f"comma-separated arms to run (default: {','.join(ARM_NAMES)})")
    parser.add_argument("--defer-fraction", type=float, default=None,
                        help="share of the budget trained continuously by the deferred arm "
                             f"(default: its tuned {TUNED['deferred'].fraction})")
    parser.add_argument("--auto-arm", dest="auto_arm", action="store_true", default=None,
                        help="add an arm, shrinkscope.defer(switch='auto') (default: on with the cuda preset, "
                             "off otherwise, where it would add a quarter to the run time)")
    parser.add_argument("--no-auto-arm", dest="auto_arm", action="store_false")
    parser.add_argument("--no-l2-normalize", dest="l2_normalize", action="store_false", default=True,
                        help="ignored since 0.2: each arm fixes its own normalisation (the l2 arm is the "
                             "normalised one); kept so old command lines still run")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=True)
    parser.add_argument("--workers", type=int, default=None,
                        help="arms trained side by side in separate processes (default: 2 on cpu, where "
                             "each arm uses one core; 1 on cuda)")


def _preset_name(args: argparse.Namespace) -> str:
    if args.preset:
        return args.preset
    return "quick" if args.quick else ("cuda" if args.device == "cuda" else "default")


def _preset(args: argparse.Namespace) -> DemoPreset:
    over = {k: v for k, v in (("steps", args.steps), ("prior_steps", args.prior_steps),
                             ("num_codes", args.num_codes), ("num_samples", args.samples)) if v is not None}
    return replace(PRESETS[_preset_name(args)], **over)


def main(args: argparse.Namespace) -> int:
    """Run the demo; returns the exit status (0 ok, 2 bad input)."""
    threads = torch.get_num_threads()
    if args.device == "cpu":
        # the models are tiny, so extra threads buy little, while oversubscription on a busy machine costs a
        # lot: on a shared 2-core box we measured ~1 tokenizer step/s with 2 threads vs ~24 with 1
        torch.set_num_threads(1)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)  # callers (tests, notebooks) get their setting back


def _fail(msg: str) -> int:
    print(f"shrinkscope demo: {msg}", file=sys.stderr)
    return 2


def _parse_seeds(args: argparse.Namespace) -> list[int] | None:
    if args.seeds is None:
        return [args.seed]
    try:
        seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    except ValueError:
        return None
    return seeds if seeds and len(set(seeds)) == len(seeds) else None


def _run(args: argparse.Namespace) -> int:
    from ..output import OutputError, check_out, write_atomically

    if args.device == "cuda" and not torch.cuda.is_available():
        return _fail("--device cuda requested but CUDA is not available")
    if args.defer_fraction is not None and not 0 < args.defer_fraction < 1:
        return _fail(f"--defer-fraction must lie in (0, 1), got {args.defer_fraction}")
    arm_names = [a.strip() for a in str(args.arms).split(",") if a.strip()]
    unknown = [a for a in arm_names if a not in ARM_NAMES]
    if unknown or not arm_names or len(set(arm_names)) != len(arm_names):
        return _fail(f"--arms {args.arms!r}: expected distinct names from {','.join(ARM_NAMES)}")
    seeds = _parse_seeds(args)
    if seeds is None:
        return _fail(f"--seeds {args.seeds!r}: expected distinct integers separated by commas, e.g. 0,1,2")
    if args.workers is not None and args.workers < 1:
        return _fail(f"--workers must be at least 1, got {args.workers}")
    try:
        check_out(args.out, force=args.force, nonempty=True)  # before any work; checked again at the move
    except OutputError as e:
        return _fail(str(e))
    preset = _preset(args)
    try:
        datas = {s: load_dataset("path" if args.data else args.dataset, seed=s, path=args.data,
                                 n_train=None if args.data else preset.n_train,
                                 n_test=None if args.data else preset.n_test) for s in seeds}
        from .tokenizer import VQTokenizer  # fail fast on data the tokenizer cannot take

        VQTokenizer(tokenizer_config_for(datas[seeds[0]], num_codes=preset.num_codes, code_dim=preset.code_dim))
    except (ValueError, OSError) as e:
        return _fail(str(e))
    quick = args.quick or _preset_name(args) == "quick"
    if quick:
        print(QUICK_BANNER)
    try:
        path = write_atomically(lambda tmp: _build(Path(tmp), args, preset, seeds, datas, arm_names, quick),
                                args.out, force=args.force, nonempty=True)
    except OutputError as e:
        return _fail(str(e))
    if quick:
        print(QUICK_BANNER)
    print(f"wrote {path}")
    return 0


def _arms(args: argparse.Namespace, arm_names: list[str]) -> list[tuple[str, ArmSettings, bool]]:
    settings = {a: TUNED[a] for a in arm_names}
    if "deferred" in settings and args.defer_fraction is not None:
        settings["deferred"] = replace(settings["deferred"], fraction=args.defer_fraction)
    arms = [(a, settings[a], False) for a in arm_names]
    auto_arm = _preset_name(args) == "cuda" if args.auto_arm is None else args.auto_arm
    if auto_arm:
        arms.append(("deferred-auto", replace(TUNED["deferred"], fraction=0.0), True))
    return arms


def _build(out: Path, args: argparse.Namespace, preset: DemoPreset, seeds: list[int], datas: dict,
           arm_names: list[str], quick: bool) -> str:
    """Run every (seed, arm) job and write the folder ``out``; returns the path to report (the main file)."""
    t0, clock = time.perf_counter(), PhaseClock()
    ru0 = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    classifier = None
    with clock.phase("classifier"):
        if all(d.name == "stacked-digits" for d in datas.values()):
            from .classifier import load_classifier

            classifier = load_classifier()
    arms = _arms(args, arm_names)
    folders = {s: out / f"seed-{s}" if len(seeds) > 1 else out for s in seeds}
    jobs, n_gpu = [], torch.cuda.device_count() if args.device == "cuda" else 0
    for s in seeds:
        folders[s].mkdir(parents=True, exist_ok=True)
        for name, st, auto in arms:
            device = f"cuda:{len(jobs) % n_gpu}" if n_gpu > 1 else args.device
            cfg = TrainConfig(steps=preset.steps, batch_size=preset.batch_size, prior_steps=preset.prior_steps,
                              prior_batch_size=preset.batch_size, seed=s, device=device,
                              watch_every=preset.watch_every)
            jobs.append({"name": name, "settings": st, "data": datas[s], "preset": preset, "cfg": cfg,
                         "out": folders[s], "classifier": classifier, "auto": auto,
                         "progress_label": name if len(seeds) == 1 else f"{name}/s{s}"})
    workers = args.workers or (min(2, cores()) if args.device == "cpu" else 1)
    # on CPU one core per arm (see main); on a GPU the workers share the cores
    results = run_jobs(run_arm, jobs, workers=workers, threads=1 if args.device == "cpu" else max(1, cores() // workers),
                       total=len(jobs) * work_units(preset.steps, preset.prior_steps, num_samples=preset.num_samples),
                       progress=args.progress)
    for s in seeds:
        mine = [r for r, j in zip(results, jobs) if j["cfg"].seed == s]
        with clock.phase("report"):
            _write_seed(folders[s], mine, args, preset, s, datas[s], classifier, quick)
    ru1 = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu = sum((b.ru_utime - a.ru_utime) + (b.ru_stime - a.ru_stime) for a, b in zip(ru0, ru1))
    timing = {"wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(cpu, 1), "main": clock.as_dict()}
    if len(seeds) == 1:
        _add_timing(out / "results.json", timing)
        return str(out / "report.html")
    table = seed_table([folders[s] for s in seeds])
    head = (f"Demo, preset {_preset_name(args)} on {args.device}, seeds {', '.join(map(str, seeds))}: mean ± "
            f"sample std over the seeds; 'best (runs)' counts the runs in which each arm was best.\n\n")
    (out / "seeds.md").write_text(head + table + "\n")
    (out / "seeds.json").write_text(json.dumps({"seeds": seeds, "device": args.device, "timing": timing,
                                                "folders": [f"seed-{s}" for s in seeds]}, indent=1))
    print(f"\nmean ± std over seeds {', '.join(map(str, seeds))} (also in seeds.md):\n{table}")
    return str(out / "seeds.md")


def _add_timing(path: Path, timing: dict) -> None:
    blob = json.loads(path.read_text())
    blob["meta"]["timing"] = timing
    path.write_text(json.dumps(blob, indent=1))


def _write_seed(out: Path, results: list[dict], args: argparse.Namespace, preset: DemoPreset, seed: int, data,
                classifier, quick: bool) -> None:
    """Print one seed's table and write its ``results.json`` and ``report.html``."""
    rows = comparison_rows(results, rank=not quick)
    names = [r["arm"] for r in results]
    starts = ", ".join(f"{r['arm']} {r['quantize_start']}" for r in results)
    print(f"shrinkscope demo: {data.name}, K={preset.num_codes}, D={preset.code_dim}, {preset.steps} tokenizer "
          f"steps per arm (quantization starts at: {starts}), seed {seed}, {args.device}")
    print(format_table(rows, names, better=not quick))
    print("verdicts (what decides them):\n" + "\n".join(verdict_lines(results)))
    meta = {"dataset": data.name, "preset_name": _preset_name(args), "preset": asdict(preset), "beta": BETA,
            "seed": seed, "device": args.device, "quick": bool(quick),
            "classifier_accuracy": getattr(classifier, "held_out_accuracy", None),
            "auto_arm": any(r["arm"] == "deferred-auto" for r in results)}
    public = [{k: v for k, v in r.items() if not k.startswith("_")} for r in results]
    (out / "results.json").write_text(json.dumps({"meta": meta, "arms": public, "table": rows}, indent=1))
    from .report_html import write_report

    write_report(out / "report.html", results, rows, meta, data)


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="shrinkscope demo", description=__doc__.splitlines()[0])
    add_arguments(p)
    raise SystemExit(main(p.parse_args()))

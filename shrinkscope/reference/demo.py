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
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from .arms import ARM_NAMES, TUNED, ArmSettings
from .data import DATASETS, load_dataset
from .demo_table import ROWS, comparison_rows, format_table, seed_table, verdict_lines
from .phases import COST, PhaseClock, Progress, apply, evaluation_units, work_units
from .prior import PriorConfig
from .train import TrainConfig, save_checkpoint, tokenizer_config_for, train_prior, train_tokenizer

__all__ = ["PRESETS", "ROWS", "DemoPreset", "add_arguments", "comparison_rows", "format_table", "main", "run_arm",
           "seed_table"]


@dataclass
class DemoPreset:
    """Sizes of one demo run (CPU default, ``--quick``, or the CUDA preset)."""

    n_train: int
    n_test: int
    steps: int
    prior_steps: int
    num_samples: int
    num_codes: int
    code_dim: int
    hidden: int
    n_embd: int
    batch_size: int
    watch_every: int


#: The default preset is the one the arms were tuned at (reproduce.TUNE); beta 0.25 is shared by every arm.
PRESETS = {
    "default": DemoPreset(n_train=20_000, n_test=2_000, steps=1000, prior_steps=500, num_samples=5_000,
                          num_codes=512, code_dim=64, hidden=64, n_embd=96, batch_size=128, watch_every=100),
    "quick": DemoPreset(n_train=2_000, n_test=400, steps=120, prior_steps=60, num_samples=400,
                        num_codes=64, code_dim=16, hidden=16, n_embd=32, batch_size=64, watch_every=40),
    "cuda": DemoPreset(n_train=50_000, n_test=5_000, steps=6000, prior_steps=4000, num_samples=10_000,
                       num_codes=1024, code_dim=64, hidden=128, n_embd=256, batch_size=256, watch_every=250),
}
BETA = 0.25
QUICK_BANNER = ("SMOKE RUN (--quick): far too short to compare the arms; this checks that the pipeline runs "
                "and draws no conclusion. Run without --quick for the comparison.")
#: the progress bar counts weighted work units (``phases.COST``), so it shows a percentage and the ETA only
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}{postfix}"


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


def run_arm(name: str, settings: ArmSettings, data, preset: DemoPreset, cfg: TrainConfig, out: Path, *,
            classifier=None, progress: Any = None, progress_label: str | None = None,
            auto: bool = False) -> dict[str, Any]:
    """Train, evaluate and save one arm; returns its results (``evaluate.evaluate_arm`` + timings).

    Args:
        name: the arm's name (file stem of its checkpoint and timeline).
        settings: the arm's hyperparameters (``arms.TUNED[...]``); ``cfg`` supplies the rest.
        out: folder of the arm's ``.jsonl`` timeline and ``.pt`` checkpoint.
        progress: where progress goes (``phases.Progress``'s sink: a queue, a callable, or None).
        progress_label: the arm's name in the progress bar (default ``name``).
        auto: defer with ``switch="auto"`` instead of ``settings.fraction``.

    Returns:
        ``evaluate_arm``'s dict plus ``arm``, ``settings``, ``quantize_start``, training histories and
        ``timing``: ``{phase: {"cpu_s", "wall_s"}}`` for tokenizer, prior, evaluate (and its parts), save.
    """
    from .evaluate import evaluate_arm

    clock, bar = PhaseClock(), Progress(progress, progress_label or name)
    t0 = time.perf_counter()
    cfg = replace(cfg, lr=settings.lr)
    tcfg = tokenizer_config_for(data, num_codes=preset.num_codes, code_dim=preset.code_dim, hidden=preset.hidden,
                                quantize_start=round(settings.fraction * preset.steps), beta=BETA,
                                decay=settings.decay, l2_normalize=settings.l2_normalize,
                                dead_code_threshold=settings.dead_code_threshold)
    auto_switch = auto_switch_options(preset.steps) if auto else None
    bar.phase("tokenizer")
    with clock.phase("tokenizer"):
        tok, hist = train_tokenizer(tcfg, data, cfg, log_to=out / f"{name}.jsonl", progress=False,
                                    auto_switch=auto_switch, on_step=lambda _: bar.advance(COST["tokenizer_step"]))
    bar.phase("prior")
    with clock.phase("prior"):
        tokens = tok.tokenize(data.train.to(cfg.device))
        h, w = tok.grid
        pcfg = PriorConfig(num_codes=tcfg.num_codes, seq_len=h * w, n_embd=preset.n_embd,
                           n_layer=2 if h * w > 1 else 1)
        prior, phist = train_prior(tokens, pcfg, cfg, progress=False, on_step=lambda _: bar.advance(COST["prior_step"]))
    bar.phase("evaluate")
    with clock.phase("evaluate"):
        res = evaluate_arm(tok, prior, data, num_samples=preset.num_samples, seed=cfg.seed, classifier=classifier,
                           clock=clock)
    res.pop("_health", None)  # the dict under "health" says it all; the object may hold GPU tensors
    bar.advance(evaluation_units(preset.num_samples))
    bar.phase("save")
    with clock.phase("save"):
        save_checkpoint(out / f"{name}.pt", tok, data, cfg, prior=prior,
                        extra={"arm": name, "quantize_start": tok.config.quantize_start})
        latents = tok.latents(data.test[:1000].to(cfg.device)).cpu()
    bar.advance(COST["save"])
    bar.phase("done")
    bar.flush()
    timing = clock.as_dict()
    res.update({"arm": name, "settings": asdict(settings), "quantize_start": tok.config.quantize_start,
                "train_history": hist, "prior_history": phist,
                "prior_final_loss": phist[-1]["loss"] if phist else None,
                "seconds": time.perf_counter() - t0, "tokenizer_seconds": timing["tokenizer"]["wall_s"],
                "timing": timing, "_latents": latents, "_codebook": tok.quantizer.effective_codebook().cpu()})
    return res


_QUEUE: Any = None


def _init_worker(queue: Any, threads: int) -> None:
    global _QUEUE
    _QUEUE = queue
    torch.set_num_threads(threads)  # one core per arm on CPU: see main()


def _run_arm_worker(job: dict) -> dict[str, Any]:
    return run_arm(**job, progress=_QUEUE)


def auto_switch_options(steps: int) -> dict:
    """``shrinkscope.defer`` options for the auto arm: check 40 times per budget, switch within 5-50% of it."""
    return {"check_every": max(5, steps // 40), "min_steps": max(1, steps // 20), "max_steps": max(2, steps // 2)}


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
    results = _run_jobs(jobs, args, preset)
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


def _run_jobs(jobs: list[dict], args: argparse.Namespace, preset: DemoPreset) -> list[dict[str, Any]]:
    """Run the jobs (in this process, or side by side in worker processes) under one progress bar."""
    from .._progress import progress_bar

    workers = args.workers or (min(2, os.cpu_count() or 1) if args.device == "cpu" else 1)
    total = len(jobs) * work_units(preset.steps, preset.prior_steps, num_samples=preset.num_samples)
    with progress_bar(total, desc="shrinkscope demo", unit="", enabled=None if args.progress else False,
                      bar_format=BAR_FORMAT) as bar:
        phases: dict[str, str] = {}
        if workers <= 1 or len(jobs) == 1:
            return [run_arm(**j, progress=lambda m: apply(bar, phases, m)) for j in jobs]
        # arms are independent and seeded on their own, so running them side by side gives the same table
        import multiprocessing as mp
        import queue as queue_mod
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        threads = 1 if args.device == "cpu" else max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx, initializer=_init_worker,
                                 initargs=(q, threads)) as ex:
            futs = [ex.submit(_run_arm_worker, j) for j in jobs]
            pending = set(futs)
            while pending:
                _, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
                while True:
                    try:
                        msg = q.get_nowait()
                    except queue_mod.Empty:
                        break
                    apply(bar, phases, msg)
            return [f.result() for f in futs]


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

"""``shrinkscope demo``: the standard early recipe vs deferred quantization and the common fixes, on bundled data.

Four arms share the data, model, seed and step budget: ``early`` (the standard recipe: Euclidean codes,
k-means on the untrained encoder, quantized from step 0), ``deferred`` (continuous first), ``l2``
(l2-normalised codes) and ``expiry`` (dead-code expiry). Each arm runs with the settings its own validation
grid chose (``arms.TUNED``; docs/results.md "Tuning"). Codes have dimension 64, room for the dimensional
collapse that Paper B reports. Each arm trains a tokenizer (watched by ``shrinkscope.watch``, JSONL timeline
in ``DIR/<arm>.jsonl``), then a prior on its tokens; both are evaluated on held-out data and saved as
``DIR/<arm>.pt`` (ready for ``shrinkscope analyze`` / ``compare``). An optional arm, "deferred-auto"
(``--auto-arm``, on by default with ``--device cuda``), wraps the quantizer in
``shrinkscope.defer(..., switch="auto")``.

The table isolates the codebook first: each arm's codebook against its own latents and against the k-means
codebook of the same size on those latents (the verdict), then reconstruction, then the diversity of prior
samples, and last the absolute geometry, which mixes encoder and codebook effects. ``--quick`` is a smoke run
of the pipeline: it says so and names no winner.

Outputs: a table on stdout, ``DIR/report.html`` (self-contained), ``DIR/results.json``, checkpoints.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from .arms import ARM_NAMES, TUNED, ArmSettings
from .data import DATASETS, load_dataset
from .prior import PriorConfig
from .train import TrainConfig, save_checkpoint, tokenizer_config_for, train_prior, train_tokenizer


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``shrinkscope demo`` (contract 4)."""
    parser.add_argument("--out", default="shrinkscope-demo", help="output folder (default: shrinkscope-demo)")
    parser.add_argument("--quick", action="store_true", help="tiny run (about a minute on CPU), used by the tests")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="cuda also picks the larger GPU preset")
    parser.add_argument("--seed", type=int, default=0)
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
                        help="add a third arm, shrinkscope.defer(switch='auto') (default: on with --device cuda, "
                             "off on CPU, where it would add half again to the run time)")
    parser.add_argument("--no-auto-arm", dest="auto_arm", action="store_false")
    parser.add_argument("--no-l2-normalize", dest="l2_normalize", action="store_false", default=True,
                        help="ignored since 0.2: each arm fixes its own normalisation (the l2 arm is the "
                             "normalised one); kept so old command lines still run")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=True)
    parser.add_argument("--workers", type=int, default=None,
                        help="arms trained side by side in separate processes (default: 2 on cpu, where "
                             "each arm uses one core; 1 on cuda)")


def _preset(args: argparse.Namespace) -> DemoPreset:
    p = PRESETS["quick" if args.quick else ("cuda" if args.device == "cuda" else "default")]
    over = {k: v for k, v in (("steps", args.steps), ("prior_steps", args.prior_steps),
                             ("num_codes", args.num_codes), ("num_samples", args.samples)) if v is not None}
    return replace(p, **over)


def run_arm(name: str, settings: ArmSettings, data, preset: DemoPreset, cfg: TrainConfig, out: Path, *,
            classifier=None, progress: bool = True, auto: bool = False, bar_position: int = 0) -> dict[str, Any]:
    """Train, evaluate and save one arm; returns its results (``evaluate.evaluate_arm`` + timings).

    Args:
        name: the arm's name (file stem of its checkpoint and timeline).
        settings: the arm's hyperparameters (``arms.TUNED[...]``); ``cfg`` supplies the rest.
        auto: defer with ``switch="auto"`` instead of ``settings.fraction``.
    """
    from .evaluate import evaluate_arm

    t0 = time.time()
    cfg = replace(cfg, lr=settings.lr)
    tcfg = tokenizer_config_for(data, num_codes=preset.num_codes, code_dim=preset.code_dim, hidden=preset.hidden,
                                quantize_start=round(settings.fraction * preset.steps), beta=BETA,
                                decay=settings.decay, l2_normalize=settings.l2_normalize,
                                dead_code_threshold=settings.dead_code_threshold)
    # the JSONL sink appends: a timeline left by an earlier run in the same folder would be drawn too
    (out / f"{name}.jsonl").unlink(missing_ok=True)
    auto_switch = auto_switch_options(preset.steps) if auto else None
    tok, hist = train_tokenizer(tcfg, data, cfg, log_to=out / f"{name}.jsonl", progress=progress, desc=name,
                                auto_switch=auto_switch, bar_position=bar_position)
    t_tok = time.time() - t0
    tokens = tok.tokenize(data.train.to(cfg.device))
    h, w = tok.grid
    pcfg = PriorConfig(num_codes=tcfg.num_codes, seq_len=h * w, n_embd=preset.n_embd,
                       n_layer=2 if h * w > 1 else 1)
    prior, phist = train_prior(tokens, pcfg, cfg, progress=progress, desc=f"{name} prior",
                               bar_position=bar_position)
    res = evaluate_arm(tok, prior, data, num_samples=preset.num_samples, seed=cfg.seed, classifier=classifier)
    save_checkpoint(out / f"{name}.pt", tok, data, cfg, prior=prior,
                    extra={"arm": name, "quantize_start": tok.config.quantize_start})
    res.update({"arm": name, "settings": asdict(settings), "quantize_start": tok.config.quantize_start,
                "train_history": hist, "prior_history": phist,
                "prior_final_loss": phist[-1]["loss"] if phist else None,
                "seconds": time.time() - t0, "tokenizer_seconds": t_tok,
                "_latents": tok.latents(data.test[:1000].to(cfg.device)).cpu(),
                "_codebook": tok.quantizer.effective_codebook().cpu()})
    return res


def _run_arm_worker(job: dict) -> dict[str, Any]:
    torch.set_num_threads(1)  # one core per arm: see main()
    return run_arm(**job)


def _m(key: str):
    return lambda r: r["health"]["metrics"].get(key)


def _d(key: str):
    return lambda r: (r["diversity"] or {}).get(key)


def _rank_share(r: dict) -> float | None:
    m = r["health"]["metrics"]
    if m.get("effective_rank") is None or not m.get("latent_effective_rank"):
        return None
    return m["effective_rank"] / m["latent_effective_rank"]


#: rows of the table: (section, label, getter, direction) with direction True = higher is better,
#: False = lower, None = closer to 1, "text" = not ranked. Rows whose values are all missing are left out,
#: so metric keys that a newer ``codebook_health`` adds appear without a change here.
ROWS = [
    ("codebook vs its own latents and k-means", "verdict", lambda r: (r["health"].get("verdict") or {}).get("status"),
     "text"),
    ("codebook vs its own latents and k-means", "spread_vs_kmeans", _m("spread_vs_kmeans"), True),
    ("codebook vs its own latents and k-means", "rank_vs_kmeans", _m("rank_vs_kmeans"), True),
    ("codebook vs its own latents and k-means", "coverage_vs_kmeans", _m("coverage_vs_kmeans"), True),
    ("codebook vs its own latents and k-means", "excess_distortion", _m("excess_distortion"), False),
    ("codebook vs its own latents and k-means", "spread_ratio", _m("spread_ratio"), None),
    ("codebook vs its own latents and k-means", "eff. rank / latents' eff. rank", _rank_share, True),
    ("codebook vs its own latents and k-means", "shrinkage warning",
     lambda r: "yes" if any(w["code"] == "shrinkage" for w in r["health"]["warnings"]) else "no", "text"),
    ("codebook vs its own latents and k-means", "dimensional_collapse warning",
     lambda r: "yes" if any(w["code"] == "dimensional_collapse" for w in r["health"]["warnings"]) else "no", "text"),
    ("codebook vs its own latents and k-means", "codes_used", _m("codes_used"), True),
    ("codebook vs its own latents and k-means", "dead_code_ratio", _m("dead_code_ratio"), False),
    ("codebook vs its own latents and k-means", "utilization", _m("utilization"), True),
    ("codebook vs its own latents and k-means", "token_mode_entropy", _m("token_mode_entropy"), True),
    ("codebook vs its own latents and k-means", "shrunk_mode_share", _m("shrunk_mode_share"), False),
    ("reconstruction", "held-out recon MSE", lambda r: r["recon_mse"], False),
    ("reconstruction", "quantization_error", _m("quantization_error"), False),
    ("generative diversity (prior samples)", "modes covered", _d("modes_covered"), True),
    ("generative diversity (prior samples)", "mode KL to data (nats)", _d("mode_kl"), False),
    ("generative diversity (prior samples)", "sample mode entropy (nats)", _d("mode_entropy"), True),
    ("generative diversity (prior samples)", "mean pairwise L2 of samples", _d("mean_pairwise_l2"), True),
    ("generative diversity (prior samples)", "precision", _d("precision"), True),
    ("generative diversity (prior samples)", "recall", _d("recall"), True),
    ("generative diversity (prior samples)", "density", _d("density"), True),
    ("generative diversity (prior samples)", "coverage", _d("coverage"), True),
    ("absolute geometry (mixes encoder and codebook)", "spread_cosine", _m("spread_cosine"), True),
    ("absolute geometry (mixes encoder and codebook)", "effective_dimension", _m("effective_dimension"), True),
    ("absolute geometry (mixes encoder and codebook)", "latent_effective_dimension",
     _m("latent_effective_dimension"), True),
    ("absolute geometry (mixes encoder and codebook)", "utilization_perplexity", _m("utilization_perplexity"), True),
]


def _winners(vals: list, hib) -> list[int]:
    """Indices of the best arms (several on a tie; none when a value is missing or the row is not ranked)."""
    if hib == "text":
        return []
    nums = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if len(nums) != len(vals) or len(vals) < 2:
        return []
    if hib is None:  # spread_ratio: closest to 1 wins
        keys = [-abs(math.log(max(v, 1e-12))) for v in vals]
    else:
        keys = [v if hib else -v for v in vals]
    best = max(keys)
    return [i for i, k in enumerate(keys) if k == best]


def comparison_rows(results: list[dict], *, rank: bool = True) -> list[dict]:
    """The table as dicts: ``section``, ``metric``, one value per arm, ``better`` (winning arm, arms joined by
    " = " on a partial tie, ``"tie"`` when all agree, ``""`` when a value is missing, the row is not ranked or
    ``rank=False``), ``direction``."""
    rows = []
    for section, label, get, hib in ROWS:
        vals = []
        for r in results:
            try:
                vals.append(get(r))
            except (KeyError, TypeError):
                vals.append(None)
        if all(v is None for v in vals):
            continue
        win = _winners(vals, hib) if rank else []
        if not win:
            better = ""
        elif len(win) == len(vals):
            better = "tie"
        else:  # a partial tie names every arm that shares the best value
            better = " = ".join(results[i]["arm"] for i in win)
        direction = {None: "closer to 1", True: "higher", False: "lower"}.get(hib, "") if hib != "text" else ""
        rows.append({"section": section, "metric": label, "values": vals, "better": better, "direction": direction})
    return rows


def format_table(rows: list[dict], arms: list[str], *, better: bool = True) -> str:
    """Plain-text table for the terminal, one block per section."""
    def fmt(v):
        if v is None:
            return "-"
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    head = ["metric", "good", *arms] + (["better"] if better else [])
    body = [[r["metric"], r["direction"], *[fmt(v) for v in r["values"]]] + ([r["better"]] if better else [])
            for r in rows]
    widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(head, widths))]
    section = None
    for r, row in zip(rows, body):
        if r.get("section") != section:
            section = r.get("section")
            lines.append(f"-- {section} " + "-" * max(0, sum(widths) + 2 * len(widths) - len(section) - 4))
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
    return "\n".join(lines)


def seed_table(folders: list[str]) -> str:
    """Markdown table of several demo runs (one ``results.json`` per folder): mean ± std per arm, and in how
    many runs each arm was best (text rows: the values per run)."""
    runs = [json.loads((Path(f) / "results.json").read_text()) for f in folders]
    arms = [a["arm"] for a in runs[0]["arms"]]
    lines = ["| section | metric | good | " + " | ".join(arms) + " | best (runs) |",
             "|---|---|---|" + "---|" * len(arms) + "---|"]
    for i, row in enumerate(runs[0]["table"]):
        per = [r["table"][i] for r in runs if i < len(r["table"]) and r["table"][i]["metric"] == row["metric"]]
        cells = []
        for j in range(len(arms)):
            vals = [p["values"][j] for p in per]
            if any(isinstance(v, str) or v is None for v in vals):
                cells.append(" / ".join("-" if v is None else str(v) for v in vals))
                continue
            m = sum(vals) / len(vals)
            sd = (sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5 if len(vals) > 1 else 0.0
            cells.append(f"{m:.4g} ± {sd:.2g}" if len(vals) > 1 else f"{m:.4g}")
        wins = {a: sum(a in p["better"].split(" = ") or p["better"] == "tie" for p in per) for a in arms}
        best = ", ".join(f"{a} {n}" for a, n in wins.items() if n) if row["direction"] else ""
        lines.append(f"| {row.get('section', '')} | {row['metric']} | {row['direction']} | " + " | ".join(cells)
                     + f" | {best} |")
    return "\n".join(lines)


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


def _run(args: argparse.Namespace) -> int:
    import sys

    if args.device == "cuda" and not torch.cuda.is_available():
        print("shrinkscope demo: --device cuda requested but CUDA is not available", file=sys.stderr)
        return 2
    if args.defer_fraction is not None and not 0 < args.defer_fraction < 1:
        print(f"shrinkscope demo: --defer-fraction must lie in (0, 1), got {args.defer_fraction}", file=sys.stderr)
        return 2
    arm_names = [a.strip() for a in str(args.arms).split(",") if a.strip()]
    unknown = [a for a in arm_names if a not in ARM_NAMES]
    if unknown or not arm_names or len(set(arm_names)) != len(arm_names):
        print(f"shrinkscope demo: --arms {args.arms!r}: expected distinct names from {','.join(ARM_NAMES)}",
              file=sys.stderr)
        return 2
    preset = _preset(args)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"shrinkscope demo: --out {out}: cannot create the folder ({exc.strerror or exc}); "
              "pass a new or existing folder", file=sys.stderr)
        return 2
    if args.quick:
        print(QUICK_BANNER)
    t0 = time.time()
    try:
        data = load_dataset("path" if args.data else args.dataset, seed=args.seed, path=args.data,
                            n_train=None if args.data else preset.n_train,
                            n_test=None if args.data else preset.n_test)
    except (ValueError, OSError) as e:
        print(f"shrinkscope demo: {e}", file=sys.stderr)
        return 2
    try:  # fail fast on data the tokenizer cannot take (non-square images, sizes not divisible by 4)
        from .tokenizer import VQTokenizer

        VQTokenizer(tokenizer_config_for(data, num_codes=preset.num_codes, code_dim=preset.code_dim))
    except ValueError as e:
        print(f"shrinkscope demo: {e}", file=sys.stderr)
        return 2
    classifier = None
    if data.name == "stacked-digits":
        from .classifier import load_classifier

        classifier = load_classifier()
    cfg = TrainConfig(steps=preset.steps, batch_size=preset.batch_size, prior_steps=preset.prior_steps,
                      prior_batch_size=preset.batch_size, seed=args.seed, device=args.device,
                      watch_every=preset.watch_every)
    settings = {a: TUNED[a] for a in arm_names}
    if "deferred" in settings and args.defer_fraction is not None:
        settings["deferred"] = replace(settings["deferred"], fraction=args.defer_fraction)
    arms = [(a, settings[a], False) for a in arm_names]
    auto_arm = args.device == "cuda" if args.auto_arm is None else args.auto_arm
    if auto_arm:
        arms.append(("deferred-auto", replace(TUNED["deferred"], fraction=0.0), True))
    workers = args.workers or (min(2, os.cpu_count() or 1) if args.device == "cpu" else 1)
    jobs = [{"name": name, "settings": st, "data": data, "preset": preset, "cfg": cfg, "out": out, "classifier": classifier,
                 "progress": args.progress, "auto": auto} for name, st, auto in arms]
    if workers <= 1 or len(jobs) == 1:
        results = [run_arm(**job) for job in jobs]
    else:
        # arms are independent and seeded on their own, so running them side by side gives the same table
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=mp.get_context("spawn")) as ex:
            futs = [ex.submit(_run_arm_worker, {**job, "bar_position": i % workers}) for i, job in enumerate(jobs)]
            results = [f.result() for f in futs]
    rows = comparison_rows(results, rank=not args.quick)
    names = [r["arm"] for r in results]
    starts = ", ".join(f"{r['arm']} {r['quantize_start']}" for r in results)
    print(f"shrinkscope demo: {data.name}, K={preset.num_codes}, D={preset.code_dim}, {preset.steps} tokenizer "
          f"steps per arm (quantization starts at: {starts}), seed {args.seed}")
    print(format_table(rows, names, better=not args.quick))
    if args.quick:
        print(QUICK_BANNER)
    meta = {"dataset": data.name, "preset": asdict(preset), "beta": BETA, "seed": args.seed,
            "device": args.device, "seconds": time.time() - t0, "quick": bool(args.quick),
            "classifier_accuracy": getattr(classifier, "held_out_accuracy", None),
            "auto_arm": any(a for _, _, a in arms)}
    public = [{k: v for k, v in r.items() if not k.startswith("_")} for r in results]
    (out / "results.json").write_text(json.dumps({"meta": meta, "arms": public, "table": rows}, indent=1))
    from .report_html import write_report

    write_report(out / "report.html", results, rows, meta, data)
    print(f"wrote {out / 'report.html'}, {', '.join(str(out / (n + '.pt')) for n in names)} "
          f"({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="shrinkscope demo", description=__doc__.splitlines()[0])
    add_arguments(p)
    raise SystemExit(main(p.parse_args()))

"""``shrinkscope demo``: early vs deferred quantization on bundled data, before/after, HTML report.

Both arms share every hyperparameter, seed and the total step budget; the only difference is when
quantization starts (step 0 vs ``--defer-fraction`` of the budget). Each arm trains a tokenizer (watched by
``shrinkscope.watch``, JSONL timeline in ``DIR/<arm>.jsonl``), then a prior on its tokens; both are evaluated
on held-out data and saved as ``DIR/<arm>.pt`` (ready for ``shrinkscope analyze`` / ``compare``).
A third arm, "deferred-auto", wraps the quantizer in ``shrinkscope.defer(..., switch="auto")``; it is on by
default with ``--device cuda`` and off on CPU (``--auto-arm`` / ``--no-auto-arm`` override).

Outputs: a table on stdout, ``DIR/report.html`` (self-contained), ``DIR/results.json``, checkpoints.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

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


#: The shared hyperparameters (lr, beta, decay, l2) are chosen in docs/reference.md ("A fair comparison").
PRESETS = {
    "default": DemoPreset(n_train=20_000, n_test=2_000, steps=2000, prior_steps=1000, num_samples=10_000,
                          num_codes=512, code_dim=8, hidden=64, n_embd=96, batch_size=128, watch_every=100),
    "quick": DemoPreset(n_train=3_000, n_test=500, steps=240, prior_steps=150, num_samples=1_000,
                        num_codes=128, code_dim=8, hidden=32, n_embd=64, batch_size=64, watch_every=40),
    "cuda": DemoPreset(n_train=50_000, n_test=5_000, steps=10_000, prior_steps=6000, num_samples=10_000,
                       num_codes=1024, code_dim=8, hidden=128, n_embd=256, batch_size=256, watch_every=250),
}
SHARED = {"lr": 1e-3, "beta": 0.25, "decay": 0.99, "l2_normalize": True}


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
    parser.add_argument("--defer-fraction", type=float, default=0.25,
                        help="share of the budget trained continuously by the deferred arm (default 0.25)")
    parser.add_argument("--auto-arm", dest="auto_arm", action="store_true", default=None,
                        help="add a third arm, shrinkscope.defer(switch='auto') (default: on with --device cuda, "
                             "off on CPU, where it would add half again to the run time)")
    parser.add_argument("--no-auto-arm", dest="auto_arm", action="store_false")
    parser.add_argument("--no-l2-normalize", dest="l2_normalize", action="store_false", default=True,
                        help="plain Euclidean codes in both arms (the early baseline then collapses; "
                             "see docs/reference.md)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=True)


def _preset(args: argparse.Namespace) -> DemoPreset:
    p = PRESETS["quick" if args.quick else ("cuda" if args.device == "cuda" else "default")]
    over = {k: v for k, v in (("steps", args.steps), ("prior_steps", args.prior_steps),
                             ("num_codes", args.num_codes), ("num_samples", args.samples)) if v is not None}
    return replace(p, **over)


def run_arm(name: str, quantize_start: int, data, preset: DemoPreset, cfg: TrainConfig, out: Path, *,
            classifier=None, progress: bool = True, auto: bool = False,
            shared: dict | None = None) -> dict[str, Any]:
    """Train, evaluate and save one arm; returns its results (``evaluate.evaluate_arm`` + timings)."""
    from .evaluate import evaluate_arm

    t0 = time.time()
    sh = shared or SHARED
    tcfg = tokenizer_config_for(data, num_codes=preset.num_codes, code_dim=preset.code_dim, hidden=preset.hidden,
                                quantize_start=quantize_start, beta=sh["beta"], decay=sh["decay"],
                                l2_normalize=sh["l2_normalize"])
    # the JSONL sink appends: a timeline left by an earlier run in the same folder would be drawn too
    (out / f"{name}.jsonl").unlink(missing_ok=True)
    auto_switch = auto_switch_options(preset.steps) if auto else None
    tok, hist = train_tokenizer(tcfg, data, cfg, log_to=out / f"{name}.jsonl", progress=progress, desc=name,
                                auto_switch=auto_switch)
    t_tok = time.time() - t0
    tokens = tok.tokenize(data.train.to(cfg.device))
    h, w = tok.grid
    pcfg = PriorConfig(num_codes=tcfg.num_codes, seq_len=h * w, n_embd=preset.n_embd,
                       n_layer=2 if h * w > 1 else 1)
    prior, phist = train_prior(tokens, pcfg, cfg, progress=progress, desc=f"{name} prior")
    res = evaluate_arm(tok, prior, data, num_samples=preset.num_samples, seed=cfg.seed, classifier=classifier)
    save_checkpoint(out / f"{name}.pt", tok, data, cfg, prior=prior,
                    extra={"arm": name, "quantize_start": tok.config.quantize_start})
    res.update({"arm": name, "quantize_start": tok.config.quantize_start, "train_history": hist,
                "prior_history": phist, "prior_final_loss": phist[-1]["loss"] if phist else None,
                "seconds": time.time() - t0, "tokenizer_seconds": t_tok,
                "_latents": tok.latents(data.test[:1000].to(cfg.device)).cpu(),
                "_codebook": tok.quantizer.effective_codebook().cpu()})
    return res


#: rows of the before/after table: (label, getter, higher_is_better)
ROWS = [
    ("held-out recon MSE", lambda r: r["recon_mse"], False),
    ("utilization_perplexity", lambda r: r["health"]["metrics"]["utilization_perplexity"], True),
    ("utilization", lambda r: r["health"]["metrics"]["utilization"], True),
    ("dead_code_ratio", lambda r: r["health"]["metrics"]["dead_code_ratio"], False),
    ("spread_cosine", lambda r: r["health"]["metrics"]["spread_cosine"], True),
    ("spread_ratio", lambda r: r["health"]["metrics"]["spread_ratio"], None),
    ("effective_rank", lambda r: r["health"]["metrics"]["effective_rank"], True),
    ("effective_dimension", lambda r: r["health"]["metrics"]["effective_dimension"], True),
    ("latent_effective_rank", lambda r: r["health"]["metrics"]["latent_effective_rank"], True),
    ("latent_coverage", lambda r: r["health"]["metrics"]["latent_coverage"], True),
    ("codebook_precision", lambda r: r["health"]["metrics"]["codebook_precision"], True),
    ("quantization_error", lambda r: r["health"]["metrics"]["quantization_error"], False),
    ("modes covered", lambda r: (r["diversity"] or {}).get("modes_covered"), True),
    ("mode KL to data (nats)", lambda r: (r["diversity"] or {}).get("mode_kl"), False),
    ("mode entropy (nats)", lambda r: (r["diversity"] or {}).get("mode_entropy"), True),
    ("pixel diversity", lambda r: (r["diversity"] or {}).get("pixel_diversity"), True),
    ("precision", lambda r: (r["diversity"] or {}).get("precision"), True),
    ("recall", lambda r: (r["diversity"] or {}).get("recall"), True),
    ("density", lambda r: (r["diversity"] or {}).get("density"), True),
    ("coverage", lambda r: (r["diversity"] or {}).get("coverage"), True),
]


def _winners(vals: list, hib) -> list[int]:
    """Indices of the best arms (several on a tie; none when a value is missing)."""
    nums = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if len(nums) != len(vals) or len(vals) < 2:
        return []
    if hib is None:  # spread_ratio: closest to 1 wins
        keys = [-abs(math.log(max(v, 1e-12))) for v in vals]
    else:
        keys = [v if hib else -v for v in vals]
    best = max(keys)
    return [i for i, k in enumerate(keys) if k == best]


def comparison_rows(results: list[dict]) -> list[dict]:
    """The before/after table as dicts: ``metric``, one value per arm, ``better`` (winning arm, arms joined by
    " = " on a partial tie, ``"tie"`` when all agree, ``""`` when a value is missing), ``direction``."""
    rows = []
    for label, get, hib in ROWS:
        vals = []
        for r in results:
            try:
                vals.append(get(r))
            except (KeyError, TypeError):
                vals.append(None)
        if all(v is None for v in vals):
            continue
        win = _winners(vals, hib)
        if len(win) == len(vals):
            better = "tie"
        else:  # a partial tie names every arm that shares the best value
            better = " = ".join(results[i]["arm"] for i in win)
        rows.append({"metric": label, "values": vals, "better": better,
                     "direction": "closer to 1" if hib is None else ("higher" if hib else "lower")})
    return rows


def format_table(rows: list[dict], arms: list[str]) -> str:
    """Plain-text table for the terminal."""
    def fmt(v):
        if v is None:
            return "-"
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    head = ["metric", *arms, "better"]
    body = [[r["metric"], *[fmt(v) for v in r["values"]], r["better"]] for r in rows]
    widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(head, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in body]
    return "\n".join(lines)


def auto_switch_options(steps: int) -> dict:
    """``shrinkscope.defer`` options for the auto arm: check 40 times per budget, switch within 5-50% of it."""
    return {"check_every": max(5, steps // 40), "min_steps": max(1, steps // 20), "max_steps": max(2, steps // 2)}


def _auto_available() -> bool:
    try:
        from ..defer import defer  # noqa: F401
    except ImportError:
        return False
    return True


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
    if not 0 < args.defer_fraction < 1:
        print(f"shrinkscope demo: --defer-fraction must lie in (0, 1), got {args.defer_fraction}", file=sys.stderr)
        return 2
    preset = _preset(args)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"shrinkscope demo: --out {out}: cannot create the folder ({exc.strerror or exc}); "
              "pass a new or existing folder", file=sys.stderr)
        return 2
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
    cfg = TrainConfig(steps=preset.steps, batch_size=preset.batch_size, lr=SHARED["lr"],
                      prior_steps=preset.prior_steps, prior_batch_size=preset.batch_size, seed=args.seed,
                      device=args.device, watch_every=preset.watch_every)
    shared = {**SHARED, "l2_normalize": bool(getattr(args, "l2_normalize", True))}
    defer_at = max(1, round(args.defer_fraction * preset.steps))
    arms = [("early", 0, False), ("deferred", defer_at, False)]
    auto_arm = args.device == "cuda" if args.auto_arm is None else args.auto_arm
    if auto_arm and _auto_available():
        arms.append(("deferred-auto", 0, True))
    results = []
    for name, qs, auto in arms:
        results.append(run_arm(name, qs, data, preset, cfg, out, classifier=classifier, progress=args.progress,
                               auto=auto, shared=shared))
    rows = comparison_rows(results)
    names = [r["arm"] for r in results]
    print(f"shrinkscope demo: {data.name}, K={preset.num_codes}, {preset.steps} tokenizer steps per arm "
          f"(deferred: continuous for the first {defer_at}), seed {args.seed}")
    print(format_table(rows, names))
    meta = {"dataset": data.name, "preset": asdict(preset), "shared": shared, "seed": args.seed,
            "device": args.device, "defer_at": defer_at, "seconds": time.time() - t0,
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

"""The larger study for one GPU: codebook-size sweep and continuous-phase-length sweep.

Grid (issue 7): K = 2^6 .. 2^12 x {early, deferred at 25%} x 3 seeds on stacked-digits and gaussians, plus
the continuous-phase sweep (0, 5, 10, 25, 50% of the budget) at K = 1024. Each run trains a tokenizer and a
prior and measures held-out recon MSE, codebook health and the diversity of 10,000 prior samples. Runs are
small, so several run at once on the one GPU (``--workers`` processes); tasks are ordered seed-major so that
a deadline (``--budget-minutes``, default 7.5) cuts whole seeds last, and skipped runs are listed as such.

Outputs ``OUT/study.json`` (every run) and ``OUT/study.md`` (mean +- std tables). ``--smoke`` is a tiny
CPU version used by the tests.

    python -m shrinkscope.reference.study --device cuda --out study-h200
    python -m shrinkscope.reference.study --smoke --out /tmp/study-smoke
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

SIZES = tuple(2 ** e for e in range(6, 13))
FRACTIONS = (0.0, 0.05, 0.10, 0.25, 0.50)
DATASETS = ("stacked-digits", "gaussians")
SWEEP_K = 1024
SHARED = {"lr": 1e-3, "beta": 0.25, "decay": 0.99, "l2_normalize": True}
FULL = {"steps": 3000, "prior_steps": 2000, "samples": 10_000, "batch_size": 256, "n_train": 20_000,
        "n_test": 2_000, "hidden": 64, "n_embd": 128, "seeds": 3, "sizes": SIZES, "fractions": FRACTIONS}
SMOKE = {"steps": 30, "prior_steps": 20, "samples": 200, "batch_size": 32, "n_train": 600, "n_test": 200,
         "hidden": 16, "n_embd": 32, "seeds": 1, "sizes": (16, 32), "fractions": (0.0, 0.25)}
REPORTED = ("recon_mse", "utilization_perplexity", "utilization", "dead_code_ratio", "spread_cosine", "spread_ratio",
            "effective_rank", "latent_coverage", "quantization_error", "spread_all_vs_live", "excess_unused_share",
            "spread_vs_kmeans", "rank_vs_kmeans", "coverage_vs_kmeans", "modes_covered", "mode_kl", "mode_entropy",
            "mean_pairwise_l2", "precision", "recall", "coverage")


def task_key(task: dict) -> tuple:
    """What identifies a run: ``(dataset, K, continuous share, seed)``."""
    return task["dataset"], task["num_codes"], task["fraction"], task["seed"]


def tasks(plan: dict) -> list[dict]:
    """All runs of the study, seed-major, without duplicates (the size sweep's 25% run is reused)."""
    out, seen = [], set()
    for seed in range(plan["seeds"]):
        for ds in DATASETS:
            for k in plan["sizes"]:
                for frac in (0.0, 0.25):
                    out.append({"dataset": ds, "num_codes": k, "fraction": frac, "seed": seed, "sweep": "size"})
            k = SWEEP_K if SWEEP_K in plan["sizes"] else plan["sizes"][-1]
            for frac in plan["fractions"]:
                out.append({"dataset": ds, "num_codes": k, "fraction": frac, "seed": seed, "sweep": "fraction"})
    uniq = []
    for t in out:
        key = task_key(t)
        if key not in seen:
            seen.add(key)
            uniq.append(t)
    return uniq


def run_one(task: dict, plan: dict, device: str, deadline: float) -> dict:
    """Train and evaluate one (dataset, K, fraction, seed) cell; skipped past ``deadline``."""
    import torch

    torch.set_num_threads(1)
    if device.startswith("cuda"):
        torch.cuda.set_device(device)  # anything created on plain "cuda" lands on this run's GPU
    if time.time() > deadline:
        return {**task, "skipped": True}
    from .data import load_dataset
    from .evaluate import evaluate_arm
    from .prior import PriorConfig
    from .train import TrainConfig, tokenizer_config_for, train_prior, train_tokenizer

    t0 = time.time()
    data = load_dataset(task["dataset"], seed=task["seed"], n_train=plan["n_train"], n_test=plan["n_test"])
    k = task["num_codes"]
    per_item = 1 if not data.is_image else (data.train.shape[-1] // 2) ** 2
    cfg = TrainConfig(steps=plan["steps"], batch_size=plan["batch_size"], lr=SHARED["lr"],
                      prior_steps=plan["prior_steps"], prior_batch_size=plan["batch_size"], seed=task["seed"],
                      device=device, kmeans_items=min(len(data.train), max(2000, math.ceil(4 * k / per_item))))
    qs = round(task["fraction"] * plan["steps"])
    tcfg = tokenizer_config_for(data, num_codes=k, hidden=plan["hidden"] if data.is_image else 2 * plan["hidden"],
                                quantize_start=qs, beta=SHARED["beta"], decay=SHARED["decay"],
                                l2_normalize=SHARED["l2_normalize"])
    tok, _ = train_tokenizer(tcfg, data, cfg, progress=False)
    tokens = tok.tokenize(data.train.to(device))
    h, w = tok.grid
    prior, phist = train_prior(tokens, PriorConfig(num_codes=k, seq_len=h * w, n_embd=plan["n_embd"],
                                                   n_layer=2 if h * w > 1 else 1), cfg, progress=False)
    res = evaluate_arm(tok, prior, data, num_samples=plan["samples"], seed=task["seed"])
    flat = {"recon_mse": res["recon_mse"], **res["health"]["metrics"], **(res["diversity"] or {})}
    return {**task, "skipped": False, "quantize_start": qs, "seconds": time.time() - t0,
            "prior_final_loss": phist[-1]["loss"], "metrics": {k2: flat.get(k2) for k2 in REPORTED},
            "warnings": [w_["code"] for w_ in res["health"]["warnings"]], "verdict": res["health"].get("verdict")}


def _mean_std(vals: list) -> str:
    v = [x for x in vals if x is not None]
    if not v:
        return "–"
    m = sum(v) / len(v)
    s = (sum((x - m) ** 2 for x in v) / (len(v) - 1)) ** 0.5 if len(v) > 1 else 0.0
    return f"{m:.4g} ± {s:.2g}" if len(v) > 1 else f"{m:.4g}"


def markdown(results: list[dict], plan: dict, seconds: float | None = None, *, head: str | None = None) -> str:
    """The study's tables: per dataset, size sweep (early vs deferred) and fraction sweep.

    ``head``: the first sentence (default: runs done / skipped / failed and ``seconds``).
    """
    from .repro_tables import verdict_counts

    done = [r for r in results if not r.get("skipped")]
    failed = sum(1 for r in results if r.get("error"))
    cols = ("recon_mse", "utilization_perplexity", "spread_cosine", "effective_rank", "latent_coverage",
            "modes_covered", "mode_kl", "mode_entropy", "mean_pairwise_l2", "recall", "coverage")
    head = head or (f"Runs: {len(done)} done, {len(results) - len(done) - failed} skipped by the deadline, {failed} "
                    f"failed (see study.json); {seconds:.0f} s.")
    head += (f" {plan['steps']} tokenizer steps, {plan['prior_steps']} prior steps, {plan['samples']} samples per run; "
            f"shared: {json.dumps(SHARED)}. Cells: mean ± std over seeds (n in the last column).")
    lines = [head, ""]
    for ds in DATASETS:
        for sweep, key, label in (("size", "num_codes", "K"), ("fraction", "fraction", "continuous share")):
            rows = [r for r in done if r["dataset"] == ds and (sweep == "fraction" or r["fraction"] in (0.0, 0.25))]
            if sweep == "fraction":
                kf = SWEEP_K if SWEEP_K in plan["sizes"] else plan["sizes"][-1]
                rows = [r for r in rows if r["num_codes"] == kf]
                lines.append(f"### {ds}: continuous-phase sweep at K={kf}")
            else:
                lines.append(f"### {ds}: codebook-size sweep (early = 0%, deferred = 25% continuous)")
            lines.append("")
            if not rows:
                lines += ["No run of this sweep finished.", ""]
                continue
            judged = any(r.get("verdict") for r in rows)  # runs before the verdict existed have no column
            lines.append(f"| {label} | arm | " + " | ".join(cols) + (" | verdict (runs)" if judged else "") + " | n |")
            lines.append("|" + "---|" * (len(cols) + 3 + judged))
            groups: dict[tuple, list] = {}
            for r in rows:
                groups.setdefault((r[key], r["fraction"]), []).append(r)
            for (kv, frac), rs in sorted(groups.items()):
                arm = "early" if frac == 0 else f"deferred {frac:.0%}"
                cells = [_mean_std([r["metrics"].get(c) for r in rs]) for c in cols]
                if judged:
                    cells.append(verdict_counts(rs))
                lines.append(f"| {kv if key == 'num_codes' else f'{kv:.0%}'} | {arm} | " + " | ".join(cells)
                             + f" | {len(rs)} |")
            lines.append("")
    return "\n".join(lines)


def _device_for(i: int, device: str, gpus: int) -> str:
    """Round-robin the runs over the visible GPUs (``cuda:0``, ``cuda:1``, ...)."""
    return f"cuda:{i % gpus}" if device == "cuda" and gpus > 0 else device


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m shrinkscope.reference.study", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="shrinkscope-study")
    p.add_argument("--device", default=None, choices=("cpu", "cuda"),
                   help="cuda (default) spreads the runs over every visible GPU; --smoke defaults to cpu")
    p.add_argument("--smoke", action="store_true", help="tiny plan (tests; on the CPU unless --device cuda)")
    p.add_argument("--workers", type=int, default=None,
                   help="concurrent runs (default: 12 per GPU on cuda, 1 on cpu)")
    p.add_argument("--limit", type=int, default=None, help="run only the first N cells (timing a plan)")
    p.add_argument("--budget-minutes", type=float, default=7.5,
                   help="no run starts after this many minutes (default 7.5: in-flight runs end before 9)")
    a = p.parse_args(argv)
    plan = dict(SMOKE if a.smoke else FULL)
    device = a.device or ("cpu" if a.smoke else "cuda")
    gpus = 0
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            p.error("--device cuda: CUDA is not available (use --smoke for a CPU check)")
        gpus = torch.cuda.device_count()
    from .classifier import load_classifier

    load_classifier()  # train and cache once here, so the workers only read the cache
    t0 = time.time()
    deadline = t0 + a.budget_minutes * 60
    todo = tasks(plan)[: a.limit]
    workers = a.workers or (12 * gpus if device == "cuda" else 1)
    results: list[dict] = []
    if workers == 1:
        results = [run_one(t, plan, _device_for(i, device, gpus), deadline) for i, t in enumerate(todo)]
    else:
        import multiprocessing as mp

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as ex:
            futs = {ex.submit(run_one, t, plan, _device_for(i, device, gpus), deadline): t for i, t in enumerate(todo)}
            for f in as_completed(futs):
                try:
                    results.append(f.result())
                except Exception as e:  # noqa: BLE001 - one failed cell must not lose the others
                    results.append({**futs[f], "skipped": True, "error": repr(e)})
                done = sum(not r.get("skipped") for r in results)
                print(f"[{time.time() - t0:5.0f} s] {done}/{len(todo)} runs done", flush=True)
    seconds = time.time() - t0
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    plan_json = {k: list(v) if isinstance(v, tuple) else v for k, v in plan.items()}
    (out / "study.json").write_text(json.dumps({"plan": plan_json, "shared": SHARED, "device": device, "gpus": gpus,
                                                "seconds": seconds, "runs": results}, indent=1))
    md = markdown(results, plan, seconds)
    (out / "study.md").write_text(md + "\n")
    print(md)
    print(f"wrote {out / 'study.json'} and {out / 'study.md'}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    raise SystemExit(main())

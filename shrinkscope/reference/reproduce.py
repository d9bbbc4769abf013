"""Reproduce the papers' codebook tables on one or two GPUs, and tune the demo's arms.

``--plan paper`` (Zhao, Karagodin et al. 2026 = Paper B; Zhao et al. 2026 = Paper A; research/papers.md):
stacked digits, the bundled conv tokenizer with codes of dimension D, Euclidean EMA codebook, 3 seeds per cell.

- Paper B: codebook effective dimension (PCA 99% of all K code vectors) early vs deferred at D = 256, K = 1,024,
  4,096 and 16,384 (published: 3-5 vs 17-19 of 256 at K = 2^10 .. 2^16, VQGAN on ImageNet-100);
- Paper A: cosine spread and usage perplexity on held-out latents at the same cells (published at K = 16,384 on
  ImageNet-100: spread 0.67 -> 0.94, perplexity 925 -> 5,312);
- the common alternative fixes (l2-normalised codes, dead-code expiry) at D = 256, and the code dimension
  (D = 8, 64) at K = 1,024.

``--plan tune``: every demo arm (``arms.tune_grid``) at the demo's CPU preset on a validation split of the
training images, one seed; the choice per arm is the lowest validation MSE.

Each finished cell is appended as one JSON line to ``OUT/cells.jsonl`` at once, so a lost machine or a deadline
loses the cells in flight, not the study; ``OUT/tables.md`` is written from that file at the end (or later with
``--tables-only``). Cells run in worker processes spread over the visible GPUs.

    python -m shrinkscope.reference.reproduce --plan paper --device cuda --out repro
    python -m shrinkscope.reference.reproduce --plan tune --device cuda --out tune
    python -m shrinkscope.reference.reproduce --plan smoke --out /tmp/repro-smoke    # CPU, seconds
"""
from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, replace
from pathlib import Path

from .arms import ARM_NAMES, KNOBS, arm_base, tune_grid

#: shared by every paper cell
PAPER = {"dataset": "stacked-digits", "n_train": 20_000, "n_test": 5_000, "steps": 3000, "batch_size": 256,
         "hidden": 128, "kmeans_items": 2000}
SMOKE = {"dataset": "stacked-digits", "n_train": 600, "n_test": 200, "steps": 30, "batch_size": 32, "hidden": 16,
         "kmeans_items": 100}
#: the demo's default CPU preset (demo.PRESETS["default"]), validation = last 2,000 training images
TUNE = {"dataset": "stacked-digits", "n_train": 20_000, "n_test": 2_000, "steps": 1000, "batch_size": 128,
        "hidden": 64, "kmeans_items": 2000, "num_codes": 512, "code_dim": 64, "val": 2000, "data_seed": 100}
SEEDS = (0, 1, 2)

#: published numbers (research/papers.md B.5 and A.4), shown beside ours
PUBLISHED = {
    "paper_b_codebook_dim": "3-5 (early) vs 17-19 (warm-up) of 256; VQGAN, ImageNet-100, K = 2^10, 2^14, 2^16",
    "paper_a_spread": "0.67 -> 0.94 (MaskGIT VQ), 0.64 -> 0.97 (VAR); ImageNet-100, K = 16,384",
    "paper_a_perplexity": "925 -> 5,312 (5.6% -> 32% of K; MaskGIT VQ), 2,802 -> 7,045 (VAR); K = 16,384",
}


def paper_cells() -> list[dict]:
    """Paper cells in priority order (a deadline cuts the last blocks, never part of a seed set)."""
    cells = []
    blocks = [(256, 1024, ("early", "deferred")), (256, 16384, ("early", "deferred")),
              (256, 4096, ("early", "deferred")), (256, 1024, ("l2", "expiry")), (64, 1024, ARM_NAMES),
              (8, 1024, ("early", "deferred")), (256, 16384, ("l2", "expiry"))]
    for d, k, arms in blocks:
        for arm in arms:
            for seed in SEEDS:
                cells.append({"plan": "paper", "code_dim": d, "num_codes": k, "arm": arm, "seed": seed,
                              "settings": asdict(arm_base(arm))})
    return cells


def warmup_cells() -> list[dict]:
    """A longer warm-up (50%) at D = 256: does the deferred codebook's dimension reach Paper B's 17-19?"""
    return [{"plan": "paper", "code_dim": 256, "num_codes": k, "arm": "deferred", "seed": seed,
             "settings": asdict(replace(arm_base("deferred"), fraction=0.5))} for k in (1024, 16384) for seed in SEEDS]


def tune_cells() -> list[dict]:
    return [{"plan": "tune", "code_dim": TUNE["code_dim"], "num_codes": TUNE["num_codes"], "arm": arm, "seed": 0,
             "settings": asdict(s)} for arm in ARM_NAMES for s in tune_grid(arm)]


def smoke_cells() -> list[dict]:
    return [{"plan": "smoke", "code_dim": 16, "num_codes": 32, "arm": arm, "seed": 0,
             "settings": asdict(arm_base(arm))} for arm in ARM_NAMES]


def _spec(plan: str) -> dict:
    return {"paper": PAPER, "tune": TUNE, "smoke": SMOKE}[plan]


def run_cell(cell: dict, device: str, deadline: float) -> dict:
    """Train one tokenizer and measure its codebook on held-out latents; skipped past ``deadline``."""
    import torch

    torch.set_num_threads(1)
    if time.time() > deadline:
        return {**cell, "skipped": True}
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    from ..metrics import codebook_health, effective_dimension
    from ..metrics.usage import assign, utilization_perplexity
    from .arms import ArmSettings
    from .data import load_dataset
    from .evaluate import recon_mse
    from .train import TrainConfig, tokenizer_config_for, train_tokenizer

    t0 = time.time()
    spec, s = _spec(cell["plan"]), ArmSettings(**cell["settings"])
    data = load_dataset(spec["dataset"], seed=spec.get("data_seed", cell["seed"]), n_train=spec["n_train"],
                        n_test=spec["n_test"])
    if "val" in spec:  # tuning never sees the test images: validate on held-back training images
        data = replace(data, train=data.train[: -spec["val"]], test=data.train[-spec["val"]:])
    tcfg = tokenizer_config_for(data, num_codes=cell["num_codes"], code_dim=cell["code_dim"], hidden=spec["hidden"],
                                quantize_start=round(s.fraction * spec["steps"]), decay=s.decay,
                                l2_normalize=s.l2_normalize, dead_code_threshold=s.dead_code_threshold)
    cfg = TrainConfig(steps=spec["steps"], batch_size=spec["batch_size"], lr=s.lr, seed=cell["seed"], device=device,
                      kmeans_items=spec["kmeans_items"])
    tok, _ = train_tokenizer(tcfg, data, cfg, progress=False)
    codebook = tok.quantizer.effective_codebook()
    lat = tok.latents(data.test.to(device))
    idx, _ = assign(codebook, lat)  # usage over every held-out latent (Paper A's perplexity "over the dataset")
    counts = torch.bincount(idx, minlength=cell["num_codes"]).cpu()
    sub = lat[torch.randperm(len(lat), generator=torch.Generator().manual_seed(cell["seed"]))[:10_000].to(device)]
    try:
        health = codebook_health(codebook, latents=sub, counts=counts.to(device), name="quantizer")
    except (RuntimeError, TypeError):  # a metric without a device path: measure on the CPU
        health = codebook_health(codebook.cpu(), latents=sub.cpu(), counts=counts, name="quantizer")
    h = health.to_dict()
    metrics = {"recon_mse": recon_mse(tok, data.test), **h["metrics"],
               "usage_perplexity_all": float(utilization_perplexity(counts)),
               "latent_effective_dimension_all": int(effective_dimension(lat.cpu()))}
    return {**cell, "skipped": False, "quantize_start": tok.config.quantize_start, "seconds": time.time() - t0,
            "held_out_latents": len(lat), "metrics": metrics, "warnings": [w["code"] for w in h["warnings"]],
            "verdict": h.get("verdict")}


def _stats(vals: list) -> tuple[float, float, int] | None:
    v = [float(x) for x in vals if x is not None]
    if not v:
        return None
    m = sum(v) / len(v)
    sd = (sum((x - m) ** 2 for x in v) / (len(v) - 1)) ** 0.5 if len(v) > 1 else 0.0
    return m, sd, len(v)


def _cell(vals: list, fmt: str = ".3g") -> str:
    st = _stats(vals)
    if st is None:
        return "–"
    m, sd, n = st
    return f"{m:{fmt}} ± {sd:{fmt}}" + ("" if n == 3 else f" (n={n})")


def _group(rows: list[dict], **match) -> list[dict]:
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def paper_tables(rows: list[dict], *, plan: str = "paper") -> str:
    """Markdown: Paper B and Paper A side by side with ours, then the alternative fixes and code dimension."""
    done = [r for r in rows if r.get("plan") == plan and not r.get("skipped") and "metrics" in r]
    sp = _spec(plan)
    out = [(f"Stacked digits, {sp['steps']} tokenizer steps, batch {sp['batch_size']}, conv tokenizer width "
           f"{sp['hidden']}, 4x4 token grid, Euclidean EMA codebook (decay 0.99, beta 0.25, Adam 1e-3), "
           f"deferred N% = continuous for the first N% of the steps. Metrics on {sp['n_test']:,} held-out images "
           f"({16 * sp['n_test']:,} latents); mean ± std over seeds 0, 1, 2 (n shown when fewer finished)."), ""]
    cols = [("codebook eff. dim", "effective_dimension", ".3g"), ("latent eff. dim", "latent_effective_dimension_all",
            ".3g"), ("cosine spread", "spread_cosine", ".3f"), ("usage perplexity", "usage_perplexity_all", ".4g"),
            ("spread ratio", "spread_ratio", ".2f"), ("dead codes", "dead_code_ratio", ".2f"),
            ("recon MSE", "recon_mse", ".4f")]
    out += ["| D | K | arm | " + " | ".join(c[0] for c in cols) + " | spread ratio < 0.5 |",
            "|" + "---|" * (len(cols) + 4)]
    keys = sorted({(r["code_dim"], r["num_codes"], r["arm"], r["settings"]["fraction"]) for r in done},
                  key=lambda t: (-t[0], t[1], ARM_NAMES.index(t[2]), t[3]))
    for d, k, arm, frac in keys:
        g = [r for r in _group(done, code_dim=d, num_codes=k, arm=arm) if r["settings"]["fraction"] == frac]
        if arm == "deferred":
            arm = f"deferred {frac:.0%}"
        # the pre-verdict `shrinkage` rule, computed from the metric so old and new cells read alike
        flagged = sum(r["metrics"].get("spread_ratio") is not None and r["metrics"]["spread_ratio"] < 0.5
                      for r in g)
        out.append(f"| {d} | {k:,} | {arm} | " + " | ".join(_cell([r["metrics"].get(c) for r in g], f)
                                                            for _, c, f in cols) + f" | {flagged}/{len(g)} |")
    out += ["", "Published: Paper B codebook effective dimension " + PUBLISHED["paper_b_codebook_dim"] + "; Paper A "
            "cosine spread " + PUBLISHED["paper_a_spread"] + "; perplexity " + PUBLISHED["paper_a_perplexity"] + "."]
    return "\n".join(out)


def tune_table(rows: list[dict]) -> str:
    """Markdown: every tuning configuration's validation MSE and the choice per arm."""
    done = [r for r in rows if r.get("plan") == "tune" and not r.get("skipped") and "metrics" in r]
    out = ["| arm | lr | knob | value | validation MSE | spread ratio | chosen |", "|---|---|---|---|---|---|---|"]
    for arm in ARM_NAMES:
        g = sorted(_group(done, arm=arm), key=lambda r: (r["settings"]["lr"], r["settings"][KNOBS[arm][0]]))
        best = min(g, key=lambda r: r["metrics"]["recon_mse"]) if g else None
        for r in g:
            knob = KNOBS[arm][0]
            out.append(f"| {arm} | {r['settings']['lr']:g} | {knob} | {r['settings'][knob]:g} | "
                       f"{r['metrics']['recon_mse']:.5f} | {r['metrics']['spread_ratio']:.2f} | "
                       f"{'yes' if r is best else ''} |")
    return "\n".join(out)


def read_cells(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def write_tables(out: Path) -> str:
    rows = read_cells(out / "cells.jsonl")
    parts = [paper_tables(rows, plan=plan) for plan in ("paper", "smoke") if _group(rows, plan=plan)]
    if _group(rows, plan="tune"):
        parts.append(tune_table(rows))
    md = "\n\n".join(parts)
    (out / "tables.md").write_text(md + "\n")
    return md


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m shrinkscope.reference.reproduce", description=__doc__.splitlines()[0])
    p.add_argument("--plan", nargs="+", default=["paper"], choices=("paper", "warmup", "tune", "smoke"))
    p.add_argument("--out", default="shrinkscope-repro")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--workers", type=int, default=None, help="concurrent cells (default: 8 per GPU, 1 on cpu)")
    p.add_argument("--budget-minutes", type=float, default=8.0, help="no cell starts after this many minutes")
    p.add_argument("--tables-only", action="store_true", help="rewrite OUT/tables.md from OUT/cells.jsonl")

    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.tables_only:
        print(write_tables(out))
        return 0
    gpus = 0
    if a.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            p.error("--device cuda: CUDA is not available")
        gpus = torch.cuda.device_count()
    makers = {"paper": paper_cells, "warmup": warmup_cells, "tune": tune_cells, "smoke": smoke_cells}
    todo = [c for plan in a.plan for c in makers[plan]()]
    # tuning cells are cheap and the demo depends on them: run them between the first two paper blocks
    if "tune" in a.plan and "paper" in a.plan:
        paper, tune = [c for c in todo if c["plan"] == "paper"], [c for c in todo if c["plan"] == "tune"]
        todo = paper[:12] + tune + paper[12:]
    t0 = time.time()
    deadline = t0 + a.budget_minutes * 60
    workers = a.workers or (8 * gpus if gpus else 1)
    devices = [f"cuda:{i % gpus}" if gpus else "cpu" for i in range(len(todo))]
    sink = (out / "cells.jsonl").open("a")
    import multiprocessing as mp

    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as ex:
        futs = {ex.submit(run_cell, c, dev, deadline): c for c, dev in zip(todo, devices)}
        for n, f in enumerate(as_completed(futs), 1):
            try:
                res = f.result()
            except Exception as e:  # noqa: BLE001 - one failed cell must not lose the others
                res = {**futs[f], "skipped": True, "error": repr(e)}
            sink.write(json.dumps(res) + "\n")
            sink.flush()
            print(f"[{time.time() - t0:5.0f} s] {n}/{len(todo)} {res['plan']} D={res['code_dim']} "
                  f"K={res['num_codes']} {res['arm']} seed {res['seed']}: "
                  f"{'skipped' if res.get('skipped') else 'done'} {res.get('error', '')}", flush=True)
    sink.close()
    print(write_tables(out))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    raise SystemExit(main())

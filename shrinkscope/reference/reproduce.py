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

``--plan study``: the older study's runs (``study.py``: l2-normalised 8-d codes, K = 64 .. 4,096, a prior and its
samples per run) on the current code. Its first 58 runs (docs/study-h200.json) ran on code before the EMA
smoothing fix and the single defer path and do not reproduce bit for bit on the current code, so they are not
merged with these. Whatever the order asked for, cells start tune -> paper -> warmup -> study (``planned_cells``).

Each finished cell is appended as one JSON line to ``OUT/cells.jsonl`` at once, so a lost machine or a deadline
loses the cells in flight, not the study; ``OUT/tables.md`` is written from that file at the end (or later with
``--tables-only``). Cells run in worker processes spread over the visible GPUs.

    python -m shrinkscope.reference.reproduce --plan paper --device cuda --out repro
    python -m shrinkscope.reference.reproduce --plan tune --device cuda --out tune
    python -m shrinkscope.reference.reproduce --plan study --device cuda --out study
    python -m shrinkscope.reference.reproduce --plan smoke --out /tmp/repro-smoke    # CPU, seconds
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, replace
from pathlib import Path

from .arms import ARM_NAMES, arm_base, tune_grid

#: shared by every paper cell
PAPER = {"dataset": "stacked-digits", "n_train": 20_000, "n_test": 5_000, "steps": 3000, "batch_size": 256,
         "hidden": 128, "kmeans_items": 2000}
SMOKE = {"dataset": "stacked-digits", "n_train": 600, "n_test": 200, "steps": 30, "batch_size": 32, "hidden": 16,
         "kmeans_items": 100}
#: the demo's default CPU preset (demo.PRESETS["default"]), validation = last 2,000 training images
TUNE = {"dataset": "stacked-digits", "n_train": 20_000, "n_test": 2_000, "steps": 1000, "batch_size": 128,
        "hidden": 64, "kmeans_items": 2000, "num_codes": 512, "code_dim": 64, "val": 2000, "data_seed": 100}
SEEDS = (0, 1, 2)
#: held-out latents that ``codebook_health`` judges each paper cell on: at least this many, and 4K where that is
#: more, so that the k-means reference (2K fit rows + held-out rows) exists at K = 16,384 too
HEALTH_LATENTS = 10_000


def health_latents(num_codes: int) -> int:
    """Held-out latents judged for a cell of K codes: ``max(HEALTH_LATENTS, 4 * K)``."""
    return max(HEALTH_LATENTS, 4 * num_codes)
#: plans in the order their cells start (see ``main``)
PRIORITY = ("smoke", "tune", "paper", "warmup", "study")

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
    """Every arm's tuning grid on each of ``SEEDS`` (seed-major, so a deadline cuts whole seeds); the choice is
    the lowest mean validation MSE over the seeds (``repro_tables.tune_choice``)."""
    return [{"plan": "tune", "code_dim": TUNE["code_dim"], "num_codes": TUNE["num_codes"], "arm": arm, "seed": seed,
             "settings": asdict(s)} for seed in SEEDS for arm in ARM_NAMES for s in tune_grid(arm)]


def smoke_cells() -> list[dict]:
    return [{"plan": "smoke", "code_dim": 16, "num_codes": 32, "arm": arm, "seed": 0,
             "settings": asdict(arm_base(arm))} for arm in ARM_NAMES]


def study_cells(*, smoke: bool = False) -> list[dict]:
    """The older study's runs (``study.tasks``: K = 64 .. 4,096, early vs deferred 25% and the continuous-share
    sweep at K = 1,024; l2-normalised 8-d codes; tokenizer, prior and samples per run) on the current code.

    Order: stacked digits before gaussians (the paper cells are digits too, and its runs measure sample diversity
    over 1,000 modes), seed-major within each, so a deadline cuts whole seeds of the last dataset.
    """
    from . import study

    tasks = study.tasks(study.SMOKE if smoke else study.FULL)
    tasks.sort(key=lambda t: (study.DATASETS.index(t["dataset"]), t["seed"]))  # stable: keeps each seed's order
    return [{"plan": "study", "code_dim": 8, "arm": "early" if t["fraction"] == 0 else "deferred", **t,
             **({"smoke": True} if smoke else {})} for t in tasks]


def planned_cells(plans: list[str], *, study_smoke: bool = False) -> list[dict]:
    """The cells of ``plans`` in the order they start, whatever the order asked for (``PRIORITY``): the demo
    depends on the tuning (cheap), then the paper cells, the longer warm-up, and the old study's runs last, so
    a deadline cuts the end of this list."""
    makers = {"paper": paper_cells, "warmup": warmup_cells, "tune": tune_cells, "smoke": smoke_cells,
              "study": lambda: study_cells(smoke=study_smoke)}
    return [c for plan in PRIORITY if plan in plans for c in makers[plan]()]


def cell_key(cell: dict) -> str:
    """What identifies a cell across runs (its plan, place in the grid, seed and settings), as a string."""
    keys = ("plan", "code_dim", "num_codes", "arm", "seed", "settings", "dataset", "fraction", "smoke")
    return json.dumps({k: cell.get(k) for k in keys}, sort_keys=True)


def _spec(plan: str) -> dict:
    return {"paper": PAPER, "tune": TUNE, "smoke": SMOKE}[plan]


def run_cell(cell: dict, device: str, deadline: float) -> dict:
    """Train one tokenizer and measure its codebook on held-out latents; skipped past ``deadline``.

    A ``study`` cell is the old study's run (``study.run_one``: tokenizer, prior and sample diversity).
    A run whose held-out reconstruction is not finite (a learning rate past stability) is returned with
    ``diverged: True`` and no codebook metrics, so the tuning table shows the edge instead of losing it.
    """
    if cell["plan"] == "study":
        from . import study

        task = {k: cell[k] for k in ("dataset", "num_codes", "fraction", "seed", "sweep")}
        return {**cell, **study.run_one(task, study.SMOKE if cell.get("smoke") else study.FULL, device, deadline)}
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
        v, tm = spec["val"], data.train_modes
        data = replace(data, train=data.train[:-v], test=data.train[-v:],
                       train_modes=None if tm is None else tm[:-v], test_modes=None if tm is None else tm[-v:])
    tcfg = tokenizer_config_for(data, num_codes=cell["num_codes"], code_dim=cell["code_dim"], hidden=spec["hidden"],
                                quantize_start=round(s.fraction * spec["steps"]), decay=s.decay,
                                l2_normalize=s.l2_normalize, dead_code_threshold=s.dead_code_threshold)
    cfg = TrainConfig(steps=spec["steps"], batch_size=spec["batch_size"], lr=s.lr, seed=cell["seed"], device=device,
                      kmeans_items=spec["kmeans_items"])
    tok, _ = train_tokenizer(tcfg, data, cfg, progress=False)
    mse = recon_mse(tok, data.test)
    codebook = tok.quantizer.effective_codebook()
    lat = tok.latents(data.test.to(device))
    if not (math.isfinite(mse) and bool(torch.isfinite(codebook).all()) and bool(torch.isfinite(lat).all())):
        return {**cell, "skipped": False, "diverged": True, "seconds": time.time() - t0,
                "metrics": {"recon_mse": None}, "warnings": [], "verdict": None}
    idx, _ = assign(codebook, lat)  # usage over every held-out latent (Paper A's perplexity "over the dataset")
    counts = torch.bincount(idx, minlength=cell["num_codes"]).cpu()
    pick = torch.randperm(len(lat), generator=torch.Generator().manual_seed(cell["seed"]))[:health_latents(cell["num_codes"])]
    sub, labels = lat[pick.to(device)], None
    if data.test_modes is not None:  # every token of an item carries the item's mode (Paper A's modes)
        h, w = tok.grid
        labels = data.test_modes.reshape(-1).repeat_interleave(h * w)[pick]
    try:
        health = codebook_health(codebook, latents=sub, counts=counts.to(device), name="quantizer",
                                 labels=None if labels is None else labels.to(device), seed=cell["seed"])
    except (RuntimeError, TypeError):  # a metric without a device path: measure on the CPU
        health = codebook_health(codebook.cpu(), latents=sub.cpu(), counts=counts, name="quantizer", labels=labels,
                                 seed=cell["seed"])
    h = health.to_dict()
    metrics = {"recon_mse": mse, **h["metrics"],
               "usage_perplexity_all": float(utilization_perplexity(counts)),
               "latent_effective_dimension_all": int(effective_dimension(lat.cpu()))}
    return {**cell, "skipped": False, "quantize_start": tok.config.quantize_start, "seconds": time.time() - t0,
            "held_out_latents": len(lat), "judged_latents": len(sub), "metrics": metrics, "warnings": [w["code"] for w in h["warnings"]],
            "verdict": h.get("verdict")}


def read_cells(path: Path) -> list[dict]:
    """Every line of a ``cells.jsonl``; a cell written more than once (``--resume``) keeps its last finished line,
    or its last line when none finished."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    last: dict[str, dict] = {}
    for r in rows:
        k = cell_key(r)
        if not r.get("skipped") or last.get(k, {}).get("skipped", True):
            last[k] = r
    return list(last.values())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m shrinkscope.reference.reproduce", description=__doc__.splitlines()[0])
    p.add_argument("--plan", nargs="+", default=["paper"], choices=PRIORITY)
    p.add_argument("--out", default="shrinkscope-repro")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--workers", type=int, default=None, help="concurrent cells (default: 8 per GPU, 1 on cpu)")
    p.add_argument("--budget-minutes", type=float, default=8.0, help="no cell starts after this many minutes")
    p.add_argument("--tables-only", action="store_true", help="rewrite OUT/tables.md from OUT/cells.jsonl")
    p.add_argument("--study-smoke", action="store_true", help="--plan study: the study's tiny CPU plan")
    p.add_argument("--resume", action="store_true",
                   help="skip the cells that OUT/cells.jsonl already holds as finished (after a lost machine)")

    a = p.parse_args(argv)
    from .repro_tables import write_tables

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
    todo = planned_cells(a.plan, study_smoke=a.study_smoke)
    if a.resume:
        done = {cell_key(r) for r in read_cells(out / "cells.jsonl") if not r.get("skipped")}
        todo = [c for c in todo if cell_key(c) not in done]
    if any(c["plan"] == "study" for c in todo):
        from .classifier import load_classifier

        load_classifier()  # train and cache once here, so the workers only read the cache
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

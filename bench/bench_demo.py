"""Benchmark: where one arm of the default CPU demo spends its CPU time, phase by phase.

One arm (``--arm``, default ``early``) of the demo's default preset runs in this process on one thread, as each
worker of ``shrinkscope demo`` does, and every phase is timed in CPU seconds (``time.process_time``: user +
system time of this process) and wall seconds: tokenizer training with the ``shrinkscope.watch`` timeline
and, for comparison, the same steps without it; prior training; the evaluation's parts (held-out codebook
health with the k-means reference, reconstruction, prior sampling, diversity); the checkpoint. CPU time is
what to read on a shared machine: it moves far less with the load than wall time does.

Run::

    python bench/bench_demo.py --arm early --steps 200 --repeat 3     # per-step costs, ~2 min
    python bench/bench_demo.py --arm early                            # one whole arm of the preset

Prints one JSON object per repeat and the medians; per-step costs are scaled to the preset's step counts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def one_arm(arm: str, steps: int | None, prior_steps: int | None, samples: int | None, seed: int) -> dict:
    import torch

    from shrinkscope.reference.arms import TUNED
    from shrinkscope.reference.classifier import load_classifier
    from shrinkscope.reference.data import load_dataset
    from shrinkscope.reference.demo import BETA, PRESETS
    from shrinkscope.reference.evaluate import evaluate_arm
    from shrinkscope.reference.phases import PhaseClock
    from shrinkscope.reference.prior import PriorConfig
    from shrinkscope.reference.train import (
        TrainConfig,
        save_checkpoint,
        tokenizer_config_for,
        train_prior,
        train_tokenizer,
    )

    torch.set_num_threads(1)
    preset = PRESETS["default"]
    p = replace(preset, **{k: v for k, v in (("steps", steps), ("prior_steps", prior_steps),
                                              ("num_samples", samples)) if v is not None})
    s = TUNED[arm]
    data = load_dataset("stacked-digits", seed=seed, n_train=p.n_train, n_test=p.n_test)
    classifier = load_classifier()
    cfg = TrainConfig(steps=p.steps, batch_size=p.batch_size, prior_steps=p.prior_steps,
                      prior_batch_size=p.batch_size, seed=seed, watch_every=p.watch_every, lr=s.lr)
    tcfg = tokenizer_config_for(data, num_codes=p.num_codes, code_dim=p.code_dim, hidden=p.hidden,
                                quantize_start=round(s.fraction * p.steps), beta=BETA, decay=s.decay,
                                l2_normalize=s.l2_normalize, dead_code_threshold=s.dead_code_threshold)
    clock = PhaseClock()
    with tempfile.TemporaryDirectory() as tmp:
        with clock.phase("tokenizer (no watch)"):
            train_tokenizer(tcfg, data, cfg, progress=False)
        with clock.phase("tokenizer"):
            tok, _ = train_tokenizer(tcfg, data, cfg, progress=False, log_to=Path(tmp) / "t.jsonl")
        with clock.phase("prior"):
            tokens = tok.tokenize(data.train)
            h, w = tok.grid
            prior, _ = train_prior(tokens, PriorConfig(num_codes=p.num_codes, seq_len=h * w, n_embd=p.n_embd,
                                                       n_layer=2), cfg, progress=False)
        with clock.phase("evaluate"):
            res = evaluate_arm(tok, prior, data, num_samples=p.num_samples, seed=seed, classifier=classifier,
                               clock=clock)
        with clock.phase("save"):
            save_checkpoint(Path(tmp) / "a.pt", tok, data, cfg, prior=prior)
    t = clock.as_dict()
    per = {"tokenizer_step_cpu_s": t["tokenizer"]["cpu_s"] / p.steps,
           "watch_cpu_s_per_arm": t["tokenizer"]["cpu_s"] - t["tokenizer (no watch)"]["cpu_s"],
           "prior_step_cpu_s": t["prior"]["cpu_s"] / max(1, p.prior_steps)}
    return {"arm": arm, "preset": {"steps": p.steps, "prior_steps": p.prior_steps, "num_samples": p.num_samples},
            "timing": t, "per_step": per, "verdict": res["health"]["verdict"]["status"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arm", default="early")
    ap.add_argument("--steps", type=int, default=None, help="tokenizer steps (default: the preset's)")
    ap.add_argument("--prior-steps", type=int, default=None)
    ap.add_argument("--samples", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1)
    a = ap.parse_args()
    runs = []
    for _ in range(a.repeat):
        t0 = time.perf_counter()
        r = one_arm(a.arm, a.steps, a.prior_steps, a.samples, a.seed)
        r["wall_s"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(r), flush=True)
        runs.append(r)
    med = {ph: statistics.median(r["timing"][ph]["cpu_s"] for r in runs) for ph in runs[0]["timing"]}
    print(json.dumps({"median_cpu_s": med,
                      "median_per_step": {k: statistics.median(r["per_step"][k] for r in runs)
                                          for k in runs[0]["per_step"]}}, indent=1))


if __name__ == "__main__":
    main()

"""Train the reference tokenizer with deferred quantization, then a prior, and measure both.

The pieces of ``shrinkscope demo`` one at a time, for readers who want to change them:

    python examples/train_reference.py                       # stacked digits, K=512, the tuned deferred arm
    python examples/train_reference.py --arm early           # the standard early recipe (Euclidean codes)
    python examples/train_reference.py --arm expiry          # early + dead-code expiry (also: --arm l2)
    python examples/train_reference.py --dataset gaussians --num-codes 64
    torchrun --nproc_per_node 2 -m shrinkscope.reference.train --steps 200   # the same loop under DDP

Writes ``OUT/tokenizer.pt`` (open it with ``shrinkscope analyze``) and ``OUT/train.jsonl`` (the health
timeline from ``shrinkscope.watch``; render it with ``shrinkscope report``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from shrinkscope.reference.arms import ARM_NAMES, TUNED
from shrinkscope.reference.data import DATASETS, load_dataset
from shrinkscope.reference.evaluate import evaluate_arm
from shrinkscope.reference.prior import PriorConfig
from shrinkscope.reference.train import (
    TrainConfig,
    save_checkpoint,
    tokenizer_config_for,
    train_prior,
    train_tokenizer,
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="stacked-digits", choices=DATASETS)
    p.add_argument("--num-codes", type=int, default=512)
    p.add_argument("--code-dim", type=int, default=64)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--arm", default="deferred", choices=ARM_NAMES, help="settings from shrinkscope.reference.arms")
    p.add_argument("--samples", type=int, default=2000, help="prior samples for the diversity metrics")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="reference-run")
    a = p.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))

    data = load_dataset(a.dataset, seed=a.seed)
    # each arm's own tuned settings (docs/results.md "Tuning of the demo's arms")
    s = TUNED[a.arm]
    tcfg = tokenizer_config_for(data, num_codes=a.num_codes, code_dim=a.code_dim,
                                quantize_start=round(s.fraction * a.steps), decay=s.decay, l2_normalize=s.l2_normalize, dead_code_threshold=s.dead_code_threshold)
    cfg = TrainConfig(steps=a.steps, prior_steps=a.steps // 2, seed=a.seed, device=a.device, lr=s.lr)
    out = Path(a.out)
    tok, _ = train_tokenizer(tcfg, data, cfg, log_to=out / "train.jsonl")
    h, w = tok.grid
    prior, _ = train_prior(tok.tokenize(data.train.to(a.device)),
                           PriorConfig(num_codes=a.num_codes, seq_len=h * w, n_layer=2 if h * w > 1 else 1), cfg)
    res = evaluate_arm(tok, prior, data, num_samples=a.samples, seed=a.seed)
    save_checkpoint(out / "tokenizer.pt", tok, data, cfg, prior=prior)
    print(json.dumps({"recon_mse": res["recon_mse"], "health": res["health"]["metrics"],
                      "warnings": [w_["code"] for w_ in res["health"]["warnings"]],
                      "diversity": res["diversity"]}, indent=1))
    print(f"wrote {out / 'tokenizer.pt'} and {out / 'train.jsonl'}")


if __name__ == "__main__":
    main()

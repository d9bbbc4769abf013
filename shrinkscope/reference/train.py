"""Seeded, reproducible training loops for the reference tokenizer and prior (CPU, CUDA, DDP).

``train_tokenizer`` runs the quantization schedule of ``TokenizerConfig.quantize_start``: before it the
model is a plain continuous autoencoder; at that step the codebook is k-means-initialised on encoder
outputs of training data and quantization is switched on for the rest of the budget. With
``quantize_start=0`` the k-means runs on the untrained encoder (the usual early baseline).

Under ``torchrun`` (``torch.distributed`` initialised before the call) the tokenizer is wrapped in
DistributedDataParallel, each rank draws its own batches, and the quantizer's EMA statistics are summed
over ranks, so all ranks hold the same codebook. Run ``python -m shrinkscope.reference.train --help``.

Both schedules run through ``shrinkscope.defer`` (dogfooding; the quantizer has no other switch): the
deferred arm wraps it with ``switch=quantize_start``; the early arm hands the wrapper one pass of the untrained
encoder's outputs and switches at once. The tokenizer is watched by ``shrinkscope.watch`` when ``log_to`` is
given; the switch lands in the same timeline as a ``defer_switch`` event.
"""
from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..defer import DeferredQuantizer, defer, unwrap
from ..watch import watch
from .data import Dataset, load_dataset
from .prior import PriorConfig, TokenPrior
from .tokenizer import TokenizerConfig, VQTokenizer

CHECKPOINT_FORMAT = "shrinkscope.reference.tokenizer/1"
SAVED_ITEMS, SAVED_LATENTS = 2000, 20_000  # held-out items encoded / latent rows kept in a checkpoint


@dataclass
class TrainConfig:
    """Optimisation settings shared by both arms of a comparison (see docs/reference.md for the choice).

    Attributes:
        steps: total tokenizer steps (continuous phase included).
        batch_size: items per step (per rank under DDP).
        lr: Adam learning rate of the tokenizer.
        kmeans_items: training items whose latents feed the k-means codebook init.
        kmeans_iters: Lloyd iterations of that init.
        prior_steps / prior_batch_size / prior_lr: prior training.
        seed: seeds weights, batches, k-means and sampling.
        device: ``"cpu"`` or ``"cuda"``.
        watch_every: health logging period in steps (when logging is on).
    """

    steps: int = 3000
    batch_size: int = 128
    lr: float = 1e-3
    kmeans_items: int = 2000
    kmeans_iters: int = 20
    prior_steps: int = 2000
    prior_batch_size: int = 128
    prior_lr: float = 1e-3
    seed: int = 0
    device: str = "cpu"
    watch_every: int = 100


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _progress(total: int, desc: str, enabled: bool, position: int = 0):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True, position=position)


def _open_monitor(model: VQTokenizer, log_to: str | Path, every: int):
    Path(log_to).parent.mkdir(parents=True, exist_ok=True)
    # warnings go to the JSONL and the report, not to the terminal under the progress bar
    return watch(model, every=every, log_to=str(log_to), log_warnings=False)


@torch.no_grad()
def _observe_untrained(model: VQTokenizer, deferred: DeferredQuantizer, data: Dataset, cfg: TrainConfig,
                       device) -> None:
    """The early recipe: hand the untrained encoder's outputs on ``kmeans_items`` training items to the
    deferral wrapper (one pass-through forward), so its switch k-means-initialises on them."""
    g = torch.Generator().manual_seed(cfg.seed + 1)
    h, w = model.grid
    # as many latents as the deferred arm's reservoir holds, so both arms' k-means see the same amount
    n_items = max(cfg.kmeans_items, -(-deferred.reservoir_size // (h * w)))
    pick = torch.randperm(len(data.train), generator=g)[:n_items]
    deferred.train()
    deferred(model.encode(data.train[pick].to(device)))


def train_tokenizer(config: TokenizerConfig, data: Dataset, cfg: TrainConfig, *, log_to: str | Path | None = None,
                    progress: bool = True, desc: str = "tokenizer",
                    auto_switch: dict | None = None, bar_position: int = 0,
                    on_step: Callable[[int], None] | None = None) -> tuple[VQTokenizer, list[dict]]:
    """Train a tokenizer with the quantization schedule of ``config.quantize_start``.

    Args:
        config: tokenizer config; ``quantize_start`` must lie in ``[0, cfg.steps)``.
        data: a ``Dataset`` (items must match the config's input shape).
        cfg: optimisation settings.
        log_to: JSONL path for the health timeline (None: no logging).
        progress: show a tqdm bar (rank 0 only).
        desc: label of the bar.
        bar_position: terminal line of the bar (several arms training in parallel processes).
        auto_switch: when given (a dict of ``shrinkscope.defer`` options, e.g. ``{}``), the quantizer is wrapped
            in ``shrinkscope.defer(quantizer, switch="auto", **auto_switch)``, which decides the switch step
            itself; ``config.quantize_start`` is then ignored and set to the step the switch happened at.
        on_step: called with the step index after every optimisation step (the demo's one progress bar).

    Returns:
        ``(model, history)``: the trained tokenizer (on ``cfg.device``, unwrapped) and one dict per
        ``watch_every`` steps with ``step``, ``recon_mse``, ``commit_loss``.
    """
    if not 0 <= config.quantize_start < cfg.steps:
        raise ValueError(f"quantize_start={config.quantize_start} must lie in [0, steps={cfg.steps})")
    rank, world = _rank_world()
    device = torch.device(cfg.device)
    seed_everything(cfg.seed)
    model = VQTokenizer(config).to(device)
    h, w = model.grid
    # k-means sees as many latents as kmeans_items items give, whichever arm (and at least 4 per code)
    reservoir = max(cfg.kmeans_items * h * w, 4 * config.num_codes)
    if auto_switch is not None:
        opts = {"reservoir_size": reservoir, "kmeans_iters": cfg.kmeans_iters, **auto_switch}
        deferred = defer(model.quantizer, switch="auto", seed=cfg.seed, **opts)
    else:
        deferred = defer(model.quantizer, switch=max(1, config.quantize_start), seed=cfg.seed,
                         reservoir_size=reservoir, kmeans_iters=cfg.kmeans_iters)
        if config.quantize_start == 0:
            _observe_untrained(model, deferred, data, cfg, device)
            deferred.switch_now(reason="early")
    model.quantizer = deferred
    switched_at = 0 if deferred.switched else None
    wrapped: nn.Module = model
    if world > 1:
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                      else None)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    g = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
    train_x = data.train
    monitor = None
    if log_to is not None and rank == 0:
        monitor = deferred.monitor = _open_monitor(model, log_to, cfg.watch_every)
    history: list[dict] = []
    bar = _progress(cfg.steps, desc, progress and rank == 0, bar_position)
    model.train()
    try:
        for step in range(cfg.steps):
            idx = torch.randint(0, len(train_x), (cfg.batch_size,), generator=g)
            x = train_x[idx].to(device, non_blocking=True)
            out = wrapped(x)
            rec = (out["recon"] - x).pow(2).mean()
            loss = rec + out["commit_loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if switched_at is None and deferred.switched:
                switched_at = step  # the switch happened inside this step's forward
            if step % cfg.watch_every == 0 or step == cfg.steps - 1:
                history.append({"step": step, "recon_mse": rec.item(), "commit_loss": out["commit_loss"].item()})
                bar.set_postfix(mse=f"{rec.item():.4f}", vq=deferred.switched)
            bar.update(1)
            if on_step is not None:
                on_step(step)
    finally:
        bar.close()
        if monitor is not None:
            monitor.remove()
    unwrap(model)
    if switched_at is None:
        raise RuntimeError(f"auto switch did not fire within {cfg.steps} steps; raise steps or lower max_steps")
    model.config.quantize_start = switched_at
    model.eval()
    return model, history


def train_prior(tokens: torch.Tensor, config: PriorConfig, cfg: TrainConfig, *, progress: bool = True,
                desc: str = "prior", bar_position: int = 0,
                on_step: Callable[[int], None] | None = None) -> tuple[TokenPrior, list[dict]]:
    """Train the autoregressive prior on ``(N, h, w)`` (or ``(N, T)``) token grids.

    ``on_step`` is called with the step index after every optimisation step.

    Returns:
        ``(prior, history)`` with ``history`` entries ``{"step", "loss"}`` (nats per token).
    """
    rank, world = _rank_world()
    device = torch.device(cfg.device)
    seed_everything(cfg.seed + 7)
    seqs = tokens.reshape(len(tokens), -1).to(device)
    if (seqs < 0).any():
        raise ValueError("train_prior: tokens contain -1 (uninitialised codebook); train the tokenizer first")
    prior = TokenPrior(config).to(device)
    wrapped: nn.Module = prior
    if world > 1:
        wrapped = nn.parallel.DistributedDataParallel(prior, device_ids=[device.index] if device.type == "cuda"
                                                      else None)
    opt = torch.optim.AdamW(prior.parameters(), lr=cfg.prior_lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, cfg.prior_steps))
    g = torch.Generator().manual_seed(cfg.seed * 1000 + 17 + rank)
    history: list[dict] = []
    bar = _progress(cfg.prior_steps, desc, progress and rank == 0, bar_position)
    for step in range(cfg.prior_steps):
        b = seqs[torch.randint(0, len(seqs), (cfg.prior_batch_size,), generator=g).to(device)]
        logits = wrapped(b[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), b.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % cfg.watch_every == 0 or step == cfg.prior_steps - 1:
            history.append({"step": step, "loss": loss.item()})
            bar.set_postfix(loss=f"{loss.item():.3f}")
        bar.update(1)
        if on_step is not None:
            on_step(step)
    bar.close()
    prior.eval()
    return prior, history


def save_checkpoint(path: str | Path, tokenizer: VQTokenizer, data: Dataset, cfg: TrainConfig, *,
                    prior: TokenPrior | None = None, extra: dict | None = None) -> None:
    """Write a reference checkpoint (contract 5), loadable with ``torch.load(weights_only=True)``.

    It carries ``encoder_latents``: up to ``SAVED_LATENTS`` pre-quantization latents ``(N, D)`` of held-out
    items as the quantizer sees them, so ``shrinkscope analyze`` measures coverage without ``--latents``.
    """
    was_training, device = tokenizer.training, next(tokenizer.parameters()).device
    with torch.no_grad():
        latents = tokenizer.eval().latents(data.test[:SAVED_ITEMS].to(device)).float().cpu()
    tokenizer.train(was_training)
    keep = torch.randperm(len(latents), generator=torch.Generator().manual_seed(0))[:SAVED_LATENTS]  # seeded
    latents = latents[keep.sort().values] if len(latents) > SAVED_LATENTS else latents
    blob = {
        "format": CHECKPOINT_FORMAT,
        "config": tokenizer.config.to_dict(),
        "model": {k: v.detach().cpu() for k, v in tokenizer.state_dict().items()},
        "data": dict(data.info),
        "step": cfg.steps,
        "train": asdict(cfg),
        "encoder_latents": latents.contiguous(),
    }
    if prior is not None:
        blob["prior_config"] = prior.config.to_dict()
        blob["prior"] = {k: v.detach().cpu() for k, v in prior.state_dict().items()}
    if extra:
        blob.update(extra)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(blob, path)


def load_checkpoint(path_or_blob: str | Path | dict, *, device: str = "cpu"):
    """Rebuild ``(tokenizer, prior_or_None, blob)`` from a reference checkpoint path or loaded dict."""
    blob = path_or_blob if isinstance(path_or_blob, dict) else torch.load(path_or_blob, map_location="cpu",
                                                                          weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"not a shrinkscope reference checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    tok = VQTokenizer(TokenizerConfig.from_dict(blob["config"]))
    tok.load_state_dict(blob["model"])
    tok.to(device).eval()
    prior = None
    if "prior" in blob:
        prior = TokenPrior(PriorConfig.from_dict(blob["prior_config"]))
        prior.load_state_dict(blob["prior"])
        prior.to(device).eval()
    return tok, prior, blob


def main(argv: list[str] | None = None) -> int:
    """Train one tokenizer (+ prior); works under ``torchrun`` (gloo on CPU, nccl on CUDA)."""
    import os

    p = argparse.ArgumentParser(prog="python -m shrinkscope.reference.train", description=main.__doc__)
    p.add_argument("--dataset", default="stacked-digits")
    p.add_argument("--steps", type=int, default=TrainConfig.steps)
    p.add_argument("--prior-steps", type=int, default=0)
    p.add_argument("--quantize-start", type=int, default=0)
    p.add_argument("--num-codes", type=int, default=TokenizerConfig.num_codes)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="checkpoint path (written by rank 0)")
    a = p.parse_args(argv)
    if "WORLD_SIZE" in os.environ and not dist.is_initialized():
        dist.init_process_group("nccl" if a.device == "cuda" else "gloo")
        if a.device == "cuda":
            a.device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
            torch.cuda.set_device(a.device)
    data = load_dataset(a.dataset, seed=a.seed)
    tcfg = tokenizer_config_for(data, num_codes=a.num_codes, quantize_start=a.quantize_start)
    cfg = TrainConfig(steps=a.steps, prior_steps=a.prior_steps, seed=a.seed, device=a.device)
    tok, hist = train_tokenizer(tcfg, data, cfg)
    prior = None
    if a.prior_steps:
        prior, _ = train_prior(tok.tokenize(data.train.to(a.device)),
                               PriorConfig(num_codes=tcfg.num_codes, seq_len=tok.grid[0] * tok.grid[1]), cfg)
    rank, _ = _rank_world()
    # every rank reports: under DDP the codebooks (and weights) must agree across ranks
    print(json.dumps({"rank": rank, "final_recon_mse": hist[-1]["recon_mse"],
                      "codebook_checksum": float(tok.quantizer.embed.double().sum()),
                      "weights_checksum": float(sum(p.detach().double().sum() for p in tok.parameters()))}), flush=True)
    if rank == 0 and a.out:
        save_checkpoint(a.out, tok, data, cfg, prior=prior)
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def tokenizer_config_for(data: Dataset, **overrides: Any) -> TokenizerConfig:
    """A ``TokenizerConfig`` whose input side matches ``data`` (image channels/size or vector dim)."""
    if data.is_image:
        _, c, h, w = data.train.shape
        if h != w:
            raise ValueError(f"reference tokenizer needs square images, got {h}x{w}")
        base = {"in_channels": c, "image_size": h, "downsample": 1 if h <= 16 else 2}
    else:
        base = {"input_dim": data.train.shape[1], "hidden": 128}
    base.update(overrides)
    return TokenizerConfig(**base)


if __name__ == "__main__":
    raise SystemExit(main())

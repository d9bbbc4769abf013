"""One arm of ``shrinkscope demo``: its presets, and training, evaluating and saving it with every phase timed.

``run_arm`` is what each worker process of the demo runs: train the tokenizer (watched by
``shrinkscope.watch``, JSONL timeline ``<arm>.jsonl``), tokenize the training set and train the prior on it,
evaluate both on held-out data (``evaluate.evaluate_arm``), save the checkpoint ``<arm>.pt``. Each phase's CPU
and wall seconds go into the result (``phases.PhaseClock``) and its progress to the demo's one bar.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from .arms import ArmSettings
from .phases import COST, PhaseClock, Progress, evaluation_units
from .prior import PriorConfig
from .train import TrainConfig, save_checkpoint, tokenizer_config_for, train_prior, train_tokenizer

__all__ = ["BETA", "PRESETS", "DemoPreset", "auto_switch_options", "run_arm"]


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


def auto_switch_options(steps: int) -> dict:
    """``shrinkscope.defer`` options for the auto arm: check 40 times per budget, switch within 5-50% of it."""
    return {"check_every": max(5, steps // 40), "min_steps": max(1, steps // 20), "max_steps": max(2, steps // 2)}

"""Overhead of ``shrinkscope.watch`` on a training step: median step time with vs without the monitor.

Two identical conv VQ-VAEs (vector-quantize-pytorch) train side by side, one watched; trials alternate
A/B (and which goes first) so drift in machine load hits both alike. Each trial times a block of steps
(with a device sync at both ends) and the ratio of the medians is printed. Automatic reports are off
during timing (``every=0``): the report cost is measured separately and listed on its own line.

    python bench/bench_watch.py                      # (a) small model on CPU
    python bench/bench_watch.py --device cuda        # (b) batch 64, 16x16 latent grid, K=16384

Targets (docs/performance.md): ratio <= 1.03 on CPU, <= 1.02 on GPU, report steps excluded.
Needs only torch, vector-quantize-pytorch and shrinkscope.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import shrinkscope

PRESETS = {
    # device: (batch, image size, latent grid, channels, K, code dim)
    "cpu": dict(batch=32, image=32, grid=8, width=64, codes=512, dim=32),
    "cuda": dict(batch=64, image=64, grid=16, width=128, codes=16384, dim=32),
}


def conv_codec(image: int, grid: int, width: int, dim: int) -> tuple[nn.Module, nn.Module]:
    """Conv encoder (3, S, S) -> (dim, grid, grid) and the mirrored decoder (stride-2 stages)."""
    downs = (image // grid).bit_length() - 1
    enc, ch = [], 3
    for _ in range(downs):
        enc += [nn.Conv2d(ch, width, 4, stride=2, padding=1), nn.ReLU()]
        ch = width
    dec = [nn.Conv2d(dim, width, 1), nn.ReLU()]
    for _ in range(downs):
        dec += [nn.ConvTranspose2d(width, width, 4, stride=2, padding=1), nn.ReLU()]
    return nn.Sequential(*enc, nn.Conv2d(ch, dim, 1)), nn.Sequential(*dec, nn.Conv2d(width, 3, 3, padding=1))


class ConvVQVAE(nn.Module):
    """image (3, S, S) -> conv encoder -> (dim, grid, grid) -> VectorQuantize -> conv decoder."""

    def __init__(self, image: int, grid: int, width: int, codes: int, dim: int):
        super().__init__()
        from vector_quantize_pytorch import VectorQuantize

        self.encoder, self.decoder = conv_codec(image, grid, width, dim)
        self.quantizer = VectorQuantize(dim=dim, codebook_size=codes, decay=0.99, commitment_weight=0.25,
                                        accept_image_fmap=True)

    def forward(self, x):
        q, _, commit = self.quantizer(self.encoder(x))
        y = self.decoder(q)
        return F.mse_loss(y, x) + commit.sum()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _block(model, opt, batches, device) -> float:
    """Seconds per step over one block of steps."""
    _sync(device)
    t0 = time.perf_counter()
    for x in batches:
        loss = model(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)
    return (time.perf_counter() - t0) / len(batches)


def _hook_cost(monitor, model, x, device, reps: int = 50) -> float:
    """Seconds per call of the monitor's per-step work alone (extract + stream updates) on one real
    forward's inputs/outputs. On CPU this is what the A/B ratio measures, without the load noise; on
    CUDA it is mostly kernel-launch time, which overlaps with the GPU's work and so is an upper bound."""
    seen = {}

    def grab(mod, args, kwargs, out):
        seen.update(args=args, kwargs=kwargs, out=out)

    w = monitor.watched[0]
    h = w.module.register_forward_hook(grab, with_kwargs=True)
    with torch.no_grad():
        model(x)
    h.remove()
    run = lambda: monitor._collect(w, lambda: w.adapter.extract(w.module, seen["args"], seen["kwargs"], seen["out"]))
    for _ in range(5):
        run()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        run()
    _sync(device)
    return (time.perf_counter() - t0) / reps


def ab_medians(models: dict, opts: dict, batches: list, device, *, warmup: int, trials: int) -> tuple[float, float]:
    """Median seconds per step of models ``"A"`` and ``"B"`` over interleaved trial blocks (order alternating)."""
    for name in "AB":
        for _ in range(max(1, -(-warmup // len(batches)))):
            _block(models[name], opts[name], batches, device)
    times = {"A": [], "B": []}
    for t in range(trials):
        for name in ("AB" if t % 2 == 0 else "BA"):
            times[name].append(_block(models[name], opts[name], batches, device))
    return statistics.median(times["A"]), statistics.median(times["B"])


def report_ms(monitor, model, opt, batch: list, device, reps: int = 3) -> float:
    """Median milliseconds of one ``monitor.report()`` after one watched step."""
    out = []
    for _ in range(reps):
        _block(model, opt, batch, device)  # something in the window
        _sync(device)
        t0 = time.perf_counter()
        monitor.report()
        _sync(device)
        out.append(time.perf_counter() - t0)
    return statistics.median(out) * 1e3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="median training-step time with vs without shrinkscope.watch")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--trials", type=int, default=None, help="A/B trial pairs (default: 120 cpu, 31 cuda)")
    p.add_argument("--steps", type=int, default=None,
                   help="steps per trial block (default: 1 on cpu, so load bursts hit single steps; 10 on cuda)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--reservoir", type=int, default=4096)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1: stable timings on a shared box)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    for k, v in PRESETS["cpu"].items():
        p.add_argument(f"--{k}", type=int, default=None, help=f"default: {v} (cpu) / {PRESETS['cuda'][k]} (cuda)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    args.trials = args.trials or (120 if args.device == "cpu" else 31)
    args.steps = args.steps or (1 if args.device == "cpu" else 10)
    cfg = {k: (getattr(args, k) if getattr(args, k) is not None else v) for k, v in PRESETS[args.device].items()}
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    plain = ConvVQVAE(cfg["image"], cfg["grid"], cfg["width"], cfg["codes"], cfg["dim"]).to(device)
    watched = copy.deepcopy(plain)
    opts = {name: torch.optim.Adam(m.parameters(), lr=1e-4) for name, m in (("A", plain), ("B", watched))}
    monitor = shrinkscope.watch(watched, every=0, reservoir_size=args.reservoir, log_warnings=False)
    g = torch.Generator(device=device).manual_seed(0)
    batches = [torch.rand(cfg["batch"], 3, cfg["image"], cfg["image"], device=device, generator=g)
               for _ in range(args.steps)]
    models = {"A": plain, "B": watched}
    med_a, med_b = ab_medians(models, opts, batches, device, warmup=args.warmup, trials=args.trials)
    hook_s = _hook_cost(monitor, watched, batches[0], device)
    rep_ms = report_ms(monitor, watched, opts["B"], batches[:1], device)
    monitor.remove()

    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({args.threads} thread)",
        "config": cfg, "reservoir": args.reservoir, "trials": args.trials, "steps_per_trial": args.steps,
        "step_ms_without": med_a * 1e3, "step_ms_with": med_b * 1e3, "ratio": med_b / med_a,
        "report_ms": rep_ms, "hook_ms": hook_s * 1e3,
        "hook_share": hook_s / med_a,
    }
    if args.json:
        print(json.dumps(result))
        return 0
    c = cfg
    print(f"shrinkscope.watch overhead on {result['device']}: conv VQ-VAE, batch {c['batch']}, "
          f"{c['grid']}x{c['grid']} latent grid, K={c['codes']}, D={c['dim']}, reservoir {args.reservoir}")
    print(f"{args.trials} interleaved A/B trials x {args.steps} steps; automatic reports off while timing\n")
    rows = [("median step, no monitor", f"{result['step_ms_without']:.2f} ms"),
            ("median step, with monitor", f"{result['step_ms_with']:.2f} ms"),
            ("ratio (with / without)", f"{result['ratio']:.3f}"),
            ("hook host time alone, per step", f"{result['hook_ms']:.3f} ms"),
            ("1 + hook host time / step", f"{1 + result['hook_share']:.4f}"),
            ("one report (all metrics)", f"{result['report_ms']:.1f} ms")]
    w = max(len(r[0]) for r in rows)
    for name, val in rows:
        print(f"  {name:<{w}}  {val:>12}")
    target = 1.02 if device.type == "cuda" else 1.03
    print(f"\ntarget ratio <= {target}: {'met' if result['ratio'] <= target else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Cost of reading a VAR-style multi-scale quantizer scale by scale: ``watch`` replays its coarse-to-fine loop.

VAR's ``forward`` returns no ids, so the ``var`` family recomputes them (and each scale's residual) in the
forward hook, without grad. This prints, on the VAR look-alike of the tests (``tests/var_lookalike.py``, VAR's
default 4096 x 32 codebook and ten scales 1..16), the protocol of bench_watch.py (interleaved A/B trial blocks,
reports off while timing) plus peers measured in the same run: the family's per-call work with the ids VAR
embedded (the watched path) and with the lookup replayed (the fallback), and one no-grad forward of the
quantizer itself.

    python bench/bench_scales.py                       # CPU, 1 thread, batch 4
    python bench/bench_scales.py --device cuda --batch 64
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

import shrinkscope

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
from bench_watch import _sync, ab_medians, report_ms
from var_lookalike import TinyVQVAE

PATCHES = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


class Step(nn.Module):
    """The look-alike VQ-VAE returning its training loss (reconstruction + VQ loss)."""

    def __init__(self, vocab: int, cvae: int):
        super().__init__()
        self.vae = TinyVQVAE(vocab=vocab, cvae=cvae, patch_nums=PATCHES)
        self.quantize = self.vae.quantize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rec, _, vq_loss = self.vae(x)
        return F.mse_loss(rec, x) + vq_loss


def quantizer_ms(model: Step, x: torch.Tensor, device: torch.device, reps: int = 10) -> float:
    """Median milliseconds of one no-grad forward of the quantizer alone on this batch's features."""
    with torch.no_grad():
        f = model.vae.quant_conv(model.vae.encoder(x))
        out = []
        for _ in range(reps):
            _sync(device)
            t0 = time.perf_counter()
            model.quantize(f)
            _sync(device)
            out.append(time.perf_counter() - t0)
    return statistics.median(out) * 1e3


def replay_ms(model: Step, x: torch.Tensor, device: torch.device, reps: int = 5) -> tuple[float, float]:
    """Median milliseconds of the ``var`` family's per-call work: with the ids VAR embedded (the watched path)
    and with the lookup replayed too (the fallback when the embedding calls were not seen)."""
    from shrinkscope.families.scales import VarScales

    fam, q = VarScales(), model.quantize
    with torch.no_grad():
        f = model.vae.quant_conv(model.vae.encoder(x))
        q(f)
        ids = [c.indices for c in fam._replay(q, f)]
        out = {}
        for name, given in (("ids", ids), ("replay", None)):
            times = []
            for _ in range(reps):
                _sync(device)
                t0 = time.perf_counter()
                fam._replay(q, f, given)
                _sync(device)
                times.append(time.perf_counter() - t0)
            out[name] = statistics.median(times) * 1e3
    return out["ids"], out["replay"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="step time with vs without watch on a VAR-style quantizer")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--cvae", type=int, default=32)
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    plain = Step(args.vocab, args.cvae).to(device)
    watched = copy.deepcopy(plain)
    opts = {name: torch.optim.Adam(m.parameters(), lr=1e-4) for name, m in (("A", plain), ("B", watched))}
    monitor = shrinkscope.watch(watched, every=0, reservoir_size=4096, log_warnings=False)
    side = 2 * PATCHES[-1]
    x = torch.rand(args.batch, 3, side, side, device=device, generator=torch.Generator(device=device).manual_seed(0))
    med_a, med_b = ab_medians({"A": plain, "B": watched}, opts, [x], device, warmup=args.warmup, trials=args.trials)
    ids_ms, full_ms = replay_ms(plain, x, device)
    q_ms = quantizer_ms(plain, x, device)  # the unwatched copy: no hook in the timing
    rep_ms = report_ms(monitor, watched, opts["B"], [x], device, reps=1)
    monitor.remove()
    res = {"device": f"{args.device} ({args.threads} thread)" if device.type == "cpu" else torch.cuda.get_device_name(),
           "batch": args.batch, "vocab": args.vocab, "cvae": args.cvae, "scales": len(PATCHES), "trials": args.trials,
           "step_ms_without": med_a * 1e3, "step_ms_with": med_b * 1e3, "ratio": med_b / med_a,
           "hook_ms_with_var_ids": ids_ms, "hook_ms_replaying_lookup": full_ms, "quantizer_forward_ms": q_ms,
           "hook_over_quantizer_forward": ids_ms / q_ms, "report_ms": rep_ms}
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"watch on a VAR-style quantizer ({res['device']}): batch {args.batch}, {side}x{side} images, "
          f"V={args.vocab}, C={args.cvae}, {len(PATCHES)} scales {PATCHES}")
    for key in ("step_ms_without", "step_ms_with", "ratio", "hook_ms_with_var_ids", "hook_ms_replaying_lookup",
                "quantizer_forward_ms", "hook_over_quantizer_forward", "report_ms"):
        print(f"  {key:<30} {res[key]:10.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

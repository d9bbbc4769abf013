"""Watch a vector-quantize-pytorch autoencoder's codebook while it trains (CPU, about a minute).

A small conv VQ-VAE on sklearn's bundled 8x8 digits (no download). Two lines attach shrinkscope:

    monitor = shrinkscope.watch(model, every=50, log_to=out / "shrinkscope.jsonl")
    ...
    monitor.remove()

then the timeline is rendered with ``shrinkscope report`` (when the CLI is available).

    python examples/watch_vector_quantize.py [--steps 400] [--out watch-example]
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from vector_quantize_pytorch import VectorQuantize

import shrinkscope


class VQAutoencoder(nn.Module):
    """8x8 image -> 4x4 grid of 16-d latents -> K codes -> 8x8 image."""

    def __init__(self, num_codes: int = 128, dim: int = 16):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
                                     nn.Conv2d(32, dim, 4, stride=2, padding=1))
        self.quantizer = VectorQuantize(dim=dim, codebook_size=num_codes, decay=0.9, commitment_weight=0.25,
                                        accept_image_fmap=True)
        self.decoder = nn.Sequential(nn.ConvTranspose2d(dim, 32, 4, stride=2, padding=1), nn.ReLU(),
                                     nn.Conv2d(32, 1, 3, padding=1))

    def forward(self, x):
        quantized, _, commit = self.quantizer(self.encoder(x))
        recon = self.decoder(quantized)
        return recon, F.mse_loss(recon, x) + commit.sum()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--out", type=Path, default=Path("watch-example"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # a model this small runs fastest on one thread (no contention)
    images = torch.tensor(load_digits().images, dtype=torch.float32)[:, None] / 16.0  # (1797, 1, 8, 8)
    model = VQAutoencoder()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "shrinkscope.jsonl"
    log.unlink(missing_ok=True)

    monitor = shrinkscope.watch(model, every=args.every, log_to=log)  # <- line 1
    g = torch.Generator().manual_seed(args.seed)
    for step in range(1, args.steps + 1):
        batch = images[torch.randint(0, len(images), (args.batch,), generator=g)]
        _, loss = model(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % args.every == 0:
            print(f"step {step:4d}  loss {loss.item():.4f}")
    monitor.save_latents(args.out / "latents.pt")
    monitor.remove()  # <- line 2

    last = [json.loads(line) for line in log.read_text().splitlines()][-2]
    m = last["metrics"]
    print(f"\nlast window (step {last['step']}): utilization {m['utilization']:.2f}, "
          f"dead codes {m['dead_code_ratio']:.0%}, spread ratio {m['spread_ratio']:.2f}, "
          f"latent coverage {m['latent_coverage']:.2f}; warnings: {[w['code'] for w in last['warnings']]}")
    print(f"JSONL log: {log}")
    exe = shutil.which("shrinkscope")
    cmd = [exe] if exe else [sys.executable, "-m", "shrinkscope.cli"]
    try:
        done = subprocess.run([*cmd, "report", str(log), "--out", str(args.out / "timeline")], check=False)
        if done.returncode != 0:
            print(f"`shrinkscope report` exited with {done.returncode}; the JSONL is at {log}")
    except OSError as e:
        print(f"could not run `shrinkscope report` ({e}); the JSONL is at {log}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

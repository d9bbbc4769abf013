"""Early vs deferred quantization for a vector-quantize-pytorch autoencoder on sklearn's digits.

Two runs with the same architecture, data, seed and number of optimizer steps:

- ``early``: a plain ``VectorQuantize(kmeans_init=True)``, which k-means-initialises its codebook on the
  first batch of the *untrained* encoder and quantizes from step 0 (the usual recipe);
- ``deferred``: the same quantizer wrapped by ``shrinkscope.defer(..., switch="auto")``: the autoencoder
  trains continuously until the latents stop maturing, then the codebook is k-means-initialised on recent
  latents and quantization switches on.

Both codebooks are then measured with ``shrinkscope.codebook_health`` on the latents of held-out digits,
and the reconstruction MSE (through the quantizer) is reported. Runs on CPU in about a minute.

    python examples/defer_vector_quantize.py [--steps 1500] [--codebook-size 1024] [--seed 0]
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from vector_quantize_pytorch import VectorQuantize

import shrinkscope

SHOWN = ("spread_ratio", "spread_cosine", "effective_rank", "effective_dimension", "utilization_perplexity",
         "dead_code_ratio", "latent_coverage", "codebook_precision", "quantization_error")


def load_digits(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """sklearn's bundled 8x8 digits in [0, 1], split 80/20 with a fixed permutation."""
    from sklearn.datasets import load_digits as sk_digits

    x = torch.tensor(sk_digits().images, dtype=torch.float32)[:, None] / 16.0
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * x.shape[0])
    return x[perm[:cut]], x[perm[cut:]]


class Autoencoder(nn.Module):
    """8x8 image -> 4x4 grid of ``dim``-d latents -> quantizer -> 8x8 image."""

    def __init__(self, quantizer: nn.Module, dim: int):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
                                     nn.Conv2d(32, 64, 4, stride=2, padding=1), nn.ReLU(),
                                     nn.Conv2d(64, dim, 1))
        self.quantizer = quantizer
        self.decoder = nn.Sequential(nn.Conv2d(dim, 64, 1), nn.ReLU(),
                                     nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1), nn.ReLU(),
                                     nn.Conv2d(32, 1, 3, padding=1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        quantized, _, loss = self.quantizer(self.encoder(x))
        return self.decoder(quantized), loss


def train(model: Autoencoder, data: torch.Tensor, *, steps: int, batch: int, seed: int) -> float:
    """Adam on reconstruction MSE + the quantizer's loss; returns the wall time in seconds."""
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    start = time.perf_counter()
    for _ in range(steps):
        x = data[torch.randint(0, data.shape[0], (batch,), generator=gen)]
        recon, loss = model(x)
        total = (recon - x).pow(2).mean() + loss
        opt.zero_grad()
        total.backward()
        opt.step()
    return time.perf_counter() - start


@torch.no_grad()
def evaluate(model: Autoencoder, vq: VectorQuantize, data: torch.Tensor, name: str):
    """Health of ``vq``'s codebook on held-out latents, and held-out reconstruction MSE through it."""
    model.eval()
    z = model.encoder(data)
    latents = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    quantized, _, _ = vq(z)
    mse = float((model.decoder(quantized) - data).pow(2).mean())
    health = shrinkscope.codebook_health(vq.codebook, latents=latents, name=name)
    return health, mse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1500, help="optimizer steps of each run")
    parser.add_argument("--codebook-size", type=int, default=1024)
    parser.add_argument("--dim", type=int, default=8, help="latent / code dimension")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)  # a model this small runs fastest on one thread
    train_x, test_x = load_digits(args.seed)

    def quantizer() -> VectorQuantize:
        return VectorQuantize(dim=args.dim, codebook_size=args.codebook_size, kmeans_init=True, decay=0.95,
                              commitment_weight=0.25, accept_image_fmap=True)

    results = {}
    for arm in ("early", "deferred"):
        torch.manual_seed(args.seed)
        vq = quantizer()
        q: nn.Module = vq
        if arm == "deferred":
            q = shrinkscope.defer(vq, switch="auto", check_every=50, min_steps=args.steps // 5,
                                  max_steps=args.steps // 2, seed=args.seed)
        model = Autoencoder(q, args.dim)
        seconds = train(model, train_x, steps=args.steps, batch=args.batch, seed=args.seed)
        health, mse = evaluate(model, vq, test_x, arm)
        results[arm] = (health, mse, seconds, q)

    print(f"digits: {train_x.shape[0]} train / {test_x.shape[0]} held-out images, "
          f"{args.steps} steps per run, K={args.codebook_size}, D={args.dim}\n")
    print(f"{'metric':<24}{'early':>12}{'deferred':>12}")
    for key in SHOWN:
        row = [results[arm][0].metrics[key] for arm in ("early", "deferred")]
        print(f"{key:<24}" + "".join(f"{v:>12.4g}" if v is not None else f"{'-':>12}" for v in row))
    print(f"{'recon_mse (held-out)':<24}" + "".join(f"{results[a][1]:>12.4g}" for a in ("early", "deferred")))
    print(f"{'train seconds':<24}" + "".join(f"{results[a][2]:>12.1f}" for a in ("early", "deferred")))
    for arm in ("early", "deferred"):
        codes = [w["code"] for w in results[arm][0].warnings]
        print(f"warnings {arm}: {', '.join(codes) if codes else 'none'}")
    info = results["deferred"][3].switch_info
    print(f"\ndeferred switch: step {info['step']} ({info['reason']}), k-means on "
          f"{info['reservoir_rows']} latents took {info['kmeans_seconds']:.3f}s; evidence: "
          + ", ".join(f"{k}={v:.3g}" for k, v in info.get("evidence", {}).items() if isinstance(v, float)))


if __name__ == "__main__":
    main()

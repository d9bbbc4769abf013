"""Regenerate docs/gallery/: screenshots of each kind of report, as headless Chromium renders them.

The reports are made from real runs, not from invented numbers:

- ``analyze``: a codebook that shrank (64 codes drawn from a small blob at the centre of the latents) on 3000
  8-d latents from 12 Gaussian clusters;
- ``compare``: that codebook before, and k-means on the same latents after (what deferred quantization
  initialises from);
- ``timeline``: a small encoder + vector-quantize-pytorch ``VectorQuantize`` trained for 300 steps under
  ``shrinkscope.watch``, with the learning-rate drop at step 150 logged as an event.

Needs Chromium (``apt-get install chromium`` or ``$SHRINKSCOPE_CHROMIUM``) and the dev extras.
Run: ``python scripts/make_gallery.py`` (about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "report"))
from browser_probe import probe, screenshot  # noqa: E402

from shrinkscope import analyze, compare, kmeans, watch  # noqa: E402
from shrinkscope.report import (  # noqa: E402
    read_timeline,
    write_analysis_report,
    write_comparison_report,
    write_timeline_report,
)


def clustered_latents(n: int = 3000, d: int = 8, modes: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = 3.0 * torch.randn(modes, d, generator=g)
    return centres[torch.randint(0, modes, (n,), generator=g)] + 0.5 * torch.randn(n, d, generator=g)


def training_log(path: Path, seed: int = 0) -> None:
    """A real watched run: encoder + VectorQuantize on clustered data, JSONL written by ``watch``."""
    from vector_quantize_pytorch import VectorQuantize

    torch.manual_seed(seed)
    data = clustered_latents(6000, 16, seed=seed)
    enc = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 8))
    dec = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Linear(32, 16))
    model = torch.nn.ModuleDict(
        {"enc": enc, "vq": VectorQuantize(dim=8, codebook_size=64, decay=0.9), "dec": dec}
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    with watch(model, every=20, log_to=str(path), log_warnings=False) as mon:
        for step in range(300):
            if step == 150:
                for group in opt.param_groups:
                    group["lr"] = 3e-4
                mon.log_event("lr_drop", lr=3e-4)
            x = data[torch.randint(0, data.shape[0], (256,))]
            q, _, commit = model["vq"](model["enc"](x).unsqueeze(1))
            loss = (model["dec"](q.squeeze(1)) - x).pow(2).mean() + commit.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()


def _shoot(html: str, png: Path, width: int) -> None:
    found = probe(html, width=width)
    problems = found["broken"] + found["errors"] + found["console"] + found["overflow"]
    if problems:
        raise SystemExit(f"{html}: {problems[:5]}")
    screenshot(html, png, width=width, height=min(int(found["height"]) + 10, 8000))
    from PIL import Image  # matplotlib's dependency; a 256-colour palette keeps the gallery small

    Image.open(png).convert("RGB").quantize(256).save(png, optimize=True)
    print(f"{png}: {width} x {found['height']} px, {png.stat().st_size // 1024} KiB")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "gallery"), help="folder of the screenshots")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    z = clustered_latents()
    g = torch.Generator().manual_seed(1)
    shrunk = {"quantize.embedding.weight": z.mean(0) + 0.3 * torch.randn(64, 8, generator=g)}
    after = {"quantize.embedding.weight": kmeans(z, 64, seed=0)}
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # the pages show the short relative paths a user would type
        try:
            torch.save(shrunk, "shrunk.pt")
            torch.save(after, "deferred.pt")
            torch.save(z, "latents.pt")
            training_log(Path("run.jsonl"))
            pages = {
                "analyze": write_analysis_report(
                    analyze("shrunk.pt", latents="latents.pt", progress=False), "analyze"
                ),
                "compare": write_comparison_report(
                    compare("shrunk.pt", "deferred.pt", latents="latents.pt", progress=False), "compare"
                ),
                "timeline": write_timeline_report(read_timeline("run.jsonl"), "timeline"),
            }
            for kind, html in pages.items():
                _shoot(html, out / f"{kind}.png", 1280)
            _shoot(pages["analyze"], out / "analyze-narrow.png", 500)
        finally:
            os.chdir(here)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Progress bars (stderr, only after a second of work) and the report flags of the CLI.

Run: pytest tests/report -q
"""

from __future__ import annotations

import time

import numpy as np
import torch

from shrinkscope._progress import progress_bar, progress_iter
from shrinkscope.cli import build_parser, main


def test_bar_appears_during_one_long_step(capsys):
    with progress_bar(2, desc="measuring", unit="codebook", enabled=True, delay=0.3) as bar:
        time.sleep(1.2)  # one long step: the bar must show up while it runs, not only when it ends
        err_during = capsys.readouterr().err
        bar.update(2)
    assert "measuring" in err_during and "0/2" in err_during


def test_quick_work_prints_nothing(capsys):
    assert list(progress_iter(range(3), desc="plotting", unit="codebook", enabled=True)) == [0, 1, 2]
    assert list(progress_iter(range(3), desc="plotting", unit="codebook", enabled=None)) == [0, 1, 2]
    assert capsys.readouterr().err == ""


def test_slow_iteration_names_the_step_in_progress(capsys):
    for _ in progress_iter(
        ["quantize.layers.0"], desc="plotting", unit="codebook", enabled=True, label=lambda name: name
    ):
        time.sleep(1.7)
        err = capsys.readouterr().err
    assert "plotting" in err and "quantize.layers.0" in err


def test_umap_flags():
    parser = build_parser()
    args = parser.parse_args(["analyze", "x.pt", "--umap"])
    assert args.umap and args.progress is None
    args = parser.parse_args(["analyze", "x.pt", "--no-umap", "--no-progress"])  # kept for old scripts
    assert not args.umap and args.progress is False
    assert parser.parse_args(["compare", "a.pt", "b.pt", "--umap"]).umap


def test_analyze_out_draws_no_umap_by_default(tmp_path, capsys):
    g = torch.Generator().manual_seed(0)
    torch.save({"quantize.embedding.weight": torch.randn(32, 4, generator=g)}, tmp_path / "c.pt")
    np.save(tmp_path / "z.npy", torch.randn(300, 4, generator=g).numpy())
    code = main(
        [
            "analyze",
            str(tmp_path / "c.pt"),
            "--latents",
            str(tmp_path / "z.npy"),
            "--out",
            str(tmp_path / "r"),
            "--no-umap",
            "--progress",
        ]
    )
    assert code == 0 and sorted(p.name for p in (tmp_path / "r").iterdir()) == [
        "00_quantize.png",
        "health.json",
        "report.html",
    ]
    assert "report:" in capsys.readouterr().out

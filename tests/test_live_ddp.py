"""``analyze(model, data)`` under torch.distributed: 2 CPU processes (gloo), each on its own shard of the data.

Every rank must return exactly what one process returns over all the data (counts summed exactly; the latent
samples merged: with room for every row, the merged sample is every row), with labels riding along; a rank
whose codebook differs is flagged ``rank_divergence``; a rank whose forward fails stops every rank with an
error instead of a hang; and under ``torchrun`` the CLI prints and writes from rank 0 only.
"""
from __future__ import annotations

import json
import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ddp_testutil import free_port, init_gloo
from test_live_labels import Model, modes_data

import shrinkscope
from shrinkscope.live import LiveError

pytestmark = pytest.mark.slow
WORLD = 2


def _shards():
    x, y = modes_data(n=50)
    return x, y, list(x.tensor_split(WORLD)), list(y.tensor_split(WORLD))


def _worker(rank, port, out_dir, case):
    torch.set_num_threads(1)
    init_gloo(rank, WORLD, port)
    try:
        _, _, xs, ys = _shards()
        model = Model()
        if case == "diverged" and rank == 1:
            with torch.no_grad():
                model.quantizer.codebook[3] += 0.5
        if case == "fails" and rank == 1:
            xs[rank] = xs[rank][..., :2]  # the wrong width: this rank's forward raises
        try:
            res = shrinkscope.analyze(model, xs[rank], labels=ys[rank], batch_size=6, max_latents=1000)
            out = {"dict": res.to_dict(), "latents": res.entries[0].latents, "labels": res.entries[0].labels,
                   "notes": res.entries[0].notes}
        except LiveError as exc:
            out = {"error": str(exc)}
        torch.save(out, os.path.join(out_dir, f"{case}_{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _run(tmp_path, case):
    if not dist.is_available():
        pytest.skip("torch.distributed not available")
    mp.spawn(_worker, args=(free_port(), str(tmp_path), case), nprocs=WORLD, join=True)
    return [torch.load(tmp_path / f"{case}_{r}.pt", weights_only=False) for r in range(WORLD)]


def test_every_rank_returns_the_single_process_result(tmp_path):
    torch.set_num_threads(1)
    ranks = _run(tmp_path, "same")
    x, y, _, _ = _shards()
    single = shrinkscope.analyze(Model(), x, labels=y, batch_size=6, max_latents=1000)
    want = json.dumps(single.to_dict())
    for got in ranks:
        assert json.dumps(got["dict"]) == want  # counts, latents metrics, mode metrics, verdict: identical
        assert torch.equal(got["latents"], single.entries[0].latents)
        assert torch.equal(got["labels"], single.entries[0].labels)
        assert any("2 ranks" in n for n in got["notes"])
    assert single.to_dict()["codebooks"][0]["metrics"]["token_mode_entropy"] is not None


def test_a_rank_with_another_codebook_is_flagged_on_every_rank(tmp_path):
    ranks = _run(tmp_path, "diverged")
    for got in ranks:
        warns = [w for w in got["dict"]["codebooks"][0]["warnings"] if w["code"] == "rank_divergence"]
        assert len(warns) == 1 and "rank(s) 1 differ from rank 0 in 1 of 16 codes" in warns[0]["message"]
    assert json.dumps(ranks[0]["dict"]) == json.dumps(ranks[1]["dict"])


def test_a_failing_rank_stops_every_rank_with_an_error(tmp_path):
    ranks = _run(tmp_path, "fails")
    assert "running the model on batch 0 failed" in ranks[1]["error"]
    assert "other rank(s) failed" in ranks[0]["error"]


FACTORY = "from test_live_labels import Model\n\ndef build():\n    return Model()\n"


def _cli_worker(rank, port, tmp):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    sys.path.insert(0, tmp)
    torch.set_num_threads(1)
    from shrinkscope.cli import main

    out = open(os.path.join(tmp, f"stdout_{rank}.txt"), "w")  # noqa: SIM115 - closed below
    sys.stdout = out
    try:
        rc = main(["analyze", os.path.join(tmp, "m.pt"), "--model", "userddp:build", "--data",
                   os.path.join(tmp, "x.npy"), "--labels", os.path.join(tmp, "y.npy"), "--json", "--batch-size", "6",
                   "--out", os.path.join(tmp, f"rep_{rank}")])
    finally:
        sys.stdout = sys.__stdout__
        out.close()
    with open(os.path.join(tmp, f"rc_{rank}.txt"), "w") as f:
        f.write(str(rc))


def test_cli_under_torchrun_env_writes_from_rank_0_only(tmp_path):
    import numpy as np

    if not dist.is_available():
        pytest.skip("torch.distributed not available")
    (tmp_path / "userddp.py").write_text(FACTORY)
    x, y, _, _ = _shards()
    torch.save(Model().state_dict(), tmp_path / "m.pt")
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "y.npy", y.numpy())
    mp.spawn(_cli_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    assert [(tmp_path / f"rc_{r}.txt").read_text() for r in range(WORLD)] == ["0", "0"]
    got = json.loads((tmp_path / "stdout_0.txt").read_text())
    assert (tmp_path / "stdout_1.txt").read_text() == ""
    assert (tmp_path / "rep_0" / "report.html").exists() and not (tmp_path / "rep_1").exists()
    single = shrinkscope.analyze(Model(), x, labels=y, batch_size=6, max_latents=20_000)
    assert got["codebooks"][0]["metrics"] == json.loads(json.dumps(single.to_dict()))["codebooks"][0]["metrics"]

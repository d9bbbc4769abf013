"""Training loops: reproducibility, checkpoints + reference_latents, DDP with 2 gloo processes."""
import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch

from shrinkscope.reference import reference_latents
from shrinkscope.reference.data import stacked_digits
from shrinkscope.reference.prior import PriorConfig
from shrinkscope.reference.train import (
    CHECKPOINT_FORMAT,
    TrainConfig,
    load_checkpoint,
    save_checkpoint,
    tokenizer_config_for,
    train_prior,
    train_tokenizer,
)


def _run(seed):
    data = stacked_digits(n_train=400, n_test=60, seed=0)
    tc = tokenizer_config_for(data, num_codes=16, hidden=16, quantize_start=4)
    cfg = TrainConfig(steps=10, batch_size=16, kmeans_items=100, kmeans_iters=3, prior_steps=5,
                      prior_batch_size=8, seed=seed, watch_every=5)
    tok, _ = train_tokenizer(tc, data, cfg, progress=False)
    tokens = tok.tokenize(data.train)
    prior, _ = train_prior(tokens, PriorConfig(num_codes=16, seq_len=16, n_embd=16, n_head=2, n_layer=1), cfg,
                           progress=False)
    return data, cfg, tok, prior


def test_same_seed_same_models_other_seed_differs():
    _, _, t1, p1 = _run(0)
    _, _, t2, p2 = _run(0)
    _, _, t3, _ = _run(1)
    s1, s2, s3 = t1.state_dict(), t2.state_dict(), t3.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert all(torch.equal(a, b) for a, b in zip(p1.parameters(), p2.parameters()))
    assert not torch.equal(s1["quantizer.embed"], s3["quantizer.embed"])


def test_checkpoint_round_trip_and_reference_latents(tmp_path):
    data, cfg, tok, prior = _run(0)
    path = tmp_path / "ref.pt"
    save_checkpoint(path, tok, data, cfg, prior=prior)
    blob = torch.load(path, weights_only=True)  # contract 5: safe loading
    assert blob["format"] == CHECKPOINT_FORMAT and blob["step"] == 10
    assert blob["config"]["quantize_start"] == 4 and blob["data"]["dataset"] == "stacked-digits"
    assert {"quantizer.embed", "quantizer.cluster_size", "quantizer.embed_avg", "quantizer.initted",
            "quantizer.active"} <= set(blob["model"])
    tok2, prior2, _ = load_checkpoint(path)
    x = data.test[:5]
    assert torch.equal(tok.tokenize(x), tok2.tokenize(x))
    assert all(torch.equal(a, b) for a, b in zip(prior.parameters(), prior2.parameters()))
    lat = reference_latents(blob, max_items=30)
    assert lat.shape == (30 * 16, 8)
    assert torch.allclose(lat, tok.latents(data.test[:30]), atol=1e-6)


def test_reference_latents_unknown_data_gives_none(tmp_path):
    data, cfg, tok, _ = _run(0)
    save_checkpoint(tmp_path / "r.pt", tok, data, cfg)
    blob = torch.load(tmp_path / "r.pt", weights_only=True)
    blob["data"] = {"dataset": "path", "path": str(tmp_path / "gone")}
    assert reference_latents(blob) is None


@pytest.mark.slow
def test_ddp_two_gloo_processes_agree(tmp_path):
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port),
           "-m", "shrinkscope.reference.train", "--dataset", "gaussians", "--steps", "12", "--quantize-start", "6",
           "--num-codes", "16", "--out", str(tmp_path / "ddp.pt")]
    # own session: on a timeout the whole group (launcher + both workers) is killed, no orphans left
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, err[-2000:]
    # the two workers share the launcher's stdout, so one rank's line can land glued to the other's:
    # decode every JSON object in the stream rather than one per line
    dec, lines, i = json.JSONDecoder(), [], out.find("{")
    while i != -1:
        obj, end = dec.raw_decode(out, i)
        lines.append(obj)
        i = out.find("{", end)
    assert sorted(ln["rank"] for ln in lines) == [0, 1]
    # DDP averaged gradients and all-reduced EMA statistics: both ranks hold identical models
    assert lines[0]["codebook_checksum"] == lines[1]["codebook_checksum"]
    assert lines[0]["weights_checksum"] == pytest.approx(lines[1]["weights_checksum"], rel=1e-6)
    assert torch.load(tmp_path / "ddp.pt", weights_only=True)["config"]["quantize_start"] == 6

"""The Lightning callback with real ``lightning``: reports at the monitor's steps, the trainer's TensorBoard and
W&B (offline) loggers get the records, and the hooks are gone after ``fit``."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

L = pytest.importorskip("lightning")
vqp = pytest.importorskip("vector_quantize_pytorch")

from shrinkscope.integrations.lightning import ShrinkscopeCallback

STEPS, EVERY, BATCH, TOKENS = 6, 3, 4, 16


class TinyTokenizer(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(8, 4)
        self.vq = vqp.VectorQuantize(dim=4, codebook_size=32)
        self.dec = nn.Linear(4, 8)

    def training_step(self, batch, _):
        (x,) = batch
        q, _, commit = self.vq(self.enc(x))
        return nn.functional.mse_loss(self.dec(q), x) + commit.sum()

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def _loader():
    x = torch.randn(STEPS * BATCH, TOKENS, 8, generator=torch.Generator().manual_seed(0))
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=BATCH)


def _fit(tmp_path, loggers):
    torch.manual_seed(0)
    model = TinyTokenizer()
    cb = ShrinkscopeCallback(every=EVERY, log_to=tmp_path / "run.jsonl", log_warnings=False)
    trainer = L.Trainer(max_steps=STEPS, accelerator="cpu", devices=1, logger=loggers, callbacks=[cb],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    trainer.fit(model, _loader())
    recs = [json.loads(x) for x in (tmp_path / "run.jsonl").read_text().splitlines()]
    return model, cb, recs


def test_lightning_callback_reports_and_detaches(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = TensorBoardLogger(tmp_path / "tb", name="", version=0)
    model, cb, recs = _fit(tmp_path, [tb])
    assert [(r["step"], r["scope"]) for r in recs] == [(s, sc) for s in (3, 6) for sc in ("window", "cumulative")]
    assert cb.monitor is None
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0
    # every training forward counted: the cumulative usage at step 6 rests on all 6 x 4 x 16 ids
    last = recs[-1]["metrics"]
    assert last["utilization_perplexity"] is not None
    ea = EventAccumulator(str(tmp_path / "tb" / "version_0"))
    ea.Reload()
    tag = "shrinkscope/vq/cumulative/dead_code_ratio"
    assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in ea.Scalars(tag)] == \
        [(r["step"], r["metrics"]["dead_code_ratio"]) for r in recs if r["scope"] == "cumulative"]


def test_lightning_callback_to_wandb_logger(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    wl = WandbLogger(offline=True, save_dir=str(tmp_path), project="shrinkscope-test")
    try:
        _, _, recs = _fit(tmp_path, [wl])
        summary = wl.experiment.summary
        assert summary["shrinkscope/step"] == STEPS
        assert summary["shrinkscope/vq/cumulative/dead_code_ratio"] == pytest.approx(
            recs[-1]["metrics"]["dead_code_ratio"], rel=1e-12)
    finally:
        wl.experiment.finish()
        wandb.teardown()  # stop W&B's service and its threads: nothing of it outlives the test

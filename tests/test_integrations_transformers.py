"""The transformers callback with a real ``Trainer`` on a tiny VQ model built from its config (no download)."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
vqp = pytest.importorskip("vector_quantize_pytorch")

from shrinkscope.integrations.transformers import ShrinkscopeTrainerCallback
from shrinkscope.sinks import Sink

BATCH, TOKENS = 4, 16


class TinyVQConfig(transformers.PretrainedConfig):
    model_type = "tiny-vq"

    def __init__(self, dim=8, code_dim=4, codebook_size=32, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.code_dim, self.codebook_size = dim, code_dim, codebook_size


class TinyVQModel(transformers.PreTrainedModel):
    config_class = TinyVQConfig

    def __init__(self, config):
        super().__init__(config)
        self.enc = nn.Linear(config.dim, config.code_dim)
        self.vq = vqp.VectorQuantize(dim=config.code_dim, codebook_size=config.codebook_size)
        self.dec = nn.Linear(config.code_dim, config.dim)
        self.post_init()

    def _init_weights(self, module):
        pass  # keep torch's own initialisation (and the quantizer's codebook)

    def forward(self, x):
        q, _, commit = self.vq(self.enc(x))
        return {"loss": nn.functional.mse_loss(self.dec(q), x) + commit.sum()}


class Items(torch.utils.data.Dataset):
    def __init__(self, n):
        self.x = torch.randn(n, TOKENS, 8, generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i]}


class Counts(Sink):
    wants_counts = True

    def __init__(self):
        self.seen = []

    def write(self, record):
        if record.get("scope") == "cumulative":
            self.seen.append((record["step"], int(record["counts"].sum())))


def test_trainer_callback_reports_on_global_steps(tmp_path):
    torch.manual_seed(0)
    model = TinyVQModel(TinyVQConfig())
    counts = Counts()
    cb = ShrinkscopeTrainerCallback(every=2, log_to=tmp_path / "run.jsonl", sinks=[counts], log_warnings=False)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=2, report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True,
        remove_unused_columns=False, logging_strategy="no", dataloader_num_workers=0)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Items(64), callbacks=[cb])
    trainer.train()
    recs = [json.loads(x) for x in (tmp_path / "run.jsonl").read_text().splitlines()]
    assert [(r["step"], r["scope"]) for r in recs] == [(s, sc) for s in (2, 4) for sc in ("window", "cumulative")]
    # 2 micro-batches per optimizer step: every forward's ids are counted, in the step they belong to
    assert counts.seen == [(2, 2 * 2 * BATCH * TOKENS), (4, 4 * 2 * BATCH * TOKENS)]
    assert cb.monitor is None and sum(len(m._forward_hooks) for m in model.modules()) == 0


def test_every_validated():
    with pytest.raises(ValueError):
        ShrinkscopeTrainerCallback(every=-1)

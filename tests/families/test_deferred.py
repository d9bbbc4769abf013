"""watch() reads a quantizer wrapped by shrinkscope.defer: latents during the warm-up, codes after the switch."""
import json

import torch

import shrinkscope
from shrinkscope.families import find_quantizers
from shrinkscope.families.deferred import Deferred
from optional import vqp


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = torch.nn.Linear(6, 8)
        self.quantizer = vqp.VectorQuantize(dim=8, codebook_size=32, kmeans_init=True)

    def forward(self, x):
        q, idx, loss = self.quantizer(self.enc(x))
        return q.sum() + loss.sum()


def test_watch_follows_a_deferred_quantizer_through_the_switch(tmp_path):
    torch.manual_seed(0)
    model = _Model()
    model.quantizer = shrinkscope.defer(model.quantizer, switch=20, reservoir_size=256)
    (name, module, adapter), = find_quantizers(model)
    assert name == "quantizer" and isinstance(adapter, Deferred)
    log = tmp_path / "run.jsonl"
    with shrinkscope.watch(model, every=10, log_to=log) as monitor:
        for _ in range(40):
            model(torch.randn(4, 16, 6)).backward()
        assert monitor.names() == ["quantizer"]
        assert int(monitor.counts("quantizer").sum()) > 0
    records = [json.loads(line) for line in log.read_text().splitlines()]
    windows = [r for r in records if r.get("scope") == "window"]
    assert [r["step"] for r in windows] == [10, 20, 30, 40]
    # warm-up windows already carry the latents' spectrum; after the switch, usage of the k-means codebook
    assert all(r["metrics"]["latent_effective_rank"] is not None for r in windows)
    assert windows[-1]["metrics"]["utilization"] > 0
    assert module.switched


class _ResidualModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = torch.nn.Linear(6, 8)
        self.quantizer = vqp.ResidualVQ(dim=8, codebook_size=16, num_quantizers=2)

    def forward(self, x):
        q, _idx, loss = self.quantizer(self.enc(x))
        return q.sum() + loss.sum()


def test_watch_reads_a_deferred_residual_quantizer_per_stage_from_the_switch(tmp_path, caplog):
    """Stages run only after the switch: no data (and no "yielded no data" warning) during the warm-up, then
    per-stage records with the stage's own residual as latents."""
    torch.manual_seed(0)
    model = _ResidualModel()
    model.quantizer = shrinkscope.defer(model.quantizer, switch=15, reservoir_size=128)
    log = tmp_path / "run.jsonl"
    with caplog.at_level("WARNING", logger="shrinkscope"), shrinkscope.watch(model, every=10, log_to=log) as mon:
        assert mon.names() == ["quantizer/layers.0", "quantizer/layers.1"]
        for _ in range(30):
            model(torch.randn(4, 16, 6)).backward()
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert not [r for r in records if r.get("event") == "no_data"]
    assert "yielded no data" not in caplog.text
    after = [r for r in records if r.get("scope") == "window" and r["step"] == 30]
    assert sorted(r["name"] for r in after) == ["quantizer/layers.0", "quantizer/layers.1"]
    assert all(r["metrics"]["spread_ratio"] is not None and r["metrics"]["utilization"] > 0 for r in after)

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

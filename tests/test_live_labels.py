"""Labels in a live analysis: ``analyze(model, data, labels=...)`` gives the mode-level metrics exactly as
``analyze(ckpt, latents=..., labels=...)`` does on the same (latent, label) rows.

Reference: the data are Gaussian modes far apart along the first axis, so each latent row's true mode is
``round(row[0] / SEP)``; every sampled row must carry that label.
"""
from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import shrinkscope
from shrinkscope.cli import main
from shrinkscope.live import LiveError

SEP, K, D = 20.0, 16, 3


class FrozenQuantizer(nn.Module):
    """Nearest-code lookup on a fixed codebook (a quantizer whose ids depend on the data only)."""

    def __init__(self, k: int = K, d: int = D, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        cb = torch.randn(k, d, generator=g)
        cb[:, 0] += SEP * torch.arange(k).remainder(3).float()  # codes spread over the three modes
        self.register_buffer("codebook", cb)

    def forward(self, x):
        ids = torch.cdist(x, self.codebook).argmin(-1)
        return self.codebook[ids], ids


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.quantizer = FrozenQuantizer()

    def forward(self, x):  # (B, T, D) sequences: every position of an input gets its label
        return self.quantizer(x)


def modes_data(n: int = 60, t: int = 5, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, t, D, generator=g)
    x[..., 0] += SEP * y[:, None].float()
    return x, y


def test_every_sampled_row_carries_its_inputs_label_and_metrics_match_the_file_path():
    x, y = modes_data()
    model = Model()
    live = shrinkscope.analyze(model, x, labels=y, batch_size=7, max_latents=200)
    (e,) = live.entries
    assert e.latents.shape == (200, D) and e.labels.shape == (200,)
    assert torch.equal(e.labels, (e.latents[:, 0] / SEP).round().long())  # the true mode of every row
    m = e.health.metrics
    assert m["token_mode_entropy"] is not None and m["shrunk_mode_share"] is not None
    assert "labels" in e.health.verdict.evidence
    # the file path on the same rows and labels gives the same numbers
    sd = {"quantizer.codebook": model.quantizer.codebook}
    static = shrinkscope.analyze(sd, latents=e.latents, labels=e.labels, keys=["quantizer.codebook"],
                                 max_latents=None)
    ms = static.entries[0].health.metrics
    for key in ("token_mode_entropy", "shrunk_mode_share", "spread_ratio", "quantization_error"):
        assert m[key] == pytest.approx(ms[key], rel=1e-9, abs=1e-12), key


def test_labels_from_xy_batches_equal_labels_given_in_data_order():
    x, y = modes_data()
    a = shrinkscope.analyze(Model(), x, labels=y, batch_size=8)
    b = shrinkscope.analyze(Model(), DataLoader(TensorDataset(x, y), batch_size=8), labels=True)
    assert json.dumps(a.to_dict()) == json.dumps(b.to_dict())
    assert torch.equal(a.entries[0].labels, b.entries[0].labels)


def test_without_labels_the_mode_metrics_stay_null():
    x, _ = modes_data()
    result = shrinkscope.analyze(Model(), x)
    (e,) = result.entries
    assert e.labels is None and e.health.metrics["token_mode_entropy"] is None
    (missing,) = [m for m in e.health.verdict.missing if m["input"] == "labels"]
    assert "labels=True for (x, y)" in missing["how"] and "--latents" not in missing["how"]
    assert "--labels FILE with --model/--data" in result.verdict()


@pytest.mark.parametrize("labels, match", [
    (torch.zeros(59, dtype=torch.long), "59 labels for more data rows"),
    (torch.zeros(61, dtype=torch.long), "61 labels for 60 data rows"),
    (torch.zeros(60), "integer mode id"),
    (torch.full((60,), 2 ** 30), "within"),
])
def test_bad_labels_are_one_clear_error(labels, match):
    x, _ = modes_data()
    model = Model()
    with pytest.raises(LiveError, match=match):
        shrinkscope.analyze(model, x, labels=labels)
    assert all(not m._forward_hooks for m in model.modules())


def test_labels_true_needs_xy_batches():
    x, _ = modes_data()
    with pytest.raises(LiveError, match=r"\(x, y\) batches"):
        shrinkscope.analyze(Model(), x, labels=True)


FACTORY = '''
import torch
from test_live_labels import Model

def build():
    return Model()
'''


def test_cli_labels_with_model_and_data(tmp_path, monkeypatch, capsys):
    import test_live_labels  # noqa: F401 - the factory below imports it by name

    (tmp_path / "usermodes.py").write_text(textwrap.dedent(FACTORY))
    monkeypatch.syspath_prepend(str(tmp_path))
    x, y = modes_data()
    model = Model()
    torch.save(model.state_dict(), tmp_path / "m.pt")
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "y.npy", y.numpy())
    rc = main(["analyze", str(tmp_path / "m.pt"), "--model", "usermodes:build", "--data", str(tmp_path / "x.npy"),
               "--labels", str(tmp_path / "y.npy"), "--json", "--batch-size", "9"])
    out = capsys.readouterr().out
    assert rc == 0
    got = json.loads(out)["codebooks"][0]["metrics"]
    want = shrinkscope.analyze(model, x, labels=y, batch_size=9).entries[0].health.metrics
    assert got["token_mode_entropy"] == pytest.approx(want["token_mode_entropy"])
    assert got["shrunk_mode_share"] == pytest.approx(want["shrunk_mode_share"])
    np.save(tmp_path / "y_short.npy", y[:10].numpy())
    rc = main(["analyze", str(tmp_path / "m.pt"), "--model", "usermodes:build", "--data", str(tmp_path / "x.npy"),
               "--labels", str(tmp_path / "y_short.npy")])
    err = capsys.readouterr().err
    assert rc == 2 and "10 labels for 60 rows" in err and len(err.strip().splitlines()) == 1


def test_labels_reach_every_stage_of_a_real_residual_vq():
    vqp = pytest.importorskip("vector_quantize_pytorch")
    torch.manual_seed(0)
    rvq = vqp.ResidualVQ(dim=D, codebook_size=8, num_quantizers=2)
    x, y = modes_data(n=40)
    rvq(x)  # a training-mode forward: codebooks k-means initialised
    result = shrinkscope.analyze(rvq, x, labels=y, batch_size=8)
    assert [e.health.name for e in result.entries] == ["layers.0", "layers.1"]
    for e in result.entries:
        assert e.labels is not None and e.labels.shape[0] == e.latents.shape[0] == 40 * 5
        assert e.health.metrics["token_mode_entropy"] is not None
    # stage 0 sees the inputs themselves: each row's label is its true mode
    first = result.entries[0]
    assert torch.equal(first.labels, (first.latents[:, 0] / SEP).round().long())

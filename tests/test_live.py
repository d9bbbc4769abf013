"""analyze(model, data): a live model run under the watch hooks; counts exact, latents bounded, model untouched.

References are the slow obvious ones: run the same model over the same data by hand and count its ids.
"""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import shrinkscope
from shrinkscope.cli import main
from shrinkscope.live import LiveError, analyze_model
from shrinkscope.reference.tokenizer import TokenizerConfig, VQTokenizer

vqp = pytest.importorskip("vector_quantize_pytorch")


def _tokenizer(seed: int = 0) -> VQTokenizer:
    torch.manual_seed(seed)
    tok = VQTokenizer(TokenizerConfig(num_codes=32, code_dim=4, hidden=16))
    with torch.no_grad():  # k-means-initialised codebook, as after the first training step
        tok.quantizer.init_codebook(tok.latents(torch.rand(64, 3, 8, 8)))
    return tok


def _images(n: int = 70, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_reference_tokenizer_counts_exact_and_model_untouched():
    tok = _tokenizer()
    tok.train()
    tok.decoder.eval()  # a frozen submodule: must stay in eval afterwards
    before, x = _snapshot(tok), _images()
    grad_seen = []
    h = tok.quantizer.register_forward_hook(lambda *a: grad_seen.append(torch.is_grad_enabled()))
    result = shrinkscope.analyze(tok, x, batch_size=16, max_latents=100)
    h.remove()

    assert grad_seen == [False] * 5  # every batch (70 rows / 16) ran, without autograd
    with torch.no_grad():
        tok.eval()
        ids = tok.tokenize(x)
    expected = torch.bincount(ids.reshape(-1), minlength=32)
    (entry,) = result.entries
    assert torch.equal(entry.found.counts, expected)  # exact, every batch
    assert entry.health.counts.sum() == 70 * 16
    assert entry.latents.shape == (100, 4)  # reservoir bounded by max_latents (1120 seen)
    # the sampled rows are real latents of this model
    z = tok.latents(x)
    assert torch.cdist(entry.latents, z, compute_mode="donot_use_mm_for_euclid_dist").min(1).values.max() < 1e-5
    # model back as it was: flags per module, no hooks, same weights and EMA buffers
    tok.train()
    tok.decoder.eval()
    assert all(m.training == (not n.startswith("decoder")) for n, m in tok.named_modules())
    assert _hooks(tok) == 0
    assert all(torch.equal(before[k], v) for k, v in tok.state_dict().items())
    d = result.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["codebooks"][0]["name"] == "quantizer" and d["codebooks"][0]["metrics"]["spread_ratio"] is not None


def test_residual_vq_dataloader_per_stage_counts_match_direct_run():
    torch.manual_seed(0)
    rvq = vqp.ResidualVQ(dim=8, codebook_size=16, num_quantizers=3)
    rvq(torch.randn(4, 32, 8))  # train-mode forward: codebooks initialised
    x = torch.randn(45, 10, 8)
    loader = DataLoader(TensorDataset(x, torch.zeros(45)), batch_size=8)  # (inputs, targets) items
    result = shrinkscope.analyze(rvq, loader, max_latents=64)
    rvq.eval()
    with torch.no_grad():
        _, idx, _ = rvq(x)
    assert [e.health.name for e in result.entries] == ["layers.0", "layers.1", "layers.2"]
    for q, e in enumerate(result.entries):
        assert torch.equal(e.found.counts, torch.bincount(idx[..., q].reshape(-1), minlength=16))
        assert e.latents.shape == (64, 8)
    # the geometry is the codebook's own: same numbers as analysing the module's state dict
    static = {h.name: h for h in shrinkscope.analyze(rvq).codebooks}
    for h in result.codebooks:
        assert h.effective_rank == pytest.approx(static[h.name].effective_rank, rel=1e-9)


def test_forward_option_runs_only_the_encoder_path():
    tok = _tokenizer()

    class Boom(nn.Module):
        def forward(self, z):
            raise RuntimeError("decoder must not run")

    tok.decoder = Boom()
    result = shrinkscope.analyze(tok, _images(20).numpy(), forward=lambda m, x: m.quantizer(m.encode(x)))
    assert int(result.entries[0].found.counts.sum()) == 20 * 16


def test_max_batches_and_iterable_of_dicts():
    vq = vqp.VectorQuantize(dim=4, codebook_size=8)
    batches = [{"x": torch.randn(2, 5, 4)} for _ in range(6)]
    result = analyze_model(vq, batches, max_batches=4)
    assert int(result.entries[0].found.counts.sum()) == 4 * 10


def test_implicit_codebook_usage_exact():
    fsq = vqp.FSQ(levels=[4, 4, 3])
    x = torch.randn(30, 7, 3)
    result = shrinkscope.analyze(fsq, x, batch_size=4)
    with torch.no_grad():
        _, idx = fsq(x)
    (e,) = result.entries
    counts = torch.bincount(idx.reshape(-1), minlength=48)
    assert torch.equal(e.found.counts, counts)
    p = counts.double() / counts.sum()
    p = p[p > 0]
    assert e.health.utilization_perplexity == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=1e-9)
    assert e.health.spread_ratio is None


def test_implicit_codebook_report(tmp_path):
    from shrinkscope.report import write_analysis_report

    result = shrinkscope.analyze(vqp.LFQ(dim=4, codebook_size=16), torch.randn(8, 6, 4))
    page = write_analysis_report(result, str(tmp_path), umap=False)
    assert (tmp_path / "00_LFQ.png").stat().st_size > 0 and "LFQ" in Path(page).read_text()


def test_failing_forward_restores_model_and_raises_one_line():
    vq = vqp.VectorQuantize(dim=4, codebook_size=8)
    vq.train()
    with pytest.raises(LiveError, match="batch 0 failed"):
        shrinkscope.analyze(vq, torch.randn(3, 5, 4), forward=lambda m, x: m(x[..., :3]))
    assert vq.training and _hooks(vq) == 0


@pytest.mark.parametrize("data, match", [([], "no batch"), ("x.npy", "iterable"),
                                         (np.array(["a"]), "numeric")])
def test_bad_data(data, match):
    with pytest.raises(LiveError, match=match):
        shrinkscope.analyze(vqp.VectorQuantize(dim=4, codebook_size=8), data)


def test_no_quantizer_and_wrong_options():
    with pytest.raises(LiveError, match="no quantizer"):
        shrinkscope.analyze(nn.Linear(3, 3), torch.randn(4, 3))
    with pytest.raises(LiveError, match="no quantizer call"):  # the forward never reaches the quantizer
        shrinkscope.analyze(vqp.VectorQuantize(dim=4, codebook_size=8), torch.randn(4, 4), forward=lambda m, x: x)
    with pytest.raises(TypeError, match="nn.Module"):
        shrinkscope.analyze({"w": torch.randn(4, 4)}, torch.randn(4, 4))
    with pytest.raises(TypeError):
        shrinkscope.analyze(nn.Linear(3, 3), batch_size=3)  # a live option without data


# ---- CLI ------------------------------------------------------------------------------------------------

FACTORY = '''
import torch
from shrinkscope.reference.tokenizer import TokenizerConfig, VQTokenizer

def build():
    return VQTokenizer(TokenizerConfig(num_codes=32, code_dim=4, hidden=16))

def not_a_model():
    return 3
'''


@pytest.fixture
def user_code(tmp_path, monkeypatch):
    (tmp_path / "usertok.py").write_text(textwrap.dedent(FACTORY))
    monkeypatch.syspath_prepend(str(tmp_path))
    tok = _tokenizer()
    torch.save({"format": "something-else", "model": tok.state_dict(), "step": 3}, tmp_path / "run.pt")
    np.save(tmp_path / "val.npy", _images(24).numpy())
    return tmp_path, tok


def test_cli_model_and_data_json(user_code, capsys):
    tmp, tok = user_code
    rc = main(["analyze", str(tmp / "run.pt"), "--model", "usertok:build", "--data", str(tmp / "val.npy"),
               "--json", "--batch-size", "10"])
    out = capsys.readouterr().out
    assert rc == 0
    d = json.loads(out)
    tok.eval()
    ids = tok.tokenize(_images(24))
    (cb,) = d["codebooks"]
    assert cb["name"] == "quantizer" and cb["num_codes"] == 32
    p = torch.bincount(ids.reshape(-1), minlength=32).double() / ids.numel()
    assert cb["metrics"]["dead_code_ratio"] == pytest.approx(float((p == 0).double().mean()))
    assert cb["metrics"]["latent_coverage"] is not None


def test_cli_text_and_report(user_code, capsys):
    tmp, _ = user_code
    rc = main(["analyze", str(tmp / "run.pt"), "--model", "usertok:build", "--data", str(tmp / "val.npy"),
               "--out", str(tmp / "rep"), "--no-umap"])
    out = capsys.readouterr().out
    assert rc == 0 and "quantizer" in out
    assert (tmp / "rep" / "report.html").exists()
    assert "live: usertok:build" in (tmp / "rep" / "report.html").read_text()


@pytest.mark.parametrize("argv, match", [
    (["--model", "usertok:not_a_model"], "expected a torch.nn.Module"),
    (["--model", "usertok"], "package.module:factory"),
    (["--model", "no_such_module_xyz:build"], "cannot import"),
    (["--model", "usertok:build", "--latents", "z.npy"], "do not apply"),
    (["--model", "usertok:build", "--key", "quantizer.embed"], "do not apply"),
])
def test_cli_bad_model_spec(user_code, capsys, argv, match):
    tmp, _ = user_code
    rc = main(["analyze", str(tmp / "run.pt"), "--data", str(tmp / "val.npy"), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and match in err and len(err.strip().splitlines()) == 1


def test_cli_weights_that_do_not_fit(user_code, capsys):
    tmp, _ = user_code
    torch.save({"model": {"encoder.0.weight": torch.zeros(3)}}, tmp / "other.pt")
    rc = main(["analyze", str(tmp / "other.pt"), "--model", "usertok:build", "--data", str(tmp / "val.npy")])
    err = capsys.readouterr().err
    assert rc == 2 and "matches the model" in err


def test_cli_checkpoint_still_loaded_safely(user_code, capsys):
    tmp, _ = user_code

    class Evil:
        def __reduce__(self):
            return (print, ("PWNED",))

    torch.save({"model": Evil()}, tmp / "evil.pt")
    rc = main(["analyze", str(tmp / "evil.pt"), "--model", "usertok:build", "--data", str(tmp / "val.npy")])
    captured = capsys.readouterr()
    assert rc == 2 and "PWNED" not in captured.out


def test_untrained_kmeans_codebook_is_refused_and_restored():
    vq = vqp.VectorQuantize(dim=4, codebook_size=16, kmeans_init=True)  # initialised on its first forward
    before = _snapshot(vq)
    with pytest.raises(LiveError, match="changed the state of VectorQuantize even in eval mode"):
        shrinkscope.analyze(vq, torch.randn(8, 10, 4))
    assert all(torch.equal(before[k], v) for k, v in vq.state_dict().items())
    assert not bool(vq._codebook.initted)


def test_training_mode_run_is_measured_after_and_restored():
    torch.manual_seed(0)
    vq = vqp.VectorQuantize(dim=4, codebook_size=16, decay=0.5)  # EMA updates in training mode
    vq.train()
    before = _snapshot(vq)
    result = shrinkscope.analyze(vq, torch.randn(8, 10, 4), eval_mode=False, batch_size=2)
    assert "changed during the run" in result.entries[0].notes[-1]
    assert int(result.entries[0].found.counts.sum()) == 80
    assert all(torch.equal(before[k], v) for k, v in vq.state_dict().items()) and vq.training

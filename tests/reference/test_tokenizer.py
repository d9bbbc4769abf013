"""VQTokenizer and the quantize_start schedule."""
import pytest
import torch

from shrinkscope.reference.data import gaussians, stacked_digits
from shrinkscope.reference.tokenizer import TokenizerConfig, VQTokenizer
from shrinkscope.reference.train import TrainConfig, tokenizer_config_for, train_tokenizer


def test_shapes_images_and_vectors():
    tok = VQTokenizer(TokenizerConfig(num_codes=16, hidden=16))
    out = tok(torch.rand(2, 3, 8, 8))
    assert out["recon"].shape == (2, 3, 8, 8) and out["indices"].shape == (2, 4, 4) and out["z"].shape == (2, 8, 4, 4)
    vec = VQTokenizer(TokenizerConfig(input_dim=5, num_codes=16, hidden=16))
    assert vec(torch.randn(3, 5))["indices"].shape == (3, 1, 1) and vec.grid == (1, 1)
    with pytest.raises(ValueError, match="expected"):
        tok(torch.rand(2, 1, 8, 8))


def test_config_round_trip_ignores_unknown_keys():
    c = TokenizerConfig(num_codes=64, quantize_start=5, l2_normalize=True)
    assert TokenizerConfig.from_dict({**c.to_dict(), "from_the_future": 1}) == c


def _small(data, qs, steps=12):
    tc = tokenizer_config_for(data, num_codes=16, hidden=16, quantize_start=qs)
    return tc, TrainConfig(steps=steps, batch_size=16, kmeans_items=200, kmeans_iters=3, watch_every=4)


def test_quantize_start_zero_initialises_on_untrained_encoder(monkeypatch):
    data = stacked_digits(n_train=300, n_test=50)
    seen = {}
    orig = VQTokenizer.latents

    def spy(self, x, **kw):
        seen.setdefault("steps_trained", self.quantizer.active.item())
        return orig(self, x, **kw)

    monkeypatch.setattr(VQTokenizer, "latents", spy)
    tc, cfg = _small(data, 0)
    tok, hist = train_tokenizer(tc, data, cfg, progress=False)
    assert seen["steps_trained"] is False  # k-means ran before any quantized step
    assert bool(tok.quantizer.initted) and bool(tok.quantizer.active)
    assert all(h["commit_loss"] > 0 for h in hist)


def test_deferred_is_continuous_until_quantize_start():
    data = stacked_digits(n_train=300, n_test=50)
    tc, cfg = _small(data, 8)
    tok, hist = train_tokenizer(tc, data, cfg, progress=False)
    before = [h for h in hist if h["step"] < 8]
    after = [h for h in hist if h["step"] >= 8]
    assert before and all(h["commit_loss"] == 0 for h in before)
    assert after and all(h["commit_loss"] > 0 for h in after)
    assert bool(tok.quantizer.active) and tok.config.quantize_start == 8


def test_continuous_phase_does_not_touch_codebook(monkeypatch):
    data = gaussians(n_train=300, n_test=50, dim=4)
    tc, cfg = _small(data, 11)
    calls = []
    from shrinkscope.reference import quantizer as qmod

    orig = qmod.EMAQuantizer.init_codebook
    monkeypatch.setattr(qmod.EMAQuantizer, "init_codebook", lambda self, *a, **k: (calls.append(1), orig(self, *a, **k)))
    train_tokenizer(tc, data, cfg, progress=False)
    assert calls == [1]  # exactly one k-means init, at the switch


def test_quantize_start_out_of_range():
    data = gaussians(n_train=100, n_test=10, dim=4)
    tc, cfg = _small(data, 50, steps=10)
    with pytest.raises(ValueError, match="quantize_start"):
        train_tokenizer(tc, data, cfg, progress=False)


def test_l2_tokenizer_latents_unit_norm_in_both_phases():
    tok = VQTokenizer(TokenizerConfig(num_codes=16, hidden=16, l2_normalize=True))
    z = tok.encode(torch.rand(2, 3, 8, 8))
    assert torch.allclose(z.norm(dim=1), torch.ones(2, 4, 4), atol=1e-5)


def test_auto_switch_via_shrinkscope_defer():
    data = stacked_digits(n_train=300, n_test=50)
    tc, cfg = _small(data, 0, steps=30)
    tok, hist = train_tokenizer(tc, data, cfg, progress=False,
                                auto_switch={"check_every": 5, "min_steps": 5, "max_steps": 15})
    assert type(tok.quantizer).__name__ == "EMAQuantizer"  # unwrapped after training
    assert 5 <= tok.config.quantize_start <= 15
    assert bool(tok.quantizer.active) and bool(tok.quantizer.initted)
    assert all(h["commit_loss"] == 0 for h in hist if h["step"] < tok.config.quantize_start)
    assert hist[-1]["commit_loss"] > 0

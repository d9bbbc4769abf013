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
    orig = VQTokenizer.encode
    tc, cfg = _small(data, 0)
    torch.manual_seed(cfg.seed)  # train_tokenizer seeds the same way before building its model
    init = {k: v.clone() for k, v in VQTokenizer(tc).state_dict().items() if k.startswith("encoder")}

    def spy(self, x, **kw):
        if "steps_trained" not in seen:
            now = {k: v for k, v in self.state_dict().items() if k.startswith("encoder")}
            seen["steps_trained"] = not all(torch.equal(init[k], now[k]) for k in init)
        return orig(self, x, **kw)

    monkeypatch.setattr(VQTokenizer, "encode", spy)
    tok, hist = train_tokenizer(tc, data, cfg, progress=False)
    assert seen["steps_trained"] is False  # the first latents (the k-means input) came from the untrained encoder
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
    from shrinkscope.defer import DeferredQuantizer

    orig = DeferredQuantizer.switch_now
    monkeypatch.setattr(DeferredQuantizer, "switch_now",
                        lambda self, *a, **k: (calls.append(self.step), orig(self, *a, **k)))
    tok, _ = train_tokenizer(tc, data, cfg, progress=False)
    assert calls == [11] and tok.config.quantize_start == 11  # one k-means init, through shrinkscope.defer


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

"""The scientific claims of docs/results.md, guarded at CPU scale (seconds, not minutes).

Setting: the bundled Gaussian mixture (16-d, 10 modes) through the MLP tokenizer with 64-d codes, K = 256,
400 steps, each arm with its tuned settings (``arms.TUNED``). Measured on three seeds when these tests were
written: spread ratio early 0.07-0.10, deferred 0.71-0.74, l2 0.56-0.62, expiry 0.95-0.96. The
k-means-referenced verdict (seed 0) calls early shrunk (excess distortion 1.2, every mode's codes shrunk, 94% of
its codes unused and clumped: all codes span 0.09x the live ones) and calls the l2 arm shrunk too: its live codes
keep their spread, yet 93% of its codes are unused and clumped (0.60x), and it covers the latents far worse than
k-means does (coverage_vs_kmeans 0.12, excess distortion 1.7; l2 re-measured at lr 4e-3 while that was its tuned
rate, seeds 0-2: spread ratio 0.56-0.62, verdict shrunk in all three; back at lr 2e-3 since the three-seed tuning).

At this scale (400 steps, 1,024 latents for the k-means init of 256 codes) the deferred arm is no longer called
healthy since the verdict reads where the unused codes sit (session 3): seeds 0 and 1 leave 36-40% of its codes
unused, mildly clumped (all codes span 0.84-0.86x the live ones; threshold 0.9045), while it quantizes as well
as k-means (excess distortion -0.01 to 0.01). The tests pin those numbers' side of each line rather than the
status; the demo's own deferred arm (K=512, 1,000 steps) uses 98% of its codes and is healthy (docs/results.md).
"""
import pytest
import torch

from shrinkscope.metrics import mean_pairwise_l2, mode_coverage, pixel_diversity
from shrinkscope.reference import demo
from shrinkscope.reference.arms import TUNED
from shrinkscope.reference.data import load_dataset
from shrinkscope.reference.evaluate import generative_diversity, tokenizer_health
from shrinkscope.reference.train import TrainConfig, tokenizer_config_for, train_tokenizer

STEPS = 400


@pytest.fixture(scope="module")
def data():
    return load_dataset("gaussians", n_train=4000, n_test=1000, dim=16)


def _arm(data, name, seed=0):
    s = TUNED[name]
    tc = tokenizer_config_for(data, num_codes=256, code_dim=64, hidden=64, quantize_start=round(s.fraction * STEPS),
                              decay=s.decay, l2_normalize=s.l2_normalize, dead_code_threshold=s.dead_code_threshold)
    cfg = TrainConfig(steps=STEPS, batch_size=128, lr=s.lr, seed=seed, kmeans_items=1024)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tok, _ = train_tokenizer(tc, data, cfg, progress=False)
    finally:
        torch.set_num_threads(threads)
    return tok, tokenizer_health(tok, data.test, modes=data.test_modes)


@pytest.fixture(scope="module")
def arms(data):
    return {name: _arm(data, name) for name in ("early", "deferred", "l2")}


def test_standard_early_arm_is_shrunk(arms):
    _, h = arms["early"]
    assert h.spread_ratio < 0.5
    assert h.verdict.status == "shrunk"
    assert {r["metric"] for r in h.verdict.reasons} & {"excess_distortion", "shrunk_mode_share", "spread_vs_kmeans"}


@pytest.mark.parametrize("name", ["deferred", "l2"])
def test_deferred_and_l2_codes_keep_their_spread(arms, name):
    _, h = arms[name]
    assert h.spread_ratio > 0.5
    assert h.spread_ratio > 3 * arms["early"][1].spread_ratio  # not a near miss of the same codebook


def test_verdict_deferred_quantizes_like_kmeans_l2_shrunk_by_coverage(arms):
    deferred, l2, early = arms["deferred"][1], arms["l2"][1], arms["early"][1]
    # deferred: optimal distortion, no mode shrunk, its unused codes far less clumped than early's
    assert deferred.excess_distortion < 0.2 and not deferred.shrunk_mode_share
    assert deferred.spread_all_vs_live > 0.8 and early.spread_all_vs_live < 0.2
    assert deferred.codes_used > 5 * early.codes_used
    # l2: live codes spread like k-means, but most codes clumped unused, poor coverage, high excess distortion
    assert l2.verdict.status == "shrunk" and l2.spread_vs_kmeans > 0.75
    assert l2.spread_all_vs_live < 0.7 and l2.codes_used < 0.2
    assert l2.coverage_vs_kmeans < 0.5 and l2.excess_distortion > 0.5


def test_same_seed_same_table_other_seed_other_table(data, arms):
    tok, h = arms["early"]
    again_tok, again = _arm(data, "early", seed=0)
    assert again.to_dict() == h.to_dict()
    assert torch.equal(again_tok.quantizer.embed, tok.quantizer.embed)
    rows = [{"arm": "early", "recon_mse": 0.0, "health": x.to_dict(), "diversity": None} for x in (h, again)]
    table = demo.comparison_rows(rows, rank=False)
    assert all(r["values"][0] == r["values"][1] for r in table)
    _, other = _arm(data, "early", seed=1)
    assert other.to_dict()["metrics"] != h.to_dict()["metrics"]


def test_diversity_names_match_what_they_compute(data):
    """'mean pairwise L2' is the plain mean flattened L2 (not Paper A's Pixel Dist.); 'sample mode entropy'
    is the entropy of the generated samples' mode histogram (not Paper A's entropy of tokens per mode)."""
    g = torch.Generator().manual_seed(0)
    samples = data.test[torch.randint(0, len(data.test), (300,), generator=g)]
    div = generative_diversity(samples, data)
    flat = samples.reshape(len(samples), -1).double()
    ref = torch.cdist(flat, flat).sum() / (len(flat) * (len(flat) - 1))
    assert div["mean_pairwise_l2"] == pytest.approx(float(ref), rel=1e-9)
    assert pixel_diversity is mean_pairwise_l2 and "pixel_diversity" not in div
    nearest = torch.cdist(samples, torch.stack([data.train[data.train_modes == m].mean(0) for m in range(10)]))
    p = torch.bincount(nearest.argmin(1), minlength=10).double() / len(samples)
    p = p[p > 0]
    assert div["mode_entropy"] == pytest.approx(float(-(p * p.log()).sum()), rel=1e-9)
    assert div["mode_entropy"] == pytest.approx(mode_coverage(nearest.argmin(1), 10).entropy)
    labels = [r[1] for r in demo.ROWS]
    assert "pixel diversity" not in labels and "mode entropy (nats)" not in labels
    assert "mean pairwise L2 of samples" in labels and "sample mode entropy (nats)" in labels

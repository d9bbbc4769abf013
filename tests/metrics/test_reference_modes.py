"""The k-means reference and the mode-level metrics against slow, obvious loops, plus property tests (#10)."""
import math
from collections import Counter

import pytest
import torch

from shrinkscope.kmeans import kmeans
from shrinkscope.metrics import (
    codebook_health,
    effective_rank,
    joint_counts,
    kmeans_reference,
    latent_coverage,
    mode_perplexities,
    shrunk_mode_share,
    spread_euclidean,
    token_mode_entropy,
)
from shrinkscope.metrics.reference import fit_size


def mixture(n, d, *, modes=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(modes, d, generator=torch.Generator().manual_seed(99)) * 3
    lab = torch.arange(n) % modes
    return (centres[lab] + torch.randn(n, d, generator=g)).double(), lab


@pytest.fixture(scope="module")
def data():
    x, lab = mixture(1500, 6)
    cb = x[torch.randperm(1500, generator=torch.Generator().manual_seed(5))[:24]] * 0.8
    return cb, x, lab


def _nearest(cb, x):
    """Slow nearest code: a Python loop over latents."""
    out = []
    for row in x.tolist():
        best = min(range(len(cb)), key=lambda j: sum((a - b) ** 2 for a, b in zip(row, cb[j].tolist())))
        out.append(best)
    return out


def _entropy(counter):
    tot = sum(counter.values())
    return -sum(c / tot * math.log(c / tot) for c in counter.values() if c)


# ------------------------------------------------------------------------------------ slow references
def test_mode_metrics_against_loops(data):
    cb, x, lab = data
    idx = _nearest(cb, x)
    labels = lab.tolist()
    # Paper A: each used token belongs to the mode most of its latents come from; entropy over modes / log M
    owner = {}
    for j in set(idx):
        votes = Counter(m for i, m in zip(idx, labels) if i == j)
        owner[j] = min(m for m, c in votes.items() if c == max(votes.values()))  # ties: lower mode id
    expected_tme = _entropy(Counter(owner.values())) / math.log(len(set(labels)))
    joint = joint_counts(torch.tensor(idx), lab, 24)
    assert token_mode_entropy(joint) == pytest.approx(expected_tme, rel=1e-12)
    # per-mode perplexity of the codes its latents use
    for m in sorted(set(labels)):
        ent = _entropy(Counter(i for i, mm in zip(idx, labels) if mm == m))
        assert float(mode_perplexities(joint)[m]) == pytest.approx(math.exp(ent), rel=1e-12)
    # shrunk share against another assignment
    ref_idx = [(i + 1) % 3 for i in range(len(idx))]  # every mode uses at most 3 codes
    ref = joint_counts(torch.tensor(ref_idx), lab, 24)
    mine_p = [math.exp(_entropy(Counter(i for i, mm in zip(idx, labels) if mm == m))) for m in sorted(set(labels))]
    ref_p = [math.exp(_entropy(Counter(i for i, mm in zip(ref_idx, labels) if mm == m))) for m in sorted(set(labels))]
    want = sum(a < 0.9 * b for a, b in zip(mine_p, ref_p)) / len(mine_p)
    assert shrunk_mode_share(joint, ref, min_ratio=0.9) == pytest.approx(want)


def test_reference_metrics_against_loops(data):
    cb, x, lab = data
    h = codebook_health(cb, latents=x, labels=lab, seed=3)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(3))
    ref = kmeans_reference(x, 24, perm=perm, seed=3)
    assert h.spread_vs_kmeans == pytest.approx(spread_euclidean(cb) / ref.spread_euclidean, rel=1e-12)
    assert h.rank_vs_kmeans == pytest.approx(effective_rank(cb) / effective_rank(ref.centroids), rel=1e-9)
    xs = x[perm]  # the coverage subset is all 1500 rows here
    assert h.coverage_vs_kmeans == pytest.approx(latent_coverage(cb, xs) / latent_coverage(ref.centroids, xs))
    ev = ref.eval_index.tolist()
    mine = _nearest(cb, x[ev])
    d_cb = sum(float((x[i] - cb[j]).pow(2).sum()) for i, j in zip(ev, mine)) / len(ev)
    theirs = _nearest(ref.centroids, x[ev])
    d_ref = sum(float((x[i] - ref.centroids[j]).pow(2).sum()) for i, j in zip(ev, theirs)) / len(ev)
    assert h.excess_distortion == pytest.approx(d_cb / d_ref - 1, rel=1e-9)
    # all codes (also the unused ones) against the live ones
    live = sorted(set(_nearest(cb, x)))
    assert h.spread_all_vs_live == pytest.approx(spread_euclidean(cb) / spread_euclidean(cb[live]), rel=1e-12)
    # codes picked by no held-out row, beyond the share the reference leaves unpicked on those rows
    unused = sum(j not in set(mine) for j in range(24)) / 24
    unused_ref = sum(j not in set(theirs) for j in range(24)) / 24
    assert h.excess_unused_share == pytest.approx(unused - unused_ref, abs=1e-12)


def test_anchored_codes_against_loops(data):
    """Most codes clumped in one spot: the all-codes spread drops, the live-codes spread does not."""
    cb, x, _ = data
    cb = cb.clone()
    cb[6:] = x[0] + 0.01 * (cb[6:] - cb[6:].mean(0))  # 18 of 24 codes in a tiny clump at one latent
    h = codebook_health(cb, latents=x)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    ref = kmeans_reference(x, 24, perm=perm, seed=0)
    used = sorted(set(_nearest(cb, x)))
    pair = [float((cb[i] - cb[j]).norm()) for i in range(24) for j in range(24) if i < j]
    live = [float((cb[i] - cb[j]).norm()) for i in used for j in used if i < j]
    assert h.spread_all_vs_live == pytest.approx((sum(pair) / len(pair)) / (sum(live) / len(live)), rel=1e-9)
    ev = ref.eval_index.tolist()
    mine, theirs = set(_nearest(cb, x[ev])), set(_nearest(ref.centroids, x[ev]))
    assert h.excess_unused_share == pytest.approx((24 - len(mine)) / 24 - (24 - len(theirs)) / 24)
    assert h.excess_unused_share > 0 and h.spread_all_vs_live < 1



def test_stranded_codes_against_loops(data):
    cb, x, _lab = data
    cb = cb.clone()
    cb[:3] = cb[:3] + 100.0  # parked far away: unused and off the data
    cb[3] = x[:50].mean(0)  # near the data; may go unused, but is not stranded
    h = codebook_health(cb, latents=x)
    used = set(_nearest(cb, x))
    # k-NN radius of each latent: distance to its 5th nearest other latent (loop); a stranded code is farther
    # from every latent than the 99th percentile of those radii
    xs = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))]
    d = torch.cdist(xs, xs)
    r = torch.tensor([sorted(row[:i].tolist() + row[i + 1:].tolist())[4] for i, row in enumerate(d)])
    cut = float(torch.quantile(r, 0.99))
    dc = torch.cdist(cb, xs)
    off = [float(dc[j].min()) > cut for j in range(24)]
    want = sum(j not in used and off[j] for j in range(24)) / 24
    assert h.stranded_codes == pytest.approx(want) and want >= 3 / 24
    assert h.codes_used == pytest.approx(len(set(_nearest(cb, x))) / 24)
    off = math.sqrt(sum(v * v for v in cb.mean(0).tolist()))
    assert h.offset_vs_spread == pytest.approx(off / spread_euclidean(cb), rel=1e-12)


def test_reference_fit_rows_are_disjoint_from_held_out_rows(data):
    _, x, _ = data
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    ref = kmeans_reference(x, 24, perm=perm, seed=0)
    n_eval = ref.eval_index.numel()
    assert torch.equal(ref.eval_index, perm[:n_eval]) and ref.distortion is not None
    assert n_eval + ref.n_fit <= x.shape[0]
    # the centroids come from the fit rows only: refitting on them alone gives the same codebook
    again = kmeans(x[perm[n_eval:n_eval + ref.n_fit]], 24, iters=ref.iters, seed=0, init="random")
    torch.testing.assert_close(again, ref.centroids)


def test_fit_size_bounds_the_work():
    n_fit, iters = fit_size(16384, 256, 200_000)
    assert n_fit == 2 * 16384 and iters == 2
    assert fit_size(64, 8, 1_000_000) == (16 * 64, 20)
    assert fit_size(64, 8, 500)[0] == 500


def test_kmeans_random_init():
    x, _ = mixture(600, 3)
    c = kmeans(x, 6, init="random", seed=0)
    assert c.shape == (6, 3) and torch.isfinite(c).all()
    with pytest.raises(ValueError, match="init"):
        kmeans(x, 6, init="bogus")


# -------------------------------------------------------------------------------------------- properties
KEYS = ("spread_vs_kmeans", "rank_vs_kmeans", "coverage_vs_kmeans", "excess_distortion", "stranded_codes",
        "token_mode_entropy", "spread_all_vs_live", "excess_unused_share",
        "shrunk_mode_share", "codes_used", "offset_vs_spread")


def test_code_permutation_invariance(data):
    cb, x, lab = data
    a = codebook_health(cb, latents=x, labels=lab)
    b = codebook_health(cb[torch.randperm(24, generator=torch.Generator().manual_seed(1))], latents=x, labels=lab)
    for k in KEYS:
        assert getattr(b, k) == pytest.approx(getattr(a, k), rel=1e-9, abs=1e-12), k
    assert a.verdict.status == b.verdict.status


def test_label_renaming_invariance(data):
    cb, x, lab = data
    a = codebook_health(cb, latents=x, labels=lab)
    b = codebook_health(cb, latents=x, labels=(lab * 7 + 3))
    assert (a.token_mode_entropy, a.shrunk_mode_share) == (b.token_mode_entropy, b.shrunk_mode_share)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dtypes_agree_with_float64(data, dtype):
    cb, x, lab = data
    ref = codebook_health(cb, latents=x, labels=lab)
    got = codebook_health(cb.to(dtype), latents=x.to(dtype), labels=lab)
    tol = 1e-4 if dtype == torch.float32 else 0.05  # bfloat16 rounds the inputs to 8 bits of mantissa
    for k in ("spread_vs_kmeans", "rank_vs_kmeans", "offset_vs_spread", "codes_used", "spread_all_vs_live"):
        assert getattr(got, k) == pytest.approx(getattr(ref, k), rel=tol, abs=tol), k
    assert got.verdict.status == ref.verdict.status


def test_labels_need_latents_and_the_right_length(data):
    cb, x, lab = data
    with pytest.raises(ValueError, match="pass latents"):
        codebook_health(cb, labels=lab)
    with pytest.raises(ValueError, match="expected 1500 labels"):
        codebook_health(cb, latents=x, labels=lab[:10])
    with pytest.raises(TypeError, match="integer mode ids"):
        codebook_health(cb, latents=x, labels=lab.double())


def test_negative_labels_are_ignored(data):
    cb, x, lab = data
    masked = lab.clone()
    masked[::2] = -1
    h = codebook_health(cb, latents=x, labels=masked)
    assert h.token_mode_entropy is not None and 0 <= h.token_mode_entropy <= 1

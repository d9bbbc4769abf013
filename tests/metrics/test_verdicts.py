"""Verdicts: the contract, every rule just above and just below its cut-off, and the issue's named cases (#10)."""
import json
import math
from dataclasses import fields

import pytest
import torch

from shrinkscope.kmeans import kmeans
from shrinkscope.metrics import STATUSES, HealthThresholds, Verdict, codebook_health, judge_health
from shrinkscope.metrics.health import CodebookHealth, raise_warnings
from shrinkscope.metrics.verdict import Judged, judge

T = HealthThresholds()


def mixture(n, d, *, modes=10, seed=0, sep=2.5, decay=0.0, sphere=False):
    """A balanced Gaussian mixture with labels (same recipe as bench/calibrate_verdicts.py)."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.logspace(0, -decay, d)
    centres = torch.randn(modes, d, generator=torch.Generator().manual_seed(1234 + d)) * sep * scale
    lab = torch.arange(n) % modes
    x = centres[lab] + torch.randn(n, d, generator=g) * scale
    return (x / x.norm(dim=1, keepdim=True) if sphere else x), lab


@pytest.fixture(scope="module")
def d64():
    x, lab = mixture(6000, 64, decay=1.0, seed=0)
    xt, labt = mixture(6000, 64, decay=1.0, seed=1)
    return x, lab, xt, labt


def codes(h):
    return {w["code"] for w in h.warnings}


# ------------------------------------------------------------------------------------------- contract
def test_verdict_contract_shape():
    x, _ = mixture(2000, 8)
    h = codebook_health(kmeans(x, 32, seed=0), latents=x)
    v = h.to_dict()["verdict"]
    assert list(v) == ["status", "evidence", "summary", "reasons", "missing"]
    assert v["status"] in STATUSES and v["evidence"] == ["codes", "latents"]
    assert isinstance(v["summary"], str) and v["summary"].endswith(".")
    for r in v["reasons"]:
        assert list(r) == ["code", "metric", "value", "reference", "reference_name", "threshold", "direction"]
        assert r["direction"] in ("min", "max") and r["metric"] in h.metrics
    assert [m["input"] for m in v["missing"]] == ["labels"] and "--labels" in v["missing"][0]["how"]
    assert isinstance(h.verdict, Verdict) and 1 <= len(h.verdict.reasons) <= 3
    json.dumps(h.to_dict())
    with pytest.raises(AttributeError):
        h.verdict.status = "healthy"  # frozen


def test_threshold_fields_say_min_or_max():
    assert all(f.name.startswith(("min_", "max_")) for f in fields(HealthThresholds))


def test_codes_only_never_healthy():
    for seed in range(5):
        cb = torch.randn(64, 16, generator=torch.Generator().manual_seed(seed))
        v = codebook_health(cb).verdict
        assert v.status == "cannot_tell" and v.evidence == ("codes",)
        assert [m["input"] for m in v.missing] == ["latents", "usage"] and "--latents" in v.missing[0]["how"]
        vu = codebook_health(cb, counts=torch.ones(64)).verdict
        assert vu.status == "cannot_tell" and vu.evidence == ("codes", "usage")
        assert [m["input"] for m in vu.missing] == ["latents"]


def test_too_few_latents_for_the_reference_cannot_be_healthy():
    x, _ = mixture(100, 8)
    h = codebook_health(x[:64] + 0.01, latents=x[:50])
    assert h.spread_vs_kmeans is None and h.verdict.status != "healthy"
    assert any("at least K=64 latents" in m["why"] for m in h.verdict.missing)


def test_usage_from_too_few_latents_is_not_called_underused(d64):
    # K = 512 k-means codes judged on N = 400 latents (the study's gaussians at K >= 2048 looked like this): most
    # codes go unpicked by chance, so the usage from those latents cannot say "under-used"
    x, _, xt, _ = d64
    cb = kmeans(xt[:4000], 512, iters=10, seed=0)
    h = codebook_health(cb, latents=x[:400])
    assert h.dead_code_ratio > 0.3 and h.spread_vs_kmeans is None  # measured and reported, not judged
    assert h.verdict.status != "underused" and "usage" not in h.verdict.evidence
    assert "dead_codes" not in codes(h) and h.judged.live_codes == 512  # geometry read on all the codes
    assert judge_health(h).verdict.status == h.verdict.status  # re-judging keeps the usage unjudged
    why = {m["input"]: m for m in h.verdict.missing}
    assert "usage from 400 latents for K=512 codes is mostly chance" in why["usage"]["why"]
    assert "at least 4 x K latent rows" in why["usage"]["how"]
    # with real usage counts (a quantizer's buffer), the same dead share is judged as before
    c = torch.zeros(512)
    c[:200] = 5.0
    assert codebook_health(cb, counts=c).verdict.status == "underused"


def test_deprecated_alias_appends_and_warns():
    h = CodebookHealth(name="x", num_codes=8, dim=2, utilization=0.05, utilization_perplexity=0.4,
                       dead_code_ratio=0.9, codes_used=0.1)
    with pytest.warns(DeprecationWarning):
        raise_warnings(h, T)
    assert {"dead_codes", "low_utilization"} <= codes(h) and h.verdict.status == "underused"


def test_judge_health_recomputes_usage_on_a_copy():
    x, _ = mixture(2000, 8)
    h = codebook_health(kmeans(x, 32, seed=0), latents=x)
    import dataclasses
    hc = dataclasses.replace(h, warnings=[])
    hc.dead_code_ratio, hc.utilization = 0.9, 0.05  # e.g. the monitor's cumulative hook counts
    judge_health(hc, usage=True)
    assert "dead_codes" in codes(hc) and "dead_codes" not in codes(h)
    assert h.judged.values["dead_code_ratio"] != 0.9  # the original's measurements are untouched


# ------------------------------------------------------------------------------------------- cut-offs
FULL_RULES = [("shrinkage", "spread_vs_kmeans", T.min_spread_vs_kmeans, "min"),
              ("dimensional_collapse", "rank_vs_kmeans", T.min_rank_vs_kmeans, "min"),
              ("poor_coverage", "coverage_vs_kmeans", T.min_coverage_vs_kmeans, "min"),
              ("excess_distortion", "excess_distortion", T.max_excess_distortion, "max"),
              ("mode_shrinkage", "shrunk_mode_share", T.max_shrunk_mode_share, "max"),
              ("dead_codes", "stranded_codes", T.max_stranded_codes, "max"),
              ("shrinkage", "spread_all_vs_live", T.min_spread_all_vs_live, "min"),
              ("dead_codes", "excess_unused_share", T.max_excess_unused_share, "max")]
USAGE_RULES = [("dead_codes", "dead_code_ratio", T.max_dead_code_ratio, "max"),
               ("low_utilization", "utilization", T.min_utilization, "min")]
CODES_RULES = [("shrinkage", "spread_cosine", T.min_spread_cosine, "min"),
               ("shrinkage", "offset_vs_spread", T.max_offset_vs_spread, "max"),
               ("dimensional_collapse", "rank_share", T.min_rank_share, "min")]
GOOD = {"spread_vs_kmeans": 1.0, "rank_vs_kmeans": 1.0, "coverage_vs_kmeans": 1.0, "excess_distortion": 0.0,
        "shrunk_mode_share": 0.0, "dead_code_ratio": 0.0, "stranded_codes": 0.0, "utilization": 0.9, "spread_cosine": 1.0,
        "offset_vs_spread": 0.0, "rank_share": 0.8, "spread_all_vs_live": 1.0, "excess_unused_share": 0.0}


def _judged(evidence, **values):
    return Judged(64, 16, evidence, {**GOOD, **values}, live_codes=64)


@pytest.mark.parametrize("code,metric,thr,direction,ev",
                         [(*r, ("codes", "latents", "labels")) for r in FULL_RULES]
                         + [(*r, ("codes", "usage", "latents", "labels")) for r in USAGE_RULES])
def test_full_rule_cut_off(code, metric, thr, direction, ev):
    eps = 1e-6 * max(1.0, abs(thr))
    bad, fine = (thr - eps, thr + eps) if direction == "min" else (thr + eps, thr - eps)
    w_bad, v_bad = judge(_judged(ev, **{metric: bad}), T)
    w_fine, v_fine = judge(_judged(ev, **{metric: fine}), T)
    assert [w["code"] for w in w_bad] == [code]
    assert w_fine == [] and v_fine.status == "healthy"
    assert v_bad.status == ("underused" if code in ("dead_codes", "low_utilization") else "shrunk")
    (r,) = [r for r in v_bad.reasons if r["metric"] == metric]
    assert (r["value"], r["threshold"], r["direction"]) == (pytest.approx(bad), thr, direction)


@pytest.mark.parametrize("code,metric,thr,direction", CODES_RULES)
def test_codes_only_rule_cut_off(code, metric, thr, direction):
    eps = 1e-6 * max(1.0, abs(thr))
    bad, fine = (thr - eps, thr + eps) if direction == "min" else (thr + eps, thr - eps)
    w_bad, v_bad = judge(_judged(("codes",), **{metric: bad}), T)
    w_fine, v_fine = judge(_judged(("codes",), **{metric: fine}), T)
    assert [w["code"] for w in w_bad] == [code] and v_bad.status == "shrunk"
    assert w_fine == [] and v_fine.status == "cannot_tell"


def test_dead_codes_cut_off_end_to_end():
    cb = torch.randn(100, 8, generator=torch.Generator().manual_seed(0))
    n_dead = math.floor(T.max_dead_code_ratio * 100)  # at the threshold: not above it
    for dead, fires in ((n_dead, False), (n_dead + 1, True)):
        counts = torch.ones(100)
        counts[:dead] = 0
        assert ("dead_codes" in codes(codebook_health(cb, counts=counts))) is fires


# ------------------------------------------------------------------------------------ named regressions
def test_pull_toward_mean_is_shrunk(d64):
    x, lab, xt, _ = d64
    km = kmeans(xt, 256, iters=20, seed=0)
    mean = xt.mean(0)
    h = codebook_health(mean + 0.6 * (km - mean), latents=x, labels=lab)
    assert h.verdict.status == "shrunk" and "shrinkage" in codes(h)
    assert h.spread_vs_kmeans < T.min_spread_vs_kmeans


def test_anchored_codebook_is_shrunk(d64):
    """The standard recipe's failure: a few live codes follow the data, the rest stay clumped where the
    untrained encoder's outputs were. The live codes alone span like k-means; all K codes do not."""
    x, lab, xt, _ = d64
    cb = torch.cat([kmeans(xt, 38, iters=20, seed=0), 0.05 * xt[:218]])
    h = codebook_health(cb, latents=x, labels=lab)
    assert h.spread_vs_kmeans > T.min_spread_vs_kmeans  # the live ones look fine on their own
    assert h.spread_all_vs_live < T.min_spread_all_vs_live
    assert h.verdict.status == "shrunk" and {"shrinkage", "dead_codes"} <= codes(h)
    (r,) = [r for r in h.verdict.reasons if r["metric"] == "spread_all_vs_live"]
    assert "live codes" in r["reference_name"]
    # usage counts alone (a checkpoint's cluster_size, no latents) show the clump too
    assert codebook_health(cb, counts=h.counts).verdict.status == "shrunk"


def test_three_of_ten_modes_is_shrunk(d64):
    x, lab, xt, labt = d64
    h = codebook_health(kmeans(xt[labt < 3], 256, iters=20, seed=0), latents=x, labels=lab)
    assert h.verdict.status == "shrunk" and "mode_shrinkage" in codes(h)
    assert h.shrunk_mode_share >= 0.6 and h.token_mode_entropy < 0.9


def test_sphere_cap_is_shrunk():
    x, lab = mixture(6000, 32, sphere=True, sep=1.5)
    g = torch.Generator().manual_seed(0)
    u = x.mean(0) / x.mean(0).norm()
    cap = u + 1.13 * torch.randn(256, 32, generator=g) / math.sqrt(32)  # cosine spread 0.56
    cap = cap / cap.norm(dim=1, keepdim=True)
    h = codebook_health(cap, latents=x, labels=lab)
    assert h.spread_cosine == pytest.approx(0.56, abs=0.05)
    assert h.verdict.status == "shrunk"


@pytest.mark.parametrize("k", [16, 32, 64])
def test_small_kmeans_codebooks_are_not_flagged(d64, k):
    x, lab, xt, _ = d64
    h = codebook_health(kmeans(xt, k, iters=20, seed=0), latents=x, labels=lab)
    assert h.warnings == [] and h.verdict.status == "healthy"
    assert h.effective_rank <= k - 1 + 1e-9  # centred rank bound that fixed cut-offs ignored


def test_parked_dead_codes_are_dead_codes_only(d64):
    x, lab, xt, _ = d64
    km = kmeans(xt, 1024, iters=10, seed=0)
    g = torch.Generator().manual_seed(0)
    dirs = torch.randn(200, 64, generator=g)
    km[:200] = xt.mean(0) + 20 * float(xt.std(0).norm()) * dirs / dirs.norm(dim=1, keepdim=True)
    h = codebook_health(km, latents=x, labels=lab)
    assert codes(h) == {"dead_codes"} and h.verdict.status == "underused"
    assert "Shrunk" not in h.verdict.summary


def test_exploded_dead_codes_are_not_called_shrunk(d64):
    x, _, xt, _ = d64
    km = kmeans(xt, 256, iters=10, seed=0)
    mean = xt.mean(0)
    km[:80] = mean + 1000 * (km[:80] - mean)  # taming EMA dead codes drift far out
    h = codebook_health(km, latents=x)
    assert h.spread_ratio > 50 and h.verdict.status == "underused" and not h.verdict.summary.startswith("Shrunk")


def test_vqgan_layout_near_parallel_codes_not_healthy(tmp_path, capsys):
    from shrinkscope.cli import main

    g = torch.Generator().manual_seed(0)
    cb = torch.randn(256, generator=g) * 5 + 0.01 * torch.randn(1024, 256, generator=g)
    assert codebook_health(cb).spread_cosine < 0.001
    torch.save({"state_dict": {"quantize.embedding.weight": cb}}, tmp_path / "vqgan.ckpt")
    assert main(["analyze", str(tmp_path / "vqgan.ckpt")]) == 0
    out = capsys.readouterr().out
    assert "Healthy" not in out and "Shrunk: quantize" in out and "evidence: codes" in out
    assert main(["analyze", str(tmp_path / "vqgan.ckpt"), "--json"]) == 0
    v = json.loads(capsys.readouterr().out)["codebooks"][0]["verdict"]
    assert v["status"] == "shrunk" and v["evidence"] == ["codes"] and v["reasons"][0]["metric"] in (
        "spread_cosine", "offset_vs_spread")


# ------------------------------------------------------------------------------------------- --labels
def test_cli_labels(tmp_path, capsys):
    import numpy as np

    from shrinkscope.cli import main

    x, lab = mixture(3000, 8)
    np.save(tmp_path / "z.npy", x.numpy())
    np.save(tmp_path / "y.npy", lab.numpy())
    np.save(tmp_path / "short.npy", lab[:10].numpy())
    np.save(tmp_path / "float.npy", lab.double().numpy())
    torch.save({"quantize.embedding.weight": kmeans(x, 32, seed=0)}, tmp_path / "cb.pt")
    cb = str(tmp_path / "cb.pt")
    assert main(["analyze", cb, "--latents", str(tmp_path / "z.npy"), "--labels", str(tmp_path / "y.npy"),
                 "--json"]) == 0
    d = json.loads(capsys.readouterr().out)["codebooks"][0]
    assert d["metrics"]["token_mode_entropy"] is not None and d["metrics"]["shrunk_mode_share"] is not None
    assert d["verdict"]["evidence"] == ["codes", "latents", "labels"] and d["verdict"]["missing"] == []
    for args, msg in (([], "pass --latents FILE"), (["--latents", str(tmp_path / "z.npy")], "one label per"),
                      (["--latents", str(tmp_path / "z.npy")], "integer mode ids")):
        bad = "short.npy" if msg == "one label per" else "float.npy" if msg == "integer mode ids" else "y.npy"
        assert main(["analyze", cb, *args, "--labels", str(tmp_path / bad)]) == 2
        err = capsys.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_labels_per_map_follow_channel_first_latents():
    from shrinkscope.analyze import analyze

    x, lab = mixture(400, 8, modes=4)
    maps = x.reshape(100, 4, 8).permute(0, 2, 1)  # (B, D, T): 4 positions per map, one label per map
    per_map = lab.reshape(100, 4)[:, 0]
    cb = kmeans(x, 16, seed=0)
    res = analyze({"quantize.embedding.weight": cb}, latents=maps, labels=per_map, progress=False)
    rows = per_map.repeat_interleave(4)
    direct = codebook_health(cb, latents=maps.permute(0, 2, 1).reshape(-1, 8), labels=rows)
    assert res.codebooks[0].token_mode_entropy == pytest.approx(direct.token_mode_entropy)

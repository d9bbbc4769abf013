"""Calibrate the verdict thresholds on a labelled corpus: choose on one half, report on the other.

The corpus (every case labelled by construction or by its downstream outcome, never by the thresholds):

- synthetic controls on three latent clouds (a 10-mode mixture in D=16, an anisotropic 10-mode mixture in
  D=64, a 10-mode mixture on the unit sphere in D=32), K from 16 to 1024, codebooks fitted on a separate
  draw of the same distribution:
  healthy: k-means (k-means++, 20 Lloyd iterations), codes sampled from the latents (with and without noise);
  shrunk: codes pulled toward the latents' mean (0.3-0.7x), k-means on a subset of the modes (1, 3, 5 of 10),
  codes projected onto a low-rank plane (1-2 principal directions), a cap of the sphere, near-parallel codes
  far from the origin (the VQGAN case);
  underused: a share of k-means codes parked far away, or exploded (x1000 from the mean);
- small real runs: vector-quantize-pytorch (random init, k-means init, deferred k-means init after an
  autoencoder warm-up, dead-code expiry, cosine codebook, rotation trick) and the bundled reference
  tokenizer (early vs deferred quantization, Euclidean vs l2), at K = 64 and 512, on a 10-mode mixture.
  Labelled by held-out reconstruction against the best run of the same K: ratio >= 1.5 "shrunk",
  <= 1.2 "healthy", in between "ambiguous" (left out of the scores).

Each case is measured once (``codebook_health`` with latents and labels; codes only; codes + usage). Cases are
split in two halves by a seeded shuffle within each construction family. On the synthetic cases of the first
half every rule's threshold is set halfway (on a log scale for ratios) between the most extreme negative and
the nearest positive clearly past it: the most recall that flags no healthy (or, for the shrinkage rules,
under-used) case of that half. The real runs never choose a threshold: their labels come from reconstruction,
which a codebook with most codes dead can still do well on an easy mixture, so they are reported case by case
(both halves). The synthetic second half is then judged with those thresholds: precision and recall per
warning, the status confusion, and how codes-only and usage-only verdicts agree with the full ones.

Usage:
    nice python bench/calibrate_verdicts.py                 # default corpus, writes docs/verdicts.json
    python bench/calibrate_verdicts.py --quick --out /tmp/v.json   # a small corpus (tests)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, fields

import torch

from shrinkscope.kmeans import kmeans
from shrinkscope.metrics import HealthThresholds, codebook_health
from shrinkscope.metrics.verdict import SHRINK_CODES, Judged, judge

RULES = {  # threshold field -> (warning code, metric, direction, evidence it reads, construction tag of positives)
    "min_spread_vs_kmeans": ("shrinkage", "spread_vs_kmeans", "min", "full", "shrinkage"),
    "min_rank_vs_kmeans": ("dimensional_collapse", "rank_vs_kmeans", "min", "full", "dimensional_collapse"),
    "min_coverage_vs_kmeans": ("poor_coverage", "coverage_vs_kmeans", "min", "full", "poor_coverage"),
    "max_excess_distortion": ("excess_distortion", "excess_distortion", "max", "full", "excess_distortion"),
    "max_shrunk_mode_share": ("mode_shrinkage", "shrunk_mode_share", "max", "full", "mode_shrinkage"),
    "max_stranded_codes": ("dead_codes", "stranded_codes", "max", "full", "dead_codes"),
    "min_spread_cosine": ("shrinkage", "spread_cosine", "min", "codes", "shrinkage"),
    "max_offset_vs_spread": ("shrinkage", "offset_vs_spread", "max", "codes", "shrinkage"),
    "min_rank_share": ("dimensional_collapse", "rank_share", "min", "codes", "dimensional_collapse"),
}
"""``max_dead_code_ratio`` and ``min_utilization`` judge usage *counts* (hooks, checkpoint buffers over a whole
data set); the corpus has none (its usage comes from a few thousand latents, where healthy codes go unused by
chance), so they keep their documented defaults and are not chosen here.

Each rule's positives are the cases built to show its condition (their ``tags``); its negatives are the
healthy cases, plus the under-used ones for the shrinkage rules (parked or exploded dead codes must not read
as shrinkage). A rule that cannot separate its positives from the negatives keeps a threshold just past the
most extreme negative."""


# ----------------------------------------------------------------------------------------------- latents
def mixture(n: int, d: int, *, modes: int = 10, sep: float = 2.5, decay: float = 0.0, sphere: bool = False,
            offset: float = 0.0, intrinsic: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, labels)``: balanced Gaussian mixture (per-dimension scale ``10^(-decay * i / d)``), optionally on
    the unit sphere, shifted ``offset`` from the origin, or drawn in ``intrinsic`` dimensions and embedded in d."""
    g = torch.Generator().manual_seed(seed)
    fixed = torch.Generator().manual_seed(1234 + d)
    m = intrinsic or d
    scale = torch.logspace(0, -decay, m)
    centres = torch.randn(modes, m, generator=fixed) * sep * scale
    lab = torch.arange(n) % modes
    x = centres[lab] + torch.randn(n, m, generator=g) * scale
    if intrinsic:
        basis = torch.linalg.qr(torch.randn(d, m, generator=fixed)).Q  # (d, m) orthonormal columns
        x = x @ basis.T + 0.01 * torch.randn(n, d, generator=g)
    if offset:
        direction = torch.randn(d, generator=fixed)
        x = x + offset * direction / direction.norm()
    if sphere:
        x = x / x.norm(dim=1, keepdim=True)
    return x, lab


LATENT_SETS = {  # name -> mixture options
    "mix16": {"d": 16},
    "mix64": {"d": 64, "decay": 1.0},
    "sphere32": {"d": 32, "sphere": True, "sep": 1.5},
    "offset16": {"d": 16, "offset": 20.0},  # far from the origin, like post-activation encoder outputs
    "lowdim64": {"d": 64, "intrinsic": 8},  # an 8-dimensional cloud in 64 dimensions
}


# --------------------------------------------------------------------------------------------- codebooks
def synthetic_cases(name: str, opts: dict, ks: list[int], n: int, seed: int):
    """Yield ``(case, codebook, latents, labels)`` for one latent cloud."""
    x, lab = mixture(n, seed=seed, **opts)
    xt, labt = mixture(n, seed=seed + 1, **opts)  # codebooks are fitted on another draw
    g = torch.Generator().manual_seed(seed + 7)
    mean = xt.mean(0)
    d = x.shape[1]
    sphere = opts.get("sphere", False)
    pcs = torch.linalg.svd(xt - mean, full_matrices=False).Vh

    def case(kind, k, truth, tags, **extra):
        return {"id": f"{name}/K{k}/{kind}", "family": kind.split("@")[0], "latents": name, "K": k, "D": d,
                "truth": truth, "tags": tags, **extra}

    shrink = ["shrinkage", "excess_distortion"]
    for k in ks:
        km = kmeans(xt, k, iters=20, seed=seed)
        yield case("kmeans", k, "healthy", ["optimal"]), km, x, lab
        if k >= 64:  # 16 random latents miss whole modes of a 10-mode mixture (1.9 on average): not a control
            yield case("sample", k, "healthy", []), xt[torch.randperm(n, generator=g)[:k]], x, lab
            noisy = xt[torch.randperm(n, generator=g)[:k]] + 0.1 * torch.randn(k, d, generator=g) * xt.std(0)
            yield case("sample_noise", k, "healthy", []), noisy, x, lab
        for f in (0.3, 0.5, 0.6, 0.7):
            yield case(f"pull@{f}", k, "shrunk", shrink, factor=f), mean + f * (km - mean), x, lab
        for m in (1, 3, 5):
            sub = xt[labt < m]
            if sub.shape[0] >= k:
                tags = ["mode_shrinkage", "poor_coverage", "excess_distortion"]
                yield case(f"modes@{m}", k, "shrunk", tags, modes=m), kmeans(sub, k, iters=20, seed=seed), x, lab
        for r in (1, 2):
            if r < min(k - 1, d) // 2:
                p = pcs[:r]
                tags = ["dimensional_collapse", "excess_distortion"]
                yield case(f"plane@{r}", k, "shrunk", tags, rank=r), mean + (km - mean) @ p.T @ p, x, lab
        if sphere:
            for s in (0.6, 1.13):  # cosine spread about s^2 / (1 + s^2): 0.26, 0.56
                cap = mean / mean.norm() + s * torch.randn(k, d, generator=g) / math.sqrt(d)
                yield case(f"cap@{s}", k, "shrunk", shrink, cap=s), cap / cap.norm(dim=1, keepdim=True), x, lab
        far = 20.0 * float(xt.std(0).norm())
        base = mean + far * torch.randn(d, generator=g) / math.sqrt(d)
        par = base + 0.002 * far * torch.randn(k, d, generator=g) / math.sqrt(d)
        yield case("parallel", k, "shrunk", shrink), par, x, lab
        for share in (0.2, 0.4):
            parked = km.clone()
            idx = torch.randperm(k, generator=g)[: max(1, int(share * k))]
            dirs = torch.randn(idx.numel(), d, generator=g)
            parked[idx] = mean + far * dirs / dirs.norm(dim=1, keepdim=True)
            tags = ["dead_codes"] + ["low_utilization"] * (share >= 0.4)
            yield case(f"parked@{share}", k, "underused", tags, share=share), parked, x, lab
        exploded = km.clone()
        idx = torch.randperm(k, generator=g)[: max(1, int(0.3 * k))]
        exploded[idx] = mean + 1000.0 * (km[idx] - mean)
        yield case("exploded", k, "underused", ["dead_codes"]), exploded, x, lab


def named_cases(seed: int):
    """The issue's named cases, with their expected outcome (checked by tests/metrics/test_verdicts.py too)."""
    x, lab = mixture(6000, seed=seed, d=64, decay=1.0)
    xt, labt = mixture(6000, seed=seed + 1, d=64, decay=1.0)
    mean = xt.mean(0)
    g = torch.Generator().manual_seed(seed)
    out = []
    km = kmeans(xt, 256, iters=20, seed=seed)
    out.append(("pull 0.6x toward the mean (K=256, D=64)", mean + 0.6 * (km - mean), x, lab, "shrunk"))
    out.append(("3 of 10 modes (K=256, D=64)", kmeans(xt[labt < 3], 256, iters=20, seed=seed), x, lab, "shrunk"))
    for k in (16, 32, 64):
        out.append((f"k-means K={k} in D=64", kmeans(xt, k, iters=20, seed=seed), x, lab, "healthy"))
    km1024 = kmeans(xt, 1024, iters=10, seed=seed)
    parked = km1024.clone()
    far = 20.0 * float(xt.std(0).norm())
    dirs = torch.randn(200, 64, generator=g)
    parked[:200] = mean + far * dirs / dirs.norm(dim=1, keepdim=True)
    out.append(("200 of 1024 codes parked far away", parked, x, lab, "underused"))
    xs, ls = mixture(6000, seed=seed, d=32, sphere=True, sep=1.5)
    u = xs.mean(0) / xs.mean(0).norm()
    cap = u + 1.13 * torch.randn(256, 32, generator=g) / math.sqrt(32)  # cosine spread 0.56
    out.append(("sphere cap (K=256, D=32)", cap / cap.norm(dim=1, keepdim=True), xs, ls, "shrunk"))
    vqgan = torch.randn(256, generator=g) * 5 + 0.01 * torch.randn(1024, 256, generator=g)
    out.append(("VQGAN layout: 1024 near-parallel codes, no latents", vqgan, None, None, "not healthy"))
    return out


# ---------------------------------------------------------------------------------------------- real runs
def _ae(d_in: int, d_z: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    enc = torch.nn.Sequential(torch.nn.Linear(d_in, 128), torch.nn.GELU(), torch.nn.Linear(128, d_z))
    dec = torch.nn.Sequential(torch.nn.Linear(d_z, 128), torch.nn.GELU(), torch.nn.Linear(128, d_in))
    return enc, dec


def vqp_runs(ks: list[int], steps: int, seed: int):
    """vector-quantize-pytorch variants on a 10-mode mixture; yields ``(case, codebook, latents, labels, mse)``."""
    from vector_quantize_pytorch import VectorQuantize

    xtr, _ = mixture(8000, d=32, seed=seed, sep=3.0)
    xte, lte = mixture(3000, d=32, seed=seed + 1, sep=3.0)
    variants = {
        "vqp_random": {}, "vqp_kmeans": {"kmeans_init": True}, "vqp_deferred": {"kmeans_init": True},
        "vqp_dead_expiry": {"threshold_ema_dead_code": 2}, "vqp_cosine": {"use_cosine_sim": True},
        "vqp_rotation": {"rotation_trick": True},
    }  # all but vqp_rotation use the straight-through estimator (the library's default is the rotation trick)
    for k in ks:
        for name, kw in variants.items():
            torch.manual_seed(seed)
            enc, dec = _ae(32, 16)
            vq = VectorQuantize(dim=16, codebook_size=k, decay=0.9, commitment_weight=0.25,
                                **{"rotation_trick": False, **kw})
            opt = torch.optim.Adam([*enc.parameters(), *dec.parameters(), *vq.parameters()], lr=2e-3)
            g = torch.Generator().manual_seed(seed)
            warm = steps // 2 if name == "vqp_deferred" else 0
            for step in range(steps):
                xb = xtr[torch.randint(0, len(xtr), (256,), generator=g)]
                z = enc(xb)
                loss = torch.zeros(())
                if step >= warm:
                    z, _, loss = vq(z)
                    loss = loss.sum()
                loss = loss + (dec(z) - xb).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            vq.eval()
            with torch.no_grad():
                z = enc(xte)
                zq, _, _ = vq(z)
                mse = float((dec(zq) - xte).pow(2).mean())
                cb = vq.codebook.detach().reshape(-1, 16)
                if kw.get("use_cosine_sim"):
                    z = torch.nn.functional.normalize(z, dim=-1)
                    cb = torch.nn.functional.normalize(cb, dim=-1)
            yield {"id": f"real/{name}/K{k}", "family": name, "latents": "real-mix32", "K": k, "D": 16,
                   "group": f"vqp/K{k}", "tags": []}, cb, z, lte, mse


def reference_runs(ks: list[int], steps: int, seed: int):
    """The bundled reference tokenizer, early vs deferred quantization, Euclidean vs l2."""
    from shrinkscope.reference.data import load_dataset
    from shrinkscope.reference.train import TrainConfig, tokenizer_config_for, train_tokenizer

    data = load_dataset("gaussians", seed=seed, n_train=6000, n_test=3000)
    for k in ks:
        for l2 in (False, True):
            for arm, start in (("early", 0), ("deferred", steps // 2)):
                cfg = tokenizer_config_for(data, num_codes=k, code_dim=8, quantize_start=start, l2_normalize=l2)
                model, _ = train_tokenizer(cfg, data, TrainConfig(steps=steps, seed=seed, kmeans_items=2000),
                                           progress=False)
                with torch.no_grad():
                    z = model.latents(data.test)
                    mse = float((model(data.test)["recon"] - data.test).pow(2).mean())
                    cb = model.quantizer.effective_codebook()
                name = f"ref_{arm}_{'l2' if l2 else 'euclid'}"
                yield {"id": f"real/{name}/K{k}", "family": name, "latents": "real-gaussians", "K": k, "D": 8,
                       "group": f"ref/{'l2' if l2 else 'euclid'}/K{k}", "tags": []}, cb, z, data.test_modes, mse


def label_by_outcome(cases: list[dict]) -> None:
    """Real runs: held-out reconstruction MSE against the best run of the same group decides the label."""
    best: dict[str, float] = {}
    for c in cases:
        if "mse" in c:
            best[c["group"]] = min(best.get(c["group"], float("inf")), c["mse"])
    for c in cases:
        if "mse" in c:
            c["mse_ratio"] = c["mse"] / best[c["group"]]
            c["truth"] = "shrunk" if c["mse_ratio"] >= 1.5 else "healthy" if c["mse_ratio"] <= 1.2 else "ambiguous"


# ------------------------------------------------------------------------------------------- measuring
def _judged_dict(j: Judged) -> dict:
    return {"evidence": list(j.evidence), "values": j.values, "references": j.references, "live_codes": j.live_codes,
            "num_codes": j.num_codes, "dim": j.dim}


def _judged(d: dict) -> Judged:
    return Judged(d["num_codes"], d["dim"], tuple(d["evidence"]), dict(d["values"]), dict(d["references"]),
                  live_codes=d["live_codes"])


def measure(case: dict, cb: torch.Tensor, x: torch.Tensor | None, lab: torch.Tensor | None) -> dict:
    t0 = time.perf_counter()
    if x is not None:
        full = codebook_health(cb, latents=x, labels=lab)
        case["full"] = _judged_dict(full.judged)
        case["usage_only"] = _judged_dict(codebook_health(cb, counts=full.counts).judged)
    case["codes_only"] = _judged_dict(codebook_health(cb).judged)
    case["seconds"] = round(time.perf_counter() - t0, 3)
    return case


# ------------------------------------------------------------------------------------------ calibration
def split(cases: list[dict], seed: int) -> tuple[list[dict], list[dict]]:
    """Seeded shuffle within each (family, latents) group, alternating halves, so both halves see every kind."""
    rng = random.Random(seed)
    groups: dict[tuple, list[dict]] = {}
    for c in cases:
        groups.setdefault((c["family"], c["latents"]), []).append(c)
    a, b = [], []
    for key in sorted(groups):
        g = groups[key]
        rng.shuffle(g)
        start = rng.randrange(2)
        for i, c in enumerate(g):
            (a if (i + start) % 2 == 0 else b).append(c)
    return a, b


SCALE = {"dead_code_ratio": "linear", "stranded_codes": "linear", "shrunk_mode_share": "linear",
         "excess_distortion": "log1p"}
"""Scale on which a threshold sits halfway: log for ratios (the default), log(1 + v) for the excess
distortion, linear for shares that are often exactly 0."""
MARGIN = {"log": math.log(1.1), "log1p": math.log(1.1), "linear": 0.05}
"""Smallest margin: a rule only moves past a positive that lies at least two margins beyond the most extreme
negative, so a threshold never sits within noise of a healthy case (10% in ratio, 0.05 in share). The margin
used is the larger of this and the negatives' standard deviation on the rule's scale (``choose``): coverage
ratios of healthy random-sample codebooks in 32-64 dimensions scatter over a factor of 3 or more, and an
earlier run with the fixed margin alone flagged healthy held-out codebooks by coverage (docs/verdicts.md)."""


OFF = {"min": 0.0, "max": 1e6}
"""A rule switched off: a min rule at 0 (no ratio or share is below it), a max rule at 10^6."""


def _to(v: float, scale: str) -> float:
    if scale == "linear":
        return v
    return math.log1p(max(v, -1 + 1e-12)) if scale == "log1p" else math.log(max(v, 1e-12))


def _from(u: float, scale: str) -> float:
    if scale == "linear":
        return u
    return math.expm1(u) if scale == "log1p" else math.exp(u)


def choose(pos: list[float], neg: list[float], direction: str, default: float, scale: str = "log") -> float:
    """The threshold with the most recall on ``pos`` that flags none of ``neg``, halfway across the gap.

    The margin is the larger of ``MARGIN`` and the standard deviation of the negatives on the rule's scale.
    Positives within two margins of the most extreme negative are not chased (they are within noise of a
    negative). A rule with no positive clearly past the negatives is switched off (``OFF``).
    """
    if not neg:
        return default
    sign = 1.0 if direction == "min" else -1.0  # work as a min rule: flag u < threshold
    u_neg = [sign * _to(v, scale) for v in neg]
    # the margin grows with the negatives' own scatter (a noise estimate from this half): a rule whose healthy
    # values vary a lot keeps its threshold further from them
    mean = sum(u_neg) / len(u_neg)
    m = max(MARGIN[scale], math.sqrt(sum((u - mean) ** 2 for u in u_neg) / len(u_neg)))
    edge = min(u_neg)
    past = [sign * _to(p, scale) for p in pos if sign * _to(p, scale) < edge - 2 * m]
    if not past:  # separates none of its own positives on this half: only a risk of false alarms, so off
        return OFF[direction]
    return _from(sign * (max(past) + edge) / 2, scale)


def calibrate(train: list[dict]) -> HealthThresholds:
    base = HealthThresholds()
    chosen = {}
    for fld, (_, metric, direction, ev, positive) in RULES.items():  # positive: the construction tag
        key = {"full": "full", "usage": "usage_only", "codes": "codes_only"}[ev]
        pos, neg = [], []
        for c in train:
            if key not in c or c["id"].startswith("real/"):  # real runs are only reported, never chosen on
                continue
            v = c[key]["values"].get(metric)
            if v is None or (isinstance(v, float) and not math.isfinite(v)):
                continue
            if positive in c["tags"]:
                pos.append(v)
            elif c["truth"] == "healthy" or (c["truth"] == "underused" and RULES[fld][0] in SHRINK_CODES):
                neg.append(v)
        chosen[fld] = round(choose(pos, neg, direction, getattr(base, fld), SCALE.get(metric, "log")), 4)
    return HealthThresholds(**{**asdict(base), **chosen})


def evaluate(cases: list[dict], t: HealthThresholds) -> dict:
    """Per-warning precision/recall, status confusion and codes-only agreement on ``cases``."""
    per_warning: dict[str, dict] = {}
    confusion: dict[str, dict[str, int]] = {}
    agree: dict[str, dict[str, dict[str, int]]] = {"codes_only": {}, "usage_only": {}}
    rows = []
    for c in cases:
        if "full" not in c or c["id"].startswith("real/"):
            continue
        warns, v = judge(_judged(c["full"]), t)
        fired = {w["code"] for w in warns}
        confusion.setdefault(c["truth"], {}).setdefault(v.status, 0)
        confusion[c["truth"]][v.status] += 1
        for code in fired | set(c["tags"]):
            s = per_warning.setdefault(code, {"fired": 0, "fired_correct": 0, "tagged": 0, "tagged_fired": 0})
            if code in fired:
                s["fired"] += 1
                # a shrinkage warning is right on a shrunk case; a usage warning on any case that is not healthy
                right = c["truth"] == "shrunk" if code in SHRINK_CODES else c["truth"] != "healthy"
                s["fired_correct"] += int(right)
            if code in c["tags"]:
                s["tagged"] += 1
                s["tagged_fired"] += int(code in fired)
        for mode in ("codes_only", "usage_only"):
            _, vo = judge(_judged(c[mode]), t)
            agree[mode].setdefault(v.status, {}).setdefault(vo.status, 0)
            agree[mode][v.status][vo.status] += 1
        rows.append({"id": c["id"], "truth": c["truth"], "status": v.status, "warnings": sorted(fired),
                     "optimal": "optimal" in c["tags"], "real": c["id"].startswith("real/")})
    for s in per_warning.values():
        s["precision"] = s["fired_correct"] / s["fired"] if s["fired"] else None
        s["recall"] = s["tagged_fired"] / s["tagged"] if s["tagged"] else None
    shrunk = [r for r in rows if r["truth"] == "shrunk" and not r["real"]]
    optimal = [r for r in rows if r["optimal"]]
    return {
        "per_warning": per_warning, "status_confusion": confusion, "codes_only_vs_full": agree,
        "targets": {
            "optimal_flagged": sum(r["status"] != "healthy" for r in optimal), "optimal_total": len(optimal),
            "constructed_shrinkage_flagged": sum(r["status"] == "shrunk" for r in shrunk),
            "constructed_shrinkage_total": len(shrunk),
            "codes_only_healthy_when_full_shrunk": agree["codes_only"].get("shrunk", {}).get("healthy", 0)
            + agree["usage_only"].get("shrunk", {}).get("healthy", 0),
        },
        "cases": rows,
    }


# ------------------------------------------------------------------------------------------------ main
def build_corpus(a: argparse.Namespace) -> list[dict]:
    cases = []
    sets = {"mix16": LATENT_SETS["mix16"]} if a.quick else LATENT_SETS
    ks = [16, 64] if a.quick else [16, 64, 256, 1024]
    n = 2000 if a.quick else 4000
    for i, (name, opts) in enumerate(sets.items()):
        for case, cb, x, lab in synthetic_cases(name, opts, ks, n, a.seed + 10 * i):
            cases.append(measure(case, cb, x, lab))
        print(f"  {name}: {len(cases)} cases so far", file=sys.stderr)
    if not a.quick and not a.no_real:
        for case, cb, x, lab, mse in [*vqp_runs([64, 512], a.steps, a.seed), *reference_runs([64, 512], a.steps,
                                                                                               a.seed)]:
            case["mse"] = mse
            cases.append(measure(case, cb, x, lab))
        print(f"  real runs: {len(cases)} cases so far", file=sys.stderr)
        label_by_outcome(cases)
    return cases


def real_runs(cases: list[dict], t: HealthThresholds) -> dict:
    """Every real run (both halves: none chose a threshold) with its outcome label and verdict."""
    rows = []
    for c in cases:
        if c["id"].startswith("real/"):
            warns, v = judge(_judged(c["full"]), t)
            _, vo = judge(_judged(c["codes_only"]), t)
            rows.append({"id": c["id"], "mse_ratio": round(c["mse_ratio"], 3), "truth": c["truth"], "status": v.status,
                         "codes_only": vo.status, "warnings": sorted(w["code"] for w in warns),
                         "dead_code_ratio": c["full"]["values"]["dead_code_ratio"]})
    flagged = ("shrunk", "underused")
    agree = {lab: {"flagged": sum(r["status"] in flagged for r in rows if r["truth"] == lab),
                   "total": sum(r["truth"] == lab for r in rows)} for lab in ("shrunk", "healthy", "ambiguous")}
    return {"runs": rows, "flagged_by_label": agree}


def named(t: HealthThresholds, seed: int) -> list[dict]:
    out = []
    for title, cb, x, lab, expected in named_cases(seed):
        h = codebook_health(cb, latents=x, labels=lab, thresholds=t)
        out.append({"case": title, "expected": expected, "status": h.verdict.status,
                    "warnings": [w["code"] for w in h.warnings], "summary": h.verdict.summary})
    return out


def _fmt(v):
    return "-" if v is None else f"{v:.2f}"


def report(res: dict) -> str:
    head = (f"corpus: {res['n_cases']} cases, split {res['n_train']} / {res['n_test']} (synthetic cases of the "
            f"first half choose, of the second report; real runs only reported); {res['seconds']:.0f} s")
    lines = [head, "", "chosen thresholds (first half):"]
    lines += [f"  {k} = {v}" for k, v in res["thresholds"].items()]
    ev = res["held_out"]
    lines += ["", "held-out half, per warning:", "| warning | fired | precision | tagged | recall |",
              "|---|---:|---:|---:|---:|"]
    for code, s in sorted(ev["per_warning"].items()):
        lines.append(f"| {code} | {s['fired']} | {_fmt(s['precision'])} | {s['tagged']} | {_fmt(s['recall'])} |")
    lines += ["", "held-out status (truth -> verdict): " + json.dumps(ev["status_confusion"], sort_keys=True),
              "codes-only verdict by full verdict: " + json.dumps(ev["codes_only_vs_full"]["codes_only"], sort_keys=True),
              "codes+usage verdict by full verdict: " + json.dumps(ev["codes_only_vs_full"]["usage_only"], sort_keys=True),
              "targets: " + json.dumps(ev["targets"]), "",
              "real runs (label from held-out reconstruction vs the best run of the same K; never used to choose):",
              "| run | mse / best | label | verdict | codes-only | dead | warnings |", "|---|---:|---|---|---|---:|---|"]
    for r in res["real_runs"]["runs"]:
        lines.append(f"| {r['id']} | {r['mse_ratio']:.2f} | {r['truth']} | {r['status']} | {r['codes_only']} | "
                     f"{r['dead_code_ratio']:.0%} | {', '.join(r['warnings'])} |")
    lines += ["flagged (shrunk or underused) by label: " + json.dumps(res["real_runs"]["flagged_by_label"]), "",
              "named cases (chosen thresholds):"]
    lines += [f"  {n['case']}: {n['status']} {n['warnings']} (expected {n['expected']})" for n in res["named"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small synthetic corpus (about a minute; for tests)")
    ap.add_argument("--no-real", action="store_true", help="skip the training runs")
    ap.add_argument("--steps", type=int, default=400, help="training steps of each real run (default 400)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "docs", "verdicts.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    cases = build_corpus(a)
    train, test = split(cases, a.seed)
    t = calibrate(train)
    res = {
        "command": "python bench/calibrate_verdicts.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "torch": torch.__version__, "n_cases": len(cases), "n_train": len(train), "n_test": len(test),
        "n_ambiguous": sum(c["truth"] == "ambiguous" for c in cases),
        "thresholds": {f.name: getattr(t, f.name) for f in fields(t)},
        "train_half": {k: v for k, v in evaluate(train, t).items() if k != "cases"},
        "held_out": evaluate(test, t), "real_runs": real_runs(cases, t), "named": named(t, a.seed),
        "split": {"train": [c["id"] for c in train], "test": [c["id"] for c in test]}, "corpus": cases,
    }
    res["seconds"] = time.perf_counter() - t0
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1, default=float)
    print(report(res))
    print(f"\nwrote {os.path.relpath(a.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

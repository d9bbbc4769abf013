"""Calibrate the verdict thresholds on a labelled corpus: choose on one half, report on the other.

The corpus (every case labelled by construction or by its downstream outcome, never by the thresholds):

- synthetic controls on three latent clouds (a 10-mode mixture in D=16, an anisotropic 10-mode mixture in
  D=64, a 10-mode mixture on the unit sphere in D=32), K from 16 to 1024, codebooks fitted on a separate
  draw of the same distribution:
  healthy: k-means (k-means++, 20 Lloyd iterations), codes sampled from the latents (with and without noise);
  shrunk: codes pulled toward the latents' mean (0.3-0.7x), k-means on a subset of the modes (1, 3, 5 of 10),
  codes projected onto a low-rank plane (1-2 principal directions), a cap of the sphere, near-parallel codes
  far from the origin (the VQGAN case), anchored codebooks (15% or 50% of the codes k-means on the data,
  the rest clumped at 0.05x or 0.25x scale around a point inside the cloud: the standard recipe's failure);
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

from shrinkscope.metrics import HealthThresholds, codebook_health
from shrinkscope.metrics.verdict import SHRINK_CODES, Judged, judge

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from verdict_corpus import (  # a sibling module, not a package
    LATENT_SETS,
    label_by_outcome,
    named_cases,
    reference_runs,
    synthetic_cases,
    vqp_runs,
)

RULES = {  # threshold field -> (warning code, metric, direction, evidence it reads, construction tag of positives)
    "min_spread_vs_kmeans": ("shrinkage", "spread_vs_kmeans", "min", "full", "shrinkage"),
    "min_spread_all_vs_live": ("shrinkage", "spread_all_vs_live", "min", "usage", "shrinkage"),
    "min_rank_vs_kmeans": ("dimensional_collapse", "rank_vs_kmeans", "min", "full", "dimensional_collapse"),
    "min_coverage_vs_kmeans": ("poor_coverage", "coverage_vs_kmeans", "min", "full", "poor_coverage"),
    "max_excess_distortion": ("excess_distortion", "excess_distortion", "max", "full", "excess_distortion"),
    "max_shrunk_mode_share": ("mode_shrinkage", "shrunk_mode_share", "max", "full", "mode_shrinkage"),
    "max_stranded_codes": ("dead_codes", "stranded_codes", "max", "full", "dead_codes"),
    "max_excess_unused_share": ("dead_codes", "excess_unused_share", "max", "full", "dead_codes"),
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
         "excess_unused_share": "linear",
         "excess_distortion": "log1p"}
"""Scale on which a threshold sits halfway: log for ratios (the default), log(1 + v) for the excess
distortion, linear for shares that are often exactly 0."""
MARGIN = {"log": math.log(1.1), "log1p": math.log(1.1), "linear": 0.05}
"""Smallest margin: a rule only moves past a positive that lies at least two margins beyond the most extreme
negative, so a threshold never sits within noise of a healthy case (10% in ratio, 0.05 in share). The margin
used is the larger of this and the healthy negatives' standard deviation on the rule's scale (``choose``): coverage
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


def choose(pos: list[float], neg: list[float], direction: str, default: float, scale: str = "log",
           noise: list[float] | None = None) -> float:
    """The threshold with the most recall on ``pos`` that flags none of ``neg``, halfway across the gap.

    The margin is the larger of ``MARGIN`` and the standard deviation on the rule's scale of ``noise`` (the
    healthy negatives; all of ``neg`` when not given).
    Positives within two margins of the most extreme negative are not chased (they are within noise of a
    negative). A rule with no positive clearly past the negatives is switched off (``OFF``).
    """
    if not neg:
        return default
    sign = 1.0 if direction == "min" else -1.0  # work as a min rule: flag u < threshold
    u_neg = [sign * _to(v, scale) for v in neg]
    # the margin grows with the healthy negatives' own scatter (a noise estimate from this half): a rule whose
    # healthy values vary a lot keeps its threshold further from them. Under-used negatives (parked or exploded
    # codes, negatives of the shrinkage rules) bound the threshold but are not noise: codes exploded 1000x say
    # nothing about how close to the cut-off a healthy codebook can fall.
    u_noise = [sign * _to(v, scale) for v in (noise if noise is not None else neg)]
    mean = sum(u_noise) / len(u_noise)
    m = max(MARGIN[scale], math.sqrt(sum((u - mean) ** 2 for u in u_noise) / len(u_noise)))
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
        pos, neg, noise = [], [], []
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
                if c["truth"] == "healthy":
                    noise.append(v)
        chosen[fld] = round(choose(pos, neg, direction, getattr(base, fld), SCALE.get(metric, "log"),
                                   noise=noise or None), 4)
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

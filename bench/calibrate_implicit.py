"""Calibrate the usage verdict of implicit codebooks (FSQ, LFQ, BSQ): choose on one half, report on the other.

The corpus: windows of code ids drawn from distributions built to be healthy or under-used (the label comes
from the construction, never from the rules under test), at several K and several window sizes N / K:

- healthy: uniform use of all K codes; log-normal skew of the code probabilities (sigma 0.5 and 1); FSQ with
  broad per-dimension level use (each dimension a discretised Gaussian of 0.5 x the levels' width); LFQ-like
  independent sign bits with P(1) drawn from [0.35, 0.65];
- under-used: collapse onto 1, 16 or K/256 codes; uniform use of a random half or fifth of the codes;
  Zipf usage (exponent 1.0 and 1.3, codes shuffled); FSQ with narrow level use (0.12 x the width); LFQ-like
  bits with 2 or b/2 constant bits; half the bits copies of the other half; half the bits noisy copies
  (flipped with probability 0.05).

Exact-count cases have K = 1000 (FSQ levels 8,5,5,5), 2^10, 2^14 and 2^18 and N / K = 0.25, 1, 4, 16; each is
measured both ways: exact per-code counts and the per-bit / pairwise statistics used above the exact-count
limit. Bits-only cases (K = 2^24 and 2^32, N = 2^16 and 2^20 ids: far fewer ids than codes, as such windows
are) are measured with the bit statistics only.

Protocol (as bench/calibrate_verdicts.py, whose ``choose`` places each threshold): cases are split in two
halves by a seeded shuffle within each (construction, K) group. On the exact cases of the first half each rule
(``dead_codes`` on ``codes_used_vs_uniform``, ``low_utilization`` on ``utilization_vs_uniform``) gets its
threshold halfway (log scale) between the most extreme healthy case and the nearest positive clearly past it.
Then ``min_tokens_per_code`` is the smallest window size N / K of the grid from which on the first half's
under-used cases are flagged at least 95% of the time at every larger size. The second half is judged with
those thresholds, exact and bit paths apart; bits-only cases never choose anything.

    nice python bench/calibrate_implicit.py                   # writes docs/verdicts-implicit.json
    python bench/calibrate_implicit.py --quick --out /tmp/i.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, replace

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from calibrate_verdicts import choose, split

from shrinkscope.implicit import BitUsageStream, bit_usage_estimates
from shrinkscope.metrics import HealthThresholds, dead_code_ratio, utilization_perplexity
from shrinkscope.metrics.implicit_verdict import implicit_values, judge_implicit
from shrinkscope.metrics.verdict import Judged

RULES = {  # threshold field -> (warning code, metric read on exact counts)
    "min_codes_used_vs_uniform": ("dead_codes", "codes_used_vs_uniform"),
    "min_utilization_vs_uniform": ("low_utilization", "utilization_vs_uniform"),
}
FSQ_LEVELS = {1000: [8, 5, 5, 5], 2 ** 10: [4] * 5, 2 ** 14: [4] * 7, 2 ** 18: [8] * 6}
POWER = 0.95
"""Share of the choosing half's under-used cases a window size must flag (at it and every larger size) for a
clean window of that size to be called healthy."""


# ------------------------------------------------------------------------------------------- constructions
def _fsq(levels: list[int], width: float) -> torch.Tensor:
    """Code probabilities of FSQ whose every dimension is a discretised Gaussian of ``width`` x the levels."""
    p = torch.ones(1, dtype=torch.float64)
    for n_lev in levels:  # mixed radix, first dimension fastest, as vector-quantize-pytorch numbers FSQ codes
        x = torch.arange(n_lev, dtype=torch.float64) - (n_lev - 1) / 2
        q = torch.exp(-0.5 * (x / (width * n_lev)) ** 2)
        p = (q[:, None] * p[None, :]).reshape(-1)
    return p / p.sum()


def _bits(probs: torch.Tensor) -> torch.Tensor:
    """Code probabilities of independent id bits with ``P(bit i = 1) = probs[i]`` (bit 0 least significant)."""
    p = torch.ones(1, dtype=torch.float64)
    for q in probs.double():
        p = torch.cat([p * (1 - q), p * q])
    return p


def _copied(b: int, flip: float) -> torch.Tensor:
    """Fair bits whose upper half copies the lower half, each copy flipped with probability ``flip``."""
    h = b // 2
    low = torch.full((2 ** h,), 1.0 / 2 ** h, dtype=torch.float64)
    ids = torch.arange(2 ** h)
    p = torch.zeros(2 ** (b - h) * 2 ** h, dtype=torch.float64)
    for hi in range(2 ** (b - h)):  # hi bits: P(hi | lo) = prod over copied bits
        diff = torch.tensor([(int(v) ^ hi).bit_count() for v in ids], dtype=torch.float64)
        p[hi * 2 ** h: (hi + 1) * 2 ** h] = low * flip ** diff * (1 - flip) ** (h - diff)
    return p / p.sum()


def constructions(k: int, g: torch.Generator):
    """Yield ``(family, truth, tags, probabilities (K,))`` for one exact-count K."""
    b = (k - 1).bit_length()
    pow2 = k == 2 ** b
    yield "uniform", "healthy", [], torch.full((k,), 1.0 / k, dtype=torch.float64)
    for s in (0.5, 1.0):
        w = torch.exp(s * torch.randn(k, generator=g, dtype=torch.float64))
        yield f"lognormal{s}", "healthy", [], w / w.sum()
    yield "fsq_broad", "healthy", [], _fsq(FSQ_LEVELS[k], 0.5)
    if pow2:
        yield "lfq_balanced", "healthy", [], _bits(0.35 + 0.3 * torch.rand(b, generator=g, dtype=torch.float64))
    for m in (1, 16, k // 256):
        p = torch.zeros(k, dtype=torch.float64)
        p[torch.randperm(k, generator=g)[:m]] = 1.0 / m
        yield f"collapse{'_k256' if m == k // 256 else m}", "underused", ["dead_codes", "low_utilization"], p
    for f in (0.5, 0.2):
        p = torch.zeros(k, dtype=torch.float64)
        live = int(f * k)
        p[torch.randperm(k, generator=g)[:live]] = 1.0 / live
        yield f"subset{f}", "underused", ["dead_codes"], p
    for s in (1.0, 1.3):
        w = torch.arange(1, k + 1, dtype=torch.float64) ** -s
        yield f"zipf{s}", "underused", ["low_utilization"], (w / w.sum())[torch.randperm(k, generator=g)]
    yield "fsq_narrow", "underused", ["low_utilization"], _fsq(FSQ_LEVELS[k], 0.12)
    if pow2:
        for d in (2, b // 2):
            q = 0.35 + 0.3 * torch.rand(b, generator=g, dtype=torch.float64)
            q[torch.randperm(b, generator=g)[:d]] = 0.0
            yield f"dead_bits{'_half' if d == b // 2 else d}", "underused", ["dead_codes", "low_utilization"], _bits(q)
        yield "copied_bits", "underused", ["dead_codes", "low_utilization"], _copied(b, 0.0)
        yield "noisy_copies", "underused", ["low_utilization"], _copied(b, 0.05)


def bit_sampler(family: str, b: int, n: int, g: torch.Generator) -> torch.Tensor:
    """``(n,)`` int64 ids of a ``b``-bit code drawn bit by bit (for K too large for a probability vector)."""
    q = torch.full((b,), 0.5, dtype=torch.float64)
    if family == "lfq_balanced":
        q = 0.35 + 0.3 * torch.rand(b, generator=g, dtype=torch.float64)
    elif family.startswith("dead_bits"):
        q[torch.randperm(b, generator=g)[:(b // 2 if family.endswith("half") else 2)]] = 0.0
    bits = (torch.rand(n, b, generator=g, dtype=torch.float64) < q).long()
    if family in ("copied_bits", "noisy_copies"):
        h = b // 2
        flip = (torch.rand(n, h, generator=g) < (0.05 if family == "noisy_copies" else 0.0)).long()
        bits[:, h:2 * h] = bits[:, :h] ^ flip
    if family == "collapse16":
        bits = bits[torch.randint(0, 16, (n,), generator=g)]  # 16 random codes (the first 16 rows' ids)
    return (bits << torch.arange(b)).sum(1)


BIT_FAMILIES = {"uniform": ("healthy", []), "lfq_balanced": ("healthy", []),
                "collapse16": ("underused", ["dead_codes", "low_utilization"]),
                "dead_bits2": ("underused", ["dead_codes", "low_utilization"]),
                "dead_bits_half": ("underused", ["dead_codes", "low_utilization"]),
                "copied_bits": ("underused", ["dead_codes", "low_utilization"]),
                "noisy_copies": ("underused", ["low_utilization"])}


# ------------------------------------------------------------------------------------------------ measure
def bit_values(ids: torch.Tensor, k: int) -> dict:
    s = BitUsageStream(k)
    for c in ids.split(1 << 20):
        s.update_indices(c)
    n, ones, pair = s.window_stats()
    e = bit_usage_estimates(n, ones, pair, k)
    return {"tokens": n, "codes_used_bound": e["codes_used_bound"], "utilization_bound": e["utilization_bound"]}


def measure_exact(family, truth, tags, p, k, ratio, g) -> dict:
    n = max(1, round(ratio * k))
    ids = torch.searchsorted(torch.cumsum(p, 0), torch.rand(n, generator=g, dtype=torch.float64) * float(p.sum()))
    ids = ids.clamp(max=k - 1)
    c = torch.bincount(ids, minlength=k).double()
    nz = p[p > 0]
    return {"id": f"K{k}/{family}/r{ratio:g}", "family": family, "latents": f"K{k}", "K": k, "ratio": ratio,
            "truth": truth, "tags": tags, "population_utilization": math.exp(float(-(nz * nz.log()).sum())) / k,
            "exact": {"tokens": n, "codes_used": 1 - dead_code_ratio(c), "utilization": utilization_perplexity(c) / k,
                      "dead_code_ratio": dead_code_ratio(c)},
            "bits": bit_values(ids, k)}


def judged(case: dict, path: str) -> Judged:
    v = case[path]
    return Judged(case["K"], 0, ("usage",), dict(v), implicit=True, tokens=float(v["tokens"]), bounds=path == "bits")


# --------------------------------------------------------------------------------------------- calibrate
def calibrate(train: list[dict]) -> HealthThresholds:
    base, chosen = HealthThresholds(), {}
    for fld, (code, metric) in RULES.items():
        pos, neg = [], []
        for c in train:
            if "exact" not in c:
                continue
            v = implicit_values(judged(c, "exact"))[metric]
            if c["truth"] == "healthy":
                neg.append(v)
            elif code in c["tags"]:
                pos.append(v)
        chosen[fld] = round(choose(pos, neg, "min", getattr(base, fld)), 4)
    t = HealthThresholds(**{**asdict(base), **chosen})
    # window size: the smallest N / K from which on under-use is caught (>= POWER at it and every larger size)
    ratios = sorted({c["ratio"] for c in train if "exact" in c})
    recall = {r: _recall([c for c in train if "exact" in c and c["ratio"] == r], t) for r in ratios}
    ok = [r for r in ratios if all(recall[s] >= POWER for s in ratios if s >= r)]
    return replace(t, min_tokens_per_code=min(ok) if ok else math.inf)


def _recall(cases: list[dict], t: HealthThresholds) -> float:
    under = [c for c in cases if c["truth"] == "underused"]
    return sum(judge_implicit(judged(c, "exact"), t)[1].status == "underused" for c in under) / max(1, len(under))


def evaluate(cases: list[dict], t: HealthThresholds) -> dict:
    out: dict = {}
    for path in ("exact", "bits"):
        conf: dict = {}
        per: dict = {}
        by_ratio: dict = {}
        for c in cases:
            if path not in c:
                continue
            warns, v = judge_implicit(judged(c, path), t)
            conf.setdefault(c["truth"], {}).setdefault(v.status, 0)
            conf[c["truth"]][v.status] += 1
            key = f"{c['ratio']:g}" if "ratio" in c else f"N={c['bits']['tokens']}"
            by_ratio.setdefault(key, {}).setdefault(c["truth"], {}).setdefault(v.status, 0)
            by_ratio[key][c["truth"]][v.status] += 1
            fired = {w["code"] for w in warns}
            for code in fired | set(c["tags"]):
                s = per.setdefault(code, {"fired": 0, "fired_correct": 0, "tagged": 0, "tagged_fired": 0})
                s["fired"] += code in fired
                s["fired_correct"] += code in fired and c["truth"] != "healthy"
                s["tagged"] += code in c["tags"]
                s["tagged_fired"] += code in c["tags"] and code in fired
            c.setdefault("status", {})[path] = v.status
        out[path] = {"status": conf, "per_warning": per, "by_window": by_ratio}
    return out


def build(quick: bool, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    ks = [1000, 2 ** 10] if quick else [1000, 2 ** 10, 2 ** 14, 2 ** 18]
    ratios = [0.25, 1, 4, 16]
    cases = []
    for k in ks:
        for family, truth, tags, p in constructions(k, g):
            cases += [measure_exact(family, truth, tags, p, k, r, g) for r in ratios]
    for b in ([24] if quick else [24, 32]):
        for n in ([2 ** 14] if quick else [2 ** 16, 2 ** 20]):
            for family, (truth, tags) in BIT_FAMILIES.items():
                ids = bit_sampler(family, b, n, g)
                cases.append({"id": f"K2^{b}/{family}/N{n}", "family": family, "latents": f"K2^{b}", "K": 2 ** b,
                              "truth": truth, "tags": tags, "bits": bit_values(ids, 2 ** b)})
    return cases


def report(res: dict) -> str:
    head = (f"corpus: {res['cases']} cases ({res['exact_cases']} exact-count, {res['bits_only']} bits-only), "
            f"split {res['split'][0]} / {res['split'][1]}; {res['seconds']:.0f} s")
    lines = [head, "", "chosen (first half):"]
    lines += [f"  {k} = {v}" for k, v in res["thresholds"].items()]
    for path in ("exact", "bits"):
        e = res["held_out"][path]
        lines += ["", f"held-out half, {path} path: status (truth -> verdict) {json.dumps(e['status'], sort_keys=True)}",
                  "| warning | fired | precision | tagged | recall |", "|---|---:|---:|---:|---:|"]
        for code, s in sorted(e["per_warning"].items()):
            prec = f"{s['fired_correct'] / s['fired']:.2f}" if s["fired"] else "-"
            rec = f"{s['tagged_fired'] / s['tagged']:.2f}" if s["tagged"] else "-"
            lines.append(f"| {code} | {s['fired']} | {prec} | {s['tagged']} | {rec} |")
        lines.append("by window (N / K, or N ids for bits-only K):")
        order = sorted(e["by_window"], key=lambda r: (r.startswith("N="), float(r.lstrip("N="))))
        lines += [f"  {r}: {json.dumps(e['by_window'][r], sort_keys=True)}" for r in order]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="calibrate the implicit-codebook usage verdict")
    p.add_argument("--quick", action="store_true", help="small corpus (tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "docs", "verdicts-implicit.json"))
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    cases = build(a.quick, a.seed)
    first, second = split(cases, a.seed)
    t = calibrate(first)
    res = {"cases": len(cases), "exact_cases": sum("exact" in c for c in cases),
           "bits_only": sum("exact" not in c for c in cases), "split": [len(first), len(second)],
           "thresholds": {f: getattr(t, f) for f in (*RULES, "min_tokens_per_code", "min_tokens_per_bit")},
           "held_out": evaluate(second, t), "seconds": time.perf_counter() - t0}
    res["first_half"] = evaluate(first, t)
    in_first = {id(c) for c in first}
    res["case_list"] = [{**c, "half": "first" if id(c) in in_first else "second"} for c in cases]
    print(report(res))
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1, default=float)
    print(f"\nwrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

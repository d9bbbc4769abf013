"""The verdict of an implicit codebook (FSQ, LFQ, BSQ): usage against uniform use of all K codes.

A codebook-free quantizer's grid is fixed (FSQ's per-dimension levels, LFQ's and BSQ's signs): it cannot shrink,
and there are no latents to ask for. What can go wrong is usage: codes never chosen (a level or a sign bit that
never varies, bits that copy each other) and usage concentrated on a few codes. So the verdict rests on usage
alone (evidence ``usage``) and compares it with the reference a scientist would use: uniform use of all K codes
on the same number of ids, which is not K and not 1 on a finite window (``expected_uniform_usage``: N ids
cannot use more than N codes, and chance leaves codes unseen).

- ``underused``: a usage rule fired (``dead_codes`` on the share of codes used, ``low_utilization`` on the
  perplexity), at any window size: a low ratio against uniform use on as many ids is evidence at any N;
- ``healthy``: nothing fired on a window of at least ``min_tokens_per_code`` ids per code, the size at which
  the rules caught every constructed under-use on the choosing half of bench/calibrate_implicit.py's corpus;
- ``cannot_tell``: nothing fired but the window is smaller, or usage is only bounded (above
  ``EXACT_COUNT_LIMIT`` codes the bit statistics bound usage from above: they can show under-use, never
  healthy use), with what to do in ``missing``.
"""
from __future__ import annotations

import math
from typing import Any

from .usage import expected_uniform_usage
from .verdict import WORDS, HealthThresholds, Judged, Verdict, _reason, _severity

__all__ = ["implicit_message", "implicit_values", "judge_implicit"]


_UNIFORM = "uniform use of all K codes, same number of tokens"
_UNIFORM_BITS = "uniform use of all K codes: independent id bits, none constant or tied to another"


def implicit_values(j: Judged) -> dict[str, float | None]:
    """The usage measurements an implicit codebook's verdict reads, with their uniform-use references.

    Exact counts: ``codes_used_vs_uniform`` and ``utilization_vs_uniform`` (the measured share of codes used
    and perplexity / K over what uniform use of all K codes reaches on the same number of tokens,
    ``metrics.usage.expected_uniform_usage``). Bit statistics: ``codes_used_bound`` and ``utilization_bound``
    as they come (uniform use reaches 1 on both). ``ref_*`` keys hold the references.
    """
    v = j.values
    if j.bounds:
        return {"codes_used_bound": v.get("codes_used_bound"), "utilization_bound": v.get("utilization_bound"),
                "ref_codes_used": 1.0, "ref_utilization": 1.0}
    used, util = v.get("codes_used"), v.get("utilization")
    if not j.tokens or used is None or util is None:
        return {"codes_used_vs_uniform": None, "utilization_vs_uniform": None, "ref_codes_used": None,
                "ref_utilization": None}
    ref_used, ref_util = expected_uniform_usage(j.num_codes, j.tokens)
    return {"codes_used_vs_uniform": used / ref_used, "utilization_vs_uniform": util / ref_util,
            "ref_codes_used": ref_used, "ref_utilization": ref_util}


def judge_implicit(j: Judged, t: HealthThresholds) -> tuple[list[dict[str, str]], Verdict]:
    """Warnings and verdict of an implicit codebook (FSQ, LFQ, BSQ) from its usage alone.

    Its grid of codes is fixed, so there is no geometry to shrink and nothing to ask of latents: the verdict
    is ``underused`` when a usage rule fires, ``healthy`` when none does on a window of at least
    ``min_tokens_per_code`` ids per code, and ``cannot_tell`` otherwise (too few ids, or only upper bounds:
    above the exact-count limit a high bound cannot show healthy use).
    """
    k, n = j.num_codes, float(j.tokens or 0)
    basis = "evidence: " + ", ".join(j.evidence)
    vals = implicit_values(j)
    bits = max(1, (k - 1).bit_length())
    ref = _UNIFORM_BITS if j.bounds else _UNIFORM
    rules = [("dead_codes", "codes_used_bound" if j.bounds else "codes_used_vs_uniform", t.min_codes_used_vs_uniform,
              "min", ref, vals["ref_codes_used"]),
             ("low_utilization", "utilization_bound" if j.bounds else "utilization_vs_uniform",
              t.min_utilization_vs_uniform, "min", ref, vals["ref_utilization"])]
    few_bits = j.bounds and n < t.min_tokens_per_bit * bits
    fired, passed = [], []
    for rule in rules:
        v = vals.get(rule[1])
        if v is None or few_bits or (isinstance(v, float) and math.isnan(v)):
            continue
        (fired if v < rule[2] else passed).append(_reason(rule, v))
    warnings = [{"code": r["code"], "message": implicit_message(r)} for r in fired]
    missing: list[dict[str, str]] = []
    if fired:
        status = "underused"
        rs = sorted(fired, key=_severity, reverse=True)
        summary = f"{WORDS[status]} ({basis}): " + "; ".join(implicit_message(r) for r in rs) + "."
        return warnings, Verdict(status, j.evidence, summary, tuple(rs), ())
    rs = sorted(passed, key=_severity, reverse=True)
    if n <= 0 or (not j.bounds and vals["codes_used_vs_uniform"] is None):
        why, how = "no code ids were counted", "run training or evaluation steps through the quantizer"
    elif few_bits:
        why = (f"{n:,.0f} ids for {bits} id bits: bit statistics need at least {t.min_tokens_per_bit:g} ids per "
               "bit before their entropies and mutual informations mean anything")
        how = f"count at least {math.ceil(t.min_tokens_per_bit * bits):,} ids in one window (report less often)"
    elif j.bounds:
        why = (f"K={k} codes are too many to count one by one: per-bit and pairwise statistics bound usage from "
               "above, so they can show under-use but never healthy use")
        how = ("count per code: set shrinkscope.implicit.EXACT_COUNT_LIMIT above K before watch() (8 bytes of "
               "device memory per code), where memory allows")
    elif n < t.min_tokens_per_code * k:
        why = (f"{n:,.0f} ids for K={k} codes ({n / k:.3g} per code): a window under "
               f"{t.min_tokens_per_code:g} per code is too small to rule out under-use")
        how = (f"count at least {math.ceil(t.min_tokens_per_code * k):,} ids in one window: report less often "
               "(watch(..., every=more steps)) or analyze more data")
    else:
        status = "healthy"
        used, util = j.values.get("codes_used"), j.values.get("utilization")
        summary = (f"{WORDS[status]} ({basis}): over {n:,.0f} ids ({n / k:.3g} per code) {used:.1%} of the K={k} "
                   f"codes were used and usage perplexity is {util:.1%} of K, within the calibrated range of "
                   "uniform use on as many ids; the grid of an implicit codebook is fixed, so there is no "
                   "geometry to shrink.")
        return warnings, Verdict(status, j.evidence, summary, tuple(rs), ())
    status = "cannot_tell"
    missing.append({"input": "usage", "why": why, "how": how})
    summary = f"{WORDS[status]} ({basis}): no sign of under-use, but {why}."
    return warnings, Verdict(status, j.evidence, summary, tuple(rs), tuple(missing))


def implicit_message(r: dict[str, Any]) -> str | None:
    """The sentence of one implicit-codebook reason (``None`` for another metric)."""
    v, thr, m, ref = r["value"], r["threshold"], r["metric"], r["reference"]
    side = "<" if r["direction"] == "min" else ">"
    texts = {
        "codes_used_vs_uniform": f"{v * (ref or 0):.1%} of the codes were used, {v:.3g}x the {ref or 0:.1%} that "
                                 f"uniform use of all K codes reaches on as many ids ({side} {thr:g})",
        "utilization_vs_uniform": f"usage perplexity is {v * (ref or 0):.1%} of K, {v:.3g}x the {ref or 0:.1%} "
                                  f"that uniform use reaches on as many ids ({side} {thr:g})",
        "codes_used_bound": f"at most {v:.1%} of the codes were used: some id bits never vary or are tied to "
                            f"others (always equal or always different; {side} {thr:g})",
        "utilization_bound": f"usage perplexity is at most {v:.2%} of K (Chow-Liu bound from per-bit and pairwise "
                             f"statistics; {side} {thr:g})",
    }
    return texts.get(m)

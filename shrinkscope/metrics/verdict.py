"""Warnings and the verdict: what a codebook's metrics say, on which evidence, against which reference.

A verdict is a claim about a user's model, so it is made the way a scientist would make it:

- it names the evidence it rests on (``codes``, ``usage``, ``latents``, ``labels``);
- with latents, geometry is compared with k-means of the same K on the same latents
  (``spread_vs_kmeans``, ``rank_vs_kmeans``, ``coverage_vs_kmeans``, ``excess_distortion``), not with
  constants that ignore K and D: a good 16-code codebook spans less and has a lower rank than a 4096-code one;
- without latents it reports only what the codes alone can show (codes pointing one way, codes packed far
  from the origin relative to their spread, a rank far below ``min(K - 1, D)``) or answers ``cannot_tell``
  with what to run to find out, never ``healthy``;
- dead codes are judged by ``dead_codes``; the geometric rules read the live codes when usage is known,
  so codes parked far away (or exploded) are neither "shrunk" nor "collapsed";
- implicit codebooks (FSQ, LFQ, BSQ: a fixed grid, nothing to shrink) are judged on usage alone, against
  uniform use of all K codes on the same number of tokens; ``healthy`` needs enough tokens to have caught
  under-use, and above the exact-count limit only under-use can be shown (the bit statistics bound usage
  from above).

Every cut-off is a field of ``HealthThresholds``; the defaults come from ``bench/calibrate_verdicts.py``
(chosen on one half of a labelled corpus, reported on the other: docs/verdicts.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["STATUSES", "WORDS", "HealthThresholds", "Judged", "Verdict", "judge", "verdict_line"]


STATUSES: tuple[str, ...] = ("shrunk", "underused", "healthy", "cannot_tell", "uninitialized")
"""Verdict statuses. ``underused``: dead codes or low usage without geometric shrinkage."""

WORDS = {"shrunk": "Shrunk", "underused": "Under-used", "healthy": "Healthy", "cannot_tell": "Cannot tell",
         "uninitialized": "Uninitialised"}
"""How each status starts a summary (the reports' spelling)."""

SHRINK_CODES = frozenset({"shrinkage", "dimensional_collapse", "poor_coverage", "mode_shrinkage",
                          "excess_distortion"})
USAGE_CODES = frozenset({"dead_codes", "low_utilization"})


@dataclass
class HealthThresholds:
    """Where ``codebook_health`` raises a warning; each field says whether it is a min or a max.

    With latents (against k-means of the same K on the same latents):
        min_spread_vs_kmeans: ``shrinkage`` below this spread of the live codes / the reference's.
        min_rank_vs_kmeans: ``dimensional_collapse`` below this effective rank of the live codes / the reference's.
        min_coverage_vs_kmeans: ``poor_coverage`` below this latent coverage / the reference's.
        max_excess_distortion: ``excess_distortion`` above this held-out distortion / the reference's, minus 1.
    With labels:
        min_mode_perplexity_vs_kmeans: a mode is shrunk when the perplexity of the codes its latents use is
            below this share of the reference's for that mode.
        max_shrunk_mode_share: ``mode_shrinkage`` above this share of shrunk modes.
    With usage (counts, or latents assigned to their nearest code):
        min_spread_all_vs_live: ``shrinkage`` below this spread of all K codes / the live codes' spread: most
            codes left clumped in a narrow region (where an untrained encoder's outputs were) while the few live
            ones follow the latents, the standard recipe's failure (Zhao et al. 2026).
        max_dead_usage: a code whose usage is at or below this is dead (0: never used).
        max_dead_code_ratio: ``dead_codes`` above this share of dead codes (usage counts).
        max_stranded_codes: ``dead_codes`` (usage from the latents only) above this share of stranded codes:
            used by no latent and farther from every latent than 99% of the latents are from their k-th neighbour.
        max_excess_unused_share: ``dead_codes`` above this share of codes that no held-out latent picks, beyond
            the share k-means leaves unpicked on the same rows.
        min_utilization: ``low_utilization`` below this usage perplexity / K (usage counts only).
    Implicit codebooks (FSQ, LFQ, BSQ; usage only, against uniform use of all K codes on the same N tokens):
        min_codes_used_vs_uniform: ``dead_codes`` below this share of codes used / uniform use's expected share
            (above the exact-count limit: below this upper bound on the share of codes used).
        min_utilization_vs_uniform: ``low_utilization`` below this perplexity / uniform use's expected plug-in
            perplexity (above the limit: below this upper bound on perplexity / K).
        min_tokens_per_code: ``healthy`` only with at least this many counted ids per code (N / K) in the
            window; below it a clean window is ``cannot_tell``.
        min_tokens_per_bit: bit statistics judge nothing below this many ids per id bit (N / b).
    Codes only (no latents):
        min_spread_cosine: ``shrinkage`` below this cosine spread (codes pointing one way).
        max_offset_vs_spread: ``shrinkage`` above this distance of the codes' mean from the origin / their
            spread (a tight cluster far out).
        min_rank_share: ``dimensional_collapse`` below this effective rank / min(K - 1, D).
    """

    # Chosen by bench/calibrate_verdicts.py on one half of its labelled corpus (docs/verdicts.md, verdicts.json);
    # A rule with no constructed case clearly past the healthy ones would be switched off (0 / 10^6).
    min_spread_vs_kmeans: float = 0.7867
    min_rank_vs_kmeans: float = 0.41
    min_coverage_vs_kmeans: float = 0.0226
    max_excess_distortion: float = 2.9739
    max_shrunk_mode_share: float = 0.4
    max_stranded_codes: float = 0.0664
    min_spread_cosine: float = 0.0629
    max_offset_vs_spread: float = 20.9298
    min_rank_share: float = 0.0565
    min_spread_all_vs_live: float = 0.9045
    max_excess_unused_share: float = 0.0835
    # Fixed, not calibrated: a definition (a mode is shrunk below half the reference's code perplexity; a code
    # is dead when never used) or a rule on usage counts, which the corpus does not have (docs/verdicts.md).
    min_mode_perplexity_vs_kmeans: float = 0.5
    max_dead_usage: float = 0.0
    max_dead_code_ratio: float = 0.1
    min_utilization: float = 0.25
    # Implicit codebooks: chosen by bench/calibrate_implicit.py on one half of its constructed corpus
    # (docs/verdicts.md, "Implicit codebooks");
    # metrics/implicit_verdict.py applies them; min_tokens_per_bit is a sample-size rule, not calibrated.
    min_codes_used_vs_uniform: float = 0.679
    min_utilization_vs_uniform: float = 0.4485
    min_tokens_per_code: float = 4.0
    min_tokens_per_bit: float = 100.0


@dataclass(frozen=True)
class Verdict:
    """One codebook's verdict (``status``, ``evidence``, ``summary``, ``reasons``, ``missing``).

    ``reasons``: the two or three measurements that decide it, each
    ``{"code", "metric", "value", "reference", "reference_name", "threshold", "direction"}``.
    ``missing``: inputs that would let it say more, each ``{"input", "why", "how"}``.
    Consumers must tolerate a status outside ``STATUSES`` (new ones may be added).
    """

    status: str
    evidence: tuple[str, ...]
    summary: str
    reasons: tuple[dict[str, Any], ...] = ()
    missing: tuple[dict[str, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (non-finite numbers become ``None``)."""
        def clean(v: Any) -> Any:
            return None if isinstance(v, float) and not math.isfinite(v) else v
        return {"status": self.status, "evidence": list(self.evidence), "summary": self.summary,
                "reasons": [{k: clean(v) for k, v in r.items()} for r in self.reasons],
                "missing": [dict(m) for m in self.missing]}


@dataclass
class Judged:
    """The measurements a verdict reads (``None`` where the input was absent); built by ``codebook_health``."""

    num_codes: int
    dim: int
    evidence: tuple[str, ...]
    values: dict[str, float | None]
    references: dict[str, float | None] = field(default_factory=dict)
    live_codes: int | None = None
    all_zero: bool = False
    implicit: bool = False
    """A codebook-free quantizer (FSQ, LFQ, BSQ): judged on usage only (``judge_implicit``)."""
    tokens: float | None = None
    """Ids counted in the usage window (implicit codebooks)."""
    sampled_usage: bool = False
    """Usage came only from too few latents (fewer than ``min_tokens_per_code`` per code, no k-means reference):
    which codes are live is partly chance, so the usage rules are not judged."""
    bounds: bool = False
    """Usage values are upper bounds from bit statistics (``codes_used_bound``, ``utilization_bound``)."""


_REF = "k-means, same K, on these latents"
MISSING_HOW = {
    "latents": (("shrinkage is judged against the latent cloud (k-means of the same K on it); codes alone "
                 "can only show extreme cases"),
                ("pass --latents FILE (pre-quantization encoder outputs, N x D or B x D x ...); in a training "
                 "loop, shrinkscope.watch(model).save_latents('z.pt') writes them")),
    "usage": ("dead codes and usage perplexity need how often each code is used",
              ("pass --latents FILE (usage from nearest-code assignment) or keep the quantizer's usage buffer "
               "(cluster_size / codebook_used) in the checkpoint")),
    "labels": ("mode-level shrinkage (Zhao et al. 2026) needs the data mode of each latent",
               "pass --labels FILE (one integer per --latents row: class or mixture component)"),
}


def _rules(j: Judged, t: HealthThresholds) -> list[tuple[str, str, float, str, str, float | None]]:
    """(code, metric, threshold, direction, reference_name, reference) for every rule this evidence allows."""
    out = []
    live = "" if j.live_codes is None or j.live_codes == j.num_codes else f" (the {j.live_codes} live codes)"
    if "latents" in j.evidence:
        out += [("shrinkage", "spread_vs_kmeans", t.min_spread_vs_kmeans, "min", _REF + live,
                 j.references.get("spread_euclidean")),
                ("dimensional_collapse", "rank_vs_kmeans", t.min_rank_vs_kmeans, "min", _REF + live,
                 j.references.get("effective_rank")),
                ("poor_coverage", "coverage_vs_kmeans", t.min_coverage_vs_kmeans, "min", _REF,
                 j.references.get("latent_coverage")),
                ("excess_distortion", "excess_distortion", t.max_excess_distortion, "max", _REF + ", held-out rows",
                 j.references.get("distortion")),
                ("dead_codes", "excess_unused_share", t.max_excess_unused_share, "max",
                 _REF + ": its share of codes no held-out latent picks", j.references.get("unused_share"))]
        if "labels" in j.evidence:
            out.append(("mode_shrinkage", "shrunk_mode_share", t.max_shrunk_mode_share, "max", _REF + ", per mode",
                        None))
    else:
        out += [("shrinkage", "spread_cosine", t.min_spread_cosine, "min", "codes only" + live, None),
                ("shrinkage", "offset_vs_spread", t.max_offset_vs_spread, "max", "codes only" + live, None),
                ("dimensional_collapse", "rank_share", t.min_rank_share, "min",
                 "codes only: effective rank / min(K - 1, D)" + live, None)]
    if j.live_codes is not None:
        # the value is None without usage (counts, or latents assigned to their nearest code): rule skipped
        out.append(("shrinkage", "spread_all_vs_live", t.min_spread_all_vs_live, "min",
                    f"the spread of the {j.live_codes} live codes", None))
    if "latents" in j.evidence and "usage" not in j.evidence:
        # usage from a finite sample of latents: with N / K small, healthy codes go unused by chance, so only
        # codes that are unused *and* off the data count; perplexity / K is biased low then, so not judged
        out.append(("dead_codes", "stranded_codes", t.max_stranded_codes, "max", "none", None))
    else:
        out += [("dead_codes", "dead_code_ratio", t.max_dead_code_ratio, "max", "none", None),
                ("low_utilization", "utilization", t.min_utilization, "min", "none", None)]
    return out


def _reason(rule: tuple, value: float) -> dict[str, Any]:
    code, metric, thr, direction, ref_name, ref = rule
    return {"code": code, "metric": metric, "value": float(value), "reference": ref, "reference_name": ref_name,
            "threshold": float(thr), "direction": direction}


def _severity(r: dict[str, Any]) -> float:
    """How far past its cut-off a measurement is (log ratio; larger = further)."""
    v, thr = max(abs(r["value"]), 1e-12), max(abs(r["threshold"]), 1e-12)
    return math.log(thr / v) if r["direction"] == "min" else math.log(v / thr)


def judge(j: Judged, t: HealthThresholds) -> tuple[list[dict[str, str]], Verdict]:
    """Warnings and verdict of one codebook from its measurements.

    Args:
        j: the measurements (``values`` keyed by metric, including ``rank_share`` for codes-only rules).
        t: the thresholds.

    Returns:
        ``(warnings, verdict)``: warnings as ``{"code", "message"}`` (one per fired rule, first rule per code).
    """
    if j.implicit:
        from .implicit_verdict import judge_implicit  # imports this module's helpers

        return judge_implicit(j, t)
    evidence = j.evidence
    basis = "evidence: " + ", ".join(evidence)
    if j.all_zero:
        msg = ("every code is zero: the codebook looks uninitialised (saved before the first forward / k-means "
               "init?), not collapsed; geometry metrics are meaningless here")
        return ([{"code": "uninitialized", "message": msg}],
                Verdict("uninitialized", evidence, f"{WORDS['uninitialized']} ({basis}): {msg}."))
    fired, passed = [], []
    for rule in _rules(j, t):
        v = j.values.get(rule[1])
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        bad = v < rule[2] if rule[3] == "min" else v > rule[2]
        (fired if bad else passed).append(_reason(rule, v))
    warnings, seen = [], set()
    for r in fired:
        if r["code"] not in seen:
            seen.add(r["code"])
            warnings.append({"code": r["code"], "message": _message(r)})
    codes = {w["code"] for w in warnings}
    missing = [{"input": k, "why": MISSING_HOW[k][0], "how": MISSING_HOW[k][1]} for k in ("latents", "usage")
               if k not in evidence and not (k == "usage" and "latents" in evidence)]
    if j.sampled_usage:
        n = "" if j.tokens is None else f"{j.tokens:,.0f} "
        missing = [m if m["input"] != "usage" else {
            "input": "usage", "why": (f"usage from {n}latents for K={j.num_codes} codes is mostly chance (fewer than "
                                      f"{t.min_tokens_per_code:g} per code leaves many healthy codes unpicked)"),
            "how": (f"pass at least {t.min_tokens_per_code:g} x K latent rows, or keep the quantizer's usage buffer "
                    "(cluster_size / codebook_used) in the checkpoint")} for m in missing]
    if "latents" in evidence and "labels" not in evidence:
        missing.append({"input": "labels", "why": MISSING_HOW["labels"][0], "how": MISSING_HOW["labels"][1]})
    if codes & SHRINK_CODES:
        status = "shrunk"
        rs = sorted([r for r in fired if r["code"] in SHRINK_CODES], key=_severity, reverse=True)[:3]
        summary = f"{WORDS[status]} ({basis}): " + "; ".join(_message(r) for r in rs[:2]) + "."
    elif codes & USAGE_CODES:
        status = "underused"
        rs = sorted(fired, key=_severity, reverse=True)[:3]
        summary = (f"{WORDS[status]} ({basis}): " + "; ".join(_message(r) for r in rs[:2]) + "."
                   + ("" if "latents" in evidence else " Shrinkage itself cannot be judged without latents."))
    elif "latents" in evidence:
        status = "healthy"
        rs = sorted(passed, key=_severity, reverse=True)[:3]  # the closest calls first
        summary = (f"{WORDS[status]} ({basis}): spread, rank, coverage and distortion are within the calibrated "
                   "range of k-means with the same K on these latents.")
    else:
        status = "cannot_tell"
        rs = sorted(passed, key=_severity, reverse=True)[:3]
        summary = (f"{WORDS[status]} ({basis}): the codes show no sign of shrinkage on their own, but shrinkage "
                   "cannot be judged without latents: pass --latents FILE.")
    return warnings, Verdict(status, evidence, summary, tuple(rs), tuple(missing))


def verdict_line(name: str, v: Verdict) -> str:
    """``"Shrunk: NAME (evidence: codes, latents): ..."``: the summary with the codebook's name after the status."""
    word, _, rest = v.summary.partition(" (")
    return f"{word}: {name} ({rest}" if rest else f"{word}: {name}"


def _message(r: dict[str, Any]) -> str:
    v, thr, m = r["value"], r["threshold"], r["metric"]
    side = "<" if r["direction"] == "min" else ">"
    texts = {
        "spread_vs_kmeans": f"the live codes span {v:.2f}x the spread of k-means with the same K on these latents "
                            f"({side} {thr:g}): the codebook has shrunk into a narrow region of latent space",
        "rank_vs_kmeans": f"effective rank is {v:.2f}x that of k-means with the same K ({side} {thr:g}): the codes "
                          "use fewer directions than the latents offer",
        "spread_all_vs_live": f"the unused codes sit clumped in a narrow region: all the codes together span "
                              f"{v:.2f}x the spread of the live ones ({side} {thr:g})",
        "excess_unused_share": f"{v:.0%} more of the codes are picked by no held-out latent than k-means leaves "
                               f"unpicked on the same rows ({side} {thr:.0%})",
        "coverage_vs_kmeans": f"latent coverage is {v:.2f}x that of k-means with the same K ({side} {thr:g}): "
                              "regions of the latent cloud have no code",
        "excess_distortion": f"held-out quantization error is {1 + v:.2f}x that of k-means with the same K "
                             f"(excess {v:.2f} {side} {thr:g})",
        "shrunk_mode_share": f"{v:.0%} of the data modes get their tokens from a small part of the codebook "
                             f"({side} {thr:.0%}; per-mode code perplexity < {thr:g}x k-means)",
        "spread_cosine": f"codes point nearly the same way (cosine spread {v:.3g} {side} {thr:g})",
        "offset_vs_spread": f"codes sit {v:.1f}x their own spread away from the origin ({side} {thr:g}): "
                            "a tight cluster far out",
        "rank_share": f"effective rank is {v:.1%} of min(K - 1, D) ({side} {thr:.0%})",
        "dead_code_ratio": f"{v:.0%} of the codes are dead ({side} {thr:.0%})",
        "stranded_codes": f"{v:.0%} of the codes are stranded: used by no latent and outside every latent's "
                          f"k-NN ball ({side} {thr:.0%})",
        "utilization": f"usage perplexity is {v:.1%} of K ({side} {thr:.0%})",
    }
    return texts.get(m, f"{m} = {v:.3g} ({side} {thr:g})")

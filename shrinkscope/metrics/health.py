"""``codebook_health``: every codebook metric at once, plus plain-language warnings.

Multi-head and residual quantizers have several codebooks; callers (``analyze``, ``watch``) measure
them one codebook at a time and name each (``layers.0``, ``head 1``, ...).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ._validate import as_counts, as_float, same_dim
from .coverage import coverage_and_precision, knn_radii
from .geometry import (
    DEFAULT_MAX_POINTS,
    mean_pairwise_distance,
    spread_cosine,
    spread_euclidean,
    total_variance,
)
from .modes import as_labels, joint_counts, shrunk_mode_share, token_mode_entropy
from .reference import kmeans_reference, reference_coverage
from .spectrum import _effective_dimension_from, _effective_rank_from, singular_spectrum
from .usage import assign, dead_code_ratio, utilization_perplexity
from .verdict import HealthThresholds, Judged, Verdict, judge

METRIC_KEYS: tuple[str, ...] = (
    "num_codes", "dim", "spread_cosine", "spread_euclidean", "spread_ratio", "effective_rank",
    "effective_dimension", "latent_effective_rank", "latent_effective_dimension", "utilization_perplexity",
    "utilization", "dead_code_ratio", "latent_coverage", "codebook_precision", "quantization_error",
    "codes_used", "offset_vs_spread", "spread_vs_kmeans", "rank_vs_kmeans", "coverage_vs_kmeans",
    "excess_distortion", "stranded_codes", "token_mode_entropy", "shrunk_mode_share", "spread_all_vs_live",
    "excess_unused_share",
)
"""The metric keys of the JSON contract, in display order (the nine from ``codes_used`` on were added with the
verdicts, #10; the last two with the anchored-codebook rules, 0.3)."""

HIGHER_IS_BETTER: dict[str, bool | None] = {
    "num_codes": None, "dim": None, "spread_cosine": True, "spread_euclidean": True, "spread_ratio": True,
    "effective_rank": True, "effective_dimension": True, "latent_effective_rank": None,
    "latent_effective_dimension": None, "utilization_perplexity": True, "utilization": True,
    "dead_code_ratio": False, "latent_coverage": True, "codebook_precision": True, "quantization_error": False,
    "codes_used": True, "offset_vs_spread": False, "spread_vs_kmeans": True, "rank_vs_kmeans": True,
    "coverage_vs_kmeans": True, "excess_distortion": False, "stranded_codes": False, "token_mode_entropy": True,
    "shrunk_mode_share": False, "spread_all_vs_live": True, "excess_unused_share": False,
}

WARNING_CODES: tuple[str, ...] = (
    "shrinkage", "dimensional_collapse", "dead_codes", "low_utilization", "poor_coverage", "uninitialized",
    "excess_distortion", "mode_shrinkage",
    "rank_divergence",  # raised by watch reports under DDP only (shrinkscope/divergence.py)
)


@dataclass
class CodebookHealth:
    """All metrics of one codebook (``None`` where the needed input was absent), its warnings and verdict."""

    name: str
    num_codes: int
    dim: int
    spread_cosine: float | None = None
    spread_euclidean: float | None = None
    spread_ratio: float | None = None
    effective_rank: float | None = None
    effective_dimension: int | None = None
    latent_effective_rank: float | None = None
    latent_effective_dimension: int | None = None
    utilization_perplexity: float | None = None
    utilization: float | None = None
    dead_code_ratio: float | None = None
    latent_coverage: float | None = None
    codebook_precision: float | None = None
    quantization_error: float | None = None
    codes_used: float | None = None
    offset_vs_spread: float | None = None
    spread_vs_kmeans: float | None = None
    rank_vs_kmeans: float | None = None
    coverage_vs_kmeans: float | None = None
    excess_distortion: float | None = None
    stranded_codes: float | None = None
    spread_all_vs_live: float | None = None
    excess_unused_share: float | None = None
    token_mode_entropy: float | None = None
    shrunk_mode_share: float | None = None
    warnings: list[dict[str, str]] = field(default_factory=list)
    verdict: Verdict | None = None
    singular_values: torch.Tensor | None = field(default=None, repr=False)
    latent_singular_values: torch.Tensor | None = field(default=None, repr=False)
    counts: torch.Tensor | None = field(default=None, repr=False)
    judged: Judged | None = field(default=None, repr=False)

    @property
    def metrics(self) -> dict[str, float | int | None]:
        """The contract's metric dict: ``{KEY: number or None}``."""
        return {k: getattr(self, k) for k in METRIC_KEYS}

    def to_dict(self) -> dict[str, Any]:
        """``{"name", "num_codes", "dim", "metrics": {KEY: ...}, "warnings": [...], "verdict": {...}}`` (JSON-ready)."""
        return {"name": self.name, "num_codes": self.num_codes, "dim": self.dim,
                "metrics": dict(self.metrics), "warnings": [dict(w) for w in self.warnings],
                "verdict": None if self.verdict is None else self.verdict.to_dict()}

    @property
    def healthy(self) -> bool:
        """True when the verdict is ``healthy`` (measured against latents, nothing fired)."""
        if self.verdict is None:
            return not self.warnings
        return self.verdict.status == "healthy"


def judged_from(h: CodebookHealth, *, evidence: tuple[str, ...] | None = None, all_zero: bool = False,
                implicit: bool = False) -> Judged:
    """The verdict's inputs from a health record's own fields (for records assembled by hand, e.g. usage only).

    ``implicit``: a codebook-free quantizer (FSQ, LFQ, BSQ), judged on usage alone against uniform use of all
    K codes on as many ids as ``h.counts`` holds (metrics/implicit_verdict.py).
    """
    if evidence is None:
        evidence = ("codes",) * (h.spread_cosine is not None) + ("usage",) * (h.utilization is not None)
    rank_share = None
    if h.effective_rank is not None and min(h.num_codes - 1, h.dim) >= 1:
        rank_share = h.effective_rank / min(h.num_codes - 1, h.dim)
    values = {k: getattr(h, k) for k in METRIC_KEYS}
    values["rank_share"] = rank_share
    tokens = float(h.counts.sum()) if implicit and h.counts is not None else None
    return Judged(h.num_codes, h.dim, evidence, values, all_zero=all_zero, implicit=implicit, tokens=tokens)


def judge_health(h: CodebookHealth, thresholds: HealthThresholds | None = None, *,
                 all_zero: bool | None = None, usage: bool = False) -> CodebookHealth:
    """Set ``h.warnings`` and ``h.verdict`` from ``h``'s measurements under ``thresholds`` (replacing both).

    ``codebook_health`` calls it; callers that assemble a ``CodebookHealth`` themselves (the monitor's
    cumulative and usage-only records) call it after changing the usage fields. The geometry that the
    verdict reads is the one ``codebook_health`` measured (``h.judged``); usage values are read afresh.

    Args:
        h: the record (its ``warnings``, ``verdict`` and ``judged`` are replaced).
        thresholds: the cut-offs (``HealthThresholds()`` by default).
        all_zero: override whether the codebook is all zeros (``uninitialized``).
        usage: ``h``'s usage fields now come from counted code ids (hooks, buffers), not from latents.

    Returns:
        ``h`` itself.
    """
    t = thresholds or HealthThresholds()
    j = h.judged if h.judged is not None else judged_from(h)
    j = replace(j, values=dict(j.values))  # records copied with dataclasses.replace share the Judged
    if all_zero is not None:
        j = replace(j, all_zero=all_zero)
    if usage:
        j = replace(j, sampled_usage=False)
    for k in ("dead_code_ratio", "utilization", "codes_used"):
        j.values[k] = None if j.sampled_usage else getattr(h, k)
    if j.implicit and h.counts is not None:  # the uniform-use reference depends on how many ids were counted
        j = replace(j, tokens=float(h.counts.sum()))
    if h.utilization is not None and "usage" not in j.evidence and (usage or "latents" not in j.evidence) \
            and not j.sampled_usage:
        j = replace(j, evidence=(*j.evidence, "usage"))
    h.judged = j
    h.warnings, h.verdict = judge(j, t)
    return h


def raise_warnings(h: CodebookHealth, t: HealthThresholds, all_zero: bool = False,
                   expected_coverage: float | None = None) -> None:
    """Deprecated alias of ``judge_health`` (it appended warnings; it never raised). Removed in 0.3.

    ``expected_coverage`` is ignored: coverage is now judged against k-means of the same K.
    """
    warnings.warn("raise_warnings is deprecated: use judge_health(h, thresholds)", DeprecationWarning, stacklevel=2)
    before = list(h.warnings)
    judge_health(h, t, all_zero=all_zero)
    h.warnings = before + h.warnings


STRANDED_RADIUS_QUANTILE = 0.99
"""A stranded code is farther from its nearest latent than this quantile of the latents' k-NN radii (a
quantile, not the maximum, so one outlying latent cannot hide every parked code)."""


@dataclass(frozen=True)
class CodebookGeometry:
    """What ``codebook_health`` measures from the codes alone, computed once for codebooks that are one tensor.

    VAR's scales share one codebook: each scale is its own codebook in every report (its ids, its residual),
    but the spreads and the spectrum of the codes are the same for all of them. Measure them once with
    ``codebook_geometry`` and hand the result to each ``codebook_health(..., geometry=...)`` call.

    Attributes:
        num_codes, dim: K and D of the codebook measured.
        spread_cosine, spread_euclidean, offset_vs_spread: as in ``CodebookHealth``.
        singular_values: ``(min(K, D),)`` singular values of the centered codebook.
        max_points, seed: the options the spreads were measured with (they must match the health call's).
        all_zero: every entry of the codebook is zero.
    """

    num_codes: int
    dim: int
    spread_cosine: float
    spread_euclidean: float
    offset_vs_spread: float | None
    singular_values: torch.Tensor = field(repr=False)
    max_points: int | None = DEFAULT_MAX_POINTS
    seed: int = 0
    all_zero: bool = False


@torch.no_grad()
def codebook_geometry(codebook: Any, *, max_points: int | None = DEFAULT_MAX_POINTS, seed: int = 0) -> CodebookGeometry:
    """The codes-only measurements of ``codebook_health`` (spreads, spectrum), to share between the health
    calls of codebooks that are one tensor (a multi-scale quantizer's scales).

    Args:
        codebook: ``(K, D)`` effective codebook.
        max_points: exact pairwise spreads up to this many rows, sampled above (as in ``codebook_health``).
        seed: seed of the spread's subsample.

    Returns:
        A ``CodebookGeometry``; ``codebook_health(codebook, geometry=g, max_points=..., seed=...)`` with the
        same options gives what it would have measured itself.

    Example:
        >>> cb = torch.randn(64, 8)
        >>> g = codebook_geometry(cb)
        >>> codebook_health(cb, geometry=g).spread_euclidean == codebook_health(cb).spread_euclidean
        True
    """
    cb = as_float(codebook, "codebook", min_rows=2)
    spread = spread_euclidean(cb, max_points=max_points, seed=seed)
    return CodebookGeometry(int(cb.shape[0]), int(cb.shape[1]), spread_cosine(cb), spread,
                            _offset_vs_spread(cb, spread), singular_spectrum(cb), max_points, seed,
                            not bool(cb.any()))


def expected_coverage(num_codes: int, num_latents: int, *, k: int = 5) -> float:
    """Coverage that K codes drawn from the latent distribution itself would reach on N latents.

    A latent's k-NN ball holds about k of the N latents, so about ``k * K / N`` codes drawn from the same
    distribution; the chance it holds at least one is ``1 - exp(-k * K / N)`` (Poisson approximation).
    Coverage depends on K/N this way, so warnings compare against it rather than against a fixed number.
    """
    return 1.0 - math.exp(-k * num_codes / max(1, num_latents))


@torch.no_grad()
def codebook_health(
    codebook: Any,
    *,
    latents: Any | None = None,
    counts: Any | None = None,
    labels: Any | None = None,
    name: str = "codebook",
    k: int = 5,
    thresholds: HealthThresholds | None = None,
    coverage_max_latents: int | None = 10_000,
    max_points: int | None = DEFAULT_MAX_POINTS,
    reference: bool = True,
    seed: int = 0,
    geometry: CodebookGeometry | None = None,
) -> CodebookHealth:
    """Measure every codebook-health metric that the given inputs allow, and judge them.

    Args:
        codebook: ``(K, D)`` effective codebook (after any normalisation/projection the lookup uses).
        latents: optional ``(N, D)`` pre-quantization latents: enables spread_ratio, latent spectrum,
            coverage, precision, quantization error and the k-means reference (``*_vs_kmeans``,
            ``excess_distortion``); also gives counts when ``counts`` is None.
        counts: optional ``(K,)`` usage counts or shares (e.g. from hooks or a ``cluster_size`` buffer).
        labels: optional ``(N,)`` integer data-mode ids of the latents (needs ``latents``): enables
            ``token_mode_entropy`` and ``shrunk_mode_share``. Negative ids are ignored.
        name: label of this codebook in reports.
        k: neighbour rank of the coverage balls.
        thresholds: warning cut-offs (``HealthThresholds()`` by default).
        coverage_max_latents: coverage/precision use a random subset of at most this many latents
            (their cost is O(N^2)); ``None`` uses all.
        max_points: exact pairwise spreads up to this many rows, sampled above.
        reference: fit the k-means reference when latents are given (``False``: skip it; the verdict then
            cannot call the codebook healthy).
        seed: seed of every subsample and of the k-means reference.
        geometry: the codes-only measurements of this very codebook (``codebook_geometry``, same
            ``max_points`` and ``seed``), measured once for codebooks shared by several reports (VAR's scales).

    Returns:
        A ``CodebookHealth`` with ``warnings`` and ``verdict``.

    Raises:
        ValueError / TypeError: bad shapes, dtypes, NaN/Inf, D mismatch, counts or labels of the wrong length.

    Example:
        >>> h = codebook_health(torch.randn(64, 8), latents=torch.randn(500, 8))
        >>> sorted(h.to_dict())
        ['dim', 'metrics', 'name', 'num_codes', 'verdict', 'warnings']
        >>> codebook_health(torch.randn(64, 8)).verdict.status
        'cannot_tell'
    """
    t = thresholds or HealthThresholds()
    cb = as_float(codebook, "codebook", min_rows=2)
    kk, d = cb.shape
    h = CodebookHealth(name=name, num_codes=kk, dim=d)
    x = lab = None
    if latents is not None:
        x = as_float(latents, "latents", min_rows=2)
        same_dim(cb, x)
        x = x.to(cb.device)
    if labels is not None:
        if x is None:
            raise ValueError("labels: mode labels describe latents; pass latents=(N, D) rows with them")
        lab = as_labels(labels, x.shape[0]).to(cb.device)
    c = None
    if counts is not None:
        c = as_counts(counts)
        if c.numel() != kk:
            raise ValueError(f"counts: expected {kk} entries (one per code), got {c.numel()}")
    evidence = ("codes",) + ("usage",) * (c is not None) + ("latents",) * (x is not None) + ("labels",) * (lab is not None)

    if geometry is None:
        geometry = codebook_geometry(cb, max_points=max_points, seed=seed)
    elif (geometry.num_codes, geometry.dim, geometry.max_points, geometry.seed) != (kk, d, max_points, seed):
        raise ValueError(f"geometry: measured on a ({geometry.num_codes}, {geometry.dim}) codebook with max_points="
                         f"{geometry.max_points}, seed={geometry.seed}; this call has ({kk}, {d}), max_points="
                         f"{max_points}, seed={seed}: pass codebook_geometry(codebook, max_points=..., seed=...) "
                         "of this codebook")
    all_zero = geometry.all_zero
    h.spread_cosine = geometry.spread_cosine
    h.spread_euclidean = geometry.spread_euclidean
    sv = geometry.singular_values
    h.singular_values = sv
    h.effective_rank = _effective_rank_from(sv)
    h.effective_dimension = _effective_dimension_from(sv, 0.99)
    h.offset_vs_spread = geometry.offset_vs_spread
    idx = d2 = xs = radii = perm = None
    if x is not None:
        lat_spread = mean_pairwise_distance(x, max_points=max_points, seed=seed, name="latents")
        h.spread_ratio = h.spread_euclidean / lat_spread if lat_spread > 0 else None
        lsv = singular_spectrum(x)
        h.latent_singular_values = lsv
        h.latent_effective_rank = _effective_rank_from(lsv)
        h.latent_effective_dimension = _effective_dimension_from(lsv, 0.99)
        # One nearest-code search serves the quantization error, the reference comparison and (without
        # counts) the usage.
        idx, d2 = assign(cb, x)
        var = total_variance(x)
        h.quantization_error = float(d2.mean()) / var if var > 0 else None
        # one seeded permutation: its head is the coverage subset (and the reference's held-out rows)
        perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
        n_cov = x.shape[0] if coverage_max_latents is None else min(coverage_max_latents, x.shape[0])
        xs = x[perm[:n_cov].to(x.device)]
        if xs.shape[0] > k:
            radii = knn_radii(xs, k=k)
            h.latent_coverage, h.codebook_precision = coverage_and_precision(cb, xs, k=k, radii=radii)
        assigned = torch.bincount(idx, minlength=kk)
        if radii is not None:
            # unused *and* farther from every latent than 99% of latents are from their k-th neighbour: dead
            # for a reason, not by the chance of a finite sample (with N / K small many codes go unused)
            _, near = assign(xs, cb)
            far = near.sqrt() > torch.quantile(radii.double(), STRANDED_RADIUS_QUANTILE)
            h.stranded_codes = float(((assigned == 0) & far).double().mean())
        if c is None:
            c = assigned.double()
        if lab is not None:
            h.token_mode_entropy = token_mode_entropy(joint_counts(idx, lab, kk))
    live = None
    if c is not None and float(c.sum()) > 0:
        h.counts = c.cpu()
        h.utilization_perplexity = utilization_perplexity(c)
        h.utilization = h.utilization_perplexity / kk
        h.dead_code_ratio = dead_code_ratio(c, threshold=t.max_dead_usage)
        h.codes_used = 1.0 - h.dead_code_ratio
        live = (c > t.max_dead_usage).to(cb.device)
    geo = _live_geometry(cb, live, h, max_points=max_points, seed=seed)
    if live is not None and geo["spread_euclidean"]:
        # where the dead codes sit, against the live ones: ~1 scattered like them, << 1 clumped together,
        # >> 1 parked far away or exploded
        h.spread_all_vs_live = h.spread_euclidean / geo["spread_euclidean"]
    refs: dict[str, float | None] = {}
    if x is not None and reference:
        ref = kmeans_reference(x, kk, perm=perm, seed=seed)
        if ref is not None:
            refs = {"spread_euclidean": ref.spread_euclidean, "effective_rank": ref.effective_rank,
                    "distortion": ref.distortion}
            if geo["spread_euclidean"] is not None and ref.spread_euclidean > 0:
                h.spread_vs_kmeans = geo["spread_euclidean"] / ref.spread_euclidean
            if geo["effective_rank"] is not None:
                h.rank_vs_kmeans = geo["effective_rank"] / ref.effective_rank
            if radii is not None and h.latent_coverage is not None:
                cov_ref = reference_coverage(ref, xs, radii, k=k)
                refs["latent_coverage"] = cov_ref
                h.coverage_vs_kmeans = h.latent_coverage / cov_ref if cov_ref > 0 else None
            if ref.distortion is not None and ref.distortion > 0:
                h.excess_distortion = float(d2[ref.eval_index].mean()) / ref.distortion - 1.0
                # codes no held-out latent picks, beyond those k-means leaves unpicked on the same rows: with
                # N / K small both leave many codes unpicked by chance, and the difference cancels that out
                unused = float((torch.bincount(idx[ref.eval_index], minlength=kk) == 0).double().mean())
                unused_ref = float((torch.bincount(ref.eval_assign, minlength=kk) == 0).double().mean())
                h.excess_unused_share = unused - unused_ref
                refs["unused_share"] = unused_ref
            if lab is not None:
                le = lab[ref.eval_index]
                h.shrunk_mode_share = shrunk_mode_share(
                    joint_counts(idx[ref.eval_index], le, kk), joint_counts(ref.eval_assign, le, kk),
                    min_ratio=t.min_mode_perplexity_vs_kmeans)
    judge_usage = True
    if h.spread_vs_kmeans is None and x is not None:
        evidence = tuple(e for e in evidence if e not in ("latents", "labels"))  # no reference: codes-level rules
        if "usage" not in evidence and h.utilization is not None:
            if x.shape[0] >= t.min_tokens_per_code * kk:
                evidence += ("usage",)
            else:
                # usage from too few latents (N / K small): healthy codes go unused by chance (uniform use of
                # K codes leaves exp(-N / K) of them unpicked), so which codes are "live" is partly chance. The
                # usage rules are not judged and the geometry rules read all the codes; the metrics are still
                # reported
                judge_usage = False
                geo = _live_geometry(cb, None, h, max_points=max_points, seed=seed)
    values = {key: getattr(h, key) for key in METRIC_KEYS}
    values.update(spread_cosine=geo["spread_cosine"], offset_vs_spread=geo["offset_vs_spread"],
                  rank_share=geo["rank_share"])
    if not judge_usage:
        values.update(dead_code_ratio=None, utilization=None, codes_used=None, spread_all_vs_live=None)
    h.judged = Judged(kk, d, evidence, values, refs, live_codes=geo["live_codes"], all_zero=all_zero,
                      sampled_usage=not judge_usage, tokens=None if judge_usage else float(x.shape[0]))
    h.warnings, h.verdict = judge(h.judged, t)
    if x is not None and "latents" not in evidence:
        h.verdict = _no_reference(h.verdict, kk, x.shape[0], reference)
    return h


def _offset_vs_spread(cb: torch.Tensor, spread: float) -> float | None:
    """Distance of the codes' mean from the origin over their mean pairwise distance (``None`` if spread is 0)."""
    off = float(cb.double().mean(0).norm())
    return off / spread if spread > 0 else None


def _live_geometry(cb: torch.Tensor, live: torch.Tensor | None, h: CodebookHealth, *,
                   max_points: int | None, seed: int) -> dict[str, Any]:
    """Spread, rank and rank share of the live codes (all codes when usage is unknown or all are live).

    Dead codes are judged by ``dead_codes``; left in, codes parked far away would read as an exploded
    spread or a collapsed rank.
    """
    kk, d = cb.shape
    n_live = kk if live is None else int(live.sum())
    if n_live == kk:
        return {"spread_euclidean": h.spread_euclidean, "effective_rank": h.effective_rank,
                "spread_cosine": h.spread_cosine, "offset_vs_spread": h.offset_vs_spread,
                "rank_share": h.effective_rank / min(kk - 1, d), "live_codes": kk}
    if n_live < 2:  # one code in use: it spans nothing (spread 0, the effective rank of a point is 1)
        return {"spread_euclidean": 0.0, "effective_rank": 1.0, "spread_cosine": 0.0, "offset_vs_spread": None,
                "rank_share": 1.0 / min(kk - 1, d), "live_codes": n_live}
    sub = cb[live]
    spread = spread_euclidean(sub, max_points=max_points, seed=seed)
    rank = _effective_rank_from(singular_spectrum(sub))
    return {"spread_euclidean": spread, "effective_rank": rank, "spread_cosine": spread_cosine(sub),
            "offset_vs_spread": _offset_vs_spread(sub, spread), "rank_share": rank / min(n_live - 1, d),
            "live_codes": n_live}


def _no_reference(v: Verdict, k: int, n: int, asked: bool) -> Verdict:
    """Latents were given but no reference could be fitted: say so instead of judging against nothing."""
    why = (f"the k-means reference needs at least K={k} latents, got {n}" if asked
           else "the k-means reference was switched off (reference=False)")
    how = "pass more latent rows (at least K; 16 x K is best)" if asked else "call codebook_health(reference=True)"
    missing = tuple(m for m in v.missing if m["input"] != "latents") + (
        {"input": "latents", "why": why, "how": how},)
    summary = v.summary
    if v.status == "cannot_tell":
        summary = (f"Cannot tell (evidence: {', '.join(v.evidence)}): the codes show no sign of shrinkage on "
                   f"their own, and {why}.")
    return Verdict(v.status, v.evidence, summary, v.reasons, missing)

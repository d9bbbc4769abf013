"""Usage metrics from streamed counts, shared by ``watch`` reports and the live ``analyze(model, data)``.

A report measures a codebook's geometry once (``codebook_health`` on the window's latents) and then states
usage twice: over the window and since watching began. These helpers put usage metrics (and their warnings)
on a ``CodebookHealth`` from any counts, so the two scopes share one geometry, and codebook-free quantizers
(FSQ, LFQ) get a usage-only record built the same way.
"""
from __future__ import annotations

import dataclasses

import torch

from .metrics import CodebookHealth, HealthThresholds, dead_code_ratio, judge_health, utilization_perplexity
from .metrics.health import judged_from

__all__ = ["set_usage", "usage_health", "with_counts"]


def set_usage(h: CodebookHealth, counts: torch.Tensor, thresholds: HealthThresholds) -> None:
    """Write ``counts`` ``(K,)`` and the usage metrics they give onto ``h`` (all None for zero counts)."""
    c = counts.double()
    h.counts = c.cpu()
    if float(c.sum()) > 0:
        h.utilization_perplexity = utilization_perplexity(c)
        h.utilization = h.utilization_perplexity / h.num_codes
        h.dead_code_ratio = dead_code_ratio(c, threshold=thresholds.max_dead_usage)
        h.codes_used = 1.0 - h.dead_code_ratio
    else:
        h.utilization_perplexity = h.utilization = h.dead_code_ratio = h.codes_used = None


def usage_health(name: str, num_codes: int, dim: int, counts: torch.Tensor,
                 thresholds: HealthThresholds, *, implicit: bool = False) -> CodebookHealth:
    """A usage-only ``CodebookHealth`` (no codebook geometry): a codebook-free quantizer, or no latents.

    Args:
        name: codebook name.
        num_codes: K.
        dim: D (0 for an implicit codebook).
        counts: ``(K,)`` usage counts.
        thresholds: warning cut-offs.
        implicit: a codebook-free quantizer (FSQ, LFQ): judged on usage against uniform use of all K codes
            (metrics/implicit_verdict.py), never asking for latents.
    """
    h = CodebookHealth(name=name, num_codes=num_codes, dim=dim)
    set_usage(h, counts, thresholds)
    if implicit:
        h.judged = judged_from(h, evidence=("usage",), implicit=True)
    judge_health(h, thresholds, all_zero=False, usage=True)
    return h


def with_counts(h: CodebookHealth, counts: torch.Tensor, thresholds: HealthThresholds, *,
                usage_only: bool) -> CodebookHealth:
    """A copy of ``h`` (same geometry) with usage metrics and warnings from other counts ``(K,)``."""
    hc = dataclasses.replace(h, warnings=[])
    set_usage(hc, counts, thresholds)
    all_zero = any(wr["code"] == "uninitialized" for wr in h.warnings)
    judge_health(hc, thresholds, all_zero=all_zero and not usage_only, usage=True)
    return hc

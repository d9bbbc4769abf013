"""Terminal output: one row per codebook with the key metrics and warnings, then the verdict."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from ..analyze import AnalysisResult, ComparisonResult
    from ..metrics import CodebookHealth

# (metric key, column header, format) shown in the terminal table; the full set is in --json / health.json.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("spread_ratio", "spread/z", "{:.2f}"), ("spread_vs_kmeans", "spread/km", "{:.2f}"),
    ("effective_rank", "rank", "{:.1f}"), ("rank_vs_kmeans", "rank/km", "{:.2f}"),
    ("coverage_vs_kmeans", "cover/km", "{:.2f}"), ("excess_distortion", "+dist/km", "{:+.2f}"),
    ("codes_used", "used", "{:.0%}"), ("utilization", "perp/K", "{:.0%}"), ("dead_code_ratio", "dead", "{:.0%}"),
)
LEGEND = (
    "spread/z: code spread / latent spread   spread/km, rank/km, cover/km: the live codes' spread, effective rank\n"
    "and latent coverage / those of k-means with the same K on these latents (about 1 good, << 1 shrunk)\n"
    "+dist/km: held-out quantization error / k-means's, minus 1   rank: effective rank of the codes\n"
    "used: share of codes used at least once (the papers' \"codebook utilization\")   perp/K: usage perplexity / K\n"
    "dead: share of dead codes   -: needs --latents (or a usage buffer for used, perp/K, dead)"
)


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else spec.format(value)


def format_rows(header: Sequence[str], rows: Sequence[Sequence[str]], *, left: int = 1) -> str:
    """Left-align the first ``left`` columns, right-align the others, two spaces between columns."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    out = []
    for r in [header, *rows]:
        cells = [str(c).ljust(widths[i]) if i < left else str(c).rjust(widths[i]) for i, c in enumerate(r)]
        out.append("  ".join(cells).rstrip())
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def _name(name: str, width: int = 36) -> str:
    return name if len(name) <= width else "..." + name[-(width - 3) :]


def health_table(healths: Sequence[CodebookHealth]) -> str:
    """The terminal table for a list of ``CodebookHealth``."""
    header = ["codebook", "K", "D", *[c[1] for c in COLUMNS], "verdict", "warnings"]
    rows = []
    for h in healths:
        m = h.metrics
        warn = ",".join(w["code"] for w in h.warnings) or "-"
        status = h.verdict.status if h.verdict is not None else "-"
        rows.append(
            [_name(h.name), str(h.num_codes), str(h.dim), *[_fmt(m[k], f) for k, _, f in COLUMNS], status, warn]
        )
    return format_rows(header, rows)


def analysis_text(result: AnalysisResult) -> str:
    """Table, per-codebook notes and verdict of an ``AnalysisResult``, ready to print."""
    parts = [f"shrinkscope analyze {result.source}", "", health_table(result.codebooks), "", LEGEND]
    notes = [(e.health.name, n) for e in result.entries for n in e.notes]
    if notes:
        parts += ["", "Notes:"] + [f"  {name}: {n}" for name, n in notes]
    from ..stages import depth_summary

    depth = depth_summary(result.codebooks)
    if depth:
        parts += ["", "Residual stages:"] + [f"  {line}" for line in depth]
    parts += ["", "Verdict:", *("  " + line for line in result.verdict().splitlines())]
    return "\n".join(parts)


def comparison_text(result: ComparisonResult) -> str:
    """Side-by-side table (before, after, delta per key metric) and the comparison verdict."""
    header = ["codebook", "metric", "before", "after", "delta"]
    rows = []
    for b, a in result.pairs:
        mb, ma = b.health.metrics, a.health.metrics
        for key, _, spec in COLUMNS:
            if mb[key] is None and ma[key] is None:
                continue
            delta = None if mb[key] is None or ma[key] is None else ma[key] - mb[key]
            rows.append(
                [
                    _name(a.health.name, 28), key, _fmt(mb[key], spec), _fmt(ma[key], spec),
                    "-" if delta is None else f"{delta:+.3g}"
                ]
            )
        rows.append(
            [
                _name(a.health.name, 28), "warnings", ",".join(w["code"] for w in b.health.warnings) or "ok",
                ",".join(w["code"] for w in a.health.warnings) or "ok", ""
            ]
        )
    parts = [f"shrinkscope compare\n  before: {result.before.source}\n  after:  {result.after.source}", ""]
    parts.append(format_rows(header, rows, left=2) if rows else "(no codebooks paired by name)")
    parts += ["", "Verdict:", *("  " + line for line in result.verdict().splitlines())]
    return "\n".join(parts)

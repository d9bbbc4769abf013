"""Terminal output: one row per codebook with the key metrics and warnings, then the verdict."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

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


def health_table(healths: Sequence[CodebookHealth], *, suffixes: Mapping[str, str] | None = None) -> str:
    """The terminal table for a list of ``CodebookHealth``.

    Args:
        healths: one row each.
        suffixes: text shown after a codebook's name (``{"vae.quantize.scales.3": "4x4"}``: a scale's size).
    """
    header = ["codebook", "K", "D", *[c[1] for c in COLUMNS], "verdict", "warnings"]
    rows = []
    for h in healths:
        m = h.metrics
        warn = ",".join(w["code"] for w in h.warnings) or "-"
        status = h.verdict.status if h.verdict is not None else "-"
        extra = (suffixes or {}).get(h.name)
        name = _name(h.name) if not extra else f"{_name(h.name, 36 - len(extra) - 1)} {extra}"
        rows.append(
            [name, str(h.num_codes), str(h.dim), *[_fmt(m[k], f) for k, _, f in COLUMNS], status, warn]
        )
    return format_rows(header, rows)


def _scales(result: AnalysisResult) -> dict[str, dict]:
    return {e.health.name: e.scale for e in result.entries if e.scale is not None}


def depth_lines(healths: Sequence[Any], *, scales: Mapping[str, Any] | None = None) -> list[str]:
    """The "Residual stages:" and "Scales:" blocks: one summary line per quantizer (empty when none)."""
    from ..stages import stage_groups

    out: list[str] = []
    groups = stage_groups(healths, scales=scales)
    for kind, title in (("stage", "Residual stages:"), ("scale", "Scales:")):
        lines = [g.summary() for g in groups if g.kind == kind]
        if lines:
            out += ["", title] + [f"  {line}" for line in lines]
    return out


def analysis_text(result: AnalysisResult) -> str:
    """Table, per-codebook notes and verdict of an ``AnalysisResult``, ready to print."""
    scales = _scales(result)
    sizes = {n: "{}x{}".format(*s["size"]) for n, s in scales.items() if s.get("size")}
    parts = [f"shrinkscope analyze {result.source}", "", health_table(result.codebooks, suffixes=sizes), "", LEGEND]
    notes = [(e.health.name, n) for e in result.entries for n in e.notes]
    if notes:
        parts += ["", "Notes:"] + [f"  {name}: {n}" for name, n in notes]
    parts += depth_lines(result.codebooks, scales=scales)
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
    from ..stages import stage_groups

    depth = [f"  {side}: {g.summary()}" for side, res in (("before", result.before), ("after", result.after))
             for g in stage_groups(res.codebooks, scales=_scales(res))]
    if depth:
        parts += ["", "Residual stages and scales:", *depth]
    parts += ["", "Verdict:", *("  " + line for line in result.verdict().splitlines())]
    return "\n".join(parts)

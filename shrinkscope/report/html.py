"""Self-contained HTML reports: PNGs embedded as base64, so ``report.html`` opens offline anywhere."""

from __future__ import annotations

import base64
import html
import json
import os
import re
from typing import Any, Sequence

from ..metrics import METRIC_KEYS

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1250px;
color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em;display:block;overflow-x:auto}
th,td{border:1px solid #ddd;padding:.3em .55em;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}th{background:#f4f4f4}
.verdict{background:#f7f7f2;border-left:4px solid #888;padding:.6em 1em;white-space:pre-wrap}
.healthy{color:#1a7f37}.shrunk{color:#b42318}.underused{color:#9a6700}.uninitialised{color:#555}
img{max-width:100%;border:1px solid #eee}.notes{color:#555;font-size:.9em}code{font-size:.95em}
"""


def safe_name(name: str) -> str:
    """A file-name-safe version of a codebook name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "codebook"


def embed_png(path: str, alt: str) -> str:
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _fmt(v: Any) -> str:
    if v is None:
        return "&ndash;"
    return str(v) if isinstance(v, int) else f"{v:.4g}"


def metrics_table(healths: Sequence[Any], statuses: Sequence[str]) -> str:
    """HTML table: one row per codebook, one column per metric key, plus status and warning codes."""
    head = "".join(f"<th>{k}</th>" for k in METRIC_KEYS)
    rows = []
    for h, st in zip(healths, statuses):
        cells = "".join(f"<td>{_fmt(v)}</td>" for v in h.metrics.values())
        warn = ", ".join(w["code"] for w in h.warnings) or "none"
        rows.append(
            f'<tr><td>{html.escape(h.name)}</td><td class="{st}">{st}</td>{cells}'
            f"<td>{html.escape(warn)}</td></tr>"
        )
    return f"<table><tr><th>codebook</th><th>status</th>{head}<th>warnings</th></tr>{''.join(rows)}</table>"


def _warnings_list(h: Any) -> str:
    if not h.warnings:
        return ""
    items = "".join(
        f"<li><b>{html.escape(w['code'])}</b>: {html.escape(w['message'])}</li>" for w in h.warnings
    )
    return f"<ul>{items}</ul>"


def page(title: str, body: str) -> str:
    """A complete HTML document (inline CSS, no external resources)."""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>{body}"
            "<p class='notes'>Made by shrinkscope. Metric definitions: docs/metrics.md.</p></body></html>")


def _umap_wanted(umap: bool | None) -> bool:
    if umap is False:
        return False
    try:
        import umap as _  # noqa: F401
    except ImportError:
        if umap:
            raise ModuleNotFoundError("UMAP plots need umap-learn: pip install umap-learn") from None
        return False
    return True


def write_analysis_report(result: Any, out_dir: str, *, umap: bool | None = None, max_umap: int = 4) -> str:
    """Write ``health.json``, one PNG per codebook (+ UMAP PNGs) and a self-contained ``report.html``.

    Args:
        result: an ``AnalysisResult``.
        out_dir: created if missing.
        umap: draw UMAP projections (None: when umap-learn is importable).
        max_umap: UMAP for at most this many codebooks (it is the slowest plot).

    Returns:
        The path of ``report.html``.
    """
    from .plots import CODE_COLORS, codebook_figure, umap_figure

    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "health.json"), "w") as f:
        json.dump(result.to_dict(), f, indent=2)
    do_umap = _umap_wanted(umap)
    sections = []
    for i, e in enumerate(result.entries):
        stem = f"{i:02d}_{safe_name(e.health.name)}"
        png = codebook_figure(e, os.path.join(out_dir, stem + ".png"))
        imgs = embed_png(png, f"plots of {e.health.name}")
        if do_umap and i < max_umap:
            up = umap_figure(
                [("codes", e.found.codebook, CODE_COLORS[0])], e.latents,
                os.path.join(out_dir, stem + "_umap.png")
            )
            imgs += embed_png(up, f"UMAP of {e.health.name}") if up else ""
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in e.notes)
        sections.append(f"<h2>{html.escape(e.health.name)} <span class='{e.status}'>({e.status})</span></h2>"
                        f"<p class='notes'>key <code>{html.escape(e.found.key)}</code>, family "
                        f"{html.escape(e.found.family)}</p>{_warnings_list(e.health)}"
                        f"<ul class='notes'>{notes}</ul>{imgs}")
    body = (
        f"<p>Checkpoint <code>{html.escape(str(result.source))}</code>; latents: "
        f"{html.escape(str(result.latents_source or 'none'))}.</p>"
        f"<h2>Verdict</h2><div class='verdict'>{html.escape(result.verdict())}</div>"
        f"<h2>Metrics</h2>{metrics_table(result.codebooks, [e.status for e in result.entries])}"
        + "".join(sections)
    )
    path = os.path.join(out_dir, "report.html")
    with open(path, "w") as f:
        f.write(page("shrinkscope: codebook health", body))
    return path


def write_comparison_report(result: Any, out_dir: str, *, umap: bool | None = None, max_umap: int = 4) -> str:
    """``health.json`` (the compare JSON), one overlay PNG per codebook pair and ``report.html``."""
    from .plots import CODE_COLORS, comparison_figure, umap_figure

    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "health.json"), "w") as f:
        json.dump(result.to_dict(), f, indent=2)
    do_umap = _umap_wanted(umap)
    sections = []
    for i, (b, a) in enumerate(result.pairs):
        stem = f"{i:02d}_{safe_name(a.health.name)}_compare"
        imgs = embed_png(
            comparison_figure(b, a, os.path.join(out_dir, stem + ".png")), f"{a.health.name} overlay"
        )
        if do_umap and i < max_umap:
            z = a.latents if a.latents is not None else b.latents
            up = umap_figure(
                [("before", b.found.codebook, CODE_COLORS[0]), ("after", a.found.codebook, CODE_COLORS[1])],
                z, os.path.join(out_dir, stem + "_umap.png")
            )
            imgs += embed_png(up, f"UMAP of {a.health.name}") if up else ""
        sections.append(
            f"<h2>{html.escape(a.health.name)}: <span class='{b.status}'>{b.status}</span> &rarr; "
            f"<span class='{a.status}'>{a.status}</span></h2>{imgs}"
        )
    bh = [b.health for b, _ in result.pairs]
    ah = [a.health for _, a in result.pairs]
    body = (f"<p>Before <code>{html.escape(str(result.before.source))}</code>, after "
            f"<code>{html.escape(str(result.after.source))}</code>.</p>"
            f"<h2>Verdict</h2><div class='verdict'>{html.escape(result.verdict())}</div>"
            f"<h2>Before</h2>{metrics_table(bh, [b.status for b, _ in result.pairs])}"
            f"<h2>After</h2>{metrics_table(ah, [a.status for _, a in result.pairs])}" + "".join(sections))
    path = os.path.join(out_dir, "report.html")
    with open(path, "w") as f:
        f.write(page("shrinkscope: before vs after", body))
    return path

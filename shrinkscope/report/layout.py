"""The one page layout of every shrinkscope report, as reusable HTML building blocks.

Every report page reads the same way: a header (what was measured, from which inputs), the verdicts (one
card per codebook: status, the measurements that decide it, what is missing), the plots, then the full
metric table (one metric per row, with which way is good). ``analyze``, ``compare`` and the training
timeline all use it, and so can other pages (the demo's report): each function returns an HTML fragment,
``page`` wraps fragments into a self-contained document (inline CSS, images as data URIs, no script).
"""

from __future__ import annotations

import base64
import html
import math
from typing import Any, Mapping, Sequence

from ..metrics import HIGHER_IS_BETTER

__all__ = [
    "CSS",
    "METRIC_INFO",
    "change_class",
    "change_table",
    "figure_html",
    "good_way",
    "metric_table",
    "page",
    "section",
]

CSS = """
:root{--fg:#1f2328;--muted:#59636e;--line:#d1d9e0;--soft:#f6f8fa;--good:#1a7f37;--bad:#cf222e;
--warn:#9a6700;--neutral:#59636e}
*{box-sizing:border-box}
body{margin:0;color:var(--fg);background:#fff;overflow-wrap:anywhere;
font:15px/1.5 system-ui,-apple-system,"Segoe UI",Helvetica,Arial,
sans-serif}
main{max-width:1100px;margin:0 auto;padding:20px 20px 48px}
h1{font-size:1.45em;margin:.2em 0 .1em}h2{font-size:1.15em;margin:1.8em 0 .6em;padding-bottom:.2em;
border-bottom:1px solid var(--line)}h3{font-size:1em;margin:1.4em 0 .5em}
code{font:.9em ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;overflow-wrap:anywhere}
a{color:#0969da}.muted,.meta{color:var(--muted)}.meta{margin:.2em 0;overflow-wrap:anywhere}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,420px),1fr));gap:12px}
.pair{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,420px),1fr));gap:12px;
margin:0 0 14px}
.card{min-width:0;border:1px solid var(--line);border-left:6px solid var(--tone);border-radius:6px;
padding:10px 14px;background:#fff}
.card header{display:flex;flex-wrap:wrap;align-items:baseline;gap:4px 10px}
.card .name{font-weight:600;font-size:1em}.caption{font-size:.8em;color:var(--muted);text-transform:uppercase;
letter-spacing:.04em}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;background:var(--tone);
font-weight:600;
font-size:.85em}
.tone-good{--tone:var(--good)}.tone-bad{--tone:var(--bad)}.tone-warn{--tone:var(--warn)}
.tone-neutral{--tone:var(--neutral)}
.evidence{font-size:.8em;color:var(--muted)}.chip{display:inline-block;margin-left:4px;padding:0 6px;
border-radius:8px;border:1px solid var(--line)}
.chip.on{color:var(--good);border-color:#aceebb;background:#dafbe1}
.chip.off{color:var(--muted);background:var(--soft)}
.summary{margin:.5em 0}.label{font-size:.8em;font-weight:600;color:var(--muted);text-transform:uppercase;
letter-spacing:.04em;margin-top:.6em}
ul.reasons,ul.missing{margin:.2em 0;padding-left:1.2em}ul.reasons li,ul.missing li{margin:.25em 0}
.ref,.how{font-size:.85em;color:var(--muted)}
.good,.better{color:var(--good)}.bad,.worse{color:var(--bad)}.neutral,.same{color:var(--muted)}
details{margin-top:.5em;font-size:.9em}summary{cursor:pointer;color:var(--muted)}
figure{margin:0 0 1em}figure img{display:block;max-width:100%;height:auto;border:1px solid var(--line);
border-radius:4px}figcaption{font-size:.85em;color:var(--muted);margin-top:.3em}
.tablewrap{max-width:100%;overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:.9em}
th,td{padding:4px 10px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{background:var(--soft);font-weight:600}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;
white-space:nowrap}td.key{white-space:nowrap}td.what{color:var(--muted);min-width:12em}
.depth{display:grid;grid-template-columns:minmax(0,3fr) minmax(14em,1fr);gap:14px;align-items:start;
margin:0 0 1em}.depth .sum p{margin:.2em 0 .6em}
footer{margin-top:2.5em;font-size:.85em;color:var(--muted)}
@media (max-width:640px){main{padding:12px}.depth{grid-template-columns:minmax(0,1fr)}td.what,th.what{display:none}th,td{padding:4px 5px}
td.key{white-space:normal}}
"""

METRIC_INFO: dict[str, tuple[str, str]] = {
    "num_codes": ("K, codes in the codebook", ""),
    "dim": ("D, dimension of a code", ""),
    "codes_used": ("share of codes used at least once", "higher"),
    "spread_cosine": ("mean 1 - cos between codes", "higher"),
    "spread_euclidean": ("mean pairwise distance between codes", "higher"),
    "spread_ratio": ("code spread / latent spread", "about 1; << 1 = shrunk"),
    "spread_vs_kmeans": ("spread of the live codes / that of k-means with the same K", "about 1 or more"),
    "effective_rank": ("exp(entropy of normalised singular values) of the codes", "higher"),
    "effective_dimension": ("PCA components holding 99% of the codes' variance", "higher"),
    "rank_vs_kmeans": ("effective rank of the live codes / that of k-means, same K", "about 1 or more"),
    "latent_effective_rank": ("effective rank of the latents (context)", "context"),
    "latent_effective_dimension": ("99%-variance dimension of the latents (context)", "context"),
    "utilization_perplexity": ("exp(entropy) of code usage", "higher (max K)"),
    "utilization": ("usage perplexity / K", "higher (max 1)"),
    "dead_code_ratio": ("share of codes never (or barely) used", "lower"),
    "latent_coverage": ("latents with a code in their k-NN ball", "higher"),
    "coverage_vs_kmeans": ("latent coverage / that of k-means with the same K", "about 1 or more"),
    "codebook_precision": ("codes inside some latent's k-NN ball", "higher"),
    "quantization_error": ("mean squared distance to the nearest code / latent variance", "lower"),
    "excess_distortion": ("held-out distortion / that of k-means with the same K, minus 1", "lower"),
    "offset_vs_spread": ("distance of the codes' mean from the origin / their spread", "lower"),
    "token_mode_entropy": ("entropy of the codes each data mode uses", "higher"),
    "shrunk_mode_share": ("share of data modes whose codes are shrunk vs k-means", "lower"),
}
"""Meaning and which way is good, per metric key (definitions: docs/metrics.md)."""


def good_way(key: str) -> str:
    """Which way is good for a metric, in words (from ``METRIC_INFO``, else from ``HIGHER_IS_BETTER``)."""
    if key in METRIC_INFO:
        return METRIC_INFO[key][1]
    return {True: "higher", False: "lower"}.get(HIGHER_IS_BETTER.get(key), "")  # type: ignore[arg-type]


def _meaning(key: str) -> str:
    return METRIC_INFO.get(key, ("", ""))[0]


def fmt(v: Any, *, digits: int = 4) -> str:
    """A metric value for a table cell (an en dash where the input for it was absent)."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "&ndash;"
    if isinstance(v, int):
        return str(v)
    return f"{v:.{digits}g}"


def change_class(key: str, before: Any, after: Any) -> str:
    """``better``, ``worse`` or ``same`` for a change of metric ``key``; ``""`` when it has no direction."""
    if not isinstance(before, (int, float)) or not isinstance(after, (int, float)):
        return ""
    if not (math.isfinite(before) and math.isfinite(after)):
        return ""
    up = HIGHER_IS_BETTER.get(key)
    if up is None:
        return ""
    if abs(after - before) <= 1e-9 * max(abs(before), abs(after), 1e-12):
        return "same"
    return "better" if (after > before) == up else "worse"


def metric_table(metrics: Mapping[str, Any], *, caption: str = "") -> str:
    """Vertical table of one record: metric | value | which way is good | what it measures."""
    body = "".join(
        f"<tr><td class='key'><code>{html.escape(k)}</code></td><td class='num'>{fmt(v)}</td>"
        f"<td>{html.escape(good_way(k))}</td><td class='what'>{html.escape(_meaning(k))}</td>"
        "</tr>"
        for k, v in metrics.items()
    )
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return (
        f"<div class='tablewrap'><table class='metrics'>{cap}<tr><th>metric</th><th class='num'>value</th>"
        f"<th>good</th><th class='what'>what it measures</th></tr>{body}</table></div>"
    )


def change_table(
    before: Mapping[str, Any], after: Mapping[str, Any], *, labels: tuple[str, str] = ("before", "after")
) -> str:
    """Vertical table of two records: metric | before | after | change (coloured better/worse) | good."""
    rows = []
    for k in dict.fromkeys([*before, *after]):
        b, a = before.get(k), after.get(k)
        cls = change_class(k, b, a)
        if (
            isinstance(b, (int, float))
            and isinstance(a, (int, float))
            and math.isfinite(b)
            and math.isfinite(a)
        ):
            word = {"better": " better", "worse": " worse", "same": ""}.get(cls, "")
            delta = f"{a - b:+.3g}{word}"
        else:
            delta = "&ndash;"
        rows.append(
            f"<tr><td class='key'><code>{html.escape(k)}</code></td><td class='num'>{fmt(b)}</td>"
            f"<td class='num'>{fmt(a)}</td><td class='num {cls}'>{delta}</td>"
            f"<td>{html.escape(good_way(k))}</td>"
            f"<td class='what'>{html.escape(_meaning(k))}</td></tr>"
        )
    b_lab, a_lab = (html.escape(x) for x in labels)
    return (
        f"<div class='tablewrap'><table class='metrics'><tr><th>metric</th><th class='num'>{b_lab}</th>"
        f"<th class='num'>{a_lab}</th><th class='num'>change</th><th>good</th>"
        "<th class='what'>what it measures</th></tr>"
        f"{''.join(rows)}</table></div>"
    )


def figure_html(png: bytes, alt: str, *, caption: str = "") -> str:
    """A PNG embedded as a data URI (the page stays one file that opens offline)."""
    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f"<figure><img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>{cap}</figure>"


def section(title: str, body: str, *, anchor: str | None = None) -> str:
    """``<section>`` with an ``h2`` title (and an ``id`` to link to)."""
    ident = f" id='{html.escape(anchor)}'" if anchor else ""
    return f"<section{ident}><h2>{html.escape(title)}</h2>{body}</section>"


def page(title: str, sections: Sequence[str], *, meta: Sequence[str] = ()) -> str:
    """A complete, self-contained HTML document: title, meta lines (HTML), then the sections in order."""
    head = "".join(f"<p class='meta'>{m}</p>" for m in meta)
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body><main>"
        f"<header><h1>{html.escape(title)}</h1>{head}</header>{''.join(sections)}"
        "<footer>Made by shrinkscope. Metric definitions: docs/metrics.md; verdicts: docs/verdicts.md."
        "</footer>"
        "</main></body></html>"
    )

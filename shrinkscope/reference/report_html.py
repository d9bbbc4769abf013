"""The demo's ``report.html``, in the shared report layout: verdict cards, table, timelines, projections, samples.

The page is assembled from ``shrinkscope.report.layout`` blocks (header, sections, figures, CSS) and
``report.verdict.verdict_card`` (one card per arm: status, the measurements that decide it against k-means,
what is missing), so it reads like the ``analyze`` / ``compare`` / timeline reports. The health timelines come
from the arms' ``shrinkscope.watch`` JSONL files through ``report.timeline.read_timeline`` and are drawn by
``TimelineDisplay``; the code-over-latents views by ``ProjectionDisplay``. Every figure is a PNG embedded as a
data URI, so the report is one file that can be mailed or attached to an issue.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import torch

from ..report.figures import Series, detached, new_figure, png_bytes, set_title
from ..report.layout import figure_html, fmt, page, section
from ..report.verdict import verdict_card

ARM_COLORS = {"early": "#d55e00", "deferred": "#0072b2", "l2": "#e69f00", "expiry": "#cc79a7",
              "deferred-auto": "#009e73"}
"""Okabe-Ito colours per arm (early in the shared layout's vermillion, deferred in its blue)."""
TIMELINE_KEYS = ("spread_vs_kmeans", "coverage_vs_kmeans", "excess_distortion", "dead_code_ratio",
                 "spread_ratio", "effective_rank", "utilization_perplexity", "quantization_error")


def _color(arm: str) -> str:
    return ARM_COLORS.get(arm, "0.4")


def timeline_panels(results: list[dict], out_dir: Path) -> tuple[dict[str, list[Series]], list[tuple[int, str]]]:
    """Per metric, one ``(step, value)`` series per arm from its JSONL timeline (window scope, quantized phase
    only: before the switch the codebook is a placeholder), plus the batch recon MSE; and the switch events
    of the arms that quantize after step 0."""
    from ..report.timeline import TimelineError, read_timeline

    panels: dict[str, list[Series]] = {}
    events: list[tuple[int, str]] = []
    for r in results:
        try:
            tl = read_timeline(str(out_dir / f"{r['arm']}.jsonl"))
        except TimelineError:
            continue  # an arm that logged nothing is left out of the plot, not the report
        keys = [k for k in tl.series if k[1] == "window"] or list(tl.series)
        start = r["quantize_start"]
        for metric in TIMELINE_KEYS:
            xs, ys = tl.values(keys[0], metric)
            pts = [(x, y) for x, y in zip(xs, ys) if x >= start]
            if pts:
                panels.setdefault(metric, []).append(Series(r["arm"], np.array(pts, dtype=float), _color(r["arm"])))
        events += [(int(e["step"]), f"{r['arm']}: {e['event']}") for e in tl.events if int(e["step"]) > 0]
    for r in results:
        hist = r.get("train_history") or []
        if hist:
            pts = np.array([(h["step"], h["recon_mse"]) for h in hist], dtype=float)
            panels.setdefault("train recon MSE (batch)", []).append(Series(r["arm"], pts, _color(r["arm"])))
    return panels, events


def _timeline_png(results: list[dict], out_dir: Path) -> bytes | None:
    from ..report.timeline import TimelineDisplay

    panels, events = timeline_panels(results, out_dir)
    if not panels:
        return None
    d = TimelineDisplay(panels, events=events, title="Codebook health during tokenizer training (window scope)")
    d.plot()
    if "train recon MSE (batch)" in panels:
        d.axes_[list(panels).index("train recon MSE (batch)")].set_yscale("log")
    return png_bytes(d.figure_)


def _prior_png(results: list[dict]) -> bytes | None:
    from ..report.timeline import TimelineDisplay

    lines = [Series(r["arm"], np.array([(h["step"], h["loss"]) for h in r["prior_history"]], dtype=float),
                    _color(r["arm"])) for r in results if r.get("prior_history")]
    if not lines:
        return None
    return png_bytes(TimelineDisplay({"prior loss (nats per token)": lines}, title="Prior training").plot().figure_)


def _projection_png(results: list[dict]) -> bytes:
    """Per arm: its held-out latents and its codes, used and unused, on the latents' top-2 PCs."""
    from ..metrics import assign
    from ..report.projection import ProjectionDisplay

    fig = new_figure((4.3 * len(results), 4.4))
    axes = fig.subplots(1, len(results), squeeze=False)[0]
    fig.subplots_adjust(left=0.04, right=0.99, top=0.88, bottom=0.12, wspace=0.25)
    for ax, r in zip(axes, results):
        lat, cb = r["_latents"].double(), r["_codebook"].double()
        used = torch.bincount(assign(cb, lat)[0], minlength=len(cb)) > 0
        parts = {f"used codes ({int(used.sum())})": cb[used]}
        if (~used).any():
            parts[f"unused codes ({int((~used).sum())})"] = cb[~used]
        ProjectionDisplay.from_codebooks(parts, lat, seed=0).plot(ax=ax)
        set_title(ax, f"{r['arm']} (quantized from step {r['quantize_start']})")
        ax.set_xticks([]), ax.set_yticks([])
    return png_bytes(fig)


def _samples_png(results: list[dict], data) -> bytes | None:
    """Grids of prior samples per arm (images) or a 2-D scatter of samples over data (vectors)."""
    with_samples = [r for r in results if "_samples" in r]
    if not with_samples:
        return None
    fig = new_figure((4.2 * len(with_samples), 4.4))
    axes = fig.subplots(1, len(with_samples), squeeze=False)[0]
    fig.subplots_adjust(left=0.02, right=0.98, top=0.9, bottom=0.02, wspace=0.1)
    for ax, r in zip(axes, with_samples):
        s = r["_samples"]
        if s.dim() == 4:
            n = int(len(s) ** 0.5)
            s = s[: n * n]
            c, h, w = s.shape[1:]
            img = s if c == 3 else s[:, :1].expand(-1, 3, -1, -1)
            img = torch.nn.functional.pad(img, (0, 1, 0, 1), value=1.0)  # white 1-px gutters between cells
            h, w = h + 1, w + 1
            grid = img.reshape(n, n, 3, h, w).permute(0, 3, 1, 4, 2).reshape(n * h, n * w, 3)
            ax.imshow(grid.clamp(0, 1).numpy(), interpolation="nearest")
        else:
            ax.scatter(data.test[:2000, 0], data.test[:2000, 1], s=3, c="0.7", label="held-out data")
            ax.scatter(s[:, 0], s[:, 1], s=6, c=_color(r["arm"]), label="samples")
            ax.legend(fontsize=7)
        set_title(ax, f"{r['arm']}: prior samples")
        ax.set_xticks([]), ax.set_yticks([])
    return png_bytes(fig)


def summary_sentence(rows: list[dict], arms: list[str], *, quick: bool = False) -> str:
    """One honest sentence: how many ranked rows each arm won, and which (none for a smoke run)."""
    if quick:
        return "Smoke run (--quick): too short to compare the arms; no winner is named."
    rows = [r for r in rows if r["direction"]]  # ranked rows only
    wins = {a: [r["metric"] for r in rows if r["better"] == a] for a in arms}
    ties = [r["metric"] for r in rows if r["better"] == "tie" or " = " in r["better"]]
    parts = [f"{a} was best on {len(w)} of {len(rows)} rows" + (f" ({', '.join(w)})" if w else "")
             for a, w in wins.items()]
    return "; ".join(parts) + (f"; ties: {', '.join(ties)}" if ties else "") + "."


def comparison_table(rows: list[dict], arms: list[str], *, better: bool = True) -> str:
    """The demo's table as HTML: one header row per section, a value per arm, which way is good, the best arm."""
    head = "".join(f"<th class='num'>{html.escape(a)}</th>" for a in arms)
    body, current = [], None
    for r in rows:
        if r.get("section") != current:
            current = r.get("section")
            body.append(f"<tr><th colspan='{len(arms) + 2 + better}'>{html.escape(current or '')}</th></tr>")
        cells = "".join(f"<td class='num'>{fmt(v) if not isinstance(v, str) else html.escape(v)}</td>"
                        for v in r["values"])
        win = f"<td><b>{html.escape(r['better'])}</b></td>" if better else ""
        body.append(f"<tr><td class='key'>{html.escape(r['metric'])}</td><td>{html.escape(r['direction'])}</td>"
                    f"{cells}{win}</tr>")
    last = "<th>best</th>" if better else ""
    return (f"<div class='tablewrap'><table class='metrics'><tr><th>metric</th><th>good</th>{head}{last}</tr>"
            f"{''.join(body)}</table></div>")


def timing_table(results: list[dict]) -> str:
    """CPU and wall seconds per phase and arm (``run_arm``'s ``timing``)."""
    phases = list(dict.fromkeys(p for r in results for p in (r.get("timing") or {})))
    if not phases:
        return ""
    head = "".join(f"<th class='num'>{html.escape(r['arm'])}</th>" for r in results)
    body = "".join(
        f"<tr><td class='key'>{html.escape(p)}</td>"
        + "".join(f"<td class='num'>{_secs((r.get('timing') or {}).get(p))}</td>" for r in results) + "</tr>"
        for p in phases)
    return (f"<div class='tablewrap'><table class='metrics'><tr><th>phase (CPU s / wall s)</th>{head}</tr>{body}"
            "</table></div>")


def _secs(p: dict | None) -> str:
    return "&ndash;" if not p else f"{p['cpu_s']:.1f} / {p['wall_s']:.1f}"


@detached()  # figures stay out of pyplot's registry even when the user imported pyplot
def write_report(path: str | Path, results: list[dict], rows: list[dict], meta: dict, data) -> Path:
    """Write the demo's ``report.html`` (self-contained) and return its path.

    Args:
        path: the HTML file; the arms' ``<arm>.jsonl`` timelines are read from its folder.
        results: ``run_arm`` results (with the ``_latents``, ``_codebook``, ``_samples`` entries).
        rows: ``demo_table.comparison_rows(results)``.
        meta: the run's description (``results.json``'s ``meta``).
        data: the dataset (for the vector-data sample scatter).
    """
    path = Path(path)
    arms = [r["arm"] for r in results]
    preset, quick = meta["preset"], bool(meta.get("quick"))
    cards = "".join(verdict_card(r["arm"], r["health"].get("verdict"), warnings=r["health"].get("warnings") or [],
                                 caption=f"quantized from step {r['quantize_start']}") for r in results)
    settings = "; ".join(f"<i>{html.escape(r['arm'])}</i>: {html.escape(json.dumps(r.get('settings', {})))}"
                         for r in results)
    head = [(f"Dataset <b>{html.escape(meta['dataset'])}</b>, K={preset['num_codes']} codes of dim "
             f"{preset['code_dim']}, {preset['steps']} tokenizer steps per arm, prior of {preset['prior_steps']} "
             f"steps, {preset['num_samples']} prior samples per arm, seed {meta['seed']}, device "
             f"{html.escape(meta['device'])} (preset {html.escape(str(meta.get('preset_name', '')))})."),
            ("The arms share the data, model, seed and step budget; each runs with the settings its own "
             f"validation grid chose ({settings}). <i>early</i> k-means-initialises its codebook on the untrained "
             "encoder; <i>deferred</i> first trains a continuous autoencoder, then k-means-initialises on the "
             "mature encoder.")]
    if quick:
        head.append("<b>Smoke run (--quick)</b>: too short to compare the arms; no winner is named.")
    sections = [
        section("Verdicts", "<p class='muted'>Each arm's codebook judged against k-means with the same K on the "
                "arm's own held-out latents (docs/verdicts.md): the measurements listed decide it.</p>"
                f"<div class='cards'>{cards}</div>", anchor="verdict"),
        section("Before / after", f"<p>{html.escape(summary_sentence(rows, arms, quick=quick))}</p>"
                + comparison_table(rows, arms, better=not quick), anchor="table"),
    ]
    tl = _timeline_png(results, path.parent)
    if tl:
        sections.append(section("Codebook health during training", figure_html(
            tl, "health timelines", caption="From the JSONL written by shrinkscope.watch (window scope), from the "
            "step each arm starts quantizing; dotted lines: the deferred arms' switch."), anchor="timeline"))
    prior = _prior_png(results)
    if prior:
        sections.append(section("Prior training", figure_html(prior, "prior loss"), anchor="prior"))
    sections.append(section("Codebook over held-out latents", figure_html(
        _projection_png(results), "projections", caption="Top-2 principal components of each arm's own held-out "
        "latents (grey); its codes used by some latent and unused. Unused codes that sit on one point (a codebook "
        "collapsed there) draw as a single dot: the legend counts them."), anchor="projection"))
    sf = _samples_png(results, data)
    if sf:
        sections.append(section("Generated samples", figure_html(sf, "prior samples"), anchor="samples"))
    files = ", ".join(f"<code>{html.escape(a)}.pt</code>" for a in arms)
    sections.append(section("Run time and files", timing_table(results) + (
        f"<p>{files}: reference checkpoints for <code>shrinkscope analyze</code> / <code>compare</code>; "
        "<code>results.json</code>: every number above; <code>&lt;arm&gt;.jsonl</code>: health timelines "
        "(<code>shrinkscope report ARM.jsonl</code>).</p>"), anchor="files"))
    path.write_text(page("shrinkscope demo: early quantization, deferral and the common fixes", sections,
                         meta=head), encoding="utf-8")
    return path

"""The demo's self-contained HTML report: table, health timelines, projections, sample grids.

matplotlib is imported inside the drawing functions; every figure is a PNG embedded as base64, so the
report is one file that can be mailed or attached to an issue.
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import torch

ARM_COLORS = {"early": "tab:red", "deferred": "tab:blue", "l2": "tab:orange", "expiry": "tab:purple",
              "deferred-auto": "tab:green"}
TIMELINE_KEYS = ("utilization_perplexity", "dead_code_ratio", "spread_cosine", "effective_rank",
                 "latent_coverage", "quantization_error")


def _color(arm: str) -> str:
    return ARM_COLORS.get(arm, "tab:gray")


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(b64: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def read_jsonl(path: str | Path) -> tuple[list[dict], list[dict]]:
    """Metric lines and event lines of a ``shrinkscope.watch`` JSONL file (missing file: empty lists)."""
    metrics, events = [], []
    p = Path(path)
    if not p.exists():
        return metrics, events
    for line in p.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a killed run
        (events if "event" in rec else metrics).append(rec)
    return metrics, events


def timeline_figure(results: list[dict], out_dir: Path) -> str | None:
    """Health metrics over training steps, one line per arm, dotted line where quantization starts."""
    from matplotlib.figure import Figure

    series = {}
    for r in results:
        lines, events = read_jsonl(out_dir / f"{r['arm']}.jsonl")
        scopes = {ln.get("scope") for ln in lines}
        scope = "window" if "window" in scopes else next(iter(scopes), None)
        series[r["arm"]] = ([ln for ln in lines if ln.get("scope") == scope], events, r)
    if not any(s[0] for s in series.values()):
        return None
    fig = Figure(figsize=(12, 6.5), layout="constrained")
    axes = fig.subplots(2, 4).ravel()
    for arm, (lines, events, r) in series.items():
        # before the switch the codebook is a placeholder: only the quantized phase is drawn
        lines = [ln for ln in lines if ln["step"] >= r["quantize_start"]]
        steps = [ln["step"] for ln in lines]
        for ax, key in zip(axes, TIMELINE_KEYS):
            ys = [ln["metrics"].get(key) for ln in lines]
            pts = [(s, y) for s, y in zip(steps, ys) if y is not None]
            if pts:
                ax.plot(*zip(*pts), color=_color(arm), label=arm, lw=1.4)
        hist = r.get("train_history") or []
        axes[6].plot([h["step"] for h in hist], [h["recon_mse"] for h in hist], color=_color(arm), label=arm, lw=1.2)
        phist = r.get("prior_history") or []
        axes[7].plot([h["step"] for h in phist], [h["loss"] for h in phist], color=_color(arm), label=arm, lw=1.2)
        for ax in axes[:7]:
            ax.axvline(r["quantize_start"], color=_color(arm), ls=":", lw=1)
    for ax, title in zip(axes, [*TIMELINE_KEYS, "train recon MSE (batch)", "prior loss (nats/token)"]):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[6].set_yscale("log")
    axes[0].legend(fontsize=7)
    return _png(fig)


def projection_figure(results: list[dict]) -> str:
    """Per arm: held-out latents (grey) and codes (used: colour, unused: black x) on the latents' top-2 PCs."""
    from matplotlib.figure import Figure

    from ..metrics import assign

    fig = Figure(figsize=(4.2 * len(results), 4), layout="constrained")
    axes = fig.subplots(1, len(results), squeeze=False)[0]
    for ax, r in zip(axes, results):
        lat, cb = r["_latents"].double(), r["_codebook"].double()
        g = torch.Generator().manual_seed(0)
        lat_s = lat[torch.randperm(len(lat), generator=g)[:4000]]
        mean = lat_s.mean(0)
        _, _, vh = torch.linalg.svd(lat_s - mean, full_matrices=False)
        basis = vh[:2].t() if vh.shape[0] >= 2 else torch.cat([vh.t(), torch.zeros_like(vh.t())], 1)
        pl, pc = (lat_s - mean) @ basis, (cb - mean) @ basis
        used = torch.bincount(assign(cb, lat)[0], minlength=len(cb)) > 0
        ax.scatter(pl[:, 0], pl[:, 1], s=2, c="0.7", label="held-out latents", rasterized=True)
        ax.scatter(pc[used, 0], pc[used, 1], s=9, c=_color(r["arm"]), label=f"used codes ({int(used.sum())})")
        if (~used).any():
            ax.scatter(pc[~used, 0], pc[~used, 1], s=12, c="k", marker="x", label=f"unused ({int((~used).sum())})")
        ax.set_title(f"{r['arm']} (quantize_start={r['quantize_start']})", fontsize=10)
        ax.legend(fontsize=7, loc="best")
        ax.set_xticks([]), ax.set_yticks([])
    return _png(fig)


def samples_figure(results: list[dict], data) -> str | None:
    """Grids of prior samples per arm (images) or a 2-D scatter of samples over data (vectors)."""
    from matplotlib.figure import Figure

    with_samples = [r for r in results if "_samples" in r]
    if not with_samples:
        return None
    fig = Figure(figsize=(4.2 * len(with_samples), 4.4), layout="constrained")
    axes = fig.subplots(1, len(with_samples), squeeze=False)[0]
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
        ax.set_title(f"{r['arm']}: prior samples", fontsize=10)
        ax.set_xticks([]), ax.set_yticks([])
    return _png(fig)


def _fmt(v: Any) -> str:
    if v is None:
        return "&ndash;"
    return f"{v:.4g}" if isinstance(v, float) else html.escape(str(v))


def verdict(rows: list[dict], arms: list[str], *, quick: bool = False) -> str:
    """One honest sentence: how many metrics each arm won, and which ones (none for a smoke run)."""
    if quick:
        return "Smoke run (--quick): too short to compare the arms; no winner is named."
    rows = [r for r in rows if r["direction"]]  # ranked rows only
    wins = {a: [r["metric"] for r in rows if r["better"] == a] for a in arms}
    ties = [r["metric"] for r in rows if r["better"] == "tie" or " = " in r["better"]]
    parts = [f"{a} won {len(w)} of {len(rows)} metrics" + (f" ({', '.join(w)})" if w else "")
             for a, w in wins.items()]
    return "; ".join(parts) + (f"; ties: {', '.join(ties)}" if ties else "") + "."


def write_report(path: str | Path, results: list[dict], rows: list[dict], meta: dict, data) -> Path:
    """Write the demo's ``report.html`` (self-contained) and return its path."""
    path = Path(path)
    arms = [r["arm"] for r in results]
    head = "".join(f"<th>{html.escape(a)}</th>" for a in arms)
    body, section = [], None
    for r in rows:
        if r.get("section") != section:
            section = r.get("section")
            body.append(f"<tr><th colspan={len(arms) + 3} style='text-align:left'>"
                        f"{html.escape(section or '')}</th></tr>")
        body.append(f"<tr><td>{html.escape(r['metric'])}</td><td class=d>{r['direction']}</td>"
                    + "".join(f"<td>{_fmt(v)}</td>" for v in r["values"])
                    + f"<td><b>{html.escape(r['better'])}</b></td></tr>")
    body = "".join(body)
    table = (f"<table><tr><th>metric</th><th>good</th>{head}<th>better</th></tr>{body}</table>")
    preset = meta["preset"]
    settings = "; ".join(f"<i>{html.escape(r['arm'])}</i>: {html.escape(json.dumps(r.get('settings', {})))}, "
                         f"quantization from step {r['quantize_start']}" for r in results)
    intro = (f"<p>Dataset <b>{html.escape(meta['dataset'])}</b>, K={preset['num_codes']} codes of dim "
             f"{preset['code_dim']}, {preset['steps']} tokenizer steps per arm, seed {meta['seed']}, device "
             f"{html.escape(meta['device'])}. The arms share the data, model, seed and step budget; each runs "
             f"with the settings its own validation grid chose ({settings}). <i>early</i> k-means-initialises "
             f"its codebook on the untrained encoder; <i>deferred</i> first trains a continuous autoencoder, "
             f"then k-means-initialises on the mature encoder. Diversity uses {preset['num_samples']} prior "
             f"samples per arm. Run time {meta['seconds']:.0f} s.</p>")
    quick = bool(meta.get("quick"))
    sections = [f"<h1>shrinkscope demo: early quantization, deferral and the common fixes</h1>{intro}",
                f"<h2>Before / after</h2><p>{html.escape(verdict(rows, arms, quick=quick))}</p>{table}"]
    tl = timeline_figure(results, path.parent)
    if tl:
        sections.append("<h2>Codebook health during training</h2><p>From the JSONL written by "
                        "<code>shrinkscope.watch</code>; dotted lines mark where quantization starts.</p>"
                        + _img(tl, "health timelines"))
    sections.append("<h2>Codebook over held-out latents</h2><p>Top-2 principal components of each arm's own "
                    "latents.</p>" + _img(projection_figure(results), "projections"))
    sf = samples_figure(results, data)
    if sf:
        sections.append("<h2>Generated samples</h2>" + _img(sf, "prior samples"))
    files = ", ".join(f"<code>{a}.pt</code>" for a in arms)
    sections.append(f"<h2>Files</h2><p>{files}: reference checkpoints for <code>shrinkscope analyze</code> / "
                    f"<code>compare</code>; <code>results.json</code>: every number above; "
                    f"<code>&lt;arm&gt;.jsonl</code>: health timelines.</p>")
    css = ("body{font-family:sans-serif;max-width:1400px;margin:2em auto;color:#222}"
           "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
           "td:first-child{text-align:left}td.d{color:#777}img{max-width:100%}")
    path.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>shrinkscope demo</title>"
                    f"<style>{css}</style></head><body>{''.join(sections)}</body></html>")
    return path

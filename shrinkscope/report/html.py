"""The report folders of ``analyze`` and ``compare`` (the training timeline's: ``timeline_page``), in one layout.

Each writer takes a result and a target folder, writes ``report.html`` (self-contained: PNGs embedded as
data URIs, no script, opens offline), the PNGs it embeds and, for analyze/compare, ``health.json`` (the
``--json`` object). The page is assembled from ``layout`` blocks and the plots from the Display classes, so
the pages read alike: header, verdicts, then per codebook its plots and full metric table.
"""

from __future__ import annotations

import html
import json
import os
import re
from typing import TYPE_CHECKING, Any, Sequence

from .._progress import progress_iter
from .figures import detached, png_bytes
from .layout import change_table, figure_html, metric_table, page, section
from .verdict import status_word, verdict_card, verdict_dict

if TYPE_CHECKING:
    from ..analyze import AnalysisResult, ComparisonResult, Entry

__all__ = ["safe_name", "write_analysis_report", "write_comparison_report", "write_timeline_report"]


def safe_name(name: str) -> str:
    """A file-name-safe version of a codebook name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "codebook"


def _save(fig: Any, out_dir: str, filename: str) -> bytes:
    data = png_bytes(fig)
    with open(os.path.join(out_dir, filename), "wb") as f:
        f.write(data)
    return data


def _write_page(out_dir: str, text: str) -> str:
    path = os.path.join(out_dir, "report.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def _write_json(out_dir: str, obj: dict[str, Any]) -> None:
    with open(os.path.join(out_dir, "health.json"), "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)


def _status(e: Entry) -> str:
    v = verdict_dict(e.health)
    return str(v["status"]) if v and v.get("status") else e.status


def _tally(statuses: Sequence[str]) -> str:
    counts: dict[str, int] = {}
    for s in statuses:
        counts[s] = counts.get(s, 0) + 1
    return ", ".join(f"{n} {status_word(s).lower()}" for s, n in counts.items())


def _umap_figure(codebooks: dict[str, Any], latents: Any, seed: int) -> bytes:
    from .projection import ProjectionDisplay

    d = ProjectionDisplay.from_codebooks(codebooks, latents, method="umap", seed=seed).plot()
    return png_bytes(d.figure_)


def _entry_meta(e: Entry) -> str:
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in e.notes)
    size = (e.scale or {}).get("size")
    scale = (f" &middot; scale {int(e.scale['index'])}" + (f", {int(size[0])}x{int(size[1])} tokens" if size else "")
             if e.scale else "")
    return (
        f"<p class='meta'>key <code>{html.escape(e.found.key)}</code> &middot; family "
        f"{html.escape(e.found.family)} &middot; K={e.health.num_codes}, D={e.health.dim}{scale}</p>"
        + (f"<ul class='meta'>{notes}</ul>" if notes else "")
    )


def _depth_section(blocks: list[tuple[Any, list[str]]], out_dir: str) -> str:
    """"Health by depth": per residual or multi-scale quantizer, its panel with the depth summary beside it.

    Args:
        blocks: ``(DepthDisplay, summary lines)`` per quantizer.
        out_dir: where the PNGs (``depth_NN.png``) are written.
    """
    if not blocks:
        return ""
    body = []
    for i, (display, lines) in enumerate(blocks):
        png = _save(display.plot().figure_, out_dir, f"depth_{i:02d}.png")
        text = "".join(f"<p>{html.escape(line)}</p>" for line in lines)
        body.append(f"<div class='depth'>{figure_html(png, display.title)}<div class='sum'>{text}</div></div>")
    caption = ("<p class='muted'>Each residual stage quantizes what the earlier stages left; each scale of a "
               "multi-scale quantizer quantizes the residual of the coarser scales with the shared codebook. A "
               "coarse scale has few tokens per input, so its usage is bounded by the number of inputs.</p>")
    return section("Health by depth", caption + "".join(body), anchor="depth")


def _result_scales(result: AnalysisResult) -> dict[str, Any]:
    return {e.health.name: e.scale for e in result.entries if e.scale is not None}


def _depth_blocks(result: AnalysisResult) -> list[tuple[Any, list[str]]]:
    from ..stages import stage_groups
    from .depth import DepthDisplay

    return [(DepthDisplay.from_group(g), [g.summary()])
            for g in stage_groups(result.codebooks, scales=_result_scales(result))]


def _compare_depth_blocks(result: ComparisonResult) -> list[tuple[Any, list[str]]]:
    """One overlay per quantizer of AFTER with depth (BEFORE's group of the same name and kind beside it)."""
    from ..stages import stage_groups
    from .depth import DepthDisplay

    before = {(g.quantizer, g.kind): g
              for g in stage_groups(result.before.codebooks, scales=_result_scales(result.before))}
    blocks = []
    for g in stage_groups(result.after.codebooks, scales=_result_scales(result.after)):
        b = before.get((g.quantizer, g.kind))
        groups = {"before": b, "after": g} if b is not None else {"after": g}
        lines = [f"{side}: {grp.summary()}" for side, grp in groups.items()]
        blocks.append((DepthDisplay.from_groups(groups), lines))
    return blocks


@detached()  # figures stay out of pyplot's registry even when the user imported pyplot
def write_analysis_report(
    result: AnalysisResult,
    out_dir: str,
    *,
    umap: bool | None = None,
    max_umap: int = 4,
    progress: bool | None = None,
    seed: int = 0,
) -> str:
    """Write ``health.json``, ``NN_name.png`` per codebook (+ ``NN_name_umap.png``) and ``report.html``.

    Args:
        result: what ``shrinkscope.analyze`` returned.
        out_dir: target folder (created if missing; the files in it are overwritten).
        umap: also draw a UMAP projection (seconds per codebook, and a numba compile on first use; None
            and False: no UMAP).
        max_umap: UMAP for at most this many codebooks.
        progress: progress bar on stderr (None: on a terminal, once the work takes over a second).
        seed: seed of the subsamples drawn.

    Returns:
        The path of ``report.html``.
    """
    from .codebook import CodebookDisplay

    os.makedirs(out_dir, exist_ok=True)
    _write_json(out_dir, result.to_dict())
    entries = result.entries
    cards, details = [], []
    for i, e in enumerate(
        progress_iter(
            entries, desc="plotting", unit="codebook", enabled=progress, label=lambda e: e.health.name
        )
    ):
        anchor, stem = f"cb-{i:02d}", f"{i:02d}_{safe_name(e.health.name)}"
        cards.append(
            verdict_card(
                e.health.name, e.health, status=e.status, warnings=e.health.warnings, href=f"#{anchor}"
            )
        )
        fig = CodebookDisplay.from_entry(e, seed=seed).plot().figure_
        body = [
            _entry_meta(e),
            figure_html(
                _save(fig, out_dir, stem + ".png"),
                f"plots of {e.health.name}",
                caption="Spectrum of codes vs latents, code usage, PCA projection "
                "of codes over latents, distance distributions.",
            ),
        ]
        if umap and i < max_umap and e.found.codebook.numel():  # an implicit codebook has no points to map
            png = _umap_figure({"codes": e.found.codebook}, e.latents, seed)
            with open(os.path.join(out_dir, stem + "_umap.png"), "wb") as f:
                f.write(png)
            body.append(figure_html(png, f"UMAP of {e.health.name}"))
        body.append(f"<h3>All metrics</h3>{metric_table(e.health.metrics)}")
        details.append(section(e.health.name, "".join(body), anchor=anchor))
    tally = _tally([_status(e) for e in entries])
    latents = html.escape(str(result.latents_source or "none (pass --latents FILE)"))
    meta = [
        f"Checkpoint <code>{html.escape(str(result.source))}</code>",
        f"{len(entries)} codebook(s): {html.escape(tally)} &middot; latents: {latents}",
    ]
    verdicts = section("Verdict", f"<div class='cards'>{''.join(cards)}</div>", anchor="verdict")
    depth = _depth_section(_depth_blocks(result), out_dir)
    return _write_page(out_dir, page("shrinkscope: codebook health", [verdicts, depth, *details], meta=meta))


def _trend(b: Entry, a: Entry) -> str:
    rank = {
        "healthy": 0,
        "cannot_tell": 1,
        "underused": 1,
        "uninitialized": 2,
        "uninitialised": 2,
        "shrunk": 3,
    }
    sb, sa = _status(b), _status(a)
    if sb not in rank or sa not in rank or rank[sa] == rank[sb]:
        return f"{status_word(sb)} &rarr; {status_word(sa)}"
    cls = "better" if rank[sa] < rank[sb] else "worse"
    return f"{status_word(sb)} &rarr; {status_word(sa)} <span class='{cls}'>({cls})</span>"


@detached()
def write_comparison_report(
    result: ComparisonResult,
    out_dir: str,
    *,
    umap: bool | None = None,
    max_umap: int = 4,
    progress: bool | None = None,
    seed: int = 0,
) -> str:
    """Write ``health.json`` (the compare JSON), an overlay PNG per codebook pair and ``report.html``.

    The page has the analyze page's layout with two columns: verdict cards side by side (before | after),
    overlay plots, and one table per pair whose change column is coloured by each metric's good direction.
    Arguments as ``write_analysis_report``.
    """
    from .codebook import CodebookDisplay, own_latents

    os.makedirs(out_dir, exist_ok=True)
    _write_json(out_dir, result.to_dict())
    rows, details = [], []
    for i, (b, a) in enumerate(
        progress_iter(
            result.pairs, desc="plotting", unit="pair", enabled=progress, label=lambda p: p[1].health.name
        )
    ):
        anchor, stem = f"cb-{i:02d}", f"{i:02d}_{safe_name(a.health.name)}_compare"
        name = a.health.name if a.health.name == b.health.name else f"{b.health.name} / {a.health.name}"
        cards = verdict_card(
            b.health.name,
            b.health,
            status=b.status,
            warnings=b.health.warnings,
            href=f"#{anchor}",
            caption="before",
        ) + verdict_card(
            a.health.name,
            a.health,
            status=a.status,
            warnings=a.health.warnings,
            href=f"#{anchor}",
            caption="after",
        )
        rows.append(f"<h3>{html.escape(name)}: {_trend(b, a)}</h3><div class='pair'>{cards}</div>")
        fig = CodebookDisplay.from_comparison(b, a, seed=seed).plot().figure_
        body = [
            figure_html(
                _save(fig, out_dir, stem + ".png"),
                f"{name}: before vs after",
                caption="Before in vermillion, after in blue.",
            )
        ]
        if umap and i < max_umap:
            own = own_latents(b, a)
            z = (
                {"before": b.latents, "after": a.latents}
                if own
                else (a.latents if a.latents is not None else b.latents)
            )
            png = _umap_figure({"before": b.found.codebook, "after": a.found.codebook}, z, seed)
            with open(os.path.join(out_dir, stem + "_umap.png"), "wb") as f:
                f.write(png)
            body.append(figure_html(png, f"UMAP of {name}"))
        body.append(f"<h3>All metrics</h3>{change_table(b.health.metrics, a.health.metrics)}")
        details.append(section(name, "".join(body), anchor=anchor))
    unpaired = len(result.after.entries) - len(result.pairs)
    note = (
        f"<p class='muted'>{unpaired} codebook(s) of AFTER have no counterpart of the same name in "
        "BEFORE and are not shown.</p>"
        if unpaired
        else ""
    )
    if not result.pairs:
        note = "<p class='muted'>No codebooks could be paired by name or position.</p>"
    meta = [
        f"Before <code>{html.escape(str(result.before.source))}</code>",
        f"After <code>{html.escape(str(result.after.source))}</code>",
        f"{len(result.pairs)} pair(s) &middot; latents: "
        f"{html.escape(str(result.after.latents_source or result.before.latents_source or 'none'))}",
    ]
    verdicts = section("Verdict", "".join(rows) + note, anchor="verdict")
    depth = _depth_section(_compare_depth_blocks(result), out_dir)
    return _write_page(out_dir, page("shrinkscope: before vs after", [verdicts, depth, *details], meta=meta))


from .timeline_page import write_timeline_report  # noqa: E402 - moved there; importable here as before

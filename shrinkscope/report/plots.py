"""Figures of one codebook (or two, overlaid) against its latents.

matplotlib (and umap) are imported inside the functions, so importing shrinkscope never needs them.
Figures are built with ``matplotlib.figure.Figure`` (no pyplot, no global backend state) and saved as PNG.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..metrics import assign, pairwise_distance_sample

CODE_COLORS = ("tab:red", "tab:blue")
LATENT_COLOR = "0.55"
MAX_SCATTER = 3000


def _figure(rows: int, cols: int, size: tuple[float, float]) -> Any:
    try:
        from matplotlib.figure import Figure
    except ModuleNotFoundError as exc:  # pragma: no cover - matplotlib is a dependency
        raise ModuleNotFoundError("plots need matplotlib: pip install matplotlib") from exc
    fig = Figure(figsize=size, dpi=100, layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False)


def _sample(x: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    if x.shape[0] <= n:
        return x
    g = torch.Generator().manual_seed(seed)
    return x[torch.randperm(x.shape[0], generator=g)[:n]]


def pca_basis(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean ``(D,)``, top-2 principal directions ``(D, 2)`` and their explained-variance shares ``(2,)``."""
    x = _sample(x.double(), 20_000)
    mean = x.mean(0)
    _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
    var = s.pow(2)
    share = var / var.sum().clamp_min(1e-300)
    comps = vh[:2].t()
    if comps.shape[1] < 2:  # D == 1: pad a zero axis so the scatter still draws
        comps = torch.cat([comps, torch.zeros_like(comps)], 1)
        share = torch.cat([share, torch.zeros(1, dtype=share.dtype)])
    return mean, comps, share[:2]


def _spectrum(ax: Any, series: Sequence[tuple[str, torch.Tensor | None, str, str]]) -> None:
    for label, sv, color, style in series:
        if sv is None or sv.numel() == 0 or float(sv[0]) <= 0:
            continue
        y = (sv / sv[0]).clamp_min(1e-12)
        ax.semilogy(range(1, y.numel() + 1), y.numpy(), style, color=color, label=label, lw=1.6)
    ax.set_title("Singular-value spectrum (centred)")
    ax.set_xlabel("component index")
    ax.set_ylabel("singular value / largest")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _usage(ax: Any, series: Sequence[tuple[str, torch.Tensor | None, str]]) -> None:
    drawn, floor, uniform_drawn = False, 1.0, set()
    for label, counts, color in series:
        if counts is None or float(counts.sum()) <= 0:
            continue
        p = (counts.double() / counts.sum()).sort(descending=True).values
        k = p.numel()
        x = torch.arange(1, k + 1)
        ax.fill_between(x.numpy(), p.clamp_min(1e-9).numpy(), 1e-9, step="mid", color=color, alpha=0.25)
        ax.step(
            x.numpy(), p.clamp_min(1e-9).numpy(), where="mid", color=color, lw=1.2,
            label=f"{label} ({int((p > 0).sum())}/{k} used)"
        )
        if k not in uniform_drawn:  # one reference line per codebook size
            ax.axhline(1.0 / k, color="0.3", ls=":", lw=1, label=f"uniform 1/K = {1.0 / k:.2g}")
            uniform_drawn.add(k)
        floor = min(floor, float(p[p > 0].min()))
        drawn = True
    ax.set_title("Code usage, sorted by frequency")
    ax.set_xlabel("code rank (most used first)")
    ax.set_ylabel("share of assignments")
    if drawn:
        ax.set_yscale("log")
        ax.set_ylim(bottom=max(1e-9, floor / 3))
        ax.legend(fontsize=8)
    else:
        ax.text(
            0.5, 0.5, "no usage information\n(no usage buffer in the checkpoint;\npass --latents)",
            ha="center", va="center", transform=ax.transAxes, color="0.4"
        )
    ax.grid(alpha=0.3)


def _projection(
    ax: Any, codebooks: Sequence[tuple[str, torch.Tensor, str]], latents: torch.Tensor | None,
    own: Sequence[torch.Tensor] | None = None
) -> None:
    """Codes over latents in one PCA frame. ``own``: one latent set per codebook (two encoders): each
    codebook is drawn over its own encoder's latents, in a basis fitted on all of them."""
    clouds = [latents] if own is None else list(own)
    present = [c.double() for c in clouds if c is not None]
    fit_on = torch.cat(present) if present else torch.cat([c for _, c, _ in codebooks]).double()
    mean, comps, share = pca_basis(fit_on)
    if own is None and latents is not None:
        z = (_sample(latents.double(), MAX_SCATTER) - mean) @ comps
        ax.scatter(z[:, 0], z[:, 1], s=3, color=LATENT_COLOR, alpha=0.35, lw=0, label="latents")
    for i, (label, cb, color) in enumerate(codebooks):
        if own is not None and own[i] is not None:
            z = (_sample(own[i].double(), MAX_SCATTER // 2, seed=2 + i) - mean) @ comps
            ax.scatter(z[:, 0], z[:, 1], s=3, color=color, alpha=0.12, lw=0, label=f"latents ({label}'s encoder)")
        c = (_sample(cb.double(), MAX_SCATTER, seed=1) - mean) @ comps
        ax.scatter(c[:, 0], c[:, 1], s=9, color=color, alpha=0.8, lw=0, label=f"codes ({label})" if own else label)
    basis = "codes" if not present else ("latents" if own is None else "latents of both encoders")
    ax.set_title(f"PCA projection (axes fitted on the {basis})")
    ax.set_xlabel(f"PC1 ({float(share[0]):.0%} of variance)")
    ax.set_ylabel(f"PC2 ({float(share[1]):.0%} of variance)")
    ax.legend(fontsize=8, markerscale=2)
    ax.grid(alpha=0.3)


def _distances(
    ax: Any, codebooks: Sequence[tuple[str, torch.Tensor, str]], latents: torch.Tensor | None,
    own: Sequence[torch.Tensor | None] | None = None
) -> None:
    """Distance histograms; with ``own`` each codebook is measured against its own encoder's latents."""
    import numpy as np

    samples: list[tuple[str, torch.Tensor, str, str]] = []
    if own is None and latents is not None:
        samples.append(
            ("pairwise latent-latent", pairwise_distance_sample(latents, max_pairs=50_000), LATENT_COLOR, "-")
        )
    for i, (label, cb, color) in enumerate(codebooks):
        z = latents if own is None else own[i]
        if own is not None and z is not None:
            samples.append((f"pairwise latent-latent ({label})", pairwise_distance_sample(z, max_pairs=50_000),
                            color, ":"))
        samples.append(
            (f"pairwise code-code ({label})", pairwise_distance_sample(cb, max_pairs=50_000), color, "-")
        )
        if z is not None:
            _, d2 = assign(cb, _sample(z, 5000))
            samples.append((f"latent to nearest code ({label})", d2.sqrt(), color, "--"))
        else:
            c = _sample(cb.double(), 4096)
            d = torch.cdist(c, c)
            d.fill_diagonal_(float("inf"))
            samples.append((f"code to nearest other code ({label})", d.min(1).values, color, "--"))
    hi = max(float(s.max()) for _, s, _, _ in samples if s.numel()) or 1.0
    bins = np.linspace(0.0, hi * 1.02, 60)
    for label, s, color, style in samples:
        ax.hist(
            s.double().numpy(), bins=bins, density=True, histtype="step", color=color, ls=style, lw=1.5,
            label=label
        )
    ax.set_title("Distance distributions")
    ax.set_xlabel("Euclidean distance")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def codebook_figure(entry: Any, path: str) -> str:
    """2 x 2 panel for one analysed codebook: spectrum, usage, PCA projection, distances. Returns ``path``."""
    h, cb, z = entry.health, entry.found.codebook, entry.latents
    fig, ax = _figure(2, 2, (12, 9))
    _spectrum(
        ax[0, 0],
        [
            (f"codes (eff. rank {h.effective_rank:.1f})", h.singular_values, CODE_COLORS[0], "-"),
            (
                f"latents (eff. rank {h.latent_effective_rank or 0:.1f})", h.latent_singular_values,
                LATENT_COLOR, "--"
            ),
        ],
    )
    _usage(ax[0, 1], [("codes", h.counts, CODE_COLORS[0])])
    _projection(ax[1, 0], [("codes", cb, CODE_COLORS[0])], z)
    _distances(ax[1, 1], [("codes", cb, CODE_COLORS[0])], z)
    fig.suptitle(f"{h.name}  (K={h.num_codes}, D={h.dim}): {entry.status}", fontsize=13)
    fig.savefig(path)
    return path


def comparison_figure(before: Any, after: Any, path: str) -> str:
    """Overlay of two analysed codebooks: both spectra on one axis, both projected into one frame."""
    hb, ha = before.health, after.health
    zb, za = before.latents, after.latents
    # Two reference checkpoints bring latents of two different encoders: then each codebook is drawn and
    # measured against its own encoder's latents, never against the other's.
    own = None
    if zb is not None and za is not None and not (zb is za or (zb.shape == za.shape and torch.equal(zb, za))):
        own = [zb, za]
    z = za if za is not None else zb
    fig, ax = _figure(2, 2, (12, 9))
    _spectrum(
        ax[0, 0],
        [
            (f"before (eff. rank {hb.effective_rank:.1f})", hb.singular_values, CODE_COLORS[0], "-"),
            (f"after (eff. rank {ha.effective_rank:.1f})", ha.singular_values, CODE_COLORS[1], "-"),
        ]
        + (
            [
                ("latents (before's encoder)", hb.latent_singular_values, CODE_COLORS[0], "--"),
                ("latents (after's encoder)", ha.latent_singular_values, CODE_COLORS[1], "--"),
            ]
            if own
            else [
                (
                    "latents",
                    ha.latent_singular_values
                    if ha.latent_singular_values is not None
                    else hb.latent_singular_values,
                    LATENT_COLOR,
                    "--",
                )
            ]
        ),
    )
    _usage(ax[0, 1], [("before", hb.counts, CODE_COLORS[0]), ("after", ha.counts, CODE_COLORS[1])])
    pair = [
        ("before", before.found.codebook, CODE_COLORS[0]), ("after", after.found.codebook, CODE_COLORS[1])
    ]
    _projection(ax[1, 0], pair, z, own)
    _distances(ax[1, 1], pair, z, own)
    fig.suptitle(f"{ha.name}: before ({before.status}) vs after ({after.status})", fontsize=13)
    fig.savefig(path)
    return path


def umap_figure(
    entries: Sequence[tuple[str, Any, str]], latents: torch.Tensor | None, path: str, *,
    max_points: int = 1500, seed: int = 0
) -> str | None:
    """UMAP of codes over latents (subsampled). Returns None when umap-learn is not importable."""
    try:
        import umap
    except ImportError:
        return None

    parts = [] if latents is None else [("latents", _sample(latents, max_points, seed), LATENT_COLOR)]
    parts += [
        (label, _sample(cb, max_points, seed + 1 + i), color) for i, (label, cb, color) in enumerate(entries)
    ]
    data = torch.cat([p[1].double() for p in parts]).numpy()
    emb = umap.UMAP(n_neighbors=15, min_dist=0.1, random_state=seed, n_jobs=1).fit_transform(data)
    fig, ax = _figure(1, 1, (7, 6))
    start = 0
    for label, x, color in parts:
        e = emb[start : start + x.shape[0]]
        start += x.shape[0]
        ax[0, 0].scatter(
            e[:, 0], e[:, 1], s=3 if label == "latents" else 9, color=color,
            alpha=0.35 if label == "latents" else 0.8, lw=0, label=label
        )
    ax[0, 0].set_title(f"UMAP of codes over latents ({data.shape[0]} points, subsampled)")
    ax[0, 0].set_xlabel("UMAP 1")
    ax[0, 0].set_ylabel("UMAP 2")
    ax[0, 0].legend(fontsize=8, markerscale=2)
    fig.savefig(path)
    return path

"""``ProjectionDisplay``: codes drawn over the latents in two dimensions (PCA by default, UMAP on request).

PCA is exact, linear and takes milliseconds, so it is the default. UMAP shows cluster structure PCA can
hide but costs seconds (and a numba compile on first use), so reports draw it only when asked.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from .figures import CODE_COLORS, LATENT_COLOR, new_axes, sample_rows, Series, set_title

__all__ = ["ProjectionDisplay", "pca_basis"]

MAX_POINTS = 3000
"""Points drawn per cloud: more only blurs the picture and slows the drawing."""


def pca_basis(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean ``(D,)``, top-2 principal directions ``(D, 2)`` and their explained-variance shares ``(2,)``."""
    x = sample_rows(x, 20_000)
    mean = x.mean(0)
    xc = x - mean
    # Eigen-decomposition of the D x D scatter matrix in numpy: the same directions as an SVD of the
    # (N, D) rows, in milliseconds (torch's threaded SVD stalls for ~1 s on a busy 2-core machine).
    var, vecs = np.linalg.eigh((xc.T @ xc).numpy())
    var, vecs = np.clip(var[::-1], 0.0, None), vecs[:, ::-1]
    share = torch.from_numpy(var / max(var.sum(), 1e-300))
    comps = torch.from_numpy(vecs[:, :2].copy())
    if comps.shape[1] < 2:  # D == 1: pad a zero axis so the scatter still draws
        comps = torch.cat([comps, torch.zeros_like(comps)], 1)
        share = torch.cat([share, torch.zeros(1, dtype=share.dtype)])
    return mean, comps, share[:2]


def _umap(clouds: list[torch.Tensor], seed: int) -> list[np.ndarray]:
    try:
        import umap
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError("UMAP projections need umap-learn: pip install umap-learn") from exc
    data = torch.cat(clouds).numpy()
    emb = umap.UMAP(n_neighbors=15, min_dist=0.1, random_state=seed, n_jobs=1).fit_transform(data)
    return list(np.split(emb, np.cumsum([c.shape[0] for c in clouds])[:-1]))


class ProjectionDisplay:
    """Point clouds of codes (and latents) in one 2-D frame.

    Attributes:
        series: ``Series`` whose ``values`` are ``(n, 2)`` projected points; latent clouds come first.
        method: ``"pca"`` or ``"umap"``.
        basis: what the frame was fitted on, in words.
        explained: PCA only: share of variance along each axis ``(2,)`` (None for UMAP).
        ax_, figure_, collections_: set by ``plot``.
    """

    def __init__(
        self,
        series: list[Series],
        *,
        method: str = "pca",
        basis: str = "latents",
        explained: np.ndarray | None = None,
    ) -> None:
        self.series, self.method, self.basis, self.explained = series, method, basis, explained

    @classmethod
    def from_codebooks(
        cls,
        codebooks: Mapping[str, torch.Tensor],
        latents: torch.Tensor | Mapping[str, torch.Tensor | None] | None,
        *,
        method: str = "pca",
        max_points: int = MAX_POINTS,
        seed: int = 0,
    ) -> ProjectionDisplay:
        """Project codebooks ``{label: (K, D)}`` over their latents.

        Args:
            codebooks: label -> codebook, in the colours ``CODE_COLORS`` in this order.
            latents: ``(N, D)`` latents shared by every codebook, or label -> that codebook's own latents
                (two encoders: each codebook is drawn over its own encoder's latents), or None.
            method: ``"pca"`` (frame fitted on the latents, or on the codes without latents) or ``"umap"``
                (fitted on everything drawn, subsampled to ``max_points // 2`` per cloud).
            max_points: points per cloud.
            seed: seed of the subsamples and of UMAP.
        """
        if method not in ("pca", "umap"):
            raise ValueError(f"method: expected 'pca' or 'umap', got {method!r}")
        n = max_points if method == "pca" else max_points // 2
        own = isinstance(latents, Mapping)
        clouds: list[tuple[str, torch.Tensor, str, bool]] = []  # label, rows, colour, is-latent
        if latents is not None and not own:
            clouds.append(("latents", sample_rows(latents, n, seed=seed), LATENT_COLOR, True))
        for i, (label, cb) in enumerate(codebooks.items()):
            color = CODE_COLORS[i % len(CODE_COLORS)]
            z = latents.get(label) if own else None
            if z is not None:
                clouds.append(
                    (f"latents ({label}'s encoder)", sample_rows(z, n // 2, seed=seed + 2 + i), color, True)
                )
            clouds.append(
                (label if not own else f"codes ({label})", sample_rows(cb, n, seed=seed + 1), color, False)
            )
        lat = [c[1] for c in clouds if c[3]]
        explained = None
        if method == "umap":
            points = _umap([c[1] for c in clouds], seed)
            basis = "codes and latents" if lat else "codes"
        else:
            fit_on = torch.cat(lat) if lat else torch.cat([c[1] for c in clouds])
            mean, comps, share = pca_basis(fit_on)
            points = [((c[1] - mean) @ comps).numpy() for c in clouds]
            explained = share.numpy()
            basis = ("latents of both encoders" if own else "latents") if lat else "codes"
        series = [
            Series(label, p, color, kind="latents" if is_lat else "codes")
            for (label, _, color, is_lat), p in zip(clouds, points)
        ]
        return cls(series, method=method, basis=basis, explained=explained)

    def plot(self, *, ax: Any = None) -> ProjectionDisplay:
        """Draw on ``ax`` (a new figure when None); returns ``self`` with ``ax_``, ``figure_`` and
        ``collections_`` set."""
        self.figure_, self.ax_ = new_axes(ax)
        ax = self.ax_
        self.collections_ = []
        for s in self.series:  # latents: small, faint, drawn first (underneath the codes)
            lat = s.kind == "latents"
            size, alpha = (3, 0.35 if s.color == LATENT_COLOR else 0.12) if lat else (9, 0.8)
            self.collections_.append(
                ax.scatter(
                    s.values[:, 0],
                    s.values[:, 1],
                    s=size,
                    color=s.color,
                    alpha=alpha,
                    lw=0,
                    label=s.label,
                    rasterized=True,
                )
            )
        if self.method == "pca":
            set_title(ax, f"PCA projection (axes fitted on the {self.basis})")
            shares = self.explained if self.explained is not None else np.zeros(2)
            ax.set_xlabel(f"PC1 ({float(shares[0]):.0%} of variance)")
            ax.set_ylabel(f"PC2 ({float(shares[1]):.0%} of variance)")
        else:
            npts = sum(s.values.shape[0] for s in self.series)
            set_title(ax, f"UMAP of {self.basis} ({npts} points, subsampled)")
            ax.set_xlabel("UMAP 1")
            ax.set_ylabel("UMAP 2")
        ax.legend(fontsize=8, markerscale=2)
        ax.grid(alpha=0.3)
        return self

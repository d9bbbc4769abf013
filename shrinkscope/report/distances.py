"""``DistanceDisplay``: distributions of pairwise and nearest-code distances.

Shrinkage in one picture: the code-code distances sit far left of the latent-latent ones, and the
latent-to-nearest-code distances are about as large as the latents' own spread.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from ..metrics import assign, pairwise_distance_sample
from .figures import CODE_COLORS, LATENT_COLOR, new_axes, sample_rows, Series, set_title

__all__ = ["DistanceDisplay"]

MAX_PAIRS = 20_000
"""Random pairs per pairwise-distance histogram (a histogram of 60 bins needs no more)."""
MAX_NEAREST = 5000
"""Latents (or codes) whose nearest-code distance is drawn."""


def _nearest_other(cb: torch.Tensor) -> torch.Tensor:
    c = sample_rows(cb, 4096)
    d = torch.cdist(c, c)
    d.fill_diagonal_(float("inf"))
    return d.min(1).values


class DistanceDisplay:
    """Histograms (density) of Euclidean distances on shared bins.

    Attributes:
        series: ``Series`` with ``values`` ``(n,)`` distance samples. Solid: pairwise code-code
            (coloured) or latent-latent (grey, or dotted in the codebook's colour for its own encoder);
            dashed: latent to nearest code (or code to nearest other code without latents).
        bins: ``(61,)`` shared bin edges.
        ax_, figure_, patches_: set by ``plot``.
    """

    def __init__(self, series: list[Series], *, bins: np.ndarray) -> None:
        self.series, self.bins = series, bins

    @classmethod
    def from_codebooks(
        cls,
        codebooks: Mapping[str, torch.Tensor],
        latents: torch.Tensor | Mapping[str, torch.Tensor | None] | None,
        *,
        seed: int = 0,
    ) -> DistanceDisplay:
        """Distances of codebooks ``{label: (K, D)}`` and their latents (shared ``(N, D)`` or per label)."""
        own = isinstance(latents, Mapping)
        series = []
        if latents is not None and not own:
            series.append(
                Series(
                    "pairwise latent-latent",
                    pairwise_distance_sample(latents, max_pairs=MAX_PAIRS, seed=seed).numpy(),
                    LATENT_COLOR,
                    kind="latents",
                )
            )
        for i, (label, cb) in enumerate(codebooks.items()):
            color, cb = CODE_COLORS[i % len(CODE_COLORS)], cb.detach().cpu()
            z = latents.get(label) if own else latents
            if own and z is not None:
                series.append(
                    Series(
                        f"pairwise latent-latent ({label})",
                        pairwise_distance_sample(z, max_pairs=MAX_PAIRS, seed=seed).numpy(),
                        color,
                        ":",
                        "latents",
                    )
                )
            series.append(
                Series(
                    f"pairwise code-code ({label})",
                    pairwise_distance_sample(cb, max_pairs=MAX_PAIRS, seed=seed).numpy(),
                    color,
                )
            )
            if z is not None:
                _, d2 = assign(cb, sample_rows(z, MAX_NEAREST, seed=seed).to(cb.dtype))
                series.append(
                    Series(f"latent to nearest code ({label})", d2.double().sqrt().numpy(), color, "--")
                )
            else:
                series.append(
                    Series(f"code to nearest other code ({label})", _nearest_other(cb).numpy(), color, "--")
                )
        hi = max((float(s.values.max()) for s in series if s.values.size), default=0.0) or 1.0
        return cls(series, bins=np.linspace(0.0, hi * 1.02, 61))

    def plot(self, *, ax: Any = None) -> DistanceDisplay:
        """Draw on ``ax`` (a new figure when None); returns ``self`` with ``ax_``, ``figure_``, ``patches_``
        set."""
        self.figure_, self.ax_ = new_axes(ax)
        self.patches_ = [
            self.ax_.hist(
                s.values,
                bins=self.bins,
                density=True,
                histtype="step",
                color=s.color,
                ls=s.style,
                lw=1.5,
                label=s.label,
            )[2]
            for s in self.series
        ]
        set_title(self.ax_, "Distance distributions")
        self.ax_.set_xlabel("Euclidean distance")
        self.ax_.set_ylabel("density")
        self.ax_.legend(fontsize=8)
        self.ax_.grid(alpha=0.3)
        return self

"""``CodebookDisplay``: the four standard panels of one codebook (or of a before/after pair) in one figure.

Spectrum and usage come from the ``CodebookHealth``; the projection and distance panels need the codebook
tensor itself (and the latents, when there are any).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..metrics import CodebookHealth
from .distances import DistanceDisplay
from .figures import empty_note, new_figure, set_title
from .projection import ProjectionDisplay
from .spectrum import SpectrumDisplay
from .usage import UsageDisplay

if TYPE_CHECKING:
    from ..analyze import Entry

__all__ = ["CodebookDisplay", "own_latents"]

NO_CODEBOOK = "needs the codebook tensor\n(CodebookDisplay.from_health(..., codebook=...))"


def own_latents(before: Entry, after: Entry) -> bool:
    """True when two analysed codebooks were measured on different latents (two encoders' outputs): each
    is then drawn and measured against its own, never against the other's."""
    zb, za = before.latents, after.latents
    return (
        zb is not None and za is not None and not (zb is za or (zb.shape == za.shape and torch.equal(zb, za)))
    )


class CodebookDisplay:
    """Spectrum, usage, PCA projection and distance distributions as a 2 x 2 grid.

    Attributes:
        spectrum, usage: ``SpectrumDisplay`` / ``UsageDisplay``.
        projection, distances: ``ProjectionDisplay`` / ``DistanceDisplay``, or None without a codebook tensor.
        title: the figure's title.
        ax_ ``(2, 2)`` array, figure_: set by ``plot``.

    Example:
        >>> res = shrinkscope.analyze("vqgan.ckpt", latents="z.npy")  # doctest: +SKIP
        >>> d = CodebookDisplay.from_entry(res.entries[0]).plot()  # doctest: +SKIP
        >>> d.figure_.savefig("quantize.png")  # doctest: +SKIP
    """

    def __init__(
        self,
        spectrum: SpectrumDisplay,
        usage: UsageDisplay,
        projection: ProjectionDisplay | None,
        distances: DistanceDisplay | None,
        *,
        title: str = "",
    ) -> None:
        self.spectrum, self.usage, self.projection, self.distances = spectrum, usage, projection, distances
        self.title = title

    @classmethod
    def from_health(
        cls,
        health: CodebookHealth,
        *,
        codebook: torch.Tensor | None = None,
        latents: torch.Tensor | None = None,
        title: str | None = None,
        seed: int = 0,
    ) -> CodebookDisplay:
        """Panels of one codebook.

        Args:
            health: its ``CodebookHealth`` (spectra and usage counts).
            codebook: ``(K, D)`` the codebook measured (without it the two geometry panels say so).
            latents: ``(N, D)`` the latents it was measured against.
            title: figure title (default: name, K and D).
            seed: seed of the subsamples drawn.
        """
        geo = {"codes": codebook} if codebook is not None else None
        return cls(
            SpectrumDisplay.from_health(health),
            UsageDisplay.from_health(health),
            None if geo is None else ProjectionDisplay.from_codebooks(geo, latents, seed=seed),
            None if geo is None else DistanceDisplay.from_codebooks(geo, latents, seed=seed),
            title=title if title is not None else f"{health.name}  (K={health.num_codes}, D={health.dim})",
        )

    @classmethod
    def from_entry(cls, entry: Entry, *, title: str | None = None, seed: int = 0) -> CodebookDisplay:
        """Panels of one codebook of an ``AnalysisResult`` (``result.entries[i]``)."""
        cb = entry.found.codebook if entry.found.codebook.numel() else None  # implicit (FSQ/LFQ): no geometry
        return cls.from_health(entry.health, codebook=cb, latents=entry.latents, title=title, seed=seed)

    @classmethod
    def from_comparison(
        cls, before: Entry, after: Entry, *, title: str | None = None, seed: int = 0
    ) -> CodebookDisplay:
        """Both codebooks of a ``ComparisonResult`` pair overlaid (before vermillion, after blue).

        When the two were measured on different latents (two encoders), each codebook is drawn and measured
        against its own encoder's latents.
        """
        own = own_latents(before, after)
        healths = {"before": before.health, "after": after.health}
        cbs = {"before": before.found.codebook, "after": after.found.codebook}
        z: Any = (
            {"before": before.latents, "after": after.latents}
            if own
            else (after.latents if after.latents is not None else before.latents)
        )
        return cls(
            SpectrumDisplay.from_healths(healths, own_latents=own),
            UsageDisplay.from_healths(healths),
            ProjectionDisplay.from_codebooks(cbs, z, seed=seed),
            DistanceDisplay.from_codebooks(cbs, z, seed=seed),
            title=title if title is not None else f"{after.health.name}: before vs after",
        )

    def plot(self, *, ax: Any = None) -> CodebookDisplay:
        """Draw on four axes (a ``(2, 2)`` array or a sequence of 4; a new 12 x 9 in figure when None).

        Returns ``self`` with ``figure_`` and ``ax_`` set, and each sub-display drawn on its panel.
        """
        if ax is None:
            fig = new_figure((12.0, 9.0))
            axes = np.asarray(fig.subplots(2, 2, squeeze=False))
            # Fixed margins: constrained layout measures every text box and cost ~0.5 s per figure.
            fig.subplots_adjust(left=0.07, right=0.985, bottom=0.065, top=0.915, wspace=0.2, hspace=0.3)
            if self.title:
                fig.suptitle(self.title, fontsize=13)
        else:
            axes = np.asarray(ax, dtype=object).reshape(2, 2)
            fig = axes[0, 0].figure
        self.figure_, self.ax_ = fig, axes
        self.spectrum.plot(ax=axes[0, 0])
        self.usage.plot(ax=axes[0, 1])
        for panel, display, title in (
            (axes[1, 0], self.projection, "Projection"),
            (axes[1, 1], self.distances, "Distance distributions"),
        ):
            if display is None:
                set_title(panel, title)
                empty_note(panel, NO_CODEBOOK)
            else:
                display.plot(ax=panel)
        return self

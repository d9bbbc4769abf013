"""``SpectrumDisplay``: singular-value spectra of codes against those of the latents.

A shrunk or dimensionally collapsed codebook shows as a code spectrum that falls off much faster than the
latents' one: the codes use fewer directions than the data they quantize.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from ..metrics import CodebookHealth
from .figures import CODE_COLORS, LATENT_COLOR, empty_note, new_axes, Series, set_title

__all__ = ["SpectrumDisplay"]


def _normalised(sv: torch.Tensor | None) -> np.ndarray | None:
    """Singular values divided by the largest (None when absent or all zero)."""
    if sv is None or sv.numel() == 0 or float(sv[0]) <= 0:
        return None
    return (sv.double() / sv[0]).clamp_min(1e-12).numpy()


class SpectrumDisplay:
    """Centred singular-value spectra, each divided by its largest value, on a log axis.

    Attributes:
        series: one ``Series`` per spectrum; ``values`` ``(r,)`` is ``s_i / s_1`` for i = 1..r.
        ax_, figure_, lines_: set by ``plot``.

    Example:
        >>> h = codebook_health(torch.randn(64, 8), latents=torch.randn(500, 8))  # doctest: +SKIP
        >>> SpectrumDisplay.from_health(h).plot().figure_.savefig("spectrum.png")  # doctest: +SKIP
    """

    def __init__(self, series: list[Series]) -> None:
        self.series = series

    @classmethod
    def from_health(cls, health: CodebookHealth, *, label: str = "codes") -> SpectrumDisplay:
        """The codebook's spectrum and, when it was measured with latents, theirs."""
        return cls.from_healths({label: health}, own_latents=False)

    @classmethod
    def from_healths(cls, healths: Mapping[str, CodebookHealth], *, own_latents: bool) -> SpectrumDisplay:
        """Several codebooks on one axis (e.g. ``{"before": hb, "after": ha}``).

        Args:
            healths: label -> health, drawn in the colours ``CODE_COLORS`` in this order.
            own_latents: each codebook was measured on its own encoder's latents: draw each latent
                spectrum in its codebook's colour; else draw the (shared) latents' spectrum once in grey.
        """
        series, shared = [], None
        for i, (label, h) in enumerate(healths.items()):
            color = CODE_COLORS[i % len(CODE_COLORS)]
            y = _normalised(h.singular_values)
            if y is not None:
                rank = "" if h.effective_rank is None else f" (eff. rank {h.effective_rank:.1f})"
                series.append(Series(f"{label}{rank}", y, color))
            z = _normalised(h.latent_singular_values)
            if z is None:
                continue
            if own_latents:
                series.append(Series(f"latents ({label}'s encoder)", z, color, "--", "latents"))
            elif shared is None:
                rank = f"eff. rank {h.latent_effective_rank or 0:.1f}"
                shared = Series(f"latents ({rank})", z, LATENT_COLOR, "--", "latents")
        return cls(series + ([shared] if shared is not None else []))

    def plot(self, *, ax: Any = None) -> SpectrumDisplay:
        """Draw on ``ax`` (a new figure when None); returns ``self`` with ``ax_``, ``figure_``, ``lines_``."""
        self.figure_, self.ax_ = new_axes(ax)
        self.lines_ = [
            self.ax_.semilogy(
                np.arange(1, s.values.size + 1), s.values, s.style, color=s.color, lw=1.6, label=s.label
            )[0]
            for s in self.series
        ]
        set_title(self.ax_, "Singular-value spectrum (centred)")
        if not self.series:
            empty_note(self.ax_, "no spectrum (all-zero codebook)")
            return self
        self.ax_.set_xlabel("component index")
        self.ax_.set_ylabel("singular value / largest")
        self.ax_.grid(alpha=0.3)
        self.ax_.legend(fontsize=8)
        return self

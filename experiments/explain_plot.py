"""The PNG of ``fedgenome explain``: a heat map of the mutagenesis over its importance track.

Rows A, C, G, T, columns the window's positions, colour the log-likelihood change (red: the model
finds the mutated sequence less likely); the reference sequence labels the x axis when the window
is short enough to read (at most :data:`LETTERS`), else positions do. For a variant, a third panel
shows how far the predicted next-base distribution moves at each position (half the L1 distance
between the ALT and the REF haplotype's predictions), and the variant's column is marked.
"""

from __future__ import annotations

import numpy as np

from fedgenome.audit.plots import new_figure, png_bytes
from fedgenome.shared.explain import Mutagenesis

LETTERS = 120
"""The longest window whose bases label the x axis."""


def mutagenesis_png(result: Mutagenesis, *, shift: np.ndarray | None, variant_at: int | None) -> bytes:
    """The figure as PNG bytes (``variant_at``: the variant's 0-based position on the contig)."""
    length = len(result.tokens)
    panels = 3 if shift is not None else 2
    figure = new_figure((max(7.5, min(24.0, length / 12)), 2.2 * panels + 0.6))
    axes = figure.subplots(panels, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1, 1][:panels]})
    delta = np.ma.masked_invalid(result.delta.T)  # (4, L)
    bound = float(np.nanmax(np.abs(result.delta))) if np.isfinite(result.delta).any() else 1.0
    image = axes[0].imshow(delta, aspect="auto", cmap="RdBu", vmin=-bound, vmax=bound,
                           interpolation="nearest", extent=(-0.5, length - 0.5, 3.5, -0.5))
    axes[0].set_yticks(range(4), ["A", "C", "G", "T"])
    axes[0].set_title(f"saturation mutagenesis, {result.contig}:{result.start}-{result.start + length} "
                      f"(log-likelihood change, nats)")
    figure.colorbar(image, ax=list(axes), fraction=0.02, pad=0.01)  # every panel as wide: columns align
    axes[1].bar(range(length), np.nan_to_num(result.importance), width=1.0, color="#444444")
    axes[1].set_ylabel("importance")
    if shift is not None:
        moved = 0.5 * np.nansum(np.abs(shift), axis=1)
        axes[2].bar(range(length), moved, width=1.0, color="#b8442e")
        axes[2].set_ylabel("ALT vs REF\nprediction shift")
    if variant_at is not None:
        for ax in axes:
            ax.axvline(variant_at - result.start, color="#e0a000", linewidth=1.0)
    last = axes[-1]
    if length <= LETTERS:
        last.set_xticks(range(length), list(result.sequence), fontsize=7, family="monospace")
    else:
        ticks = np.linspace(0, length - 1, 9).astype(int)
        last.set_xticks(ticks, [f"{result.start + t + 1:,}" for t in ticks], fontsize=8)
        last.set_xlabel(f"position on {result.contig} (1-based)")
    return png_bytes(figure)

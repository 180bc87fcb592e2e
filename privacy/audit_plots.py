"""The audit report's plots as PNG bytes, drawn with matplotlib's Agg backend (no display, no pyplot).

A :class:`matplotlib.figure.Figure` is drawn on its own Agg canvas, so nothing touches pyplot's
global state or needs a display.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

_SIZE = (7.5, 4.2)
_DPI = 100


def _png(figure: Figure) -> bytes:
    """The figure as PNG bytes."""
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight")
    return buffer.getvalue()


def epsilon_plot(
    ledger: Mapping[str, Sequence[tuple[int, float]]],
    *,
    budgets: Mapping[str, float | None],
    reported: Mapping[str, Sequence[tuple[int, float]]] | None = None,
) -> bytes:
    """Each site's cumulative ε per round (from its verified ledger) against its budget.

    Args:
        ledger: Site name -> (round, cumulative ε after that round), from the verified ledger.
        budgets: Site name -> budget (a dashed line of the site's colour); None when unknown.
        reported: Site name -> (round, ε) that the server received (run report), drawn as crosses.

    Returns:
        PNG bytes.
    """
    figure = Figure(figsize=_SIZE)
    axes = figure.add_subplot()
    colors = [f"C{i % 10}" for i in range(len(ledger))]
    crosses = "ε the server received (run report)"
    for color, (site, points) in zip(colors, sorted(ledger.items()), strict=True):
        rounds, eps = [r for r, _ in points], [e for _, e in points]
        axes.plot(rounds, eps, marker="o", color=color, label=f"{site} (ledger)")
        budget = budgets.get(site)
        if budget is not None:
            axes.axhline(budget, color=color, linestyle="--", linewidth=1.2,
                         label=f"{site} budget {budget:g}")
        server = (reported or {}).get(site, ())
        if server:
            axes.scatter([r for r, _ in server], [e for _, e in server], marker="x", s=60, color="black",
                         zorder=3, label=crosses)
            crosses = "_nolegend_"
    if not ledger:
        axes.text(0.5, 0.5, "no verified ledger", ha="center", va="center", transform=axes.transAxes)
    axes.set_xlabel("round")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel("cumulative ε")
    axes.set_title("Privacy spent per site (patient-level)")
    axes.set_ylim(bottom=0.0)
    axes.grid(alpha=0.3)
    if ledger:
        axes.legend(fontsize="small", loc="best")
    return _png(figure)


def heldout_plot(rounds: Sequence[tuple[int, float]], *, initial: float | None) -> bytes:
    """Held-out bits per base of the global model after each round, with the value before training.

    Args:
        rounds: (round, bits per base) from the run report.
        initial: Bits per base of the initial model (drawn at round 0 and as a dotted line).

    Returns:
        PNG bytes.
    """
    figure = Figure(figsize=_SIZE)
    axes = figure.add_subplot()
    xs, ys = [r for r, _ in rounds], [b for _, b in rounds]
    if initial is not None:
        axes.axhline(initial, color="grey", linestyle=":", label=f"initial {initial:.4f}")
        xs, ys = [0, *xs], [initial, *ys]
    if xs:
        axes.plot(xs, ys, marker="o", color="C0", label="global model")
        axes.legend(fontsize="small")
    else:
        axes.text(0.5, 0.5, "no rounds", ha="center", va="center", transform=axes.transAxes)
    axes.set_xlabel("round")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel("held-out bits per base")
    axes.set_title("Held-out bits per base (lower is better)")
    axes.grid(alpha=0.3)
    return _png(figure)

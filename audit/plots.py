"""The audit report's plots as PNG bytes, drawn with matplotlib's Agg backend (no display, no pyplot).

A :class:`matplotlib.figure.Figure` is drawn on its own Agg canvas, so nothing touches pyplot's
global state or needs a display. matplotlib is an optional dependency (the ``audit`` extra): it is
imported only when a plot is drawn, and :func:`require_matplotlib` says, as one line, how to get it.
"""

from __future__ import annotations

import importlib
import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from fedgenome.configs.errors import MissingExtraError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_SIZE = (7.5, 4.2)
_DPI = 100
NEEDS_MATPLOTLIB = "plots need matplotlib: pip install 'fedgenome[audit]'"


def require_matplotlib() -> None:
    """Check that matplotlib can be imported.

    Raises:
        MissingExtraError: It cannot (the ``audit`` extra is not installed).
    """
    try:
        importlib.import_module("matplotlib")
    except ImportError as exc:
        raise MissingExtraError(NEEDS_MATPLOTLIB) from exc


def new_figure(size: tuple[float, float] = _SIZE) -> Figure:
    """An empty figure (by default of the report's size) on its own Agg canvas."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size)
    FigureCanvasAgg(figure)
    return figure


def _integer_rounds(axes: Axes) -> None:
    """Label the x axis ``round`` with integer ticks only."""
    from matplotlib.ticker import MaxNLocator

    axes.set_xlabel("round")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))


def png_bytes(figure: Figure) -> bytes:
    """The figure as PNG bytes."""
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
    figure = new_figure()
    axes = figure.add_subplot()
    colors = {site: f"C{i % 10}" for i, site in enumerate(sorted(ledger))}
    crosses = "ε the server received (run report)"
    for site, points in sorted(ledger.items()):
        axes.plot([r for r, _ in points], [e for _, e in points], marker="o", color=colors[site],
                  label=f"{site} (ledger)")
        server = (reported or {}).get(site, ())
        if server:
            axes.scatter([r for r, _ in server], [e for _, e in server], marker="x", s=60, color="black",
                         zorder=3, label=crosses)
            crosses = "_nolegend_"
    _budget_lines(axes, {site: budgets.get(site) for site in ledger}, colors)
    if not ledger:
        axes.text(0.5, 0.5, "no verified ledger", ha="center", va="center", transform=axes.transAxes)
    _integer_rounds(axes)
    axes.set_ylabel("cumulative ε")
    axes.set_title("Privacy spent per site (patient-level)")
    values = [e for points in ledger.values() for _, e in points] + [b for b in budgets.values() if b]
    top = max([*values, 1.0])
    axes.set_ylim(0.0, top * 1.12)
    axes.grid(alpha=0.3)
    if ledger:
        axes.legend(fontsize="small", loc="lower right")
    return png_bytes(figure)


def _budget_lines(axes: Axes, budgets: Mapping[str, float | None], colors: Mapping[str, str]) -> None:
    """One dashed line per distinct budget: the site's colour if it is one site's, else black."""
    by_value: dict[float, list[str]] = {}
    for site, budget in sorted(budgets.items()):
        if budget is not None:
            by_value.setdefault(budget, []).append(site)
    for value, sites in sorted(by_value.items()):
        who = "all sites" if len(sites) == len(budgets) > 1 else ", ".join(sites)
        color = colors[sites[0]] if len(sites) == 1 else "black"
        axes.axhline(value, color=color, linestyle="--", linewidth=1.2, label=f"budget {value:g} ({who})")


def heldout_plot(rounds: Sequence[tuple[int, float]], *, initial: float | None,
                 baseline: tuple[str, float] | None = None) -> bytes:
    """Held-out bits per base of the global model after each round, with the value before training.

    Args:
        rounds: (round, bits per base) from the run report.
        initial: Bits per base of the initial model (drawn at round 0 and as a dotted line).
        baseline: (label, bits per base) of the Markov baseline on the same windows (a dashed line).

    Returns:
        PNG bytes.
    """
    figure = new_figure()
    axes = figure.add_subplot()
    xs, ys = [r for r, _ in rounds], [b for _, b in rounds]
    if initial is not None:
        axes.axhline(initial, color="grey", linestyle=":", label=f"initial {initial:.4f}")
        xs, ys = [0, *xs], [initial, *ys]
    if baseline is not None:
        axes.axhline(baseline[1], color="C3", linestyle="--", label=f"{baseline[0]} {baseline[1]:.4f}")
    if xs:
        axes.plot(xs, ys, marker="o", color="C0", label="global model")
    return _rounds_png(figure, axes, drawn=bool(xs), empty="no rounds", ylabel="held-out bits per base",
                       title="Held-out bits per base (lower is better)")


def _rounds_png(figure: Figure, axes: Axes, *, drawn: bool, empty: str, ylabel: str, title: str) -> bytes:
    """Finish a plot over rounds (legend, or ``empty`` when nothing was drawn; labels, grid) as PNG."""
    if drawn:
        axes.legend(fontsize="small")
    else:
        axes.text(0.5, 0.5, empty, ha="center", va="center", transform=axes.transAxes)
    _integer_rounds(axes)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    return png_bytes(figure)


def site_bits_plot(rounds: Sequence[tuple[int, Mapping[str, float]]], *, clip: float,
                   std: Mapping[int, Mapping[str, float]] | None = None) -> bytes:
    """Each site's privately released bits per base per evaluation round, and the worst-minus-best spread.

    Args:
        rounds: (round, {site: released bits}) of the rounds with site evaluations.
        clip: The bound each patient's contribution was clipped to (releases lie in [0, clip]).
        std: {round: {site: the noise's std on its release}}, drawn as error bars where known.

    Returns:
        PNG bytes.
    """
    figure = new_figure()
    axes = figure.add_subplot()
    sites = sorted({s for _, bits in rounds for s in bits})
    for i, site in enumerate(sites):
        points = [(r, bits[site]) for r, bits in rounds if site in bits]
        errors = [(std or {}).get(r, {}).get(site, 0.0) for r, _ in points]
        axes.errorbar([r for r, _ in points], [b for _, b in points], yerr=errors, marker="o",
                      color=f"C{i % 10}", label=site, capsize=3)
    spread = [(r, max(bits.values()) - min(bits.values())) for r, bits in rounds if bits]
    if spread:
        axes.plot([r for r, _ in spread], [d for _, d in spread], color="black", linestyle="--",
                  marker="s", label="worst - best")
    axes.axhline(clip, color="grey", linestyle=":", label=f"clip {clip:g}")
    return _rounds_png(figure, axes, drawn=bool(sites), empty="no site evaluations",
                       ylabel="bits per base (noisy release)",
                       title="Private evaluation at the sites, on their own patients")

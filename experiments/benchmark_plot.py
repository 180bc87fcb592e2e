"""The PNG of ``fedgenome benchmark variants``: each scorer's scores against the values, and ROC curves.

One scatter panel per scorer (measured value on x, score on y, Spearman's rho and its interval in
the title) and, with a label column, a panel of the three ROC curves with their AUROCs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedgenome.audit.plots import new_figure, png_bytes
from fedgenome.shared.atomic import atomic_path

if TYPE_CHECKING:
    from fedgenome.experiments.variant_benchmark import VariantBenchmark

COLORS = {"model": "#1f5fa8", "markov": "#7a7a7a", "random": "#c47a1f"}


def _roc(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every threshold, from the highest score down."""
    order = np.argsort(-scores, kind="stable")
    hits = labels[order].astype(np.float64)
    tpr = np.concatenate([[0.0], np.cumsum(hits) / max(hits.sum(), 1.0)])
    fpr = np.concatenate([[0.0], np.cumsum(1 - hits) / max((1 - hits).sum(), 1.0)])
    return fpr, tpr


def benchmark_figure(got: VariantBenchmark, path: Path) -> Path:
    """Write the figure to ``path`` (atomically) and return the path."""
    labels = got.table.labels
    panels = len(got.results) + (labels is not None)
    figure = new_figure((4.0 * panels, 3.6))
    axes = figure.subplots(1, panels, squeeze=False)[0]
    what = "ALT - REF log-likelihood" if got.table.kind == "variant" else "log-likelihood change"
    for ax, result in zip(axes, got.results, strict=False):
        ax.scatter(got.table.values, result.scores, s=6, alpha=0.5, color=COLORS[result.name])
        ax.set_title(f"{result.name}: rho {result.spearman.interval()}", fontsize=9)
        ax.set_xlabel(got.table.value_column)
    axes[0].set_ylabel(f"{what} (nats)")
    if labels is not None:
        ax = axes[-1]
        for result in got.results:
            fpr, tpr = _roc(result.scores, labels)
            ax.plot(fpr, tpr, color=COLORS[result.name],
                    label=f"{result.name} {result.auroc.value:.3f}" if result.auroc else result.name)
        ax.plot([0, 1], [0, 1], color="#cccccc", linewidth=0.8)
        ax.set_xlabel("false-positive rate")
        ax.set_ylabel("true-positive rate")
        ax.set_title("ROC (AUROC)", fontsize=9)
        ax.legend(fontsize=8, loc="lower right")
    figure.suptitle(f"{got.table.path.name}: {len(got.table.items)} rows", fontsize=10)
    with atomic_path(path) as tmp:
        tmp.write_bytes(png_bytes(figure))
    return path

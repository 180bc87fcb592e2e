"""Rank statistics of a benchmark: Spearman's rho, AUROC, and their bootstrap confidence intervals.

Pure functions of numpy arrays. Ties get average ranks in both statistics; the intervals are
percentile intervals over resamples of the rows (pairs stay together), drawn from a seeded
generator so that a result can be reproduced.

>>> spearman(np.array([1.0, 2.0, 3.0, 4.0]), np.array([10.0, 20.0, 30.0, 40.0]))
1.0
>>> auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([False, False, True, True]))
0.75
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.stats import rankdata

Floats = npt.NDArray[np.float64]
Statistic = Callable[[Floats, npt.NDArray[np.generic]], float]


@dataclass(frozen=True)
class Estimate:
    """A statistic over ``n`` rows, with its (1 - alpha) bootstrap interval."""

    value: float
    low: float
    high: float
    n: int
    resamples: int

    def to_json(self) -> dict[str, float | int]:
        """The JSON object of the estimate."""
        return {"value": self.value, "low": self.low, "high": self.high, "n": self.n,
                "resamples": self.resamples}

    def interval(self, *, signed: bool = True) -> str:
        """``value [low, high]`` to 3 decimals, signed (a correlation) or not (an AUROC)."""
        sign = "+" if signed else ""
        return f"{self.value:{sign}.3f} [{self.low:{sign}.3f}, {self.high:{sign}.3f}]"


def spearman(scores: Floats, values: npt.NDArray[np.generic]) -> float:
    """Spearman's rank correlation of two equally long arrays (nan when either is constant)."""
    a, b = rankdata(scores), rankdata(np.asarray(values, dtype=np.float64))
    a, b = a - a.mean(), b - b.mean()
    denominator = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else float("nan")


def auroc(scores: Floats, labels: npt.NDArray[np.generic]) -> float:
    """Area under the ROC curve of ``scores`` for boolean ``labels``: P(positive scores higher).

    Computed as the Mann-Whitney U statistic over (positives x negatives), ties counting one half;
    nan when either class is empty.
    """
    positive = np.asarray(labels, dtype=np.bool_)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def bootstrap(statistic: Statistic, scores: Floats, values: npt.NDArray[np.generic], *,
              resamples: int = 1000, alpha: float = 0.05, seed: int = 0) -> Estimate:
    """``statistic(scores, values)`` with a percentile interval over ``resamples`` row resamples.

    Resamples on which the statistic is undefined (nan: a constant resample, one class only) are
    left out of the interval.
    """
    n = len(scores)
    rng = np.random.default_rng(seed)
    draws = np.array([statistic(scores[i], values[i])
                      for i in (rng.integers(0, n, n) for _ in range(resamples))])
    draws = draws[~np.isnan(draws)]
    value = statistic(scores, values)
    if draws.size == 0:
        return Estimate(value, float("nan"), float("nan"), n, resamples)
    low, high = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
    return Estimate(value, float(low), float(high), n, resamples)

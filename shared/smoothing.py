"""Smoothed next-base probabilities from k-mer counts: log2 p(target | context) at every order 0..K.

Notation: for an order-j context h (its order-(j-1) suffix h'), c(h, x) counts base x after h,
c(h) = sum over x, and p_{-1}(x) = 1/4. The smoothings (families in :data:`SMOOTHINGS`):

* ``add-one`` (Laplace): p_j(x | h) = (c(h, x) + 1) / (c(h) + 4), order j alone (the project's
  baseline before the best-k pick).
* ``witten-bell``, interpolated (Witten and Bell 1991): p_j = (c(h, x) + u(h) p_{j-1}(x | h')) /
  (c(h) + u(h)), with u(h) the number of distinct bases seen after h.
* ``kneser-ney``, interpolated modified Kneser-Ney (Chen and Goodman 1998): p_j = max(c(h, x) -
  D(c), 0) / c(h) + g(h) p_{j-1}(x | h'), three discounts D1, D2, D3+ per order from the
  count-of-counts n1..n4 (floored at :data:`MIN_DISCOUNT`), g(h) the discounted mass; each lower
  order uses continuation counts, the number of distinct bases b before h' with c(b h', x) > 0.
* ``dirichlet-B``, interpolated additive smoothing (a Dirichlet prior of concentration B centred on
  the order below; MacKay and Peto 1995): p_j = (c(h, x) + B p_{j-1}(x | h')) / (c(h) + B).
  ``add-one`` is B = 4 centred on the uniform instead.

A context never seen (c(h) = 0) passes p_{j-1} up unchanged, so every p sums to one over A/C/G/T.
On human DNA the four-letter alphabet and the repeats matter: every context of up to 7 bases is
preceded by all four bases, so Kneser-Ney's continuation counts make its lower orders uniform, and
counts inflated by repeat copies want a large B (measured: ``bench/markov_orders.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from fedgenome.configs.errors import ConfigError
from fedgenome.shared.kmers import Table, Targets

Probs = npt.NDArray[np.float64]
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)
"""Kneser-Ney discounts D1, D2, D3+ of a table whose count-of-counts cannot estimate them."""
MIN_DISCOUNT = 0.1
"""Floor of every Kneser-Ney discount, so that a context always leaves some mass to unseen bases."""


@dataclass(frozen=True)
class Lookup:
    """The counts of each target's order-j context: the row (n, 4), the target's own count, the total."""

    rows: npt.NDArray[np.float64]
    picked: npt.NDArray[np.float64]
    total: npt.NDArray[np.float64]

    @classmethod
    def of(cls, table: npt.NDArray[np.integer], tg: Targets, j: int) -> Lookup:
        """Look the targets' order-``j`` contexts up in ``table`` (4**j, 4)."""
        rows = table[tg.context_at(j)].astype(np.float64)
        return cls(rows, rows[np.arange(len(rows)), tg.base], rows.sum(axis=1))


class Smoother(Protocol):
    """One smoothing of fixed count tables 0..order, applied order by order from 0 up."""

    tables: list[Table]
    order: int

    def step(self, j: int, look: Lookup, tg: Targets, lower: Probs) -> tuple[Probs, Probs]:
        """(p at order j as the top order, what order j + 1 interpolates with), given order j - 1's."""


def log2_probs(smoothers: Sequence[Smoother], tg: Targets) -> list[Probs]:
    """(order + 1, n) log2 p(target | its order-j context), j = 0..order, for smoothers of one table set.

    Each order's counts are looked up once and shared by all the smoothers.
    """
    tables, order = smoothers[0].tables, smoothers[0].order
    if tg.order != order or any(s.tables is not tables for s in smoothers):
        raise ValueError(f"targets packed at order {tg.order} need smoothers sharing tables 0..{tg.order}")
    outs = [np.empty((order + 1, len(tg))) for _ in smoothers]
    lowers = [np.full(len(tg), 0.25) for _ in smoothers]
    for j, table in enumerate(tables):
        look = Lookup.of(table, tg, j)
        for i, smoother in enumerate(smoothers):
            top, lowers[i] = smoother.step(j, look, tg, lowers[i])
            outs[i][j] = np.log2(top)
    return outs


class _Tables:
    """Count tables 0..order (the list object itself is shared by the smoothers of one baseline)."""

    def __init__(self, tables: list[Table]) -> None:
        self.tables = tables
        self.order = len(tables) - 1


class AddOne(_Tables):
    """Add-one (Laplace) smoothing at each order on its own."""

    def step(self, j: int, look: Lookup, tg: Targets, lower: Probs) -> tuple[Probs, Probs]:
        """See :class:`Smoother`."""
        p = (look.picked + 1.0) / (look.total + 4.0)
        return p, p


class WittenBell(_Tables):
    """Interpolated Witten-Bell smoothing."""

    def step(self, j: int, look: Lookup, tg: Targets, lower: Probs) -> tuple[Probs, Probs]:
        """See :class:`Smoother`."""
        seen = (look.rows > 0).sum(axis=1)
        p = np.where(look.total > 0, (look.picked + seen * lower) / np.maximum(look.total + seen, 1.0),
                     lower)
        return p, p


def discounts(table: npt.NDArray[np.integer]) -> npt.NDArray[np.float64]:
    """Modified Kneser-Ney discounts [0, D1, D2, D3+] from a table's count-of-counts (Chen and Goodman).

    Y = n1 / (n1 + 2 n2), D_r = r - (r + 1) Y n_{r+1} / n_r, each clipped to [:data:`MIN_DISCOUNT`,
    r]; a table lacking one of n1..n4 (counts all large, or all tiny) gets :data:`FALLBACK_DISCOUNTS`.
    """
    n = [int(np.count_nonzero(table == r)) for r in range(1, 5)]
    if min(n) == 0:
        return np.array([0.0, *FALLBACK_DISCOUNTS])
    y = n[0] / (n[0] + 2 * n[1])
    d = [float(np.clip(r - (r + 1) * y * n[r] / n[r - 1], MIN_DISCOUNT, r)) for r in (1, 2, 3)]
    return np.array([0.0, *d])


def _kn(look: Lookup, lower: Probs, d: npt.NDArray[np.float64]) -> Probs:
    """One interpolated Kneser-Ney order: discounted counts plus the freed mass times ``lower``."""
    freed = d[np.minimum(look.rows, 3).astype(np.int8)].sum(axis=1)  # D1 N1 + D2 N2 + D3 N3+ (d[0] = 0)
    kept = look.picked - d[np.minimum(look.picked, 3).astype(np.int8)]  # >= 0 since D_r <= r
    return np.where(look.total > 0, (kept + freed * lower) / np.maximum(look.total, 1.0), lower)


class KneserNey(_Tables):
    """Interpolated modified Kneser-Ney smoothing."""

    def __init__(self, tables: list[Table]) -> None:
        super().__init__(tables)
        # continuation[j][h', x] = distinct bases b before h' with c(b h', x) > 0 (order j < K)
        self.continuation = [(tables[j + 1].reshape(4**j, 4, 4) > 0).sum(axis=1, dtype=np.uint8)
                             for j in range(self.order)]
        self.raw_d = [discounts(t) for t in tables]
        self.cont_d = [discounts(t) for t in self.continuation]

    def step(self, j: int, look: Lookup, tg: Targets, lower: Probs) -> tuple[Probs, Probs]:
        """See :class:`Smoother`: order j's own counts on top, its continuation counts below j + 1."""
        top = _kn(look, lower, self.raw_d[j])
        if j == self.order:
            return top, top
        return top, _kn(Lookup.of(self.continuation[j], tg, j), lower, self.cont_d[j])


class Dirichlet(_Tables):
    """Interpolated additive smoothing: a Dirichlet prior of concentration B on the order below."""

    def __init__(self, tables: list[Table], concentration: float) -> None:
        super().__init__(tables)
        self.concentration = concentration

    def step(self, j: int, look: Lookup, tg: Targets, lower: Probs) -> tuple[Probs, Probs]:
        """See :class:`Smoother`."""
        p = (look.picked + self.concentration * lower) / (look.total + self.concentration)
        return p, p


SMOOTHINGS: dict[str, Callable[[list[Table], float | None], Smoother]] = {
    "add-one": lambda tables, _: AddOne(tables),
    "witten-bell": lambda tables, _: WittenBell(tables),
    "kneser-ney": lambda tables, _: KneserNey(tables),
    "dirichlet": lambda tables, b: Dirichlet(tables, float(b or 0.0)),
}
"""Smoothing families; ``dirichlet`` takes its concentration from the name (``dirichlet-256``)."""
CANDIDATES = ("add-one", "witten-bell", "kneser-ney", "dirichlet-16", "dirichlet-64", "dirichlet-256",
              "dirichlet-1024")
"""The smoothings ``"auto"`` tries (:func:`fedgenome.shared.markov.fit_best_k`)."""
AUTO = "auto"


def _parse(name: str) -> tuple[str, float | None]:
    """A smoothing name as (family, concentration); ValueError if it is not one."""
    family, _, value = name.partition("-") if name.startswith("dirichlet") else (name, "", "")
    if family not in SMOOTHINGS:
        raise ValueError(name)
    if family != "dirichlet":
        return family, None
    concentration = float(value)
    if not 0.0 < concentration < float("inf"):
        raise ValueError(name)
    return family, concentration


def check_smoothing(name: str) -> str:
    """``name`` if it names a smoothing, else a ConfigError listing the valid ones."""
    try:
        _parse(name)
    except ValueError:
        raise ConfigError(f"unknown Markov smoothing {name!r}; valid: {', '.join(sorted(SMOOTHINGS))} "
                          "(dirichlet as dirichlet-B with a concentration B > 0, e.g. dirichlet-256)"
                          ) from None
    return name


def create_smoother(name: str, tables: list[Table]) -> Smoother:
    """The smoothing ``name`` of count tables 0..K (``tables[j]`` of shape (4**j, 4))."""
    family, concentration = _parse(check_smoothing(name))
    return SMOOTHINGS[family](tables, concentration)

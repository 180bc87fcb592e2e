"""The best-k Markov baseline as reports carry it: one definition of its fields for writers and readers.

``report.json`` (the server), ``summary.json`` (the demo), a checkpoint's ``config.json`` meta
(``fedgenome train``) and the audit report's JSON all hold these top-level fields; each writes them
with :meth:`BaselineScore.to_json` and reads them with :meth:`BaselineScore.from_json`. Standard
library only, so that an auditor's tools need nothing more to read them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PRIVACY_NOTE = "costs no privacy: counted on the public reference only, never on patients' genomes"
BITS_KEY, ORDER_KEY, SMOOTHING_KEY = "markov_bits_per_base", "markov_order", "markov_smoothing"
PRIVACY_KEY = "markov_privacy"


@dataclass(frozen=True)
class BaselineScore:
    """The reference baseline's bits per base on some evaluation windows.

    >>> score = BaselineScore(1.8363, 12, "dirichlet-256")
    >>> BaselineScore.from_json(score.to_json()) == score
    True
    """

    bits_per_base: float
    order: int
    smoothing: str

    @property
    def label(self) -> str:
        """How tables and plots name it."""
        return f"best-k Markov baseline (order {self.order}, {self.smoothing})"

    def to_json(self) -> dict[str, Any]:
        """The report fields: bits, order, smoothing and the privacy note."""
        return {BITS_KEY: self.bits_per_base, ORDER_KEY: self.order, SMOOTHING_KEY: self.smoothing,
                PRIVACY_KEY: PRIVACY_NOTE}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BaselineScore | None:
        """Read the report fields back; None when a report has none (made before the baseline)."""
        bits, order = data.get(BITS_KEY), data.get(ORDER_KEY)
        if isinstance(bits, bool) or not isinstance(bits, (int, float)) or not math.isfinite(bits):
            return None
        if isinstance(order, bool) or not isinstance(order, int):
            return None
        return cls(float(bits), order, str(data.get(SMOOTHING_KEY, "unknown")))

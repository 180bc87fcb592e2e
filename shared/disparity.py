"""The disparity of a round's private site evaluations: worst site minus best, with its uncertainty.

Bits per base: higher is worse. The uncertainty is that of the DP noise alone (each release's
``bits-per-base-std``, combined as independent): the patients' own spread is not released, and the
worst and best are picked after the noise, so the gap is biased upwards when the sites are close.

>>> d = disparity({"a": 1.8, "b": 2.1, "c": 1.9}, {"a": 0.03, "b": 0.04})
>>> (d.worst, d.best, round(d.gap, 3), round(d.std, 3))
('b', 'a', 0.3, 0.05)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Disparity:
    """Worst minus best site of one round."""

    worst: str
    best: str
    gap: float
    std: float | None  # None when a release came without its noise's std (an older site)

    def __str__(self) -> str:
        spread = f" ± {self.std:.3f}" if self.std is not None else ""
        return f"{self.worst} - {self.best} = {self.gap:.3f}{spread} bits per base"


def released(bits: Mapping[str, float], std: Mapping[str, float], site: str, *, digits: int = 3) -> str:
    """A site's released bits as ``x ± s`` (``x`` alone without its std, ``-`` without a release)."""
    if site not in bits:
        return "-"
    return f"{bits[site]:.{digits}f}" + (f" ± {std[site]:.3f}" if site in std else "")


def disparity(bits: Mapping[str, float], std: Mapping[str, float]) -> Disparity | None:
    """The disparity of ``bits`` (site -> bits per base); None with fewer than two sites."""
    if len(bits) < 2:
        return None
    worst, best = max(bits, key=lambda s: bits[s]), min(bits, key=lambda s: bits[s])
    spread = (math.hypot(std[worst], std[best]) if worst in std and best in std else None)
    return Disparity(worst, best, bits[worst] - bits[best], spread)

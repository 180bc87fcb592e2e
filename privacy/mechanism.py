"""The mechanism a privacy ledger records: steps of the subsampled Gaussian mechanism."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mechanism:
    """``steps`` steps of Poisson subsampling with rate ``sample_rate`` and Gaussian noise.

    The noise standard deviation is ``noise_multiplier`` times the clipping norm, so the privacy
    cost depends on ``noise_multiplier``, ``sample_rate`` and ``steps`` only.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        if not 0.0 < self.sample_rate <= 1.0:
            raise ValueError(f"sample_rate={self.sample_rate} must be in (0, 1]")
        if self.noise_multiplier < 0.0:
            raise ValueError(f"noise_multiplier={self.noise_multiplier} must be >= 0")
        if self.steps < 0:
            raise ValueError(f"steps={self.steps} must be >= 0")

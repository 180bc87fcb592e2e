"""A site's private evaluation: the global model's bits per base on its own patients, released with DP.

The query. Each patient contributes the model's mean bits per base on their own windows, clipped
to ``[0, clip]``. The site releases the pair

    (sum of the clipped contributions / clip,  number of patients)

with independent Gaussian noise of standard deviation ``noise_multiplier * SENSITIVITY`` on each
coordinate, and reports ``clip * noisy_sum / noisy_count`` as its bits per base.

The sensitivity. Adding or removing one patient (the privacy unit, as in training) changes the
first coordinate by at most 1 (its clipped contribution over ``clip``) and the second by exactly 1,
so the pair moves by at most ``sqrt(2)`` in L2 (:data:`SENSITIVITY`). With noise of standard
deviation ``noise_multiplier * sqrt(2)`` per coordinate the release is the Gaussian mechanism with
that noise multiplier, without subsampling: the accountants compose it with the site's training
rounds as ``Mechanism(noise_multiplier, sample_rate=1.0, steps=1)``, and the ledger records it as an
``evaluated`` entry (see :mod:`fedgenome.privacy.ledger.entry`).

The order is that of a training round (:mod:`fedgenome.privacy.trainer`): the epsilon the release
would bring is computed from the ledger first; past the budget the evaluation is refused (and the
refusal recorded) without looking at the data; otherwise the release is drawn, its ledger entry
written and fsynced, and only then is it returned to be sent.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from fedgenome.configs.errors import ConfigError
from fedgenome.configs.schema import SitePrivacy
from fedgenome.privacy.accounting import epsilon
from fedgenome.privacy.ledger.core import Ledger, LedgerEntry
from fedgenome.privacy.mechanism import Mechanism

log = logging.getLogger(__name__)
SENSITIVITY = math.sqrt(2.0)
"""L2 sensitivity of (clipped sum / clip, count) to adding or removing one patient."""
DEFAULT_CLIP = 3.0
"""Bits per base each patient's contribution is clipped to (uniform guessing is 2)."""


def query(per_patient_bits: np.ndarray, *, clip: float) -> np.ndarray:
    """The exact pair (sum of contributions clipped to [0, clip] / clip, number of patients)."""
    bits = np.asarray(per_patient_bits, dtype=np.float64)
    if bits.ndim != 1 or not np.isfinite(bits).all():
        raise ConfigError("per-patient bits must be a 1-D array of finite numbers")
    return np.array([np.clip(bits, 0.0, clip).sum() / clip, float(len(bits))])


@dataclass(frozen=True)
class Release:
    """What leaves the site: the noisy pair and the bits per base computed from it."""

    noisy_sum: float  # sum of clipped contributions / clip, plus noise
    noisy_count: float  # number of patients, plus noise
    clip: float

    @property
    def bits_per_base(self) -> float:
        """``clip * noisy_sum / noisy_count`` (the count floored at 1), clamped to [0, clip]."""
        return float(min(max(self.clip * self.noisy_sum / max(self.noisy_count, 1.0), 0.0), self.clip))

    def noise_std(self, noise_multiplier: float) -> float:
        """The standard deviation the noise gives :attr:`bits_per_base` (first order, delta method).

        With b = clip * S / N and independent noise of std s = noise_multiplier * SENSITIVITY on S
        and N: std(b) ~ clip * s / N * sqrt(1 + (b / clip)^2). It is computed from the release
        alone (post-processing, free of privacy cost) and leaves out the patients' own spread,
        which the site does not release.
        """
        spread = noise_multiplier * SENSITIVITY
        ratio = self.bits_per_base / self.clip
        return float(self.clip * spread / max(self.noisy_count, 1.0) * math.sqrt(1.0 + ratio * ratio))


def release(per_patient_bits: np.ndarray, *, clip: float, noise_multiplier: float,
            rng: np.random.Generator) -> Release:
    """The Gaussian mechanism on :func:`query`: noise of std ``noise_multiplier * SENSITIVITY`` each."""
    if not (clip > 0 and noise_multiplier > 0):
        raise ConfigError(f"a private evaluation needs clip > 0 and noise_multiplier > 0 (got clip={clip}, "
                          f"noise_multiplier={noise_multiplier})")
    exact = query(per_patient_bits, clip=clip)
    noisy = exact + rng.normal(0.0, noise_multiplier * SENSITIVITY, size=2)
    return Release(noisy_sum=float(noisy[0]), noisy_count=float(noisy[1]), clip=clip)


@dataclass(frozen=True)
class EvaluationOutcome:
    """A private evaluation's result; ``release`` is None when the budget refused it."""

    status: Literal["evaluated", "refused"]
    round: int
    release: Release | None
    epsilon: float  # the site's cumulative epsilon after it
    planned_epsilon: float
    budget: float
    entry: LedgerEntry


def run_private_evaluation(*, per_patient_bits: Callable[[], np.ndarray], ledger: Ledger,
                           site: SitePrivacy, accountant: str, noise_multiplier: float, round: int,
                           clip: float = DEFAULT_CLIP, run_key: str | None = None,
                           initial_checkpoint_sha256: str | None = None,
                           rng: np.random.Generator | None = None) -> EvaluationOutcome:
    """Release the site's bits per base with DP, unless that would exceed its budget (module docstring).

    ``per_patient_bits`` is called only when the budget allows the release; ``rng`` defaults to a
    generator seeded from the operating system's CSPRNG.
    """
    mechanism = Mechanism(noise_multiplier=noise_multiplier, sample_rate=1.0, steps=1)
    planned = epsilon(history=[*ledger.mechanisms(), mechanism], delta=site.delta, accountant=accountant)

    def record(status: Literal["evaluated", "refused"], eps: float) -> LedgerEntry:
        return ledger.append(round=round, status=status, local_steps=1 if status == "evaluated" else 0,
                             sample_rate=1.0, noise_multiplier=noise_multiplier, max_grad_norm=clip,
                             delta=site.delta, accountant=accountant, epsilon=eps, update_sha256=None,
                             epsilon_budget=site.epsilon_budget,
                             initial_checkpoint_sha256=initial_checkpoint_sha256, run_key=run_key)

    if planned > site.epsilon_budget:
        log.warning("evaluation in round %d refused: it would bring epsilon to %.3f, past the budget %.3f",
                    round, planned, site.epsilon_budget)
        entry = record("refused", ledger.epsilon)
        return EvaluationOutcome("refused", round, None, ledger.epsilon, planned, site.epsilon_budget, entry)
    released = release(per_patient_bits(), clip=clip, noise_multiplier=noise_multiplier,
                       rng=rng or np.random.default_rng(secrets.randbits(128)))
    entry = record("evaluated", planned)  # on disk before the release is handed back
    return EvaluationOutcome("evaluated", round, released, planned, planned, site.epsilon_budget, entry)

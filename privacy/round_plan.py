"""The DP plan of a federated round, as the site runs it and as the server re-derives it.

A site trains each round with :func:`dp_settings` (the run's clip, batch and target epsilon, the
preset's grad-sample mode and accountant), Poisson-samples its patients at
``q = patients-per-step / N`` and calibrates sigma so that the whole run's steps reach the run's
target epsilon (or takes the run's fixed noise multiplier).

The server sees only the site's bucketed patient count ``n`` (a multiple of 50, so the true ``N``
lies in ``[n - 25, n + 25)``), its delta and the rounds it trained in this run. From these it
re-derives the least epsilon the site can truthfully claim (:func:`epsilon_floor`): the epsilon of
this run's rounds alone, minimised over the sample rates the bucket allows. Spending from earlier
runs only adds to it (composition never lowers epsilon), so a claim below the floor is false.
"""

from __future__ import annotations

import functools

import numpy as np

from fedgenome.configs.schema import DPConfig, FederationConfig, Preset
from fedgenome.privacy.accounting import EPSILON_TOLERANCE, epsilon
from fedgenome.privacy.mechanism import Mechanism
from fedgenome.shared.wire import BUCKET

#: Relative slack of the floor, for sample rates between the bucket's ends (epsilon was measured to
#: move monotonically with the patient count, not proven to).
FLOOR_SLACK = 0.01
SEARCH_STEPS = 5  # bisection steps of :func:`sigma_at_least`: sigma within 1/32 of its bracket


def dp_settings(preset: Preset, fed: FederationConfig) -> DPConfig:
    """The DP-SGD settings of a federated round: the run's, with the preset's mode and accountant."""
    return DPConfig(noise_multiplier=fed.noise_multiplier or None,
                    target_epsilon=fed.target_epsilon, max_grad_norm=fed.max_grad_norm,
                    patients_per_step=fed.patients_per_step,
                    grad_sample_mode=preset.privacy.grad_sample_mode,
                    accountant=preset.privacy.accountant)


def sample_rates(examples: int, patients_per_step: int, *, points: int = 2) -> list[float]:
    """Sample rates a site whose bucketed patient count is ``examples`` may run at (the ends)."""
    low, high = max(1, examples - BUCKET // 2), examples + BUCKET // 2 - 1
    return sorted({min(1.0, patients_per_step / float(n)) for n in np.linspace(low, high, points)})


def _spent(dp: DPConfig, delta: float, sigma: float, sample_rate: float, steps: int) -> float:
    history = [Mechanism(noise_multiplier=sigma, sample_rate=sample_rate, steps=steps)]
    return epsilon(history=history, delta=delta, accountant=dp.accountant)


@functools.lru_cache(maxsize=256)
def sigma_at_least(dp: DPConfig, delta: float, sample_rate: float, total_steps: int) -> float:
    """A sigma no smaller than the one the site calibrates (or the run's fixed noise multiplier).

    The site's calibrated sigma spends at least ``target - EPSILON_TOLERANCE`` over the run's steps
    (:func:`fedgenome.privacy.accounting.plan_noise_multiplier`); any sigma that spends no more than that is
    at least as large. A coarse search finds one in a few accountant calls: less noise than the
    site's would make the floor too high, more only makes it a little lower.
    """
    if dp.noise_multiplier is not None:
        return dp.noise_multiplier
    assert dp.target_epsilon is not None  # guaranteed by DPConfig validation
    goal = dp.target_epsilon - EPSILON_TOLERANCE
    low, high = 0.0, 1.0
    while _spent(dp, delta, high, sample_rate, total_steps) > goal:
        low, high = high, 2.0 * high
    for _ in range(SEARCH_STEPS):  # keep ``high`` valid; narrow it towards the site's sigma
        middle = (low + high) / 2.0
        if _spent(dp, delta, middle, sample_rate, total_steps) > goal:
            low = middle
        else:
            high = middle
    return high


@functools.lru_cache(maxsize=1024)
def _run_epsilon(dp: DPConfig, delta: float, sample_rate: float, total_steps: int, steps: int) -> float:
    sigma = sigma_at_least(dp, delta, sample_rate, total_steps)
    return _spent(dp, delta, sigma, sample_rate, steps)


def epsilon_floor(*, dp: DPConfig, fed: FederationConfig, delta: float, examples: int,
                  rounds_trained: int) -> float:
    """The least cumulative epsilon of a site that trained ``rounds_trained`` rounds of this run.

    Args:
        dp: The round's DP settings (:func:`dp_settings`).
        fed: The run (its rounds and local steps give the calibration's total steps).
        delta: The site's delta, as it reported it.
        examples: The site's bucketed patient count, as it reported it.
        rounds_trained: Rounds of this run the site trained, this one included.
    """
    if rounds_trained <= 0:
        return 0.0
    total = fed.num_server_rounds * fed.local_steps
    steps = min(rounds_trained, fed.num_server_rounds) * fed.local_steps
    return (1.0 - FLOOR_SLACK) * min(_run_epsilon(dp, delta, q, total, steps)
                                     for q in sample_rates(examples, dp.patients_per_step))

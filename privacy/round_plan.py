"""The DP plan of a training round, as the site runs it and as the server re-derives it.

:func:`plan_round` is the one call that plans a private round (a federated site's, and
``fedgenome train --dp``'s): the settings checked against the site, the sample rate
``q = patients-per-step / N`` (:func:`sample_rate_of`, the one place it is computed) and sigma,
calibrated so that all the planned steps reach the target epsilon (or the fixed noise multiplier).
A federated site plans with :func:`dp_settings` (the run's clip, batch and target epsilon, the
preset's grad-sample mode and accountant) over the run's :func:`run_steps`.

The server sees only the site's bucketed patient count ``n`` (a multiple of 50, so the true ``N``
lies in ``[n - 25, n + 25)``), its delta and the rounds it trained in this run. From these it
re-derives the least epsilon the site can truthfully claim (:func:`epsilon_floor`): the epsilon of
this run's rounds alone, minimised over the sample rates the bucket allows. Spending from earlier
runs only adds to it (composition never lowers epsilon), so a claim below the floor is false.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedgenome.configs.errors import ConfigError
from fedgenome.configs.schema import DPConfig, FederationConfig, Preset, SitePrivacy
from fedgenome.privacy.accounting import EPSILON_TOLERANCE, epsilon, plan_noise_multiplier
from fedgenome.privacy.mechanism import Mechanism
from fedgenome.shared.wire import BUCKET

#: Relative slack of the floor, for sample rates between the bucket's ends (epsilon was measured to
#: move monotonically with the patient count, not proven to).
FLOOR_SLACK = 0.01
SEARCH_STEPS = 5  # bisection steps of :func:`sigma_at_least`: sigma within 1/32 of its bracket


def dp_settings(preset: Preset, fed: FederationConfig) -> DPConfig:
    """The DP-SGD settings of a federated round: the run's, with the preset's mode and accountant."""
    return DPConfig(noise_multiplier=fed.noise_multiplier,
                    target_epsilon=fed.target_epsilon, max_grad_norm=fed.max_grad_norm,
                    patients_per_step=fed.patients_per_step,
                    grad_sample_mode=preset.privacy.grad_sample_mode,
                    accountant=preset.privacy.accountant)


def run_steps(fed: FederationConfig) -> int:
    """The private steps a site plans its noise over: every round's local steps."""
    return fed.num_server_rounds * fed.local_steps


def sample_rate_of(*, patients_per_step: int, patients: float) -> float:
    """The Poisson sample rate ``q = patients_per_step / patients``, at most 1.

    >>> sample_rate_of(patients_per_step=8, patients=200)
    0.04
    >>> sample_rate_of(patients_per_step=8, patients=5)
    1.0
    """
    return min(1.0, patients_per_step / patients)


def check_site_settings(site: SitePrivacy, dp: DPConfig, patients: int) -> None:
    """Delta must be below 1 / patients (or the guarantee says little), and q at most 1."""
    if dp.patients_per_step > patients:
        raise ConfigError(f"privacy.patients_per_step = {dp.patients_per_step} exceeds the "
                          f"{patients} patients of the site; lower it")
    if site.delta >= 1.0 / patients:
        raise ConfigError(f"privacy.delta = {site.delta:g} is not below 1 / {patients} patients; "
                          f"set it below {1.0 / patients:.2g} in the site's site.toml")


def evaluation_reserve(fed: FederationConfig) -> tuple[Mechanism, ...]:
    """The private evaluations a site of run ``fed`` will release (:mod:`fedgenome.privacy.evaluation`).

    One unsampled Gaussian release every ``site-eval-every`` rounds; a calibrated site reserves
    their epsilon, so that training and evaluations together reach the target.
    """
    if fed.site_eval_every == 0:
        return ()
    release = Mechanism(noise_multiplier=fed.site_eval_noise, sample_rate=1.0, steps=1)
    return (release,) * (fed.num_server_rounds // fed.site_eval_every)


def noise_for(*, dp: DPConfig, site: SitePrivacy, sample_rate: float, total_steps: int,
              reserved: tuple[Mechanism, ...] = ()) -> float:
    """The configured sigma, or the one calibrated so ``total_steps`` (and ``reserved``) reach the target."""
    if dp.noise_multiplier is not None:
        return dp.noise_multiplier
    assert dp.target_epsilon is not None  # guaranteed by DPConfig validation
    return plan_noise_multiplier(target_epsilon=dp.target_epsilon, delta=site.delta,
                                 sample_rate=sample_rate, steps=total_steps, accountant=dp.accountant,
                                 reserved=reserved)


Calibrate = Callable[..., float]
""":func:`noise_for`'s signature (keywords ``dp``, ``site``, ``sample_rate``, ``total_steps``,
``reserved``)."""


@dataclass(frozen=True)
class RoundPlan:
    """A private round's plan: what it is trained and recorded with."""

    settings: DPConfig
    site: SitePrivacy
    patients: int
    sample_rate: float
    noise_multiplier: float
    total_steps: int
    """The steps sigma was calibrated over (all the run's rounds)."""

    def mechanism(self, steps: int) -> Mechanism:
        """The subsampled Gaussian mechanism of ``steps`` steps of this plan."""
        return Mechanism(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate,
                         steps=steps)


def plan_round(*, dp: DPConfig, site: SitePrivacy, patients: int, total_steps: int,
               calibrate: Calibrate = noise_for, reserved: tuple[Mechanism, ...] = ()) -> RoundPlan:
    """Plan a private round of a site with ``patients`` patients (one Poisson unit each).

    Args:
        dp: The round's DP settings (a federated site's: :func:`dp_settings`).
        site: The site's budget and delta.
        patients: The site's patients, the units sampled.
        total_steps: All the steps sigma is planned over (a federated run's: :func:`run_steps`).
        calibrate: Computes sigma (:func:`noise_for`; a ClientApp passes its cached one).
        reserved: Releases the same budget also pays for (:func:`evaluation_reserve`).

    Raises:
        ConfigError: More patients per step than patients, or a delta not below 1 / patients.
    """
    check_site_settings(site, dp, patients)
    q = sample_rate_of(patients_per_step=dp.patients_per_step, patients=patients)
    sigma = calibrate(dp=dp, site=site, sample_rate=q, total_steps=total_steps, reserved=reserved)
    return RoundPlan(settings=dp, site=site, patients=patients, sample_rate=q,
                     noise_multiplier=sigma, total_steps=total_steps)


def sample_rates(examples: int, patients_per_step: int, *, points: int = 2) -> list[float]:
    """Sample rates a site whose bucketed patient count is ``examples`` may run at (the ends)."""
    low, high = max(1, examples - BUCKET // 2), examples + BUCKET // 2 - 1
    return sorted({sample_rate_of(patients_per_step=patients_per_step, patients=float(n))
                   for n in np.linspace(low, high, points)})


def _spent(dp: DPConfig, delta: float, sigma: float, sample_rate: float, steps: int,
           reserved: tuple[Mechanism, ...] = ()) -> float:
    history = [Mechanism(noise_multiplier=sigma, sample_rate=sample_rate, steps=steps), *reserved]
    return epsilon(history=history, delta=delta, accountant=dp.accountant)


@functools.lru_cache(maxsize=256)
def sigma_at_least(*, dp: DPConfig, delta: float, sample_rate: float, total_steps: int,
                   reserved: tuple[Mechanism, ...] = ()) -> float:
    """A sigma no smaller than the one the site calibrates (or the run's fixed noise multiplier).

    The site's calibrated sigma spends at least ``target - EPSILON_TOLERANCE`` over the run's steps
    (:func:`fedgenome.privacy.accounting.plan_noise_multiplier`); any sigma that spends no more than that is
    at least as large. A coarse search finds one in a few accountant calls: less noise than the
    site's would make the floor too high, more only makes it a little lower.

    The search is this module's own, over the site's own accountant (:func:`epsilon`):
    ``dp_accounting.calibrate_dp_mechanism`` needs one of dp_accounting's accountants, and its RDP
    accountant (other orders, other conversion to epsilon) is not the Opacus one the site
    calibrates with, so a sigma it accepts need not spend less than the site's under Opacus.
    ``reserved`` are the releases the site's calibration reserved (:func:`evaluation_reserve`).
    """
    if dp.noise_multiplier is not None:
        return dp.noise_multiplier
    assert dp.target_epsilon is not None  # guaranteed by DPConfig validation
    goal = dp.target_epsilon - EPSILON_TOLERANCE
    low, high = 0.0, 1.0
    while _spent(dp, delta, high, sample_rate, total_steps, reserved) > goal:
        low, high = high, 2.0 * high
    for _ in range(SEARCH_STEPS):  # keep ``high`` valid; narrow it towards the site's sigma
        middle = (low + high) / 2.0
        if _spent(dp, delta, middle, sample_rate, total_steps, reserved) > goal:
            low = middle
        else:
            high = middle
    return high


@functools.lru_cache(maxsize=1024)
def _run_epsilon(dp: DPConfig, delta: float, sample_rate: float, total_steps: int, steps: int,
                 reserved: tuple[Mechanism, ...]) -> float:
    """The training alone of ``steps`` steps at the least sigma: evaluations only add to it."""
    sigma = sigma_at_least(dp=dp, delta=delta, sample_rate=sample_rate, total_steps=total_steps,
                           reserved=reserved)
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
    total = run_steps(fed)
    steps = min(rounds_trained, fed.num_server_rounds) * fed.local_steps
    reserved = evaluation_reserve(fed)
    return (1.0 - FLOOR_SLACK) * min(_run_epsilon(dp, delta, q, total, steps, reserved)
                                     for q in sample_rates(examples, dp.patients_per_step))

"""Privacy accountants: the (ε, δ) spent by a history of subsampled-Gaussian mechanisms, and noise planning.

Three accountants are registered, by name:

* ``"rdp"``: Opacus' Rényi-DP accountant. Fast (about 0.05 s) and the most robust, but loose for few
  steps, and it cannot report ε below a floor (about 0.1 at δ = 1e-5) because its largest order is 63.
* ``"prv"``: Opacus' PRV accountant (Gopi et al.). Tight; it returns its upper bound, which is at most
  ``eps_error`` (0.01) above the estimate. It takes 0.1-1 s, much longer at large ε (20 s near ε = 400),
  and is known to fail numerically at large ε (Opacus #601, #604); a failure raises
  :class:`AccountingError` instead of falling back, so that the caller chooses what to use.
* ``"pld"``: Google's ``dp_accounting`` privacy-loss-distribution accountant, pessimistic estimate.
  ``value_discretization_interval`` is 1e-3: on the golden case (σ = 1.5, q = 0.04, 2,250 steps,
  δ = 1e-5) it gives ε = 6.7695 in 0.06 s, against 6.7688 in 0.5 s at 1e-4 and 6.8383 at 1e-2; the
  difference from 1e-4 stayed below 0.001 on the other settings measured (σ = 0.5 and 1, q = 0.01,
  100 and 1,000 steps), while 1e-4 is about ten times slower.

Every accountant returns 0.0 for a history without steps and ``math.inf`` when a step has no noise.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar

import numpy as np

from fedgenome.configs.errors import ConfigError, FedGenomeError
from fedgenome.privacy.mechanism import Mechanism

log = logging.getLogger(__name__)

#: One run of equal mechanisms, as Opacus' accountants store it: (noise multiplier, sample rate, steps).
HistoryEntry = tuple[float, float, int]

#: The stopping tolerance of the noise search: the planned ε lands in [target - tolerance, target].
EPSILON_TOLERANCE = 0.01

#: The noise search gives up above this noise multiplier (the same bound as Opacus' search).
MAX_NOISE_MULTIPLIER = 1e6


class AccountingError(FedGenomeError):
    """An accountant failed numerically (PRV at large ε, for instance); another accountant may work."""


def check_arguments(
    *,
    noise_multiplier: float | None = None,
    sample_rate: float | None = None,
    steps: int | None = None,
    delta: float | None = None,
    target_epsilon: float | None = None,
) -> None:
    """Check the privacy arguments that are given (not None) against their allowed ranges.

    Args:
        noise_multiplier: Gaussian noise standard deviation over the clipping norm; finite and >= 0.
        sample_rate: Poisson sampling rate of each step; in (0, 1].
        steps: number of steps; an integer >= 0.
        delta: the δ of (ε, δ)-DP; in (0, 1).
        target_epsilon: the ε to plan for; finite and > 0.

    Raises:
        ConfigError: an argument is out of range (or NaN); the message names it, its value and the range.
    """
    checks: tuple[tuple[str, float | None, str, Callable[[float], bool]], ...] = (
        ("noise_multiplier", noise_multiplier, "a finite number >= 0", lambda v: 0.0 <= v < math.inf),
        ("sample_rate", sample_rate, "in (0, 1]", lambda v: 0.0 < v <= 1.0),
        ("delta", delta, "in (0, 1)", lambda v: 0.0 < v < 1.0),
        ("target_epsilon", target_epsilon, "a finite number > 0", lambda v: 0.0 < v < math.inf),
    )
    for name, value, allowed, ok in checks:
        if value is not None and not ok(value):
            raise ConfigError(f"{name}={value} is out of range: it must be {allowed}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
        raise ConfigError(f"steps={steps} is out of range: it must be an integer >= 0")


def compact_history(history: Sequence[Mechanism]) -> list[HistoryEntry]:
    """Validate a history and run-length encode it, dropping mechanisms with zero steps.

    Args:
        history: the mechanisms, in the order they ran.

    Returns:
        ``(noise_multiplier, sample_rate, steps)`` entries, consecutive equal mechanisms merged.

    Raises:
        ConfigError: a mechanism has an argument out of range.
    """
    entries: list[HistoryEntry] = []
    for mechanism in history:
        sigma, q, steps = mechanism.noise_multiplier, mechanism.sample_rate, mechanism.steps
        check_arguments(noise_multiplier=sigma, sample_rate=q, steps=steps)
        if steps == 0:
            continue
        if entries and entries[-1][:2] == (sigma, q):
            entries[-1] = (sigma, q, entries[-1][2] + steps)
        else:
            entries.append((sigma, q, steps))
    return entries


class Accountant(ABC):
    """The ε of a history of subsampled-Gaussian mechanisms at a given δ."""

    name: ClassVar[str]

    def epsilon(self, history: Sequence[Mechanism], *, delta: float) -> float:
        """Return the ε that ``history`` spends at ``delta``.

        Args:
            history: the mechanisms, in the order they ran.
            delta: the δ of (ε, δ)-DP, in (0, 1).

        Returns:
            ε >= 0; 0.0 without steps, ``math.inf`` if a step had no noise.

        Raises:
            ConfigError: an argument is out of range.
            AccountingError: the accountant failed numerically.
        """
        check_arguments(delta=delta)
        entries = compact_history(history)
        if not entries:
            return 0.0
        if any(sigma == 0.0 for sigma, _, _ in entries):
            return math.inf
        start = time.perf_counter()
        eps = self._epsilon(entries, delta=delta)
        log.debug("%s: ε=%.4f for %s at δ=%g in %.3f s", self.name, eps, entries, delta,
                  time.perf_counter() - start)
        return eps

    @abstractmethod
    def _epsilon(self, entries: list[HistoryEntry], *, delta: float) -> float:
        """Return ε for a non-empty, validated history whose noise multipliers are all > 0."""


class RDPAccountant(Accountant):
    """Opacus' Rényi-DP accountant (orders up to 63)."""

    name = "rdp"

    def _epsilon(self, entries: list[HistoryEntry], *, delta: float) -> float:
        from opacus.accountants import RDPAccountant as OpacusRDP

        accountant = OpacusRDP()
        accountant.history = list(entries)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            eps = float(accountant.get_epsilon(delta=delta))
        for warning in caught:  # "Optimal order is the largest alpha", etc.: the bound is loose there
            log.debug("rdp: %s", warning.message)
        return eps


class PRVAccountant(Accountant):
    """Opacus' PRV accountant; returns its upper bound, at most ``eps_error`` above the estimate."""

    name = "prv"

    def __init__(self, *, eps_error: float = 0.01) -> None:
        self.eps_error = eps_error

    def _epsilon(self, entries: list[HistoryEntry], *, delta: float) -> float:
        from opacus.accountants import PRVAccountant as OpacusPRV

        accountant = OpacusPRV()
        accountant.history = list(entries)
        try:  # its domain sizing calls the RDP analysis, whose warnings would reach the user
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                eps = float(accountant.get_epsilon(delta=delta, eps_error=self.eps_error))
        except (ValueError, ArithmeticError, RuntimeError) as exc:
            raise AccountingError(_prv_failure(entries, delta, f"{type(exc).__name__}: {exc}")) from exc
        if not 0.0 <= eps < math.inf:
            raise AccountingError(_prv_failure(entries, delta, f"it returned ε={eps}"))
        return eps


def _prv_failure(entries: list[HistoryEntry], delta: float, why: str) -> str:
    """Return the one-line message for a PRV failure."""
    what = ", ".join(f"(σ={s:g}, q={q:g}, steps={n})" for s, q, n in entries)
    return (f"the prv accountant failed for {what} at δ={delta:g} ({why}); "
            "use the rdp or pld accountant instead")


class PLDAccountant(Accountant):
    """Google ``dp_accounting``'s privacy-loss-distribution accountant (pessimistic estimate)."""

    name = "pld"

    def __init__(self, *, value_discretization_interval: float = 1e-3) -> None:
        self.value_discretization_interval = value_discretization_interval

    def _epsilon(self, entries: list[HistoryEntry], *, delta: float) -> float:
        import dp_accounting
        from dp_accounting.pld import PLDAccountant as GooglePLD

        accountant = GooglePLD(value_discretization_interval=self.value_discretization_interval)
        for sigma, q, steps in entries:
            event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
            accountant.compose(event, steps)
        return float(accountant.get_epsilon(delta))


ACCOUNTANTS: dict[str, type[Accountant]] = {
    cls.name: cls for cls in (RDPAccountant, PRVAccountant, PLDAccountant)
}


def create_accountant(name: str) -> Accountant:
    """Return a new accountant of the given name, with its default settings.

    Args:
        name: a key of :data:`ACCOUNTANTS`.

    Raises:
        ConfigError: the name is unknown; the message lists the valid names.
    """
    try:
        cls = ACCOUNTANTS[name]
    except KeyError:
        valid = ", ".join(sorted(ACCOUNTANTS))
        raise ConfigError(f"accountant={name!r} is unknown; valid names: {valid}") from None
    return cls()


def epsilon(*, history: Sequence[Mechanism], delta: float, accountant: str = "rdp") -> float:
    """Return the ε that ``history`` spends at ``delta``, by the named accountant.

    Args:
        history: the mechanisms, in the order they ran.
        delta: the δ of (ε, δ)-DP, in (0, 1).
        accountant: ``"rdp"``, ``"prv"`` or ``"pld"``.

    Raises:
        ConfigError: an argument is out of range or the accountant is unknown.
        AccountingError: the accountant failed numerically.
    """
    return create_accountant(accountant).epsilon(history, delta=delta)


def plan_noise_multiplier(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "rdp",
    reserved: Sequence[Mechanism] = (),
) -> float:
    """Return the smallest noise multiplier (to a tolerance) whose ε after ``steps`` is at most the target.

    ``"rdp"`` and ``"prv"`` use Opacus' ``get_noise_multiplier``; ``"pld"`` uses the same search
    (doubling from σ = 20, then bisection) here. The ε reached lies in
    [target - :data:`EPSILON_TOLERANCE`, target]. With ``steps == 0`` nothing is spent and 0.0 is returned.

    Args:
        target_epsilon: the ε budget, > 0.
        delta: the δ of (ε, δ)-DP, in (0, 1).
        sample_rate: Poisson sampling rate of each step, in (0, 1].
        steps: the total number of steps the budget covers (all rounds' local steps), >= 0.
        accountant: ``"rdp"``, ``"prv"`` or ``"pld"``.
        reserved: mechanisms the same budget must also pay for (a site's planned private
            evaluations); ε is then that of the steps composed with them, found by this module's
            search (doubling, then bisection) whatever the accountant.

    Raises:
        ConfigError: an argument is out of range, or the target cannot be reached at any noise level.
        AccountingError: the accountant failed numerically.
    """
    check_arguments(target_epsilon=target_epsilon, delta=delta, sample_rate=sample_rate, steps=steps)
    acc = create_accountant(accountant)
    if steps == 0:
        return 0.0
    start = time.perf_counter()
    if reserved and (spent := acc.epsilon(list(reserved), delta=delta)) >= target_epsilon:
        raise ConfigError(f"the {len(reserved)} reserved releases (the sites' planned private evaluations) "
                          f"alone spend ε={spent:.3f}, not below target_epsilon={target_epsilon:g}: raise "
                          "site-eval-noise or site-eval-every, or the target epsilon")
    if accountant == "pld" or reserved:
        sigma = _search_noise(acc, target_epsilon=target_epsilon, delta=delta,
                              sample_rate=sample_rate, steps=steps, reserved=reserved)
    else:
        sigma = _opacus_noise(acc, target_epsilon=target_epsilon, delta=delta,
                              sample_rate=sample_rate, steps=steps)
    reached = acc.epsilon([Mechanism(sigma, sample_rate, steps), *reserved], delta=delta)
    if not reached <= target_epsilon:
        raise AccountingError(f"the {accountant} accountant's noise search returned σ={sigma:g}, whose "
                              f"ε={reached:.4f} exceeds target_epsilon={target_epsilon:g}; "
                              "use another accountant")
    log.debug("%s: σ=%.6g reaches ε=%.4f (target %g) in %.2f s", accountant, sigma, reached,
              target_epsilon, time.perf_counter() - start)
    return sigma


def _opacus_noise(acc: Accountant, *, target_epsilon: float, delta: float, sample_rate: float,
                  steps: int) -> float:
    """Run Opacus' noise search, turning its failures into one-line errors."""
    from opacus.accountants.utils import get_noise_multiplier

    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            return float(get_noise_multiplier(
                target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
                steps=steps, accountant=acc.name, epsilon_tolerance=EPSILON_TOLERANCE))
    except ValueError as exc:
        if "budget is too low" in str(exc):
            raise ConfigError(_unreachable(acc, target_epsilon=target_epsilon, delta=delta,
                                           sample_rate=sample_rate, steps=steps)) from exc
        raise AccountingError(f"the {acc.name} accountant's noise search failed for "
                              f"target_epsilon={target_epsilon:g} ({exc}); use another accountant") from exc
    except (ArithmeticError, RuntimeError) as exc:
        raise AccountingError(f"the {acc.name} accountant's noise search failed for "
                              f"target_epsilon={target_epsilon:g} ({type(exc).__name__}: {exc}); "
                              "use another accountant") from exc


def _search_noise(acc: Accountant, *, target_epsilon: float, delta: float, sample_rate: float,
                  steps: int, reserved: Sequence[Mechanism] = ()) -> float:
    """Opacus' search with any accountant: double σ from 20 until ε <= target, then bisect.

    Not ``dp_accounting.calibrate_dp_mechanism``: its tolerance is in σ, not ε, so it does not keep
    the promise that ε lands in [target - :data:`EPSILON_TOLERANCE`, target] (σ = 0.391 for
    ε = 8 at q = 0.01, 10 steps, δ = 1e-5 reaches only ε = 7.957 at tol 1e-3), and with the PLD
    accountant it took 9-49 s where this search takes 0.5-4 s (dp-accounting 0.6.0, bracket
    [0.05, 20]: small σ are costly to discretise).
    """

    def eps_at(sigma: float) -> float:
        return acc.epsilon([Mechanism(sigma, sample_rate, steps), *reserved], delta=delta)

    low, high = 0.0, 20.0
    eps_high = eps_at(high)
    while eps_high > target_epsilon:
        if high >= MAX_NOISE_MULTIPLIER:
            raise ConfigError(_unreachable(acc, target_epsilon=target_epsilon, delta=delta,
                                           sample_rate=sample_rate, steps=steps))
        low, high = high, min(2.0 * high, MAX_NOISE_MULTIPLIER)
        eps_high = eps_at(high)
    for _ in range(100):  # a bound for safety: ε(σ) is continuous, so bisection converges long before
        if target_epsilon - eps_high <= EPSILON_TOLERANCE:
            break
        mid = (low + high) / 2.0
        eps = eps_at(mid)
        if eps < target_epsilon:
            high, eps_high = mid, eps
        else:
            low = mid
    return high


def _unreachable(acc: Accountant, *, target_epsilon: float, delta: float, sample_rate: float,
                 steps: int) -> str:
    """Return the one-line message for a target that no noise multiplier up to the maximum reaches."""
    try:
        floor = acc.epsilon([Mechanism(MAX_NOISE_MULTIPLIER, sample_rate, steps)], delta=delta)
        why = f"even σ={MAX_NOISE_MULTIPLIER:g} gives ε={floor:.3f}"
    except AccountingError:
        why = f"no σ up to {MAX_NOISE_MULTIPLIER:g} gets there"
    if acc.name == "rdp":
        why += " (the RDP floor: its largest order is 63)"
    return (f"target_epsilon={target_epsilon:g} is unreachable with the {acc.name} accountant at "
            f"δ={delta:g}, q={sample_rate:g}, steps={steps}: {why}; raise the target epsilon or delta, "
            "or use fewer steps or a lower sample rate")

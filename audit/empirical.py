"""Empirical privacy: a one-run lower bound on epsilon from canary guesses, and canary exposure.

**One-run auditing** (Steinke, Nasr & Jagielski, "Privacy Auditing with One (1) Training Run",
NeurIPS 2023, arXiv:2305.08846). Each of m canaries is included in training independently with
probability 1/2. After training the auditor scores every canary (higher = more likely trained on),
guesses "in" for the k+ highest scores and "out" for the k- lowest, and abstains on the rest: r =
k+ + k- guesses, v of them correct. If training is (ε, δ)-DP with respect to each canary, the
paper's approximate-DP result (Theorem 5.2, evaluated as Corollary 5.4, in the numbering of
arXiv v1) bounds the chance of v or more correct guesses by::

    p(ε, δ) = P[W >= v] + 2 m δ · max_{i = 1..v} P[v > W >= v - i] / i,   W ~ Binomial(r, e^ε / (1 + e^ε))

which is their Appendix D's ``p_value_DP_audit``. With δ = 0 it is the Binomial tail of their
pure-DP result (Theorem 3.1): ε-DP guesses are no better than ε-randomised response. An observed v
with p(ε, δ) <= β rejects "(ε, δ)-DP" at level β, so :func:`epsilon_lower_bound` is the largest such ε,
found by bisection as in their ``get_eps_audit``. It is a lower bound with probability at least
1 - β over the inclusion draw and the training randomness.

**Choosing k+ and k-.** The bound is valid for (k+, k-) fixed before looking at the inclusion bits.
The paper's experiments report the best of several choices, which the theorem alone does not
cover; here trying G choices spends β / G on each (Bonferroni), so the best of them is still a
valid lower bound at level β (:func:`one_run_audit`).

**Exposure** (Carlini et al., "The Secret Sharer", USENIX Security 2019): a canary's rank by loss
among candidates drawn like it, log2(candidates) - log2(rank). Here the candidates are the canary
itself plus |R| reference sequences that were never planted, so exposure runs from 0 (every
reference has lower loss) to log2(|R| + 1) (the canary has the lowest loss of all). It estimates
the paper's exposure over the whole candidate space (4^L sequences of length L), but cannot exceed
log2(|R| + 1): with 2,000 references, about 11 bits.

Pure math: no torch and no Flower.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

#: The default significance level of the audit: the bound holds with probability 0.95.
BETA = 0.05

#: Fractions of m/2 tried as k+ = k- by :func:`guess_choices` (each at level β / their number).
GUESS_FRACTIONS = (0.1, 0.25, 0.5, 1.0)

_BISECTION_TOLERANCE = 1e-7


@dataclass(frozen=True)
class GuessOutcome:
    """One choice of (k+, k-): how many guesses it made and how many were right."""

    k_plus: int
    k_minus: int
    guesses: int
    correct: int
    epsilon: float  # the lower bound this choice gives at the audit's per-choice level


@dataclass(frozen=True)
class OneRunAudit:
    """An empirical lower bound on ε at δ from one training run (the best of ``choices``)."""

    epsilon: float
    m: int
    included: int
    guesses: int
    correct: int
    k_plus: int
    k_minus: int
    delta: float
    beta: float  # family-wise level: the bound holds with probability >= 1 - beta
    level: float  # beta / len(choices), the level each choice was tested at
    choices: tuple[GuessOutcome, ...]


@dataclass(frozen=True)
class Exposure:
    """A canary's rank among the candidates (itself plus the references) and its exposure in bits."""

    rank: int
    """1 when the canary scores better (lower loss) than every reference sequence."""
    candidates: int
    """The canary plus the reference sequences it was ranked among."""

    @property
    def exposure(self) -> float:
        """log2(candidates / rank): how many bits the model gives away about the canary."""
        return math.log2(self.candidates) - math.log2(self.rank)


def _softplus(x: float) -> float:
    """log(1 + e^x) without overflow."""
    return x + math.log1p(math.exp(-x)) if x > 0 else math.log1p(math.exp(x))


def _binomial_pmf(trials: int, epsilon: float) -> list[float]:
    """P[W = k] for k = 0..trials, W ~ Binomial(trials, e^ε / (1 + e^ε)), computed in log space."""
    log_q, log_not_q = -_softplus(-epsilon), -_softplus(epsilon)
    top = math.lgamma(trials + 1)
    return [math.exp(top - math.lgamma(k + 1) - math.lgamma(trials - k + 1)
                     + k * log_q + (trials - k) * log_not_q) for k in range(trials + 1)]


def _check_counts(m: int, guesses: int, correct: int) -> None:
    if not 0 <= correct <= guesses <= m:
        raise ValueError(f"need 0 <= correct <= guesses <= m, got correct={correct}, "
                         f"guesses={guesses}, m={m}")


def binomial_tail(*, trials: int, successes: int, epsilon: float) -> float:
    """P[W >= successes] for W ~ Binomial(trials, e^ε / (1 + e^ε)): the pure ε-DP p-value.

    >>> round(binomial_tail(trials=2, successes=2, epsilon=0.0), 6)
    0.25
    """
    if successes <= 0:
        return 1.0
    return min(math.fsum(_binomial_pmf(trials, epsilon)[successes:]), 1.0)


def p_value(*, m: int, guesses: int, correct: int, epsilon: float, delta: float) -> float:
    """The chance of ``correct`` or more right guesses out of ``guesses`` under (ε, δ)-DP.

    Steinke et al.'s approximate-DP bound (Theorem 5.2 / Corollary 5.4 of arXiv:2305.08846v1;
    Appendix D's ``p_value_DP_audit``), for m canaries each included with probability 1/2.

    Args:
        m: Number of canaries (guessed on or not).
        guesses: Guesses made (abstentions excluded), r.
        correct: Correct guesses, v.
        epsilon: The ε of the null hypothesis "training is (ε, δ)-DP"; >= 0.
        delta: Its δ, in [0, 1]; 0 gives the Binomial tail of the pure-DP theorem.

    Returns:
        The p-value, at most 1.

    Raises:
        ValueError: The counts are inconsistent, or ε or δ is out of range.
    """
    _check_counts(m, guesses, correct)
    if not (epsilon >= 0.0 and math.isfinite(epsilon)) or not 0.0 <= delta <= 1.0:
        raise ValueError(f"need a finite epsilon >= 0 and delta in [0, 1], got {epsilon}, {delta}")
    pmf = _binomial_pmf(guesses, epsilon)
    tail = math.fsum(pmf[correct:]) if correct > 0 else 1.0
    if delta == 0.0:
        return min(tail, 1.0)
    alpha, below = 0.0, 0.0  # below = P[v > W >= v - i]
    for i in range(1, correct + 1):
        below += pmf[correct - i]
        alpha = max(alpha, below / i)
    return min(tail + alpha * delta * 2 * m, 1.0)


def epsilon_lower_bound(*, m: int, guesses: int, correct: int, delta: float,
                        beta: float = BETA) -> float:
    """The largest ε that ``correct`` right guesses out of ``guesses`` reject at level ``beta``.

    0.0 when even ε = 0 is not rejected (guesses no better than chance).

    >>> round(epsilon_lower_bound(m=1000, guesses=100, correct=75, delta=1e-4, beta=0.05), 3)
    0.673
    """
    if not 0.0 < beta < 1.0:
        raise ValueError(f"beta={beta} must be in (0, 1)")

    def rejected(eps: float) -> bool:
        return p_value(m=m, guesses=guesses, correct=correct, epsilon=eps, delta=delta) <= beta

    if not rejected(0.0):
        return 0.0
    lo, hi = 0.0, 1.0
    while rejected(hi):
        lo, hi = hi, hi * 2.0
    while hi - lo > _BISECTION_TOLERANCE * max(1.0, hi):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if rejected(mid) else (lo, mid)
    return lo


def membership_guesses(scores: Sequence[float], *, k_plus: int, k_minus: int) -> tuple[int, ...]:
    """+1 ("in") for the ``k_plus`` highest scores, -1 for the ``k_minus`` lowest, 0 otherwise.

    Ties are broken by index, which is independent of the inclusion draw.

    >>> membership_guesses([0.1, 0.9, 0.5, 0.2], k_plus=1, k_minus=1)
    (-1, 1, 0, 0)
    """
    if k_plus < 0 or k_minus < 0 or k_plus + k_minus > len(scores):
        raise ValueError(f"k_plus={k_plus} and k_minus={k_minus} must be >= 0 and add up to at "
                         f"most the {len(scores)} canaries")
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    guesses = [0] * len(scores)
    for i in order[:k_plus]:
        guesses[i] = 1
    for i in order[len(order) - k_minus:] if k_minus else ():
        guesses[i] = -1
    return tuple(guesses)


def count_correct(guesses: Sequence[int], included: Sequence[bool]) -> tuple[int, int]:
    """(guesses made, guesses right) against the inclusion bits."""
    if len(guesses) != len(included):
        raise ValueError(f"{len(guesses)} guesses for {len(included)} canaries")
    made = sum(1 for g in guesses if g != 0)
    right = sum(1 for g, s in zip(guesses, included, strict=True) if g != 0 and (g > 0) == bool(s))
    return made, right


def guess_choices(m: int, fractions: Sequence[float] = GUESS_FRACTIONS) -> tuple[tuple[int, int], ...]:
    """(k+, k-) pairs with k+ = k- = fraction · m / 2 (at least 1), without duplicates."""
    ks = sorted({min(max(1, round(f * m / 2)), m // 2) for f in fractions} - {0})
    return tuple((k, k) for k in ks)


def one_run_audit(*, scores: Sequence[float], included: Sequence[bool], delta: float,
                  beta: float = BETA, choices: Sequence[tuple[int, int]] | None = None) -> OneRunAudit:
    """The empirical ε lower bound at ``delta``: the best over ``choices``, each at level β / G.

    Args:
        scores: One membership score per canary, higher meaning "more likely trained on" (e.g.
            minus the model's loss on it).
        included: The auditor's inclusion bits (each drawn with probability 1/2).
        delta: The δ of the guarantee being audited (the site's).
        beta: Family-wise significance: the bound holds with probability >= 1 - beta.
        choices: (k+, k-) pairs fixed in advance; default :func:`guess_choices` of m.

    Returns:
        The best choice's bound, counts and every choice's outcome.
    """
    m = len(scores)
    picks = tuple(choices) if choices is not None else guess_choices(m)
    if not picks:
        raise ValueError("need at least one (k_plus, k_minus) choice and one canary")
    level = beta / len(picks)
    outcomes = []
    for k_plus, k_minus in picks:
        made, right = count_correct(membership_guesses(scores, k_plus=k_plus, k_minus=k_minus), included)
        eps = epsilon_lower_bound(m=m, guesses=made, correct=right, delta=delta, beta=level)
        outcomes.append(GuessOutcome(k_plus, k_minus, made, right, eps))
    best = max(outcomes, key=lambda o: (o.epsilon, o.correct))
    return OneRunAudit(epsilon=best.epsilon, m=m, included=sum(bool(s) for s in included),
                       guesses=best.guesses, correct=best.correct, k_plus=best.k_plus,
                       k_minus=best.k_minus, delta=delta, beta=beta, level=level,
                       choices=tuple(outcomes))


def exposures(losses: Sequence[float], reference_losses: Sequence[float]) -> tuple[Exposure, ...]:
    """Each canary's exposure against the references (never planted, drawn like the canaries).

    rank = 1 + the number of references whose loss is at most the canary's (ties count against
    the canary); exposure = log2(|R| + 1) - log2(rank).

    >>> exposures([0.5], [1.0, 2.0, 3.0])[0].exposure
    2.0
    """
    if not reference_losses:
        raise ValueError("exposure needs at least one reference sequence")
    ordered = sorted(reference_losses)
    candidates = len(ordered) + 1
    out = []
    for loss in losses:
        rank = 1 + bisect_right(ordered, loss)
        out.append(Exposure(rank, candidates))
    return tuple(out)

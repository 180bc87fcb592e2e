"""The server's check of each site's claimed epsilon against the mechanism it asked the site to run.

A site's reply carries its cumulative epsilon (over its whole ledger), its budget and delta, and
its bucketed patient count. The server refuses a claim that cannot be true:

* epsilon negative or not finite, a budget not finite or not positive, a delta outside (0, 1);
* epsilon below what the site claimed in an earlier round of this run (it never decreases);
* epsilon above the budget in a round the site says it trained (it would have had to refuse);
* epsilon below :func:`fedgenome.privacy.round_plan.epsilon_floor`: less than the rounds of this run it
  trained can have cost at the sample rates its bucket allows.

What it cannot catch: a claim between the floor and the truth (the floor is computed for the
most favourable sample rate of the bucket, and a site's spending before this run is unknown to
the server). The site's signed ledger remains the record an auditor checks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from fedgenome.configs.schema import FederationConfig, Preset
from fedgenome.privacy.round_plan import dp_settings, epsilon_floor
from fedgenome.server.report import RoundRecord
from fedgenome.server.validation import UpdateRejected
from fedgenome.shared import wire

TOLERANCE = 1e-6  # relative: what float rounding on the way may change


@dataclass(frozen=True)
class PrivacyClaim:
    """The privacy figures of one reply."""

    trained: bool
    epsilon: float
    budget: float
    delta: float
    examples: int


@dataclass
class EpsilonCheck:
    """What the server has seen of each site's spending in this run, and the claims it refuses."""

    fed: FederationConfig
    preset: Preset
    last: dict[str, float] = field(default_factory=dict)  # site -> epsilon it claimed last
    trained: dict[str, int] = field(default_factory=dict)  # site -> rounds of this run it trained

    @classmethod
    def of_report(cls, fed: FederationConfig, preset: Preset,
                  rounds: Sequence[RoundRecord]) -> EpsilonCheck:
        """The check with the history of the run's report (so a resumed run keeps it)."""
        check = cls(fed, preset)
        for record in rounds:
            check.last.update(record.epsilon)
            for name in record.trained:
                check.trained[name] = check.trained.get(name, 0) + 1
        return check

    def check(self, site: str, claim: PrivacyClaim) -> None:
        """UpdateRejected naming the problem when ``claim`` cannot be true."""
        eps = claim.epsilon
        if not (math.isfinite(eps) and eps >= 0.0):
            raise UpdateRejected(f"epsilon {eps} is not a finite non-negative number")
        if not (math.isfinite(claim.budget) and claim.budget > 0.0) or not 0.0 < claim.delta < 1.0:
            raise UpdateRejected(f"budget {claim.budget} or delta {claim.delta} is out of range")
        earlier = self.last.get(site, 0.0)
        if eps < earlier * (1.0 - TOLERANCE):
            raise UpdateRejected(f"epsilon {eps:.6g} is below the {earlier:.6g} it claimed before in "
                                 "this run: spent privacy never decreases")
        if claim.trained and eps > claim.budget * (1.0 + TOLERANCE):
            raise UpdateRejected(f"epsilon {eps:.6g} is above its budget {claim.budget:.6g} in a "
                                 "round it trained")
        rounds = self.trained.get(site, 0) + int(claim.trained)
        floor = epsilon_floor(dp=dp_settings(self.preset, self.fed), fed=self.fed, delta=claim.delta,
                              examples=min(max(claim.examples, wire.BUCKET), int(self.fed.max_examples)),
                              rounds_trained=rounds)
        if eps < floor:
            raise UpdateRejected(f"epsilon {eps:.6g} is below {floor:.6g}, the least that {rounds} "
                                 f"round(s) of this run cost at {claim.examples} patients and delta "
                                 f"{claim.delta:g}")

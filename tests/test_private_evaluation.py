"""A site's private evaluation: its clipping bounds the sensitivity it claims, its noise is that
sensitivity times sigma, and it is accounted, refused and audited like a training round."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest

from fedgenome.audit.results import KeyLookup
from fedgenome.audit.verify import audit_ledger
from fedgenome.configs.errors import LedgerError
from fedgenome.configs.schema import SitePrivacy
from fedgenome.privacy.accounting import epsilon
from fedgenome.privacy.evaluation import SENSITIVITY, query, release, run_private_evaluation
from fedgenome.privacy.keys import generate_key
from fedgenome.privacy.ledger.core import Ledger
from fedgenome.privacy.ledger.entry import value_problem
from fedgenome.privacy.mechanism import Mechanism

RUN = "b" * 32
CLIP = 3.0
TRAIN = Mechanism(noise_multiplier=1.1, sample_rate=0.05, steps=5)


def test_one_patient_moves_the_query_by_at_most_the_sensitivity() -> None:
    rng = np.random.default_rng(7)
    bits = np.concatenate([rng.uniform(-1.0, 6.0, 200), [CLIP, 0.0, 100.0]])  # some beyond the clip
    full = query(bits, clip=CLIP)
    moves = [np.linalg.norm(full - query(np.delete(bits, i), clip=CLIP)) for i in range(len(bits))]
    moves += [np.linalg.norm(query(np.append(bits, extra), clip=CLIP) - full) for extra in (1e9, -5.0, 1.5)]
    assert max(moves) <= SENSITIVITY + 1e-12
    assert max(moves) == pytest.approx(SENSITIVITY)  # attained by a patient at (or past) the clip
    assert min(moves) == pytest.approx(1.0)  # a patient at 0 bits changes the count only


def test_the_noise_is_sigma_times_the_sensitivity_on_each_coordinate() -> None:
    bits, sigma = np.full(85, 1.9), 0.8
    exact = query(bits, clip=CLIP)
    rng = np.random.default_rng(11)
    draws = np.array([[r.noisy_sum, r.noisy_count] for r in (
        release(bits, clip=CLIP, noise_multiplier=sigma, rng=rng) for _ in range(20_000))]) - exact
    assert np.abs(draws.mean(axis=0)).max() < 0.03
    assert draws.std(axis=0) == pytest.approx([sigma * SENSITIVITY] * 2, rel=0.03)
    assert abs(np.corrcoef(draws.T)[0, 1]) < 0.03  # independent coordinates
    low = release(bits, clip=CLIP, noise_multiplier=1e-9, rng=rng)
    assert low.bits_per_base == pytest.approx(1.9)  # the estimate, without noise to speak of


@pytest.mark.parametrize(("patients", "bits", "sigma"), [(85, 1.9, 2.0), (181, 1.7, 4.0), (400, 2.4, 1.0)])
def test_the_stated_noise_std_is_the_spread_of_the_released_bits(patients: int, bits: float,
                                                                  sigma: float) -> None:
    """What a site reports beside its bits (computed from the release alone) is their noise's std."""
    rng = np.random.default_rng(13)
    cohort = np.full(patients, bits)
    got = [release(cohort, clip=CLIP, noise_multiplier=sigma, rng=rng) for _ in range(20_000)]
    spread = np.std([r.bits_per_base for r in got])
    assert np.mean([r.noise_std(sigma) for r in got]) == pytest.approx(spread, rel=0.05)


def _trained(ledger: Ledger, round_: int) -> None:
    eps = epsilon(history=[*ledger.mechanisms(), TRAIN], delta=1e-5, accountant="rdp")
    ledger.append(round=round_, status="trained", local_steps=5, sample_rate=0.05, noise_multiplier=1.1,
                  max_grad_norm=1.0, delta=1e-5, accountant="rdp", epsilon=eps, run_key=RUN,
                  update_sha256=hashlib.sha256(str(round_).encode()).hexdigest())


def test_an_evaluation_is_accounted_in_the_ledger_and_audited(tmp_path: Path) -> None:
    key = generate_key()
    ledger = Ledger(tmp_path / "ledger.jsonl", site="s", private_key=key)
    _trained(ledger, 1)
    asked: list[int] = []

    def bits() -> np.ndarray:
        asked.append(1)
        return np.full(50, 1.95)

    out = run_private_evaluation(per_patient_bits=bits,
                                 ledger=ledger, site=SitePrivacy(epsilon_budget=8.0), accountant="rdp",
                                 noise_multiplier=4.0, round=1, run_key=RUN,
                                 rng=np.random.default_rng(3))
    expected = epsilon(history=[TRAIN, Mechanism(4.0, 1.0, 1)], delta=1e-5, accountant="rdp")
    assert out.status == "evaluated" and out.release is not None and asked == [1]
    entry = ledger.entries[-1]
    assert (entry.status, entry.mechanism, entry.max_grad_norm) == ("evaluated", Mechanism(4.0, 1.0, 1), 3.0)
    assert entry.epsilon == out.epsilon == expected > ledger.entries[0].epsilon
    found = audit_ledger(ledger.path, site="s", key=KeyLookup(key.public_key(), "test"))
    last = found.entries[-1]
    assert found.problems == () and last.status == "evaluated" and last.opacus == pytest.approx(expected)
    assert last.dp_accounting is not None and last.dp_accounting <= expected  # PLD is the tighter one
    with pytest.raises(LedgerError, match="already evaluated"):  # the same (run, round) spends once
        run_private_evaluation(per_patient_bits=lambda: np.full(50, 1.95), ledger=ledger,
                               site=SitePrivacy(), accountant="rdp", noise_multiplier=4.0, round=1,
                               run_key=RUN)


def test_an_evaluation_past_the_budget_is_refused_without_reading_the_data(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.jsonl", site="s", private_key=generate_key())
    _trained(ledger, 1)
    spent = ledger.epsilon

    def never() -> np.ndarray:
        raise AssertionError("a refused evaluation must not look at the patients")

    out = run_private_evaluation(per_patient_bits=never, ledger=ledger,
                                 site=SitePrivacy(epsilon_budget=spent + 0.01), accountant="rdp",
                                 noise_multiplier=0.5, round=2, run_key=RUN)
    assert out.status == "refused" and out.release is None and out.planned_epsilon > spent + 0.01
    assert (ledger.entries[-1].status, ledger.epsilon) == ("refused", spent)


def test_an_evaluated_entry_must_be_one_unsampled_release_of_schema_3(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.jsonl", site="s", private_key=generate_key())
    run_private_evaluation(per_patient_bits=lambda: np.full(10, 2.0), ledger=ledger, site=SitePrivacy(),
                           accountant="rdp", noise_multiplier=4.0, round=1)
    good = ledger.entries[0]
    assert value_problem(good) is None
    for change, needle in [({"schema": 2}, "needs schema 3"), ({"local_steps": 2}, "one release"),
                           ({"sample_rate": 0.5}, "one release"), ({"max_grad_norm": 0.0}, "clipping bound")]:
        problem = value_problem(dataclasses.replace(good, **change))
        assert problem is not None and needle in problem, (change, problem)


def test_a_calibrated_site_reserves_its_evaluations_in_the_budget() -> None:
    from fedgenome.configs.errors import ConfigError
    from fedgenome.privacy.accounting import EPSILON_TOLERANCE, plan_noise_multiplier

    reserved = (Mechanism(3.0, 1.0, 1),) * 4
    plain = plan_noise_multiplier(target_epsilon=8.0, delta=1e-5, sample_rate=0.05, steps=100)
    sigma = plan_noise_multiplier(target_epsilon=8.0, delta=1e-5, sample_rate=0.05, steps=100,
                                  reserved=reserved)
    total = epsilon(history=[Mechanism(sigma, 0.05, 100), *reserved], delta=1e-5)
    assert 8.0 - EPSILON_TOLERANCE <= total <= 8.0 and sigma > plain  # less room: more noise
    with pytest.raises(ConfigError, match=r"alone spend .* raise site-eval-noise"):
        plan_noise_multiplier(target_epsilon=1.0, delta=1e-5, sample_rate=0.05, steps=100,
                              reserved=(Mechanism(0.5, 1.0, 1),))

"""The DP plan of a round (privacy/round_plan.py): one call, one sample rate, keyword-only."""

from __future__ import annotations

import pytest

from fedgenome.configs.errors import ConfigError
from fedgenome.configs.schema import DPConfig, FederationConfig, SitePrivacy, load_preset
from fedgenome.privacy.accounting import epsilon
from fedgenome.privacy.round_plan import dp_settings, noise_for, plan_round, run_steps, sample_rate_of

SITE = SitePrivacy(delta=1e-5)


def test_a_fixed_noise_multiplier_is_the_plan_and_q_is_patients_per_step_over_patients() -> None:
    plan = plan_round(dp=DPConfig(noise_multiplier=0.7, patients_per_step=8), site=SITE, patients=200,
                      total_steps=10)
    assert (plan.noise_multiplier, plan.sample_rate, plan.patients, plan.total_steps) == (0.7, 0.04, 200, 10)
    assert plan.mechanism(3).steps == 3 and plan.mechanism(3).sample_rate == 0.04


def test_the_calibrated_sigma_reaches_the_target_over_all_the_run_steps() -> None:
    fed = FederationConfig(num_server_rounds=4, local_steps=5, patients_per_step=8, target_epsilon=4.0)
    dp = dp_settings(load_preset("tiny"), fed)
    plan = plan_round(dp=dp, site=SITE, patients=120, total_steps=run_steps(fed))
    assert plan.total_steps == 20
    assert plan.noise_multiplier == noise_for(dp=dp, site=SITE, sample_rate=8 / 120, total_steps=20)
    spent = epsilon(history=[plan.mechanism(20)], delta=SITE.delta, accountant=dp.accountant)
    assert 4.0 - 0.01 <= spent <= 4.0


def test_the_plan_uses_the_calibration_it_is_given() -> None:
    calls = []

    def calibrate(**kwargs: object) -> float:
        calls.append(kwargs)
        return 2.5

    plan = plan_round(dp=DPConfig(target_epsilon=1.0, patients_per_step=4), site=SITE, patients=100,
                      total_steps=7, calibrate=calibrate)
    assert plan.noise_multiplier == 2.5
    assert calls == [{"dp": plan.settings, "site": SITE, "sample_rate": 0.04, "total_steps": 7,
                      "reserved": ()}]


@pytest.mark.parametrize(("patients", "site", "needle"), [
    (5, SITE, "exceeds the 5 patients"),
    (100, SitePrivacy(delta=0.02), "is not below 1 / 100 patients"),
])
def test_a_plan_the_site_cannot_keep_is_refused(patients: int, site: SitePrivacy, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        plan_round(dp=DPConfig(noise_multiplier=1.0, patients_per_step=8), site=site, patients=patients,
                   total_steps=1)


def test_privacy_arguments_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        plan_round(DPConfig(noise_multiplier=1.0), SITE, 100, 1)  # type: ignore[misc]
    with pytest.raises(TypeError):
        sample_rate_of(8, 100)  # type: ignore[misc]
    assert sample_rate_of(patients_per_step=8, patients=4) == 1.0

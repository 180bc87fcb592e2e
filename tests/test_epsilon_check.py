"""The server refuses an epsilon no honest site could report, and accepts every honest one."""

from __future__ import annotations

import pytest
from flwr.app import MetricRecord

from fedgenome.configs.schema import FederationConfig, SitePrivacy, load_preset
from fedgenome.privacy.accounting import epsilon
from fedgenome.privacy.round_plan import dp_settings, plan_round, run_steps
from fedgenome.server.epsilon_check import EpsilonCheck, PrivacyClaim
from fedgenome.server.replies import collect
from fedgenome.server.report import RoundRecord
from fedgenome.server.validation import UpdateRejected
from fedgenome.shared import wire
from tests.test_validation import GLOBAL, honest, reply

FED = FederationConfig(preset="tiny", num_server_rounds=4, local_steps=5, patients_per_step=8)
PRESET = load_preset("tiny")
DELTA = 1e-5


def true_epsilon(patients: int, rounds: int) -> float:
    """What a site of ``patients`` patients spends in ``rounds`` rounds of FED (as it computes it)."""
    plan = plan_round(dp=dp_settings(PRESET, FED), site=SitePrivacy(delta=DELTA), patients=patients,
                      total_steps=run_steps(FED))
    return epsilon(history=[plan.mechanism(rounds * FED.local_steps)], delta=DELTA,
                   accountant=plan.settings.accountant)


def claim(eps: float, *, trained: bool = True, examples: int = 100, budget: float = 8.0) -> PrivacyClaim:
    return PrivacyClaim(trained=trained, epsilon=eps, budget=budget, delta=DELTA, examples=examples)


@pytest.mark.parametrize("patients", [75, 124])  # the ends of the 100 bucket
def test_an_honest_site_passes_every_round(patients: int) -> None:
    check = EpsilonCheck(FED, PRESET)
    for rnd in range(1, FED.num_server_rounds + 1):
        eps = true_epsilon(patients, rnd)
        check.check("a", claim(eps, examples=wire.bucket(patients)))
        check.last["a"], check.trained["a"] = eps, rnd


def test_a_site_that_spent_before_this_run_passes() -> None:
    earlier = true_epsilon(100, 1) * 0.5
    EpsilonCheck(FED, PRESET).check("a", claim(true_epsilon(100, 1) + earlier, budget=20.0))


@pytest.mark.parametrize(("eps", "says"), [
    (0.0, "below 7.39, the 7.39 it claimed before"), (-5.0, "not a finite non-negative"),
    (float("inf"), "not a finite non-negative")])
def test_a_lower_epsilon_than_before_is_refused(eps: float, says: str) -> None:
    check = EpsilonCheck(FED, PRESET, last={"a": 7.39}, trained={"a": 2})
    with pytest.raises(UpdateRejected, match=says.split(",")[0] if "finite" in says else "claimed before"):
        check.check("a", claim(eps))


def test_an_epsilon_below_what_the_rounds_cost_is_refused() -> None:
    honest_eps = true_epsilon(100, 1)
    with pytest.raises(UpdateRejected, match=r"the least that 1 round\(s\) of this run cost at 100 patients"):
        EpsilonCheck(FED, PRESET).check("a", claim(honest_eps * 0.5))
    with pytest.raises(UpdateRejected, match="the least that 3 round"):  # history from the report
        EpsilonCheck(FED, PRESET, last={"a": 1.0}, trained={"a": 2}).check("a", claim(1.0))


def test_training_past_the_budget_is_refused_but_a_refusal_at_it_passes() -> None:
    check = EpsilonCheck(FED, PRESET, last={"a": 7.9}, trained={"a": 3})
    with pytest.raises(UpdateRejected, match="above its budget 8"):
        check.check("a", claim(8.5))
    check.check("a", claim(7.9, trained=False))


def test_the_history_comes_from_the_runs_report() -> None:
    rounds = [RoundRecord(round=1, train_loss=1.0, heldout_bits_per_base=2.0, trained=["a", "b"],
                          epsilon={"a": 5.0, "b": 4.0}),
              RoundRecord(round=2, train_loss=1.0, heldout_bits_per_base=2.0, trained=["a"],
                          refused=["b"], epsilon={"a": 6.0, "b": 4.0})]
    check = EpsilonCheck.of_report(FED, PRESET, rounds)
    assert check.last == {"a": 6.0, "b": 4.0} and check.trained == {"a": 2, "b": 1}


def test_collect_rejects_a_false_epsilon_and_does_not_record_it() -> None:
    liar, fine = reply(11, "liar", honest()), reply(12, "fine", honest())
    liar.content.metric_records[wire.METRICS][wire.EPSILON] = 0.01
    fine.content.metric_records[wire.METRICS][wire.EPSILON] = true_epsilon(100, 1)
    got = collect([liar, fine], [11, 12], {}, GLOBAL, max_norm=10.0, epsilons=EpsilonCheck(FED, PRESET))
    assert [m.metadata.src_node_id for m in got.trained] == [12]
    assert "liar" not in got.epsilon and "below" in got.rejected["liar"]


def test_collect_rejects_unknown_metric_keys() -> None:
    extra = reply(11, "chatty", honest())
    metrics = dict(extra.content.metric_records[wire.METRICS])
    extra.content.metric_records[wire.METRICS] = MetricRecord({**metrics, "exact-patients": 87})
    got = collect([extra], [11], {}, GLOBAL, max_norm=10.0)
    assert got.trained == [] and "metric keys ['exact-patients'] are not allowed" in got.rejected["node 11"]

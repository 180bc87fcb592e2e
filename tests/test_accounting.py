"""Privacy accounting: golden values, composition, planning, the registry and ``fedgenome privacy``."""

from __future__ import annotations

import itertools
import math
import re

import pytest

from fedgenome.configs.errors import ConfigError
from fedgenome.privacy.accounting import (
    ACCOUNTANTS,
    EPSILON_TOLERANCE,
    check_arguments,
    create_accountant,
    epsilon,
    plan_noise_multiplier,
)
from fedgenome.privacy.mechanism import Mechanism
from tests.helpers import run_cli

# Opacus' own RDP test value (tests/accountants_test.py): σ=1.5, q=0.04, 2,250 steps, δ=1e-5 -> ε=7.3291.
GOLDEN = Mechanism(noise_multiplier=1.5, sample_rate=0.04, steps=2250)
DELTA = 1e-5
GOLDEN_RDP = 7.3291


def test_golden_rdp_and_pld() -> None:
    rdp = epsilon(history=[GOLDEN], delta=DELTA, accountant="rdp")
    assert rdp == pytest.approx(GOLDEN_RDP, abs=0.01)
    pld = epsilon(history=[GOLDEN], delta=DELTA, accountant="pld")
    assert 0.7 * rdp < pld <= rdp  # measured: 6.7695 (PRV: 6.7791)


def test_epsilon_increases_with_steps_and_is_zero_without() -> None:
    values = [epsilon(history=[Mechanism(1.0, 0.01, n)], delta=DELTA) for n in (1, 10, 100, 1000)]
    assert all(a < b for a, b in itertools.pairwise(values))
    for name in sorted(ACCOUNTANTS):
        assert epsilon(history=[Mechanism(1.0, 0.01, 0)], delta=DELTA, accountant=name) == 0.0
        assert epsilon(history=[], delta=DELTA, accountant=name) == 0.0


def test_no_noise_is_infinite() -> None:
    for name in sorted(ACCOUNTANTS):
        assert epsilon(history=[Mechanism(0.0, 0.01, 1)], delta=DELTA, accountant=name) == math.inf


def test_history_composes() -> None:
    split = epsilon(history=[Mechanism(1.0, 0.01, 100), Mechanism(1.0, 0.01, 100)], delta=DELTA)
    whole = epsilon(history=[Mechanism(1.0, 0.01, 200)], delta=DELTA)
    assert split == pytest.approx(whole, rel=1e-12)
    mixed = epsilon(history=[Mechanism(1.0, 0.01, 100), Mechanism(2.0, 0.01, 100)], delta=DELTA)
    assert epsilon(history=[Mechanism(2.0, 0.01, 200)], delta=DELTA) < mixed < whole


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_plan_lands_just_under_the_target(accountant: str) -> None:
    target = 3.0
    sigma = plan_noise_multiplier(target_epsilon=target, delta=DELTA, sample_rate=0.04, steps=2250,
                                  accountant=accountant)
    reached = epsilon(history=[Mechanism(sigma, 0.04, 2250)], delta=DELTA, accountant=accountant)
    assert target - 2 * EPSILON_TOLERANCE <= reached <= target


def test_plan_without_steps_needs_no_noise() -> None:
    assert plan_noise_multiplier(target_epsilon=1.0, delta=DELTA, sample_rate=0.04, steps=0) == 0.0


def test_unreachable_target_says_why_and_what_to_change() -> None:
    with pytest.raises(ConfigError) as info:
        plan_noise_multiplier(target_epsilon=0.01, delta=DELTA, sample_rate=0.04, steps=2250)
    message = str(info.value)
    assert "\n" not in message
    for needle in ("target_epsilon=0.01", "rdp", "0.103", "floor", "raise the target epsilon or delta"):
        assert needle in message


def test_registry_error_lists_the_valid_names() -> None:
    assert sorted(ACCOUNTANTS) == ["pld", "prv", "rdp"]
    assert create_accountant("prv").name == "prv"
    with pytest.raises(ConfigError, match=r"accountant='gdp' is unknown; valid names: pld, prv, rdp"):
        create_accountant("gdp")


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"sample_rate": 0.0}, "sample_rate=0.0"),
        ({"sample_rate": 1.5}, "sample_rate=1.5"),
        ({"sample_rate": math.nan}, "sample_rate=nan"),
        ({"delta": 1.0}, "delta=1.0"),
        ({"delta": 0.0}, "delta=0.0"),
        ({"noise_multiplier": -1.0}, "noise_multiplier=-1.0"),
        ({"steps": -1}, "steps=-1"),
        ({"steps": 1.5}, "steps=1.5"),
        ({"target_epsilon": 0.0}, "target_epsilon=0.0"),
    ],
)
def test_validation_names_argument_value_and_range(kwargs: dict[str, float], needle: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(needle) + " is out of range: it must be"):
        check_arguments(**kwargs)


def test_public_functions_validate() -> None:
    with pytest.raises(ConfigError, match="delta=2"):
        epsilon(history=[GOLDEN], delta=2)
    with pytest.raises(ConfigError, match="sample_rate=0"):
        plan_noise_multiplier(target_epsilon=1.0, delta=DELTA, sample_rate=0.0, steps=10)
    with pytest.raises(ConfigError, match="target_epsilon=-1"):
        plan_noise_multiplier(target_epsilon=-1.0, delta=DELTA, sample_rate=0.1, steps=10)


def test_cli_epsilon_prints_the_golden_value(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["privacy", "epsilon", "--noise-multiplier", "1.5", "--sample-rate", "0.04",
                            "--steps", "2250", "--delta", "1e-5"], capsys)
    assert code == 0
    assert out.strip() == "epsilon = 7.3291 (rdp, sigma=1.5, q=0.04, steps=2250, delta=1e-05)"


def test_cli_plan_hits_the_target(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["privacy", "plan", "--target-epsilon", "2", "--delta", "1e-5",
                            "--sample-rate", "0.01", "--steps", "1000"], capsys)
    assert code == 0
    match = re.search(r"noise_multiplier = ([0-9.]+) reaches epsilon = ([0-9.]+)", out)
    assert match, out
    sigma, shown = float(match[1]), float(match[2])
    reached = epsilon(history=[Mechanism(sigma, 0.01, 1000)], delta=DELTA)
    assert 2.0 - 2 * EPSILON_TOLERANCE <= reached <= 2.0
    assert shown == pytest.approx(reached, abs=1e-4)


@pytest.mark.parametrize(
    ("flag", "value", "needle"),
    [
        ("--sample-rate", "0", "sample_rate=0.0"),
        ("--sample-rate", "1.5", "sample_rate=1.5"),
        ("--delta", "1", "delta=1.0"),
        ("--noise-multiplier", "-1", "noise_multiplier=-1.0"),
        ("--steps", "-5", "steps=-5"),
        ("--accountant", "gdp", "valid names: pld, prv, rdp"),
    ],
)
def test_cli_bad_arguments_are_one_line(flag: str, value: str, needle: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    args = {"--noise-multiplier": "1.0", "--sample-rate": "0.01", "--steps": "100", "--delta": "1e-5"}
    args[flag] = value
    code, out, err = run_cli(["privacy", "epsilon", *[x for kv in args.items() for x in kv]], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0 and out == ""
    assert len(lines) == 1, err
    assert lines[0].startswith("fedgenome: error: ") and needle in lines[0]
    assert "Traceback" not in err

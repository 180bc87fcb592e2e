"""Absurd or mistyped settings are refused at the edge, before anything is trained or spent.

Booleans are not numbers, strings are not coerced, budgets and norms are finite and bounded, model
sizes and step counts are bounded; each refusal is one line naming the key, the value and the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fedgenome.configs.errors import ConfigError
from fedgenome.configs.schema import MAX_STEPS, FederationConfig, SitePrivacy, load_preset, load_site_manifest
from fedgenome.configs.validation import validate
from fedgenome.privacy.accounting import plan_noise_multiplier
from tests.helpers import assert_one_line_error, run_cli
from tests.minisite import Spec, make_site, written


def refused(model: type[Any], data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as err:
        validate(model, data, source="test")
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(("value", "phrase"), [
    ("true", "a boolean is not a number"),
    ("inf", "must be a finite number"),
    ("nan", "must be a finite number"),
    ("1e308", "less than or equal to 100"),
    ('"8"', "a string is not a number"),
])
def test_a_site_budget_must_be_a_finite_number(tmp_path: Path, value: str, phrase: str) -> None:
    site = make_site(tmp_path, Spec(site_toml_extra=f"[privacy]\nepsilon_budget = {value}\n"))
    with pytest.raises(ConfigError) as err:
        load_site_manifest(site)
    message = str(err.value)
    assert "privacy.epsilon_budget" in message and phrase in message and "\n" not in message


def test_an_integer_is_still_a_number() -> None:
    assert SitePrivacy.model_validate({"epsilon_budget": 8}).epsilon_budget == 8.0
    assert validate(FederationConfig, {"lr": 1, "sample-timeout": 60}, source="x").lr == 1.0


@pytest.mark.parametrize(("key", "value", "phrase"), [
    ("num-server-rounds", "3", "a string is not a number; write it without quotes"),
    ("num-server-rounds", True, "a boolean is not a number"),
    ("local-steps", 10**9, "less than or equal to 100000"),
    ("target-epsilon", True, "a boolean is not a number"),
    ("target-epsilon", float("inf"), "must be a finite number"),
    ("target-epsilon", 1e308, "less than or equal to 100"),
    ("max-grad-norm", float("inf"), "must be a finite number"),
    ("noise-multiplier", float("nan"), "must be a finite number"),
    ("resume", 1, "Input should be a valid boolean"),
])
def test_run_config_values_are_not_coerced(key: str, value: Any, phrase: str) -> None:
    message = refused(FederationConfig, {key: value})
    assert f"key '{key}'" in message and phrase in message


def test_rounds_times_local_steps_is_bounded() -> None:
    message = refused(FederationConfig, {"num-server-rounds": 10_000, "local-steps": 1_000})
    assert f"above the limit of {MAX_STEPS}" in message


@pytest.mark.parametrize(("overrides", "phrase"), [
    ({"model": {"d_model": 10**9}}, "key 'model.d_model' = 1000000000"),
    ({"model": {"d_model": 8192, "n_layer": 1000, "n_head": 8}}, "parameters, above the limit"),
    ({"model": {"n_layer": True}}, "a boolean is not a number"),
    ({"train": {"steps": 10**9}}, "key 'train.steps' = 1000000000"),
    ({"train": {"seed": -1}}, "key 'train.seed' = -1"),
    ({"privacy": {"max_grad_norm": float("inf")}}, "must be a finite number"),
    ({"privacy": {"target_epsilon": 1e308}}, "less than or equal to 100"),
    ({"data": {"eval_windows": 10**9}}, "key 'data.eval_windows'"),
])
def test_presets_bound_model_sizes_steps_and_budgets(overrides: dict[str, Any], phrase: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_preset("tiny", overrides)
    assert phrase in str(err.value) and "\n" not in str(err.value)


def test_calibrating_sigma_for_the_most_steps_allowed_is_quick() -> None:
    import time

    start = time.perf_counter()
    sigma = plan_noise_multiplier(target_epsilon=1.0, delta=1e-5, sample_rate=0.1, steps=MAX_STEPS)
    assert sigma > 1.0 and time.perf_counter() - start < 30.0


def failing_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``fedgenome -q ARGS`` in-process; assert it fails with one error line; that line."""
    code, _, err = run_cli(["-q", *args], capsys)
    assert_one_line_error(code, err)
    return err.strip()


@pytest.mark.parametrize(("options", "phrase"), [
    (["--max-grad-norm", "inf"], "key 'privacy.max_grad_norm' = inf: must be a finite number"),
    (["--steps", str(10**9), "--target-epsilon", "1"], "key 'train.steps' = 1000000000"),
    (["--target-epsilon", "1e308"], "less than or equal to 100"),
])
def test_fedgenome_train_refuses_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 options: list[str], phrase: str) -> None:
    site = make_site(tmp_path)
    out = tmp_path / "ckpt"
    line = failing_cli(["train", str(site), "--dp", "--preset", "tiny", "--out", str(out), *options],
                   capsys)
    assert phrase in line
    assert written(site) == [] and not out.exists()


def test_fedgenome_run_refuses_a_quoted_number(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = failing_cli(["run", "--superlink", "127.0.0.1:1", "--run-dir", str(tmp_path / "run"),
                    "--reference", str(tmp_path / "ref.fa"), "--insecure", "--flwr-home",
                    str(tmp_path / "home"), "-c", 'num-server-rounds="3"'], capsys)
    assert "key 'num-server-rounds' = '3': a string is not a number" in line
    assert not (tmp_path / "home").exists()

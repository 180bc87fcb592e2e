"""Config presets and validation: unknown keys and out-of-range values name the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedgenome.configs.errors import ConfigError
from fedgenome.configs.schema import load_preset, load_preset_file, load_site_manifest, preset_names
from fedgenome.shared.app_bundle import APP_DIR
from fedgenome.shared.model import GenomeLM


def test_presets_parse_and_sizes_fit_their_purpose() -> None:
    assert preset_names() == ["base", "large", "small", "tiny"]
    assert GenomeLM(load_preset("tiny").model).num_params() < 1_000_000
    assert 5_000_000 <= GenomeLM(load_preset("small").model).num_params() <= 20_000_000


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[model]\nd_modle = 64\n")
    with pytest.raises(ConfigError, match=r"unknown key 'model.d_modle'"):
        load_preset_file(path)


def test_out_of_range_value_is_named() -> None:
    with pytest.raises(ConfigError, match=r"key 'train.lr' = -0.1: Input should be greater than 0"):
        load_preset("tiny", {"train": {"lr": -0.1}})


def test_heads_must_divide_width() -> None:
    with pytest.raises(ConfigError, match="n_head=5 must divide d_model=64"):
        load_preset("tiny", {"model": {"n_head": 5}})


def test_unknown_preset_lists_valid_names() -> None:
    with pytest.raises(ConfigError, match="valid presets: base, large, small, tiny"):
        load_preset("huge")


def test_bad_toml_syntax(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[model\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_preset_file(path)


def test_site_manifest_needs_paths_for_its_kind(tmp_path: Path) -> None:
    (tmp_path / "site.toml").write_text('name = "x"\nkind = "vcf"\nreference = "ref.fa"\n')
    with pytest.raises(ConfigError, match="needs both 'reference' and 'vcf'"):
        load_site_manifest(tmp_path)


def test_missing_site_manifest(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no site\.toml here"):
        load_site_manifest(tmp_path)


def test_the_flower_app_config_has_every_run_config_key_with_its_default() -> None:
    from fedgenome.configs.schema import FederationConfig
    from fedgenome.configs.validation import read_toml
    app_config = read_toml(APP_DIR / "pyproject.toml")["tool"]["flwr"]["app"]["config"]
    defaults = FederationConfig().to_run_config()
    assert app_config == defaults  # Flower rejects override keys missing here


@pytest.mark.parametrize("name", ["", "../x", ".hidden", "two words", "a/b", "-dash"])
def test_one_site_name_rule_for_site_toml_the_pki_and_the_ledger(tmp_path: Path, name: str) -> None:
    from fedgenome.configs.names import check_site_name, is_site_name
    from fedgenome.configs.schema import SiteManifest
    from fedgenome.configs.validation import validate
    from fedgenome.server.pki import check_site_name as pki_check

    assert not is_site_name(name) and pki_check is check_site_name
    with pytest.raises(ConfigError, match="site name"):
        check_site_name(name)
    with pytest.raises(ConfigError, match="name"):
        validate(SiteManifest, {"name": name, "kind": "fasta", "fasta": "x.fa"}, source="site.toml")
    assert check_site_name("hospital-ceu.v2_a") == "hospital-ceu.v2_a"


@pytest.mark.parametrize("spelling", [0.0, 0, None])
def test_calibrate_is_none_in_the_config_and_zero_in_the_run_config(spelling: float | None) -> None:
    from fedgenome.configs.schema import FederationConfig
    from fedgenome.configs.validation import validate
    from fedgenome.privacy.round_plan import dp_settings

    fed = validate(FederationConfig, {"noise-multiplier": spelling}, source="--config")
    assert fed.noise_multiplier is None  # one meaning: each site calibrates sigma
    assert fed.to_run_config()["noise-multiplier"] == 0.0  # Flower's run config holds no None
    assert FederationConfig.model_validate(fed.to_run_config()) == fed
    assert dp_settings(load_preset("tiny"), fed).noise_multiplier is None


def test_a_fixed_noise_multiplier_stays_fixed_on_the_wire() -> None:
    from fedgenome.configs.schema import FederationConfig
    from fedgenome.configs.validation import validate

    fed = validate(FederationConfig, {"noise-multiplier": 1.5}, source="--config")
    assert fed.noise_multiplier == 1.5 and fed.to_run_config()["noise-multiplier"] == 1.5
    for bad in (-1.0, True):
        with pytest.raises(ConfigError, match="noise-multiplier"):
            validate(FederationConfig, {"noise-multiplier": bad}, source="--config")

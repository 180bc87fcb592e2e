"""Presets from a run config are names, never paths: a server cannot make a site open a file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import fedgenome.configs.schema
from fedgenome.cli import main
from fedgenome.client import cache
from fedgenome.client.site import SiteNode
from fedgenome.cmd_model import build_preset
from fedgenome.configs.errors import ConfigError
from fedgenome.configs.schema import FederationConfig, load_preset, load_preset_file, preset_names
from fedgenome.configs.validation import validate

ROOT = Path(__file__).resolve().parent.parent
NOT_NAMES = ["../../../../etc/passwd", "/etc/passwd", "..", "tiny.toml", "presets/tiny",
             str(ROOT / "configs" / "presets" / "tiny.toml"), ""]


@pytest.fixture()
def opened(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every TOML file the config loader reads, recorded."""
    seen: list[Path] = []
    real = fedgenome.configs.schema.read_toml

    def spy(path: Path) -> dict[str, Any]:
        seen.append(path)
        return real(path)

    monkeypatch.setattr(fedgenome.configs.schema, "read_toml", spy)
    return seen


@pytest.mark.parametrize("name", NOT_NAMES)
def test_a_run_config_preset_that_is_not_a_name_is_refused_at_validation(name: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate(FederationConfig, {"preset": name}, source="flwr run config")
    message = str(err.value)
    assert "\n" not in message
    assert "key 'preset'" in message and f"valid presets: {', '.join(preset_names())}" in message


@pytest.mark.parametrize("name", NOT_NAMES)
def test_the_client_refuses_a_path_before_opening_anything(name: str, opened: list[Path]) -> None:
    cache.clear()
    with pytest.raises(ConfigError, match="valid presets: base, large, small, tiny"):
        cache.load_preset(name)
    with pytest.raises(ConfigError, match="valid presets"):
        load_preset(name)
    assert opened == []


@pytest.mark.data
def test_a_site_refuses_an_unvalidated_run_config_naming_a_file(site_copy: Any,
                                                                opened: list[Path]) -> None:
    site = site_copy("hospital-tsi")
    node = SiteNode(site)  # reads the site's own site.toml
    opened.clear()
    fed = FederationConfig.model_construct(**{**dict(FederationConfig()), "preset": "/etc/passwd"})
    with pytest.raises(ConfigError, match="not a preset name"):
        node.train_round({}, fed, global_round=1)
    with pytest.raises(ConfigError, match="not a preset name"):
        SiteNode.parameter_names(fed)
    assert opened == []
    assert not (site / "state" / "ledger.jsonl").exists()


@pytest.mark.parametrize("name", ["tiny", "small", "base", "large"])
def test_shipped_names_still_work(name: str) -> None:
    cache.clear()
    assert validate(FederationConfig, {"preset": name}, source="x").preset == name
    assert cache.load_preset(name) == load_preset(name)


def test_a_local_user_may_still_pass_a_preset_file_on_the_command_line(tmp_path: Path) -> None:
    mine = tmp_path / "mine.toml"
    mine.write_text((ROOT / "configs" / "presets" / "tiny.toml").read_text()
                    .replace("steps = 30", "steps = 7"))
    assert load_preset_file(mine).train.steps == 7
    assert build_preset(str(mine), None, train__seed=3).train.seed == 3
    assert build_preset("tiny", None).train.steps == 30


def test_fedgenome_run_refuses_a_path_preset_before_contacting_anyone(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["run", "--superlink", "127.0.0.1:1", "--run-dir", str(tmp_path / "run"), "--reference",
              str(tmp_path / "ref.fa"), "--insecure", "--flwr-home", str(tmp_path / "home"),
              "-c", 'preset="../../../../etc/passwd"'])
    err = capsys.readouterr().err
    assert done.value.code != 0
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "not a preset name" in err and "valid presets" in err
    assert not (tmp_path / "home").exists() and not (tmp_path / "run").exists()

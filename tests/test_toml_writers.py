"""Every TOML file the project writes is written by tomli_w: odd paths stay valid TOML."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from flwr.common.config import parse_config_args

from fedgenome.server import deploy
from fedgenome.server.site_policy import declare_patients, declared_examples
from fedgenome.shared.app_bundle import APP_DIR
from fedgenome.shared.sites import copy_site

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ODD = 'we"ird\\dir with spaces'  # a quote, a backslash and spaces


def _read(path: Path) -> dict[str, Any]:
    return tomllib.loads(path.read_text(encoding="utf-8"))


def test_a_connection_with_an_odd_certificate_path_is_valid_toml(tmp_path: Path) -> None:
    ca = tmp_path / ODD / "ca.crt"
    deploy.write_connection(tmp_path, "fedgenome", address="127.0.0.1:9093", ca_cert=ca)
    assert _read(tmp_path / "config.toml") == {"superlink": {
        "default": "fedgenome", "fedgenome": {"address": "127.0.0.1:9093", "root-certificates": str(ca)}}}


def test_an_existing_flower_config_is_merged_into_not_replaced(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        '[superlink]\ndefault = "prod"\n\n[superlink.prod]\naddress = "link.example.org:9093"\n'
        'root-certificates = "/etc/ca.crt"\n\n[superlink.fedgenome]\naddress = "old:1"\ninsecure = true\n'
        '\n[other]\nkept = 1\n')
    deploy.write_connection(tmp_path, "fedgenome", address="new:9093", ca_cert=Path("/ca.crt"))
    config = _read(tmp_path / "config.toml")
    assert config["other"] == {"kept": 1}
    assert config["superlink"]["prod"] == {"address": "link.example.org:9093",
                                           "root-certificates": "/etc/ca.crt"}
    assert config["superlink"]["default"] == "fedgenome"
    assert config["superlink"]["fedgenome"] == {"address": "new:9093", "root-certificates": "/ca.crt"}
    deploy.write_connection(tmp_path, "local", address="127.0.0.1:9093", ca_cert=None)
    config = _read(tmp_path / "config.toml")
    assert set(config["superlink"]) == {"default", "prod", "fedgenome", "local"}
    assert config["superlink"]["local"] == {"address": "127.0.0.1:9093", "insecure": True}


def test_a_broken_flower_config_is_a_one_line_error_and_left_alone(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("superlink = 3\n")
    with pytest.raises(deploy.ConfigError, match="'superlink' is not a table"):
        deploy.write_connection(tmp_path, "x", address="a:1", ca_cert=None)
    assert (tmp_path / "config.toml").read_text() == "superlink = 3\n"


def test_the_run_config_reaches_flower_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_config = {"initial-checkpoint": str(tmp_path / ODD), "num-server-rounds": 3, "lr": 1e-4,
                  "keep": True, "strategy": "fedavg"}
    seen: dict[str, Any] = {}

    def flwr_json(args: list[str], **_: Any) -> dict[str, Any]:
        seen.update(parse_config_args([args[args.index("--run-config") + 1]]))  # as 'flwr run' parses
        return {"success": True, "run-id": 7}

    monkeypatch.setattr(deploy, "flwr_json", flwr_json)
    assert deploy.submit_run(APP_DIR, "fedgenome", run_config, flwr_home=tmp_path) == 7
    assert seen == run_config


def test_a_copied_site_and_a_declared_cohort_are_valid_toml(tmp_path: Path) -> None:
    src = tmp_path / ODD / "site-a"
    src.mkdir(parents=True)
    (src / "site.toml").write_text('name = "site-a"\nreference = "/ref.fa"\nvcf = "patients.vcf.gz"\n')
    copied = copy_site(src, tmp_path / "copy")
    assert _read(copied / "site.toml") == {"name": "site-a", "reference": "/ref.fa",
                                           "vcf": str(src / "patients.vcf.gz")}
    pki = tmp_path / ODD / "pki"
    (pki / "sites").mkdir(parents=True)
    (pki / "sites" / "site-a.pub").write_text("registered")
    declare_patients(pki, "site-a", 120)
    assert _read(pki / "sites" / "site-a.toml") == {"patients": 120}
    assert declared_examples(pki) == {"site-a": 100}

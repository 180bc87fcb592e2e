"""``client start --config node.toml``: a hospital's start line in one file, the command line on top."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fedgenome.client import supervisor
from fedgenome.client.supervisor import NodeSpec
from fedgenome.configs.errors import ConfigError
from fedgenome.configs.node import load_node_config
from fedgenome.privacy.keys import create_site_key
from fedgenome.shared.app_bundle import installed_digest
from fedgenome.shared.hosts import RUNTIME_PORT
from fedgenome.shared.state import STATE_ENV
from fedgenome.shared.tls import make_certificates
from tests.helpers import assert_one_line_error, run_cli

SITE_TOML = 'name = "hospital-a"\nkind = "fasta"\nfasta = "x.fa"\n'


@pytest.fixture()
def hospital(tmp_path: Path) -> Path:
    """``tmp_path/etc`` with node.toml naming ``../site`` (with its key) and ``pki/ca.crt`` relatively."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "site.toml").write_text(SITE_TOML)
    create_site_key(site / "keys", "hospital-a")
    make_certificates(tmp_path / "etc" / "pki", hosts=("localhost",))
    (tmp_path / "etc" / "node.toml").write_text(
        'site = "../site"\nsuperlink = "aggregator.example:9092"\nroot-certificates = "pki/ca.crt"\n'
        f'trust = ["{"0" * 64}"]\nmax-retries = 20\n')
    return tmp_path / "etc" / "node.toml"


@pytest.fixture()
def started(monkeypatch: pytest.MonkeyPatch) -> list[NodeSpec]:
    """The NodeSpecs ``client start`` hands to the supervisor (nothing is started)."""
    specs: list[NodeSpec] = []
    monkeypatch.setattr(supervisor, "run_node", specs.append)
    return specs


def test_the_file_is_the_start_line(hospital: Path, started: list[NodeSpec], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["client", "start", "--config", str(hospital)], capsys)
    assert code == 0, err
    (spec,) = started
    assert spec.site == tmp_path / "site"  # relative to the file, not to the working directory
    assert spec.root_cert == tmp_path / "etc" / "pki" / "ca.crt"
    assert spec.superlink == "aggregator.example:9092" and spec.port == RUNTIME_PORT
    assert spec.auth_key == tmp_path / "site" / "keys" / "hospital-a"
    assert spec.trust == (f"sha256:{'0' * 64}",) and spec.max_retries == 20 and spec.max_wait_time is None
    assert spec.home == Path(os.environ[STATE_ENV]) / "nodes" / "hospital-a"  # the state directory's


def test_an_option_on_the_command_line_wins(hospital: Path, started: list[NodeSpec], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    digest = installed_digest()
    code, _, err = run_cli(["client", "start", "-c", str(hospital), "--superlink", "10.0.0.5:9092",
                            "--port", "9200", "--flwr-home", str(tmp_path / "home"), "--trust", digest],
                           capsys)
    assert code == 0, err
    (spec,) = started
    assert (spec.superlink, spec.port, spec.home) == ("10.0.0.5:9092", 9200, tmp_path / "home")
    assert spec.trust == (digest,) and spec.max_retries == 20  # the file's, where no option says


@pytest.mark.parametrize(("line", "needles"), [
    ('root_cert = "pki/ca.crt"', ["unknown key 'root_cert'", "check its spelling"]),
    ("max-wait-time = -1.0", ["key 'max-wait-time' = -1.0", "greater than 0"]),
    ('port = "9094"', ["key 'port' = '9094'", "write it without quotes"]),
    ("superlink = ", ["not valid TOML", "fix the syntax"]),
])
def test_a_bad_file_is_one_line_naming_the_key(hospital: Path, started: list[NodeSpec], line: str,
                                               needles: list[str],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    hospital.write_text(hospital.read_text() + line + "\n")
    code, _, err = run_cli(["client", "start", "--config", str(hospital)], capsys)
    assert_one_line_error(code, err, str(hospital), *needles)
    assert started == []


def test_without_a_file_site_and_superlink_are_required(started: list[NodeSpec],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["client", "start", "--site", "x"], capsys)
    assert_one_line_error(code, err, "no superlink", "pass --superlink", "--config node.toml")
    assert started == []


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"node\.toml: file not found"):
        load_node_config(tmp_path / "node.toml", {})

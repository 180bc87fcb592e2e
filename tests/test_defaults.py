"""Defaults that live in one place: hosts and ports (shared/hosts.py) and the CLI's choice lists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fedgenome.cli import main
from fedgenome.client.node import runtime_security, supernode_command, worker_command
from fedgenome.server.pki_checks import check_server_tls
from fedgenome.shared import hosts
from fedgenome.shared.tls import tls_files


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


def test_throwaway_certificates_name_the_local_hosts(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["server", "certs", "--out", str(tmp_path)], capsys)
    assert code == 0 and ", ".join(hosts.LOCAL_NAMES) in out
    assert set(check_server_tls(tls_files(tmp_path)).server.hosts) == set(hosts.LOCAL_NAMES)


@pytest.mark.parametrize(("command", "shown"), [
    (["server", "start"], [hosts.LOOPBACK, str(hosts.SUPERLINK_PORT)]),
    (["client", "start"], [str(hosts.RUNTIME_PORT)]),
    (["pki", "init"], [", ".join(hosts.LOCAL_NAMES)]),
])
def test_the_cli_shows_the_shared_defaults(command: list[str], shown: list[str],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli([*command, "--help"], capsys)
    flat = " ".join(out.replace("│", " ").split())
    assert code == 0 and all(s in flat for s in shown), flat


def test_a_supernode_runtime_api_listens_on_loopback(tmp_path: Path) -> None:
    command = supernode_command(site=tmp_path, superlink="example.org:9092", clientappio_port=1234,
                                root_cert=None, runtime=runtime_security(tmp_path / "rt"), insecure=True)
    assert command[command.index("--host") + 1] == hosts.LOOPBACK


def test_a_hospital_node_retries_a_lost_superlink_without_limit_unless_told(tmp_path: Path) -> None:
    common = {"site": tmp_path, "superlink": "example.org:9092", "clientappio_port": 1234,
              "root_cert": None, "runtime": runtime_security(tmp_path / "rt"), "insecure": True}
    service = supernode_command(**common)  # type: ignore[arg-type]
    assert "--max-retries" not in service and "--max-wait-time" not in service  # Flower: no limit
    bounded = supernode_command(**common, max_retries=5, max_wait_time=60.0)  # type: ignore[arg-type]
    assert bounded[bounded.index("--max-retries") + 1] == "5"
    assert bounded[bounded.index("--max-wait-time") + 1] == "60.0"
    worker = worker_command(site=tmp_path, clientappio_port=1234, runtime=common["runtime"],  # type: ignore[arg-type]
                            supernode_pid=1, trust=("sha256:" + "ab" * 32,))
    assert worker[worker.index("--trust") + 1] == "sha256:" + "ab" * 32


def test_choice_lists_come_from_the_registries() -> None:
    from fedgenome.cli_choices import AGGREGATIONS, PRESETS
    from fedgenome.cmd_privacy import Accountant
    from fedgenome.configs.schema import FederationConfig, preset_names
    from fedgenome.configs.validation import field_choices
    from fedgenome.privacy.accounting import ACCOUNTANTS
    from fedgenome.server.strategies import STRATEGIES

    assert list(PRESETS.choices) == preset_names()
    assert list(AGGREGATIONS.choices) == ["plain", "secagg+"]
    assert set(field_choices(FederationConfig, "strategy")) == set(STRATEGIES)  # schema and registry agree
    (option,) = Accountant.__metadata__
    assert sorted(option.click_type.choices) == sorted(ACCOUNTANTS)


@pytest.mark.parametrize(("command", "option", "values"), [
    (["demo"], "--preset", "preset_names"),
    (["demo"], "--aggregation", ("plain", "secagg+")),
    (["privacy", "epsilon"], "--accountant", "accountants"),
    (["eval"], "--device", ("auto", "cpu", "cuda")),
])
def test_the_cli_shows_and_checks_the_choices(command: list[str], option: str, values: str | tuple[str, ...],
                                              capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # a terminal wide enough that rich wraps no choice list
    from fedgenome.configs.schema import preset_names
    from fedgenome.privacy.accounting import ACCOUNTANTS

    named: dict[str, list[str]] = {"preset_names": preset_names(), "accountants": sorted(ACCOUNTANTS)}
    choices = named[values] if isinstance(values, str) else list(values)
    code, out, _ = run_cli([*command, "--help"], capsys)
    shown = re.sub(r"[\s│]", "", out)
    assert code == 0 and "[" + "|".join(sorted(choices)) + "]" in shown
    code, _, err = run_cli([*command, option, "no-such-choice"], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("fedgenome: error: ")
    assert f"'no-such-choice' is not one of them; valid names: {', '.join(choices)}" in err

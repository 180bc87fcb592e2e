"""``fedgenome runs ls | log | stop``: the runs of a SuperLink, as an operator follows them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fedgenome.cli_options import MARKUP, Insecure_, Json_, OperatorHome_, RootCertificates_
from fedgenome.configs.errors import ConfigError
from fedgenome.experiments.federated_run import CONNECTION
from fedgenome.server.deploy import flwr, list_runs, stop_run, write_connection
from fedgenome.server.pki_checks import check_ca
from fedgenome.shared.state import state_layout

app = typer.Typer(name="runs", help="The runs of a SuperLink: list them, read a run's log, stop one.",
                  no_args_is_help=True, rich_markup_mode=MARKUP)

SuperlinkOr_ = Annotated[str | None, typer.Option(
    "--superlink", metavar="HOST:PORT", help="The SuperLink's address (default: the one the last "
    "'fedgenome run' with this --flwr-home used).")]
RunId_ = Annotated[int, typer.Argument(help="The run's id (as 'fedgenome run' printed it).")]


def operator_home(flwr_home: Path | None) -> Path:
    """``--flwr-home``, or the operator's part of the state directory."""
    return (flwr_home or state_layout().operator_home).resolve()


def operator_connection(superlink: str, *, root_certificates: Path | None, insecure: bool,
                        flwr_home: Path | None) -> Path:
    """The ``flwr`` home holding the operator's connection to ``superlink`` (CA checked first).

    Raises:
        ConfigError: No ``root_certificates`` without ``insecure``, or not a usable CA certificate.
    """
    if root_certificates is None and not insecure:
        raise ConfigError("TLS is on by default: pass --root-certificates CA.crt, or --insecure")
    if root_certificates is not None and not insecure:
        check_ca(root_certificates)
    home = operator_home(flwr_home)
    write_connection(home, CONNECTION, address=superlink,
                     ca_cert=None if insecure or root_certificates is None else root_certificates.resolve())
    return home


def _connect(superlink: str | None, root_certificates: Path | None, insecure: bool,
             flwr_home: Path | None) -> Path:
    """The ``flwr`` home with the connection: written from ``--superlink``, or as ``run`` left it."""
    if superlink is not None:
        return operator_connection(superlink, root_certificates=root_certificates, insecure=insecure,
                                   flwr_home=flwr_home)
    home = operator_home(flwr_home)
    if not (home / "config.toml").is_file():
        raise ConfigError(f"{home}: no SuperLink connection here; pass --superlink HOST:PORT (and "
                          "--root-certificates), or the --flwr-home of an earlier 'fedgenome run'")
    return home


@app.command("ls")
def ls_command(superlink: SuperlinkOr_ = None, root_certificates: RootCertificates_ = None,
               insecure: Insecure_ = False, flwr_home: OperatorHome_ = None,
               json_out: Json_ = False) -> None:
    """List the SuperLink's runs: id, app, status, when they were created and ended."""
    runs = list_runs(CONNECTION, flwr_home=_connect(superlink, root_certificates, insecure, flwr_home))
    if json_out:
        typer.echo(json.dumps({"runs": runs}, indent=2))
        return
    table = Table()
    columns = ("run-id", "fab-id", "fab-version", "status", "created-at", "finished-at")
    for column in columns:
        table.add_column(column)
    for run in runs:
        table.add_row(*(str(run.get(c, "")) for c in columns))
    Console(highlight=False).print(table)


@app.command("log")
def log_command(run_id: RunId_, superlink: SuperlinkOr_ = None,
                root_certificates: RootCertificates_ = None, insecure: Insecure_ = False,
                flwr_home: OperatorHome_ = None) -> None:
    """Print a run's ServerApp log so far (``flwr log --show``)."""
    home = _connect(superlink, root_certificates, insecure, flwr_home)
    typer.echo(flwr(["log", str(run_id), CONNECTION, "--show"], flwr_home=home, timeout=60).rstrip())


@app.command("stop")
def stop_command(run_id: RunId_, superlink: SuperlinkOr_ = None,
                 root_certificates: RootCertificates_ = None, insecure: Insecure_ = False,
                 flwr_home: OperatorHome_ = None) -> None:
    """Ask the SuperLink to stop a run."""
    stop_run(run_id, CONNECTION, flwr_home=_connect(superlink, root_certificates, insecure, flwr_home))
    typer.echo(f"run {run_id}: the SuperLink was asked to stop it")

"""``fedgenome runs ls | log | stop``: the runs of a SuperLink, as an operator follows them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fedgenome.configs.errors import ConfigError
from fedgenome.experiments.federated_run import CONNECTION
from fedgenome.server.deploy import flwr, list_runs, stop_run, write_connection
from fedgenome.server.pki_checks import check_ca

app = typer.Typer(name="runs", help="The runs of a SuperLink: list them, read a run's log, stop one.",
                  no_args_is_help=True)

Server_ = Annotated[str | None, typer.Option(help="SuperLink address HOST:PORT (default: the one the "
                                             "last 'fedgenome run' with this --flwr-home used).")]
RootCert_ = Annotated[Path | None, typer.Option(help="The consortium CA certificate.")]
Insecure_ = Annotated[bool, typer.Option("--insecure", help="Plaintext, no TLS (tests only).")]
FlwrHome_ = Annotated[Path, typer.Option(help="Flower's CLI config directory ('fedgenome run' uses "
                                         "the same default).")]


def operator_connection(server: str, *, root_cert: Path | None, insecure: bool, flwr_home: Path) -> Path:
    """The ``flwr`` home holding the operator's connection to ``server`` (CA checked first).

    Raises:
        ConfigError: No ``root_cert`` without ``insecure``, or it is not a usable CA certificate.
    """
    if root_cert is None and not insecure:
        raise ConfigError("TLS is on by default: pass --root-cert CA.crt, or --insecure")
    if root_cert is not None and not insecure:
        check_ca(root_cert)
    home = flwr_home.resolve()
    write_connection(home, CONNECTION, address=server,
                     ca_cert=None if insecure or root_cert is None else root_cert.resolve())
    return home


def _connect(server: str | None, root_cert: Path | None, insecure: bool, flwr_home: Path) -> Path:
    """The ``flwr`` home with the connection: written from ``--server``, or as ``run`` left it."""
    if server is not None:
        return operator_connection(server, root_cert=root_cert, insecure=insecure, flwr_home=flwr_home)
    home = flwr_home.resolve()
    if not (home / "config.toml").is_file():
        raise ConfigError(f"{home}: no SuperLink connection here; pass --server HOST:PORT (and "
                          "--root-cert), or the --flwr-home of an earlier 'fedgenome run'")
    return home


@app.command("ls")
def ls_command(server: Server_ = None, root_cert: RootCert_ = None, insecure: Insecure_ = False,
               flwr_home: FlwrHome_ = Path(".flwr-run"),
               json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead.")] = False) -> None:
    """List the SuperLink's runs: id, app, status, when they were created and ended."""
    runs = list_runs(CONNECTION, flwr_home=_connect(server, root_cert, insecure, flwr_home))
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
def log_command(run_id: Annotated[int, typer.Argument(help="The run.")], server: Server_ = None,
                root_cert: RootCert_ = None, insecure: Insecure_ = False,
                flwr_home: FlwrHome_ = Path(".flwr-run")) -> None:
    """Print a run's ServerApp log so far (``flwr log --show``)."""
    home = _connect(server, root_cert, insecure, flwr_home)
    typer.echo(flwr(["log", str(run_id), CONNECTION, "--show"], flwr_home=home, timeout=60).rstrip())


@app.command("stop")
def stop_command(run_id: Annotated[int, typer.Argument(help="The run.")], server: Server_ = None,
                 root_cert: RootCert_ = None, insecure: Insecure_ = False,
                 flwr_home: FlwrHome_ = Path(".flwr-run")) -> None:
    """Ask the SuperLink to stop a run."""
    stop_run(run_id, CONNECTION, flwr_home=_connect(server, root_cert, insecure, flwr_home))
    typer.echo(f"run {run_id}: the SuperLink was asked to stop it")

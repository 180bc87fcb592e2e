"""Federated commands: ``server start|certs`` (sites: cmd_sites), ``run``, ``demo`` (client: cmd_client)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from fedgenome import cmd_sites
from fedgenome.cli_choices import AGGREGATIONS, PRESETS
from fedgenome.cli_options import (
    MARKUP,
    Insecure_,
    OperatorHome_,
    RootCertificates_,
    Superlink_,
    flwr_home_option,
)
from fedgenome.cli_signals import terminate_on_sigterm
from fedgenome.cmd_runs import operator_connection
from fedgenome.configs.errors import ConfigError
from fedgenome.server.deploy import (
    DeploymentError,
    superlink_command,
)
from fedgenome.server.pki_checks import check_server_tls, host_matches
from fedgenome.server.progress import describe_round
from fedgenome.server.report import RoundRecord
from fedgenome.shared.fetch import CACHE_HELP
from fedgenome.shared.hosts import ALL_INTERFACES, LOCAL_NAMES, LOOPBACK, SUPERLINK_PORT
from fedgenome.shared.processes import flower_env
from fedgenome.shared.run_layout import RunLayout
from fedgenome.shared.schedule import FINETUNE_LR
from fedgenome.shared.state import STATE_HELP, state_layout
from fedgenome.shared.tls import TlsFiles, make_certificates, tls_files

log = logging.getLogger(__name__)
server_app = typer.Typer(name="server", help="The consortium's aggregator (a Flower SuperLink).",
                         no_args_is_help=True, rich_markup_mode=MARKUP)



def _foreground(command: list[str], env: dict[str, str]) -> None:
    """Run a Flower process in the foreground until it exits or we are interrupted."""
    terminate_on_sigterm()
    proc = subprocess.Popen(command, env=env)
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait(timeout=30)
        raise
    if code != 0:
        raise DeploymentError(f"{Path(command[0]).name} exited with status {code}")


def _tls(tls_dir: Path | None, pki_dir: Path | None, insecure: bool, *, listen: str) -> TlsFiles | None:
    """The SuperLink's TLS files from --pki or --tls-dir (the same file names), checked as a set."""
    if insecure:
        return None
    if tls_dir is not None and pki_dir is not None:
        raise ConfigError("--pki and --tls-dir name the same files: pass one of them")
    directory = pki_dir or tls_dir
    if directory is None:
        raise ConfigError("TLS is on by default: pass --pki DIR (made by 'fedgenome pki init'), or "
                          "--tls-dir DIR (ca.crt, server.pem, server.key), or --insecure")
    files = tls_files(directory)
    for path in (files.ca_cert, files.server_cert, files.server_key):
        if not path.is_file():
            raise ConfigError(f"{path}: missing; make the files with 'fedgenome pki init --out "
                              f"{directory}'")
    checked = check_server_tls(files)
    days = checked.server.days_left()
    if days < 30:
        log.warning("the SuperLink certificate %s expires in %.0f days; renew it with 'fedgenome pki "
                    "renew-server'", files.server_cert, days)
    if listen not in ALL_INTERFACES and not host_matches(checked.server.hosts, listen):
        log.warning("listening on %s, which the server certificate %s does not name: clients must "
                    "connect with one of its names (%s)", listen, files.server_cert,
                    ", ".join(checked.server.hosts))
    return files


@server_app.command("certs")
def certs_command(
    out: Annotated[Path, typer.Option(help="Directory for ca.crt, ca.key, server.pem, server.key.")],
    host: Annotated[list[str] | None, typer.Option(help="Names/addresses the server is reached "
                                                   f"at (default {', '.join(LOCAL_NAMES)}).")] = None,
) -> None:
    """Make a throwaway CA and SuperLink certificate (tests, demos); 'fedgenome pki init' makes the full one.

    The files in --out are replaced. The consortium's PKI ('fedgenome pki init') is never
    overwritten and also keeps the registry of site keys.
    """
    hosts = tuple(host or LOCAL_NAMES)
    files = make_certificates(out, hosts=hosts)
    Console().print(f"CA {files.ca_cert}; server certificate {files.server_cert} for {', '.join(hosts)}")


@server_app.command("start")
def server_start(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = LOOPBACK,
    port: Annotated[int, typer.Option(help="Port of the Fleet, Control and Runtime APIs.")] = SUPERLINK_PORT,
    pki_dir: Annotated[Path | None, typer.Option("--pki", help="The consortium PKI directory "
                                                 "('fedgenome pki init').")] = None,
    tls_dir: Annotated[Path | None, typer.Option(help="Directory with ca.crt, server.pem, "
                                                 "server.key (as --pki).")] = None,
    auth: Annotated[bool | None, typer.Option("--auth/--no-auth", help="Only registered SuperNodes "
                                              "may connect ('server register-site'); default: on "
                                              "with TLS.")] = None,
    state: Annotated[Path | None, typer.Option(help="Directory for the SuperLink's database "
                                               f"(default: superlink/ under {STATE_HELP}).")] = None,
    insecure: Insecure_ = False,
    flwr_home: Annotated[Path | None, flwr_home_option("superlink/flwr-home/")] = None,
) -> None:
    """Start the SuperLink in the foreground (Ctrl-C stops it); its certificates are checked first."""
    if auth and insecure:
        raise ConfigError("--auth needs TLS (Flower refuses SuperNode authentication over plaintext): "
                          "drop --insecure, or pass --no-auth")
    tls = _tls(tls_dir, pki_dir, insecure, listen=host)
    layout = state_layout()
    state = (state or layout.superlink).resolve()
    state.mkdir(parents=True, exist_ok=True)
    command = superlink_command(host=host, port=port, database=state / "superlink.db", tls=tls,
                                insecure=insecure, auth=not insecure if auth is None else auth)
    _foreground(command, flower_env((flwr_home or layout.superlink_home).resolve()))


server_app.command("register-site")(cmd_sites.register_site)
server_app.command("unregister-site")(cmd_sites.unregister_site)
server_app.command("list-sites")(cmd_sites.list_sites)


def run_command(
    superlink: Superlink_,
    run_dir: Annotated[Path, typer.Option(help="Where the server writes checkpoints and reports.")],
    reference: Annotated[Path, typer.Option(help="Reference FASTA for held-out evaluation.")],
    root_certificates: RootCertificates_ = None,
    insecure: Insecure_ = False,
    config: Annotated[list[str] | None, typer.Option("--config", "-c", help="Run config KEY=VALUE "
                                                     "(TOML value), repeatable.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the run.")] = 7200.0,
    pki_dir: Annotated[Path | None, typer.Option("--pki", help="The consortium PKI directory on the "
                                                 "SuperLink's machine: each site may claim at most "
                                                 "the patients it declared there.")] = None,
    flwr_home: OperatorHome_ = None,
    detach: Annotated[bool, typer.Option("--detach", help="Return once the run is submitted; follow "
                                         "it with 'fedgenome runs ls / log / stop'.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON lines to stdout instead: "
                                           "submitted, each round's record, completed.")] = False,
) -> None:
    """Submit a federated run to a SuperLink, follow its rounds, and check that it completed.

    It prints the run id at once, then a line per round. Ctrl-C (or SIGTERM) asks the SuperLink to
    stop the run before exiting (130; 143 for SIGTERM).
    """
    from fedgenome.experiments.federated_run import remote_run_config, submit_and_follow

    run_config = remote_run_config(_parse_overrides(config or []), run_dir=run_dir,
                                   reference=reference, pki_dir=pki_dir)  # before anything is written
    home = operator_connection(superlink, root_certificates=root_certificates, insecure=insecure,
                               flwr_home=flwr_home)
    report = RunLayout(run_dir).report
    follow = f"fedgenome runs log RUN_ID{f' --flwr-home {flwr_home}' if flwr_home else ''}"
    say = _RunLines(json_out)
    terminate_on_sigterm()
    run_id = submit_and_follow(
        run_config, flwr_home=home, timeout=timeout, detach=detach,
        on_submit=lambda run_id: say.event(
            "submitted", run_id=run_id, text=f"run {run_id} submitted; " + (
                f"follow it with '{follow.replace('RUN_ID', str(run_id))}'" if detach else
                f"rounds appear here as {report} records them (when this host can see the run "
                "directory)")),
        on_round=say.round)
    if not detach:
        say.event("completed", run_id=run_id, report=str(report),
                  text=f"run {run_id} completed; report: {report}")


class _RunLines:
    """What ``run`` prints: a line of text per event, or one JSON object per line (``--json``)."""

    def __init__(self, json_out: bool) -> None:
        self.json_out = json_out
        self.console = Console(highlight=False, soft_wrap=True)

    def event(self, event: str, *, text: str, **fields: object) -> None:
        if self.json_out:
            typer.echo(json.dumps({"event": event, **fields}))
        else:
            self.console.print(text, markup=False)

    def round(self, record: RoundRecord) -> None:
        if self.json_out:
            typer.echo(json.dumps({"event": "round", **asdict(record)}))
        else:
            self.console.print(describe_round(record), markup=False)


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    out: dict[str, Any] = {}
    for item in items:
        try:
            out.update(tomllib.loads(item))
        except tomllib.TOMLDecodeError:
            raise ConfigError(f"--config {item!r}: expected KEY=VALUE with a TOML value, e.g. "
                              "num-server-rounds=5 or strategy=\"fedmedian\"") from None
    return out


def demo_command(
    name: Annotated[str, typer.Option(help="Run name: output goes to runs/NAME.")] = "demo",
    cache: Annotated[Path | None, typer.Option(help=f"Data cache (default: {CACHE_HELP}).")] = None,
    preset: Annotated[str, typer.Option(help="Model preset.", click_type=PRESETS)] = "small",
    rounds: Annotated[int, typer.Option(help="Federated rounds.")] = 4,
    local_steps: Annotated[int, typer.Option(help="Private steps per site per round.")] = 5,
    patients_per_step: Annotated[int, typer.Option(help="Expected patients per private step.")] = 8,
    target_epsilon: Annotated[float, typer.Option(help="Epsilon every site reaches after all "
                                                  "rounds (budget 8).")] = 8.0,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the run.")] = 3600.0,
    init: Annotated[Path | None, typer.Option(help="Checkpoint the global model starts from "
                                              "(default: the project's pretrained "
                                              "models/PRESET, if there is one).")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (default: "
                                          f"{FINETUNE_LR:g} from a checkpoint, the run config's "
                                          "default from random weights).")] = None,
    aggregation: Annotated[str, typer.Option(help="How the server sums the updates (secagg+: "
                                             "Flower's SecAgg+, the server sees only the sum; "
                                             "about 2-3x the time).", click_type=AGGREGATIONS)
                           ] = "plain",
    site_eval_every: Annotated[int, typer.Option(help="Each site's private evaluation every N rounds "
                                                 "(0: none); the unseen cohort then joins to "
                                                 "evaluate only.")] = 2,
    insecure: Insecure_ = False,
) -> None:
    """Three hospitals train the genome LM with DP over Flower's real deployment (127.0.0.1).

    TLS with the run's own consortium PKI and authenticated SuperNodes, unless --insecure.
    """
    from fedgenome.experiments.demo import demo_run_config, print_summary, run_demo
    from fedgenome.shared.fetch import data_paths, default_cache

    terminate_on_sigterm()
    panel = data_paths(cache or default_cache()).bim  # public positions
    config = demo_run_config(preset=preset, rounds=rounds, local_steps=local_steps,
                             patients_per_step=patients_per_step, target_epsilon=target_epsilon,
                             aggregation=aggregation, init=init, lr=lr, site_eval_every=site_eval_every,
                             panel=panel)
    console = Console(highlight=False)
    summary = run_demo(Path("runs") / name, cache=cache or default_cache(), run_config=config,
                       timeout=timeout, insecure=insecure,
                       on_submit=lambda run_id: console.print(f"run {run_id} submitted: {rounds} "
                                                              "rounds across the hospitals"),
                       on_round=lambda record: console.print(describe_round(record)))
    print_summary(summary)

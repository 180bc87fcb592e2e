"""Federated commands: ``server start|certs`` (sites: cmd_sites), ``client``, ``run``, ``demo``."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from fedgenome import cmd_sites
from fedgenome.cli_choices import AGGREGATIONS, PRESETS
from fedgenome.cli_signals import terminate_on_sigterm
from fedgenome.configs.errors import ConfigError
from fedgenome.server.deploy import (
    DeploymentError,
    superlink_command,
)
from fedgenome.server.pki_checks import check_ca, check_server_tls, host_matches
from fedgenome.server.progress import describe_round
from fedgenome.shared.fetch import CACHE_HELP
from fedgenome.shared.hosts import ALL_INTERFACES, LOCAL_NAMES, LOOPBACK, RUNTIME_PORT, SUPERLINK_PORT
from fedgenome.shared.processes import flower_env
from fedgenome.shared.run_layout import RunLayout
from fedgenome.shared.schedule import FINETUNE_LR
from fedgenome.shared.tls import TlsFiles, make_certificates, tls_files

log = logging.getLogger(__name__)
server_app = typer.Typer(name="server", help="The consortium's aggregator (a Flower SuperLink).",
                         no_args_is_help=True)
client_app = typer.Typer(name="client", help="A hospital's node (a Flower SuperNode).",
                         no_args_is_help=True)

Insecure_ = Annotated[bool, typer.Option("--insecure", help="Plaintext, no TLS (tests only).")]
FlwrHome_ = Annotated[Path, typer.Option(help="Flower's state and CLI config directory.")]


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
    state: Annotated[Path, typer.Option(help="Directory for the SuperLink's database.")] = Path(
        "superlink-state"),
    insecure: Insecure_ = False,
    flwr_home: FlwrHome_ = Path("superlink-state/flwr-home"),
) -> None:
    """Start the SuperLink in the foreground (Ctrl-C stops it); its certificates are checked first."""
    if auth and insecure:
        raise ConfigError("--auth needs TLS (Flower refuses SuperNode authentication over plaintext): "
                          "drop --insecure, or pass --no-auth")
    tls = _tls(tls_dir, pki_dir, insecure, listen=host)
    state.mkdir(parents=True, exist_ok=True)
    command = superlink_command(host=host, port=port, database=state / "superlink.db", tls=tls,
                                insecure=insecure, auth=not insecure if auth is None else auth)
    _foreground(command, flower_env(flwr_home.resolve()))


server_app.command("register-site")(cmd_sites.register_site)
server_app.command("unregister-site")(cmd_sites.unregister_site)
server_app.command("list-sites")(cmd_sites.list_sites)


@client_app.command("start")
def client_start(
    site: Annotated[Path, typer.Option(help="The hospital's site directory.")],
    server: Annotated[str, typer.Option(help="SuperLink address HOST:PORT.")],
    root_cert: Annotated[Path | None, typer.Option(help="The consortium CA certificate.")] = None,
    key: Annotated[Path | None, typer.Option(help="The site's private key for SuperNode "
                                             "authentication (default: the site's keys/NAME, "
                                             "which also signs its ledger).")] = None,
    insecure: Insecure_ = False,
    port: Annotated[int, typer.Option(help="The SuperNode's local Runtime API port, where its "
                                      "worker connects (one per node on a host).")] = RUNTIME_PORT,
    flwr_home: FlwrHome_ = Path(".flwr-node"),
    trust: Annotated[list[str] | None, typer.Option(
        "--trust", metavar="DIGEST", help="Also run the app bundle with this content digest, after "
        "reviewing it (repeatable). Without it the node runs only the bundle of the fedgenome "
        "installed here ('fedgenome client trust' prints its digest).")] = None,
    max_retries: Annotated[int | None, typer.Option(help="Reconnection tries to a lost SuperLink "
                                                    "before giving up (default: no limit).")] = None,
    max_wait_time: Annotated[float | None, typer.Option(help="Seconds of reconnecting to a lost "
                                                        "SuperLink at most (default: no limit).")] = None,
) -> None:
    """Start this site's SuperNode and its ClientApp worker in the foreground (Ctrl-C stops them).

    The worker serves every message in one long-lived process and is restarted if it dies. It runs
    only app bundles the node trusts and refuses any other run, with the reason in its log and in
    the failed reply the server sees.
    """
    from fedgenome.client.supervisor import NodeSpec, run_node
    from fedgenome.configs.schema import load_site_manifest
    from fedgenome.privacy.keys import load_private_key
    from fedgenome.privacy.site_state import site_key_path
    from fedgenome.shared.app_bundle import parse_digest

    if not (site / "site.toml").is_file():
        raise ConfigError(f"{site}: not a site directory (no site.toml)")
    if root_cert is None and not insecure:
        raise ConfigError("TLS is on by default: pass --root-cert CA.crt (the consortium's ca.crt), "
                          "or --insecure")
    if root_cert is not None and not insecure:
        check_ca(root_cert)
    if key is None and not insecure:
        key = site_key_path(site, load_site_manifest(site).name)
        if not key.is_file():
            raise ConfigError(f"{key}: the site has no key; get one with 'fedgenome pki add-site NAME "
                              f"--pki DIR --site {site}' (or its handover kit), or pass --key")
    if key is not None:
        load_private_key(key)  # a one-line error now rather than Flower's exit later
    pinned = tuple(parse_digest(d) for d in trust or ())
    terminate_on_sigterm()
    run_node(NodeSpec(site=site.resolve(), superlink=server, port=port, home=flwr_home.resolve(),
                      root_cert=root_cert and root_cert.resolve(), insecure=insecure,
                      auth_key=key.resolve() if key is not None else None, trust=pinned,
                      max_retries=max_retries, max_wait_time=max_wait_time))


@client_app.command("check")
def client_check(
    superlink: Annotated[str, typer.Option(help="The SuperLink's address HOST:PORT, as the node dials it.")],
    root_certificates: Annotated[Path, typer.Option(help="The consortium CA certificate (ca.crt).")],
    site: Annotated[Path | None, typer.Option(help="The site directory: also check its key.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead.")] = False,
) -> None:
    """Before starting the node: the SuperLink is reachable, its TLS is valid for that host, the key loads.

    Exit 0 when every check passes, 4 when one fails (each failure says how to fix it).
    """
    import json
    from dataclasses import asdict

    from fedgenome.client.preflight import PreflightFailed, check_site_key, check_superlink
    from fedgenome.configs.schema import load_site_manifest
    from fedgenome.privacy.site_state import site_key_path

    checks = check_superlink(superlink, root_certificates=root_certificates)
    if site is not None:
        checks.append(check_site_key(site_key_path(site, load_site_manifest(site).name)))
    if json_out:
        typer.echo(json.dumps({"ok": all(c.ok for c in checks), "checks": [asdict(c) for c in checks]}))
    else:
        for c in checks:
            fix = "" if c.ok else f"; fix: {c.fix}"
            typer.echo(f"{'ok  ' if c.ok else 'FAIL'} {c.name}: {c.detail}{fix}")
    failed = [c.name for c in checks if not c.ok]
    if failed:
        raise PreflightFailed(f"client check: {', '.join(failed)} failed")


@client_app.command("keygen")
def client_keygen(
    site: Annotated[Path, typer.Option(help="The hospital's site directory.")],
) -> None:
    """Make the site's own key pair in its keys/ (kept if it has one) and print its public key.

    Send only the public key to the consortium operator, who registers it with 'fedgenome pki
    add-site NAME --public-key FILE'; the private key never leaves the hospital.
    """
    from fedgenome.configs.schema import load_site_manifest
    from fedgenome.privacy.keys import create_site_key, fingerprint
    from fedgenome.privacy.site_state import site_key_path, site_public_key

    if not (site / "site.toml").is_file():
        raise ConfigError(f"{site}: not a site directory (no site.toml)")
    name = load_site_manifest(site).name
    private = site_key_path(site, name)
    made = not private.exists()
    if made:
        create_site_key(private.parent, name)
    key = site_public_key(site, name)  # writes keys/NAME.pub when it is missing
    public = private.with_name(f"{name}.pub")
    how = "new" if made else "the site's existing key, kept (its ledger is signed with it)"
    typer.echo(f"site {name}: {how}; public key {public} (fingerprint {fingerprint(key)[:16]})")
    typer.echo(f"next, at the operator: fedgenome pki add-site {name} --pki DIR --public-key {public.name}")


@client_app.command("trust")
def client_trust(
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON object instead.")] = False,
) -> None:
    """Print the content digest of the app bundle of the fedgenome installed here.

    A node runs that bundle, and those pinned with 'client start --trust'; 'fedgenome run' logs the
    digest of what it submits, so the two can be compared.
    """
    import json
    from importlib.metadata import version

    from fedgenome.shared.app_bundle import APP_DIR, installed_digest

    digest = installed_digest()
    if json_out:
        typer.echo(json.dumps({"digest": digest, "fedgenome": version("fedgenome"), "app": str(APP_DIR)}))
    else:
        typer.echo(f"{digest}  fedgenome {version('fedgenome')} ({APP_DIR})")


def run_command(
    server: Annotated[str, typer.Option(help="SuperLink address HOST:PORT.")],
    run_dir: Annotated[Path, typer.Option(help="Where the server writes checkpoints and reports.")],
    reference: Annotated[Path, typer.Option(help="Reference FASTA for held-out evaluation.")],
    root_cert: Annotated[Path | None, typer.Option(help="The consortium CA certificate.")] = None,
    insecure: Insecure_ = False,
    config: Annotated[list[str] | None, typer.Option("--config", "-c", help="Run config KEY=VALUE "
                                                     "(TOML value), repeatable.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the run.")] = 7200.0,
    pki_dir: Annotated[Path | None, typer.Option("--pki", help="The consortium PKI directory on the "
                                                 "SuperLink's machine: each site may claim at most "
                                                 "the patients it declared there.")] = None,
    flwr_home: FlwrHome_ = Path(".flwr-run"),
    detach: Annotated[bool, typer.Option("--detach", help="Return once the run is submitted; follow "
                                         "it with 'fedgenome runs ls / log / stop'.")] = False,
) -> None:
    """Submit a federated run to a SuperLink, follow its rounds, and check that it completed.

    It prints the run id at once, then a line per round. Ctrl-C (or SIGTERM) asks the SuperLink to
    stop the run before exiting (130; 143 for SIGTERM).
    """
    if root_cert is None and not insecure:
        raise ConfigError("TLS is on by default: pass --root-cert CA.crt, or --insecure")
    if root_cert is not None and not insecure:
        check_ca(root_cert)
    from fedgenome.experiments.federated_run import remote_run_config, submit_and_follow

    run_config = remote_run_config(_parse_overrides(config or []), run_dir=run_dir,
                                   reference=reference, pki_dir=pki_dir)
    console = Console(highlight=False, soft_wrap=True)
    terminate_on_sigterm()
    run_id = submit_and_follow(
        run_config, server=server, root_cert=root_cert, flwr_home=flwr_home, timeout=timeout,
        on_submit=lambda run_id: console.print(
            f"run {run_id} submitted" + (f"; follow it with 'fedgenome runs log {run_id} --flwr-home "
                                         f"{flwr_home}'" if detach else
                                         f"; rounds appear here as {RunLayout(run_dir).report} records "
                                         "them (when this host can see the run directory)"),
            markup=False),
        on_round=lambda r: console.print(describe_round(r), markup=False), detach=detach)
    if not detach:
        console.print(f"run {run_id} completed; report: {RunLayout(run_dir).report}", markup=False)


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
    insecure: Insecure_ = False,
) -> None:
    """Three hospitals train the genome LM with DP over Flower's real deployment (127.0.0.1).

    TLS with the run's own consortium PKI and authenticated SuperNodes, unless --insecure.
    """
    from fedgenome.experiments.demo import demo_run_config, print_summary, run_demo
    from fedgenome.shared.fetch import default_cache

    terminate_on_sigterm()
    config = demo_run_config(preset=preset, rounds=rounds, local_steps=local_steps,
                             patients_per_step=patients_per_step, target_epsilon=target_epsilon,
                             aggregation=aggregation, init=init, lr=lr)
    console = Console(highlight=False)
    summary = run_demo(Path("runs") / name, cache=cache or default_cache(), run_config=config,
                       timeout=timeout, insecure=insecure,
                       on_submit=lambda run_id: console.print(f"run {run_id} submitted: {rounds} "
                                                              "rounds across the hospitals"),
                       on_round=lambda record: console.print(describe_round(record)))
    print_summary(summary)

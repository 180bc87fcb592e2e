"""``fedgenome client start | check | keygen | trust``: a hospital's node (a Flower SuperNode)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedgenome.cli_options import MARKUP, Json_, RootCertificates_, Superlink_, flwr_home_option
from fedgenome.cli_signals import terminate_on_sigterm
from fedgenome.configs.errors import ConfigError
from fedgenome.shared.hosts import RUNTIME_PORT

app = typer.Typer(name="client", help="A hospital's node (a Flower SuperNode).", no_args_is_help=True,
                  rich_markup_mode=MARKUP)

Site_ = Annotated[Path, typer.Option("--site", help="The hospital's site directory.")]


@app.command("start")
def client_start(
    config: Annotated[Path | None, typer.Option("--config", "-c", metavar="NODE.toml", help="A node "
                                                "config file holding these options (kebab-case keys; "
                                                "an option given here wins).")] = None,
    site: Annotated[Path | None, typer.Option(help="The hospital's site directory.")] = None,
    superlink: Annotated[str | None, typer.Option(metavar="HOST:PORT", help="The SuperLink's "
                                                  "address, as this machine dials it.")] = None,
    root_certificates: RootCertificates_ = None,
    key: Annotated[Path | None, typer.Option(help="The site's private key for SuperNode "
                                             "authentication (default: the site's keys/NAME, "
                                             "which also signs its ledger).")] = None,
    insecure: Annotated[bool | None, typer.Option("--insecure", help="Plaintext, no TLS (tests "
                                                  "only).", show_default=False)] = None,
    port: Annotated[int | None, typer.Option(help="The SuperNode's local Runtime API port, where its "
                                             "worker connects (one per node on a host; default "
                                             f"{RUNTIME_PORT}).")] = None,
    flwr_home: Annotated[Path | None, flwr_home_option("nodes/SITE/")] = None,
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
    from fedgenome.configs.node import load_node_config
    from fedgenome.configs.schema import load_site_manifest
    from fedgenome.privacy.keys import load_private_key
    from fedgenome.privacy.site_state import site_key_path
    from fedgenome.server.pki_checks import check_ca
    from fedgenome.shared.app_bundle import parse_digest
    from fedgenome.shared.state import state_layout

    node = load_node_config(config, {
        "site": site, "superlink": superlink, "root_certificates": root_certificates, "key": key,
        "insecure": insecure, "port": port, "flwr_home": flwr_home, "trust": tuple(trust or ()),
        "max_retries": max_retries, "max_wait_time": max_wait_time})
    if not (node.site / "site.toml").is_file():
        raise ConfigError(f"{node.site}: not a site directory (no site.toml)")
    name = load_site_manifest(node.site).name
    if node.root_certificates is None and not node.insecure:
        raise ConfigError("TLS is on by default: pass --root-certificates CA.crt (the consortium's "
                          "ca.crt), or --insecure")
    if node.root_certificates is not None and not node.insecure:
        check_ca(node.root_certificates)
    auth_key = node.key
    if auth_key is None and not node.insecure:
        auth_key = site_key_path(node.site, name)
        if not auth_key.is_file():
            raise ConfigError(f"{auth_key}: the site has no key; make one with 'fedgenome client keygen "
                              f"--site {node.site}' (the operator registers its .pub with 'pki add-site "
                              f"{name} --public-key'), install the kit of 'pki add-site', or pass --key")
    if auth_key is not None:
        load_private_key(auth_key)  # a one-line error now rather than Flower's exit later
    terminate_on_sigterm()
    run_node(NodeSpec(
        site=node.site.resolve(), superlink=node.superlink, port=node.port or RUNTIME_PORT,
        home=(node.flwr_home or state_layout().node_home(name)).resolve(),
        root_cert=node.root_certificates and node.root_certificates.resolve(), insecure=node.insecure,
        auth_key=auth_key.resolve() if auth_key is not None else None,
        trust=tuple(parse_digest(d) for d in node.trust), max_retries=node.max_retries,
        max_wait_time=node.max_wait_time))


@app.command("check")
def client_check(
    superlink: Superlink_,
    root_certificates: Annotated[Path, typer.Option("--root-certificates", metavar="CA.crt",
                                                    help="The consortium CA certificate (ca.crt).")],
    site: Annotated[Path | None, typer.Option(help="The site directory: also check its key.")] = None,
    json_out: Json_ = False,
) -> None:
    """Before starting the node: the SuperLink is reachable, its TLS valid for that host, the key registered.

    Exit 0 when every check passes, 4 when one fails (each failure says how to fix it).
    """
    import json
    from dataclasses import asdict

    from fedgenome.client.preflight import (
        PreflightFailed,
        check_key_registered,
        check_site_key,
        check_superlink,
    )
    from fedgenome.configs.schema import load_site_manifest
    from fedgenome.privacy.site_state import site_key_path

    checks = check_superlink(superlink, root_certificates=root_certificates)
    if site is not None:
        key = site_key_path(site, load_site_manifest(site).name)
        checks.append(check_site_key(key))
        if all(c.ok for c in checks):
            checks.append(check_key_registered(superlink, root_certificates=root_certificates, key=key))
    if json_out:
        typer.echo(json.dumps({"ok": all(c.ok for c in checks), "checks": [asdict(c) for c in checks]}))
    else:
        for c in checks:
            fix = "" if c.ok else f"; fix: {c.fix}"
            typer.echo(f"{'ok  ' if c.ok else 'FAIL'} {c.name}: {c.detail}{fix}")
    failed = [c.name for c in checks if not c.ok]
    if failed:
        raise PreflightFailed(f"client check: {', '.join(failed)} failed")


@app.command("keygen")
def client_keygen(site: Site_) -> None:
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


@app.command("trust")
def client_trust(json_out: Json_ = False) -> None:
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

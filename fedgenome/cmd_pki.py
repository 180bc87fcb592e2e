"""``fedgenome pki``: the consortium's CA, the SuperLink's certificate and the site keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fedgenome.cli_options import MARKUP, Json_
from fedgenome.configs.schema import load_site_manifest
from fedgenome.server import pki
from fedgenome.server.pki_checks import CertInfo
from fedgenome.shared.hosts import LOCAL_NAMES

app = typer.Typer(name="pki", no_args_is_help=True, rich_markup_mode=MARKUP,
                  help="The consortium PKI: a CA, the SuperLink's certificate, site keys.")

Pki_ = Annotated[Path, typer.Option("--pki", help="The PKI directory ('pki init --out').")]
Hosts_ = Annotated[list[str] | None, typer.Option(
    "--host", help="DNS name or IP address clients reach the SuperLink at; repeatable "
    f"(default: {', '.join(LOCAL_NAMES)}).")]
Days_ = Annotated[int, typer.Option(help="Validity of the server certificate, in days.")]
Patients_ = Annotated[int | None, typer.Option(help="The patients the site declares: runs given "
                                               "--pki refuse any larger example count from it.")]
_DEFAULT_HOSTS = LOCAL_NAMES


def _console() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _cert_line(label: str, info: CertInfo) -> str:
    hosts = f"; hosts {', '.join(info.hosts)}" if info.hosts else ""
    return (f"{label}: {info.path} valid {info.not_before:%Y-%m-%d} to {info.not_after:%Y-%m-%d} "
            f"({info.days_left():.0f} days left); sha256 {info.fingerprint[:16]}{hosts}")


@app.command("init")
def init_command(
    out: Annotated[Path, typer.Option(help="The new PKI directory (must not hold one already).")],
    host: Hosts_ = None,
    days: Days_ = 365,
    ca_days: Annotated[int, typer.Option(help="Validity of the CA, in days.")] = 3650,
) -> None:
    """Create the consortium CA and the SuperLink's certificate for the given hosts."""
    layout = pki.init_pki(out, hosts=tuple(host or _DEFAULT_HOSTS), days=days, ca_days=ca_days)
    report = pki.check_pki(layout.root)
    console = _console()
    console.print(f"consortium PKI in {out}", markup=False)
    console.print(_cert_line("CA", report.tls.ca), markup=False)
    console.print(_cert_line("SuperLink", report.tls.server), markup=False)
    console.print(f"private keys (mode 0600): {layout.ca_key}, {layout.tls.server_key}", markup=False)
    console.print(f"next: fedgenome pki add-site NAME --pki {out} [--site SITE_DIR]", markup=False)


@app.command("add-site")
def add_site_command(
    name: Annotated[str, typer.Argument(help="The site's name (as in its site.toml).")],
    pki_dir: Pki_,
    site: Annotated[Path | None, typer.Option(help="The site directory, when it is on this machine: "
                                              "the key goes to its keys/ (an existing key is "
                                              "adopted). Without it, a handover kit is written.")] = None,
    patients: Patients_ = None,
    public_key: Annotated[Path | None, typer.Option(
        "--public-key", help="The public key the hospital made itself ('fedgenome client keygen'): "
        "only it is registered, the private key never leaves the hospital.")] = None,
) -> None:
    """Register a site's key (SuperNode authentication and ledger signing): its own, or one issued here."""
    from fedgenome.server.site_policy import declare_patients

    result = pki.add_site(pki_dir, name, site_dir=site, public_key=public_key)
    console = _console()
    if patients is not None:
        console.print(f"declared {patients} patients: {declare_patients(pki_dir, name, patients)}",
                      markup=False)
    console.print(f"site {name} registered: {result.site.public_path} (fingerprint "
                  f"{result.site.fingerprint[:16]})", markup=False)
    if result.kit is not None:
        console.print(f"handover kit {result.kit}: install {name} and {name}.pub as the site's "
                      f"keys/{name} and keys/{name}.pub (mode 0600), ca.crt is the root certificate; "
                      "then delete the kit", markup=False)
    elif result.private_path is None:
        console.print(f"the hospital's own public key {public_key}: its private key stays at the hospital",
                      markup=False)
    else:
        how = "adopted (the site's existing key; its ledger is signed with it)" if result.adopted else "new"
        console.print(f"site key {result.private_path}: {how}", markup=False)
    console.print(f"next: fedgenome server register-site {name} --pki {pki_dir} --superlink HOST:PORT",
                  markup=False)


@app.command("set-patients")
def set_patients_command(
    name: Annotated[str, typer.Argument(help="The registered site's name.")],
    pki_dir: Pki_,
    patients: Annotated[int, typer.Option(help="The patients the site declared to the consortium.")],
) -> None:
    """Record a site's declared patient count: a run with --pki refuses any larger claim."""
    from fedgenome.server.site_policy import declare_patients
    from fedgenome.shared.wire import bucket

    path = declare_patients(pki_dir, name, patients)
    _console().print(f"site {name}: {patients} patients declared ({path}); replies may claim at most "
                     f"{bucket(patients)} examples in runs given --pki {pki_dir}", markup=False)


@app.command("rotate-site")
def rotate_site_command(
    name: Annotated[str, typer.Argument(help="The site's name.")],
    pki_dir: Pki_,
    site: Annotated[Path, typer.Option(help="The site directory (its keys/ and state/ledger).")],
) -> None:
    """Give a site a new key pair; its ledger records the rotation, the old public key is retired."""
    result = pki.rotate_site(pki_dir, name, site_dir=site)
    console = _console()
    console.print(f"site {name}: key {result.old_fingerprint[:16]} rotated to "
                  f"{result.site.fingerprint[:16]}", markup=False)
    if result.at_site is not None:
        console.print(f"ledger entry seq {result.at_site.entry.seq} (signed by the old key) names the "
                      f"new key; old public key kept as {result.at_site.retired_path}", markup=False)
    console.print(f"registry: {result.site.public_path}; retired: {result.retired_path}", markup=False)
    console.print(f"next: fedgenome server register-site {name} --pki {pki_dir} --superlink HOST:PORT, "
                  "then 'flwr supernode unregister NODE_ID' for the old key's node", markup=False)


@app.command("renew-server")
def renew_server_command(pki_dir: Pki_, host: Hosts_ = None, days: Days_ = 365) -> None:
    """Issue a new SuperLink certificate and key with the consortium CA (sites keep their ca.crt)."""
    pki.renew_server(pki_dir, hosts=tuple(host or _DEFAULT_HOSTS), days=days)
    report = pki.check_pki(pki_dir)
    _console().print(_cert_line("SuperLink", report.tls.server), markup=False)


@app.command("check")
def check_command(
    pki_dir: Pki_,
    host: Annotated[str | None, typer.Option(help="A host clients use: must be in the SANs.")] = None,
    site: Annotated[list[Path] | None, typer.Option(
        help="A site directory whose key must be the registered one; repeatable.")] = None,
    json_out: Json_ = False,
) -> None:
    """Check the certificates (dates, key match, CA signature, host) and the registry of site keys."""
    report = pki.check_pki(pki_dir, host=host)
    checked = []
    for site_dir in site or []:
        name = load_site_manifest(site_dir).name
        checked.append((name, site_dir, pki.check_site(pki_dir, name, site_dir=site_dir)))
    if json_out:
        typer.echo(json.dumps({
            "ca": _cert_json(report.tls.ca), "server": _cert_json(report.tls.server),
            "sites": [{"name": e.name, "fingerprint": e.fingerprint, "public_key": str(e.public_path)}
                      for e in report.sites],
            "retired": report.retired,
            "checked_sites": [{"name": n, "site": str(d), "fingerprint": c.fingerprint}
                              for n, d, c in checked]}, indent=2))
        return
    console = _console()
    console.print(_cert_line("CA", report.tls.ca), markup=False)
    console.print(_cert_line("SuperLink", report.tls.server), markup=False)
    table = Table("site", "fingerprint (sha256)", "public key",
                  title=f"{len(report.sites)} registered sites, {report.retired} retired keys")
    for entry in report.sites:
        table.add_row(entry.name, entry.fingerprint[:16], str(entry.public_path))
    console.print(table)
    for name, site_dir, result in checked:
        console.print(f"site {name} ({site_dir}): key matches the registry, ledger verifies "
                      f"({result.fingerprint[:16]})", markup=False)


def _cert_json(info: CertInfo) -> dict[str, object]:
    return {"path": str(info.path), "subject": info.subject, "issuer": info.issuer,
            "not_before": info.not_before.isoformat(), "not_after": info.not_after.isoformat(),
            "days_left": round(info.days_left(), 2), "sha256": info.fingerprint, "hosts": list(info.hosts)}

"""``fedgenome server register-site | unregister-site | list-sites``: which sites may connect."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedgenome.cli_options import Json_, OperatorHome_, Superlink_
from fedgenome.cmd_runs import operator_connection
from fedgenome.configs.errors import ConfigError
from fedgenome.configs.names import check_site_name
from fedgenome.experiments.federated_run import CONNECTION
from fedgenome.server.deploy import (
    list_supernodes,
    register_supernode,
    unregister_supernode,
)
from fedgenome.server.nodes import forget_node, node_of, record_node, recorded_nodes

Pki_ = Annotated[Path, typer.Option("--pki", help="The consortium PKI directory.")]


def register_site(
    name: Annotated[str, typer.Argument(help="The site's name in the PKI registry.")],
    pki_dir: Pki_,
    superlink: Superlink_,
    root_certificates: Annotated[Path | None, typer.Option(
        "--root-certificates", metavar="CA.crt", help="CA certificate (default: the PKI's ca.crt).")] = None,
    flwr_home: OperatorHome_ = None,
) -> None:
    """Register a site's public key with a running SuperLink, so its SuperNode may connect."""
    from fedgenome.server.pki import open_pki

    check_site_name(name)
    layout = open_pki(pki_dir)
    public = layout.site_public(name)
    if not public.is_file():
        raise ConfigError(f"site {name} is not registered in the PKI ({public} is missing): add it with "
                          f"'fedgenome pki add-site {name} --pki {pki_dir}'")
    home = operator_connection(superlink, root_certificates=root_certificates or layout.ca_cert,
                               insecure=False, flwr_home=flwr_home)
    node_id = register_supernode(public.resolve(), CONNECTION, flwr_home=home, name=name)
    record_node(layout.registry, name, node_id=node_id, superlink=superlink)
    typer.echo(f"site {name} registered with the SuperLink at {superlink} as node {node_id} ({public})")


def unregister_site(
    name: Annotated[str, typer.Argument(help="The site's name in the PKI registry.")],
    pki_dir: Pki_,
    superlink: Superlink_,
    flwr_home: OperatorHome_ = None,
    node_id: Annotated[int | None, typer.Option(help="The node id to revoke (default: the one "
                                                "register-site recorded for NAME).")] = None,
) -> None:
    """Revoke a site at the SuperLink: its key may no longer connect (its registry entry stays)."""
    from fedgenome.server.pki import open_pki

    layout = open_pki(pki_dir)
    home = operator_connection(superlink, root_certificates=layout.ca_cert, insecure=False,
                               flwr_home=flwr_home)
    if node_id is None:
        node_id = node_of(layout.registry, name).node_id
    unregister_supernode(node_id, CONNECTION, flwr_home=home)
    forget_node(layout.registry, name)
    typer.echo(f"site {name} (node {node_id}) unregistered at {superlink}: its SuperNode can no longer "
               "connect")


def list_sites(
    pki_dir: Pki_,
    superlink: Superlink_,
    flwr_home: OperatorHome_ = None,
    json_out: Json_ = False,
) -> None:
    """The SuperNodes registered at the SuperLink, with the site each one is (from register-site)."""
    import json

    from rich.table import Table

    from fedgenome.server.pki import open_pki

    layout = open_pki(pki_dir)
    home = operator_connection(superlink, root_certificates=layout.ca_cert, insecure=False,
                               flwr_home=flwr_home)
    names = {r.node_id: n for n, r in recorded_nodes(layout.registry).items()}
    rows = [{"site": names.get(int(n["node-id"]), "(not recorded)"), "node-id": int(n["node-id"]),
             "status": n.get("status"), "online-at": n.get("online-at")}
            for n in list_supernodes(CONNECTION, flwr_home=home)]
    if json_out:
        typer.echo(json.dumps({"sites": rows}, indent=2))
        return
    table = Table()
    for column in ("site", "node-id", "status", "online-at"):
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(row[c] or "") for c in ("site", "node-id", "status", "online-at")))
    Console(highlight=False, soft_wrap=True).print(table)

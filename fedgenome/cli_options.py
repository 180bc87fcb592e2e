"""The options several commands share, one spelling per concept (Flower's where Flower has one).

``--superlink HOST:PORT`` and ``--root-certificates CA.crt`` as in ``flower-supernode``; ``--site`` is
always a site directory (a site's name is the argument NAME); ``--flwr-home`` is always a Flower
home, by default a part of fedgenome's one state directory (:mod:`fedgenome.shared.state`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Final

import typer

from fedgenome.cli_choices import DEVICES
from fedgenome.shared.state import STATE_HELP

MARKUP: Final = "markdown"
"""Help texts are Markdown: paragraphs reflow, ``[model]`` stays literal (rich markup would eat it)."""

Superlink_ = Annotated[str, typer.Option("--superlink", metavar="HOST:PORT",
                                         help="The SuperLink's address, as this machine dials it.")]
RootCertificates_ = Annotated[Path | None, typer.Option(
    "--root-certificates", metavar="CA.crt", help="The consortium CA certificate (the PKI's ca.crt).")]
Insecure_ = Annotated[bool, typer.Option("--insecure", help="Plaintext, no TLS (tests only).")]
Json_ = Annotated[bool, typer.Option("--json", help="Print JSON to stdout instead.")]
Device_ = Annotated[str, typer.Option("--device", help="Where to run.", click_type=DEVICES)]
Checkpoint_ = Annotated[Path, typer.Argument(help="Checkpoint directory.")]


def flwr_home_option(default: str) -> Any:
    """A ``--flwr-home`` option whose help names its default part of the state directory."""
    return typer.Option("--flwr-home", help=f"Flower's home directory (default: {default} under "
                        f"{STATE_HELP}).")


OperatorHome_ = Annotated[Path | None, flwr_home_option("operator/")]
"""The ``flwr`` CLI home of the operator's commands (``run``, ``runs``, ``server *-site``)."""

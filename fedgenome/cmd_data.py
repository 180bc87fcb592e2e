"""``fedgenome data``: fetch the real genomes and build the hospital sites from them."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fedgenome.cli_options import MARKUP
from fedgenome.shared.fetch import CACHE_HELP, PACKAGES, default_cache, fetch_data
from fedgenome.shared.sites import describe_site, make_sites

log = logging.getLogger(__name__)

app = typer.Typer(
    name="data",
    help="Fetch the real genomes (Debian packages) and build hospital sites from them.",
    no_args_is_help=True, rich_markup_mode=MARKUP,
)

CacheOption = Annotated[
    Path | None,
    typer.Option(
        "--cache",
        envvar="FEDGENOME_CACHE",
        help=f"Cache directory for the fetched data (default: {CACHE_HELP}).",
        file_okay=False,
    ),
]


@app.command("fetch")
def fetch_command(
    cache: CacheOption = None,
    verify: Annotated[
        bool, typer.Option("--verify", help="Also check the SHA-256 of files already cached.")
    ] = False,
) -> None:
    """Fetch the real data (chr20 reference, 379 genotyped people, test FASTAs) into the cache."""
    root = cache or default_cache()
    log.info("Debian packages: %s", ", ".join(PACKAGES))
    paths = fetch_data(root, verify=verify)
    table = Table(title=f"data in {root}")
    table.add_column("what")
    table.add_column("path")
    for field, path in vars(paths).items():
        table.add_row(field, str(path))
    Console().print(table)


@app.command("make-sites")
def make_sites_command(
    out: Annotated[Path, typer.Option("--out", help="Directory to hold the site folders.",
                                      file_okay=False)],
    cache: CacheOption = None,
    holdout_bases: Annotated[
        int, typer.Option(min=0, help="Hold out the last N bases of chr20 from training.")
    ] = 5_000_000,
) -> None:
    """Fetch the data if needed, then build one VCF site per population (replacing old ones)."""
    paths = fetch_data(cache or default_cache())
    sites = make_sites(paths, out, holdout_bases=holdout_bases)
    table = Table(title=f"sites in {out}")
    for column in ("site", "role", "patients", "SNPs"):
        table.add_column(column, justify="right" if column in ("patients", "SNPs") else "left")
    for site in sites:
        info = describe_site(site)
        table.add_row(info.name, info.role, str(info.patients), f"{info.snps:,}")
    Console().print(table)

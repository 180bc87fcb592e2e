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


@app.command("variant-labels")
def variant_labels_command(
    out: Annotated[Path, typer.Option("--out", help="TSV to write.", dir_okay=False)] = Path(
        "variant-labels.tsv"),
    cache: CacheOption = None,
    region: Annotated[str | None, typer.Option(help="CONTIG:START-END (0-based, end exclusive) to "
                                               "keep; default: the held-out last 5 Mb of chr20.")] = None,
    whole_contig: Annotated[bool, typer.Option("--whole-contig", help="Keep every SNV of chr20 "
                                               "(its reference was trained on).")] = False,
) -> None:
    """Write a weak variant-effect label: the unseen cohort's SNVs with their frequency at the hospitals.

    Columns: `variant` (CONTIG:POS:REF:ALT), `train_af` (ALT frequency among the training sites'
    patients), `train_alleles`, `unseen_carriers` and `common` (minor-allele frequency >= 5%).
    Feed it to `fedgenome benchmark variants --sequence-column variant --value-column train_af
    --label-column common`.
    """
    from fedgenome.configs.errors import ConfigError
    from fedgenome.configs.schema import Region
    from fedgenome.shared.sites import holdout_region
    from fedgenome.shared.variant_labels import frequency_labels, write_labels

    if whole_contig and region is not None:
        raise ConfigError("--region and --whole-contig exclude each other; pass one")
    paths = fetch_data(cache or default_cache())
    keep = None if whole_contig else Region.parse(region) if region else holdout_region(paths.reference)
    rows = frequency_labels(paths, region=keep)
    write_labels(rows, out)
    where = "all of chr20" if keep is None else f"{keep.contig}:{keep.start}-{keep.end}"
    Console(highlight=False, soft_wrap=True).print(f"{len(rows):,} SNVs of the unseen cohort in {where} "
                                   f"({sum(r.common for r in rows):,} common) -> {out}")

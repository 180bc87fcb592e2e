"""``fedgenome benchmark``: measure a model against labelled data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fedgenome.cli_options import MARKUP, Device_, Json_

app = typer.Typer(name="benchmark", help="Measure a model against labelled data.",
                  no_args_is_help=True, rich_markup_mode=MARKUP)


@app.command("variants")
def variants_command(
    table: Annotated[Path, typer.Argument(help="TSV or CSV (optionally gzipped) with a header row.")],
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-m", help="Checkpoint directory of "
                                             "the model to benchmark.")],
    sequence_column: Annotated[str, typer.Option(help="Column of DNA sequences or of SNVs "
                                                 "CONTIG:POS:REF:ALT.")],
    value_column: Annotated[str, typer.Option(help="Column of measured values (Spearman).")],
    label_column: Annotated[str | None, typer.Option(help="Column of binary labels, 0/1 or "
                                                     "true/false (AUROC).")] = None,
    flank_fasta: Annotated[Path | None, typer.Option(help="FASTA the sequences sit in (with "
                                                     "--flank-region); for SNVs, the reference "
                                                     "(default: the checkpoint's).")] = None,
    flank_region: Annotated[str | None, typer.Option(help="CONTIG:START-END (0-based, end "
                                                     "exclusive) each sequence stands in for.")] = None,
    out: Annotated[Path | None, typer.Option(help="Directory for scores.tsv, benchmark.json and "
                                             "benchmark.png; default benchmark-TABLE.")] = None,
    device: Device_ = "auto",
    resamples: Annotated[int, typer.Option(min=100, help="Bootstrap resamples of the intervals.")] = 1000,
    no_plot: Annotated[bool, typer.Option("--no-plot", help="No PNG (no matplotlib needed).")] = False,
    json_out: Json_ = False,
) -> None:
    """Rank correlation of zero-shot scores with measured variant effects, beside two baselines.

    Every row is scored by the model, the best-k Markov baseline of its public reference and a
    randomly initialised network of the same preset; Spearman's rho (and the AUROC of a label
    column) come with bootstrap 95% intervals.
    """
    from fedgenome.experiments.benchmark_table import read_table
    from fedgenome.experiments.variant_benchmark import benchmark_variants

    rows = read_table(table, sequence_column=sequence_column, value_column=value_column,
                      label_column=label_column)
    target = out or Path(f"benchmark-{table.name.split('.')[0]}")
    with Console(stderr=True).status(f"scoring {len(rows.items):,} rows three times"):
        got = benchmark_variants(rows, checkpoint, out=target, flank_fasta=flank_fasta,
                                 flank_region=flank_region, device=device, plot=not no_plot,
                                 resamples=resamples)
    if json_out:
        typer.echo(json.dumps(got.to_json(), indent=2))
        return
    view = Table(title=f"{table.name}: {len(rows.items):,} {rows.kind} rows"
                 + (f" ({rows.skipped} without a value skipped)" if rows.skipped else ""))
    columns = ["scorer", "Spearman rho [95% CI]"] + (["AUROC [95% CI]"] if rows.labels is not None else [])
    for column in columns:
        view.add_column(column)
    for r in got.results:
        view.add_row(r.name, r.spearman.interval(),
                     *([r.auroc.interval(signed=False)] if r.auroc is not None else []))
    console = Console(highlight=False, soft_wrap=True)
    console.print(view)
    console.print(f"wrote {', '.join(str(f) for f in got.files)}", markup=False)

"""``fedgenome report``: the HTML model report of a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedgenome.cli_options import Checkpoint_, Device_


def report_command(
    checkpoint: Checkpoint_,
    out: Annotated[Path | None, typer.Option(help="HTML file to write (default: "
                                             "report-CHECKPOINT.html here).", dir_okay=False)] = None,
    run: Annotated[Path | None, typer.Option(help="The run directory the checkpoint came from, for "
                                             "its per-population table (default: the checkpoint's "
                                             "parent, when it holds report.json).",
                                             file_okay=False)] = None,
    labels: Annotated[Path | None, typer.Option(help="Variant table in the format of `data "
                                                "variant-labels` (default: made from the fetched "
                                                "data, held-out region).", dir_okay=False)] = None,
    variant: Annotated[str | None, typer.Option(help="CONTIG:POS:REF:ALT to explain (default: the "
                                                "first SNV of the labels).")] = None,
    device: Device_ = "auto",
) -> None:
    """Write the HTML model report: bits against the baseline, populations, explanation, benchmark.

    One self-contained page (PNGs inline, nothing fetched when opened): held-out bits per base beside
    the best-k Markov baseline, the run's per-population table of private site evaluations, a
    saturation-mutagenesis figure around one SNV, and the variant-effect benchmark.
    """
    from fedgenome.experiments.model_report import model_report

    target = out or Path(f"report-{checkpoint.resolve().name}.html")
    with Console(stderr=True).status("evaluating, benchmarking and explaining the model"):
        got = model_report(checkpoint, out=target, run=run, labels=labels, variant=variant,
                           device=device)
    Console(highlight=False, soft_wrap=True).print(
        f"model {got.evaluation.model_bits_per_base:.4f} bits per base on the held-out region"
        + (f" (baseline {got.evaluation.baseline.bits_per_base:.4f})" if got.evaluation.baseline else "")
        + f"; {len(got.benchmark.table.items):,} SNVs benchmarked; wrote {got.path}", markup=False)

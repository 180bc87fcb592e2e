"""``fedgenome report``: one self-contained HTML page on what a checkpoint's model has learnt.

The page holds the model's held-out bits per base beside the best-k Markov baseline (as ``eval``),
the per-population table of the run it came from (each site's privately released bits per round,
with the noise's std and the disparity, when the checkpoint sits in a run directory or ``--run``
names one), one explanation figure (saturation mutagenesis around an SNV, as ``explain``) and the
variant-effect benchmark (as ``benchmark variants``, by default on the allele-frequency label of
the unseen cohort's SNVs in the held-out region). Everything is computed here from public or
local data; nothing leaves the machine, and the page fetches nothing when opened.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from fedgenome.audit.html import PAGE_CSS, html_img, html_table, site_eval_section
from fedgenome.audit.plots import require_matplotlib, site_bits_plot
from fedgenome.configs.errors import InputFileError
from fedgenome.experiments.benchmark_table import read_table
from fedgenome.experiments.checkpoint_eval import CheckpointEval, evaluate_checkpoint
from fedgenome.experiments.explain import explain
from fedgenome.experiments.variant_benchmark import VariantBenchmark, benchmark_variants
from fedgenome.privacy.evaluation import DEFAULT_CLIP
from fedgenome.shared import run_layout as layout
from fedgenome.shared.atomic import atomic_path
from fedgenome.shared.clock import utc_now_text
from fedgenome.shared.fetch import default_cache, fetch_data
from fedgenome.shared.sites import holdout_region
from fedgenome.shared.variant_labels import frequency_labels, write_labels

log = logging.getLogger(__name__)
SITES_HEADING = "<h2>Private evaluation at the sites</h2>"  # as the audit report's section
EXPLAIN_WINDOW = 100  # bases around the explained SNV: 300 windows scored, seconds on a CPU


@dataclass(frozen=True)
class ModelReport:
    """What the page was built from."""

    path: Path
    evaluation: CheckpointEval
    benchmark: VariantBenchmark
    variant: str
    run_report: Path | None


def run_report_of(checkpoint: Path, run: Path | None) -> Path | None:
    """The ``report.json`` of ``run``, or of the run directory the checkpoint sits in (``final/``)."""
    candidate = (run or checkpoint.resolve().parent) / layout.REPORT
    if run is not None and not candidate.is_file():
        raise InputFileError(f"--run {run}: no {layout.REPORT} there; name a run directory")
    return candidate if candidate.is_file() else None


def model_report(checkpoint: Path, *, out: Path, run: Path | None = None, labels: Path | None = None,
                 variant: str | None = None, device: str = "auto", resamples: int = 1000) -> ModelReport:
    """Evaluate, explain and benchmark ``checkpoint``, and write the page to ``out``."""
    require_matplotlib()
    report_json = run_report_of(checkpoint, run)
    with tempfile.TemporaryDirectory(prefix="fedgenome-report-") as scratch:
        work = Path(scratch)
        if labels is None:
            paths = fetch_data(default_cache())
            labels = work / "variant-labels.tsv"
            write_labels(frequency_labels(paths, region=holdout_region(paths.reference)), labels)
        table = read_table(labels, sequence_column="variant", value_column="train_af",
                           label_column="common")
        log.info("held-out bits per base")
        evaluation = evaluate_checkpoint(checkpoint, device=device)
        log.info("variant-effect benchmark on %d SNVs", len(table.items))
        bench = benchmark_variants(table, checkpoint, out=work / "benchmark", device=device,
                                   resamples=resamples)
        snv = variant or table.items[0]
        log.info("explaining %s", snv)
        explained = explain(checkpoint, out=work / "explain", variant=snv, window=EXPLAIN_WINDOW,
                            device=device)
        figure = next(f for f in explained.files if f.suffix == ".png").read_bytes()
        benchmark_png = (work / "benchmark" / "benchmark.png").read_bytes()
        page = _page(checkpoint, evaluation, bench, snv, figure, benchmark_png, report_json)
    with atomic_path(out) as tmp:
        tmp.write_text(page)
    return ModelReport(out, evaluation, bench, snv, report_json)


def _population_section(report_json: Path | None) -> str:
    if report_json is None:
        return (f"{SITES_HEADING}<p>No run report beside this checkpoint: pass <code>--run</code> with "
                "the run directory it came from to show the sites' private evaluations.</p>")
    data: dict[str, Any] = json.loads(report_json.read_text())
    rounds: list[dict[str, Any]] = data.get(layout.ROUNDS, [])
    evaluated = [(r[layout.ROUND], r[layout.SITE_BITS]) for r in rounds if r.get(layout.SITE_BITS)]
    if not evaluated:
        return (f"{SITES_HEADING}<p>The run {escape(str(report_json.parent))} asked no site evaluations "
                "(<code>site-eval-every</code> = 0).</p>")
    clip = float(data.get(layout.CONFIG, {}).get("site-eval-clip", DEFAULT_CLIP))
    std = {r[layout.ROUND]: r.get(layout.SITE_BITS_STD) or {} for r in rounds}
    return site_eval_section({"rounds": rounds}, site_bits_plot(evaluated, clip=clip, std=std))


def _page(checkpoint: Path, evaluation: CheckpointEval, bench: VariantBenchmark, variant: str,
          figure: bytes, benchmark_png: bytes, report_json: Path | None) -> str:
    rows = [["model", f"{evaluation.model_bits_per_base:.4f}"]]
    if evaluation.baseline is not None:
        rows.append([escape(evaluation.baseline.label), f"{evaluation.baseline.bits_per_base:.4f}"])
    labelled = bench.table.labels is not None
    scores = [[r.name, r.spearman.interval(), *([r.auroc.interval(signed=False)] if r.auroc else [])]
              for r in bench.results]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Model report: {escape(str(checkpoint))}</title>
<style>{PAGE_CSS}</style></head><body>
<h1>Model report of {escape(str(checkpoint))}</h1>
<p>Generated {escape(utc_now_text())}.</p>
<h2>Held-out bits per base</h2>
<p>{escape(evaluation.where)}: {evaluation.windows} windows of {evaluation.window} bases
({evaluation.bases:,} scored). Lower is better; uniform guessing is 2.</p>
{html_table(["scorer", "bits per base"], rows)}
{_population_section(report_json)}
<h2>Explanation: {escape(variant)}</h2>
<p>Saturation mutagenesis of the {EXPLAIN_WINDOW} bases around the SNV: each base changed to each
other base and the window scored again (log-likelihood change), over each position's importance,
and how far ALT moves the model's next-base predictions.</p>
{html_img(figure, "saturation mutagenesis heat map around " + variant)}
<h2>Variant-effect benchmark</h2>
<p>{escape(bench.table.path.name)}: {len(bench.table.items):,} rows, scored ALT minus REF; Spearman's
rho with <code>{escape(bench.table.value_column)}</code>{" and the AUROC of the label" if labelled else ""},
with bootstrap 95% intervals, beside the best-k Markov baseline and a random network.</p>
{html_table(["scorer", "Spearman rho [95% CI]", *(["AUROC [95% CI]"] if labelled else [])], scores)}
{html_img(benchmark_png, "scores against the measured values, and ROC curves")}
</body></html>
"""

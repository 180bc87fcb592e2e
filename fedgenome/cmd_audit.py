"""``fedgenome audit``: check, without trusting the operator or the sites, what privacy each site spent.

``verify`` and ``report`` read ledgers and run directories; ``canaries`` runs a federation with
planted canaries and bounds its epsilon from below (:mod:`fedgenome.audit.canary_run`).

Exit status: 0 when everything verifies; 4 (:class:`fedgenome.audit.verify.AuditFailed`) when the audit ran
and something failed, after one line per failure (``site X, entry N: what is wrong``); 2 for bad
input or usage (a missing file, a malformed option), as everywhere in ``fedgenome``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from fedgenome.audit.empirical import BETA
from fedgenome.audit.report import DEFAULT_NAME, build_report, write_report
from fedgenome.audit.results import SiteAudit
from fedgenome.audit.sources import audit_ledgers, site_budgets
from fedgenome.audit.verify import AuditFailed, AuditResult
from fedgenome.cli_choices import PRESETS
from fedgenome.cli_options import MARKUP
from fedgenome.cli_signals import terminate_on_sigterm
from fedgenome.configs.errors import ConfigError
from fedgenome.shared.atomic import write_text
from fedgenome.shared.fetch import CACHE_HELP

if TYPE_CHECKING:
    from fedgenome.audit.canaries import CanaryAudit

audit_app = typer.Typer(
    name="audit", no_args_is_help=True, rich_markup_mode=MARKUP,
    help="Audit the privacy spent, without trusting the operator or the sites: verify ledgers, "
         "report a run, bound epsilon from below with canaries.")

Pki_ = Annotated[Path | None, typer.Option(
    "--pki", help="The consortium PKI (its public part is enough, e.g. runs/demo/pki): each site's "
    "public key from its registry sites/<site>.pub.")]
Json_ = Annotated[Path | None, typer.Option("--json", help="Also write the result as JSON to this file.")]


def _console() -> Console:
    console = Console(highlight=False, soft_wrap=True)
    if not console.is_terminal:  # piped or captured: room for the table instead of 80 columns
        console.width = 180
    return console


def _eps(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def audit_table(result: AuditResult) -> Table:
    """One row per site: key, counts, δ, ε recorded and recomputed twice, budget, verdict."""
    table = Table(title="Privacy ledger audit")
    for column in ("site", "key", "entries", "rounds trained", "evaluations", "refusals", "rotations", "δ",
                   "ε recorded", "ε Opacus", "ε dp-accounting", "budget", "verdict"):
        table.add_column(column, overflow="fold", min_width=min(len(column), 10))
    for site in result.sites:
        table.add_row(*_row(site))
    return table


def _row(site: SiteAudit) -> tuple[str, ...]:
    counts = ((str(len(site.entries)), str(site.count("trained")), str(site.count("evaluated")),
               str(site.count("refused")), str(site.count("rotated"))) if site.verified else ("-",) * 5)
    budget = "unknown" if site.budget.value is None else f"{site.budget.value:g}"
    if site.budget.value is not None and not site.budget.source.startswith("ledger"):
        budget += " (unsigned)"
    verdict = "ok" if site.ok else f"FAILED ({len(site.problems)})"
    return (site.site, (site.key_fingerprint or "-")[:16], *counts,
            "-" if site.delta is None else f"{site.delta:g}", _eps(site.last("recorded")),
            _eps(site.last("opacus")), _eps(site.last("dp_accounting")), budget, verdict)


def print_audit(result: AuditResult, console: Console) -> None:
    """The table, each site's key and budget sources and notes, then one line per failure."""
    console.print(audit_table(result))
    for site in result.sites:
        budget = "unknown" if site.budget.source == "unknown" else f"from {site.budget.source}"
        console.print(f"{site.site}: key {site.key_source}; budget {budget}", markup=False)
        for digest in site.initial_checkpoints():
            rounds = sorted({e.round for e in site.entries if e.initial_checkpoint_sha256 == digest})
            console.print(f"  initial checkpoint sha256 {digest} (signed; rounds "
                          f"{rounds[0]}-{rounds[-1]})", markup=False)
        for note in site.notes:
            console.print(f"  note: {note}", markup=False)
    for problem in result.problems:
        console.print(problem.line(), markup=False)


def finish(result: AuditResult, console: Console, *, json_out: Path | None) -> None:
    """Print the result, write its JSON if asked, and fail (exit 4) unless everything verified."""
    print_audit(result, console)
    if json_out is not None:
        write_text(json_out, json.dumps(result.to_json(), indent=2) + "\n")
    if not result.ok:
        sites = sum(not s.ok for s in result.sites)
        raise AuditFailed(f"audit failed: {len(result.problems)} problem(s) in {sites} of "
                          f"{len(result.sites)} ledger(s)")
    console.print(f"all {len(result.sites)} ledger(s) verified", markup=False)


@audit_app.command("verify")
def verify_command(
    ledgers: Annotated[list[Path], typer.Argument(
        help="Ledgers: <site>/state/ledger.jsonl, or copies such as runs/demo/ledgers/<site>.jsonl; "
        "each with its .head beside it.")],
    pki_dir: Pki_ = None,
    key: Annotated[Path | None, typer.Option(
        "--key", help="The site's public key (one ledger only); default: the PKI's, else <site>.pub "
        "beside the ledger.")] = None,
    site: Annotated[list[Path] | None, typer.Option(
        "--site", help="A site directory: its site.toml budget is checked where the ledger records "
        "none (unsigned); repeatable.")] = None,
    json_out: Json_ = None,
) -> None:
    """Verify signatures, hash chain and head; recompute ε with Opacus and dp-accounting; check budgets.

    Exit 0 when every ledger verifies; 4 otherwise, after one line per failure.
    """
    if pki_dir is not None and key is not None:
        raise ConfigError("--pki and --key both name the key: pass one of them")
    result = audit_ledgers(ledgers, pki=pki_dir, key_file=key, budgets=site_budgets(site or []))
    finish(result, _console(), json_out=json_out)


@audit_app.command("report")
def report_command(
    run_dir: Annotated[Path, typer.Argument(help="A run directory, e.g. runs/demo (report.json, ledgers/).")],
    out: Annotated[Path | None, typer.Option(
        "--out", help=f"The HTML file; the JSON goes beside it (.json). Default RUN_DIR/{DEFAULT_NAME}.",
    )] = None,
    pki_dir: Pki_ = None,
) -> None:
    """Write a self-contained HTML report (plots embedded) and its JSON; exit 4 if anything failed.

    Ledgers audited as by 'audit verify'; each round's reported epsilon checked against the ledgers.
    """
    console = _console()
    report = build_report(run_dir, pki=pki_dir)
    html_path, json_path = write_report(report, out or run_dir / DEFAULT_NAME)
    console.print(f"report: {html_path} (JSON: {json_path})", markup=False)
    finish(report.result, console, json_out=None)


def print_canary_report(report: CanaryAudit, path: Path) -> None:
    """The short table printed at the end (no sequences; ids and bits only, for the auditor)."""
    console = Console()
    table = Table(title="Canary audit (Steinke-Nasr-Jagielski one-run bound; Carlini exposure)")
    table.add_column("what")
    table.add_column("value", justify="right")
    theory = "-" if report.theoretical_epsilon is None else f"{report.theoretical_epsilon:.3f}"
    for what, value in (
            ("canaries m (included)", f"{report.m} ({report.included})"),
            ("units per canary", str(report.repeats)),
            ("guesses k+ / k- (correct / made)",
             f"{report.k_plus} / {report.k_minus} ({report.correct} / {report.guesses})"),
            (f"empirical epsilon lower bound (beta {report.beta:g}, delta {report.delta:g})",
             f"{report.empirical_epsilon:.3f}"),
            ("theoretical epsilon (site ledger)", theory),
            (f"mean exposure in / out (max {math.log2(report.references + 1):.1f} bits)",
             f"{report.exposure_included_mean:.2f} / {report.exposure_excluded_mean:.2f}")):
        table.add_row(what, value)
    console.print(table)
    if report.repeats > 1:
        console.print(f"note: each canary is {report.repeats} patients, so its guarantee is group "
                      "privacy, weaker than the per-patient theoretical epsilon shown")
    console.print(f"commitment {report.commitment}; report {path}")


@audit_app.command("canaries")
def canaries_command(
    out: Annotated[Path, typer.Option(help="Run directory: sites, federation, report.")],
    canaries: Annotated[int, typer.Option("--canaries", help="Canaries m (each included with "
                                          "probability 1/2).")] = 200,
    repeats: Annotated[int, typer.Option(help="Patients (units) per included canary.")] = 1,
    preset: Annotated[str, typer.Option(help="Model preset.", click_type=PRESETS)] = "tiny",
    rounds: Annotated[int, typer.Option(help="Federated rounds.")] = 3,
    local_steps: Annotated[int, typer.Option(help="Private steps per site per round.")] = 5,
    site_name: Annotated[str, typer.Option(help="The demo hospital (by name) the canaries are planted "
                                           "at.")] = "hospital-ceu",
    target_epsilon: Annotated[float, typer.Option(help="Epsilon every site reaches after all "
                                                  "rounds.")] = 8.0,
    references: Annotated[int, typer.Option(help="Never-planted reference sequences for "
                                            "exposure.")] = 2000,
    beta: Annotated[float, typer.Option(help="Significance of the lower bound.")] = BETA,
    seed: Annotated[int | None, typer.Option(help="Seed of the draw (default: random; sealed).")
                    ] = None,
    auditor_dir: Annotated[Path | None, typer.Option(help="Where the sealed draw goes (default "
                                                     "OUT/auditor).")] = None,
    cache: Annotated[Path | None, typer.Option(help=f"Data cache (default: {CACHE_HELP}).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the run.")] = 3600.0,
) -> None:
    """Plant canaries at one hospital, run the federation, and bound epsilon from below."""
    from fedgenome.audit.canary_run import canary_run_config, run_canary_audit
    from fedgenome.shared.fetch import default_cache
    from fedgenome.shared.run_layout import RunLayout

    terminate_on_sigterm()
    config = canary_run_config(preset=preset, rounds=rounds, local_steps=local_steps,
                               target_epsilon=target_epsilon)
    report = run_canary_audit(out, cache=cache or default_cache(), site=site_name, m=canaries,
                              repeats=repeats, run_config=config, auditor_dir=auditor_dir,
                              references=references, beta=beta, seed=seed, timeout=timeout)
    print_canary_report(report, RunLayout(out).canary_audit)

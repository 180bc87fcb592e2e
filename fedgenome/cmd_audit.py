"""``fedgenome audit``: check, without trusting the operator or the sites, what privacy each site spent.

Exit status: 0 when everything verifies; 4 (:class:`fedgenome.audit.verify.AuditFailed`) when the audit ran
and something failed, after one line per failure (``site X, entry N: what is wrong``); 2 for bad
input or usage (a missing file, a malformed option), as everywhere in ``fedgenome``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fedgenome.audit.report import DEFAULT_NAME, build_report, write_report
from fedgenome.audit.results import SiteAudit
from fedgenome.audit.sources import audit_ledgers, site_budgets
from fedgenome.audit.verify import AuditFailed, AuditResult
from fedgenome.configs.errors import ConfigError
from fedgenome.shared.atomic import write_text

audit_app = typer.Typer(
    name="audit", no_args_is_help=True,
    help="Audit the privacy spent, without trusting the operator or the sites: verify ledgers, "
         "report a run.")

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
    for column in ("site", "key", "entries", "rounds trained", "refusals", "rotations", "δ",
                   "ε recorded", "ε Opacus", "ε dp-accounting", "budget", "verdict"):
        table.add_column(column, overflow="fold", min_width=min(len(column), 10))
    for site in result.sites:
        table.add_row(*_row(site))
    return table


def _row(site: SiteAudit) -> tuple[str, ...]:
    counts = ((str(len(site.entries)), str(site.count("trained")), str(site.count("refused")),
               str(site.count("rotated"))) if site.verified else ("-",) * 4)
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

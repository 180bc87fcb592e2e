"""``fedgenome audit report``: one run's privacy and utility, checked, as self-contained HTML and JSON.

From a run directory (what ``fedgenome demo`` or a federated run writes): the ledgers
(``ledgers/*.jsonl``, else ``sites/*/state/ledger.jsonl``) are audited as by ``audit verify``
(:mod:`fedgenome.audit.verify`), with keys from the run's PKI registry (``pki/sites``) when it is there;
the run report (``report.json``) gives the rounds, the held-out bits per base, the best-k Markov
baseline on the same windows (counted on the public reference: no privacy cost) and the ε each site
reported to the server. The report adds one cross-check that no ledger alone can make: for every
round, the ε the server received from a site must be in that site's ledger at that round (a
truncated ledger with an older head, or a rewritten one, shows up here). If the run directory holds
the empirical canary audit (``canary-audit.json``, from ``fedgenome audit canaries``) it gets its
own section.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedgenome.audit.html import render_html
from fedgenome.audit.plots import epsilon_plot, heldout_plot, require_matplotlib, site_bits_plot
from fedgenome.audit.results import AuditProblem, Budget
from fedgenome.audit.sources import audit_ledgers, run_ledgers, run_site_budgets
from fedgenome.audit.verify import AuditResult
from fedgenome.configs.errors import ConfigError, InputFileError
from fedgenome.privacy.evaluation import DEFAULT_CLIP
from fedgenome.shared import run_layout as layout
from fedgenome.shared.atomic import write_bytes, write_text
from fedgenome.shared.clock import utc_now_text
from fedgenome.shared.markov_fields import BaselineScore
from fedgenome.shared.run_layout import RunLayout

log = logging.getLogger(__name__)

FORMAT = "fedgenome-audit-report/1"
DEFAULT_NAME = "audit-report.html"
_SAME_EPSILON = 1e-9
"""Relative tolerance between the ε a site sent the server and the one in its ledger (the same float)."""


@dataclass(frozen=True)
class AuditReport:
    """A run's audit: the JSON content, its PNG plots, and whether everything verified."""

    data: dict[str, Any]
    plots: dict[str, bytes]
    """``"epsilon"`` and ``"heldout"`` PNGs."""
    result: AuditResult

    @property
    def ok(self) -> bool:
        """True when every ledger verified and the run report agrees with them."""
        return self.result.ok


def build_report(run_dir: Path, *, pki: Path | None = None) -> AuditReport:
    """Audit a run directory's ledgers against its run report; the report's data and plots.

    Args:
        run_dir: What ``fedgenome demo`` (``runs/<name>``) or a federated run wrote.
        pki: The consortium PKI; default ``run_dir/pki`` (the demo's public copy) or the local
            federation's ``run_dir/federation/pki`` when one has a registry, else keys beside the ledgers.

    Raises:
        InputFileError: ``report.json`` is missing or malformed.
        ConfigError: The run directory has no ledgers.
        MissingExtraError: matplotlib is not installed (checked first: the plots need it).
    """
    require_matplotlib()
    files = RunLayout(run_dir)
    run = _read_json(files.report, "the run report")
    rounds = run.get(layout.ROUNDS)
    if not isinstance(rounds, list) or not all(isinstance(r, dict) for r in rounds):
        raise InputFileError(f"{files.report}: no list of rounds; pass a run directory")
    registries = (files.pki, files.federation_pki)
    pki = pki or next((r.root for r in registries if r.sites.is_dir()), None)
    budgets = {**_summary_budgets(files.summary), **run_site_budgets(run_dir)}
    audited = audit_ledgers(run_ledgers(run_dir), pki=pki, budgets=budgets)
    initial = run.get(layout.INITIAL_CHECKPOINT)
    digest = initial.get(layout.CHECKPOINT_SHA256) if isinstance(initial, dict) else None
    result = AuditResult(audited.sites, tuple(cross_check(audited, rounds, initial_sha256=digest)))
    canary_path = files.canary_audit
    canary = _read_json(canary_path, "the canary audit") if canary_path.exists() else None
    data = _data(run_dir, run, result, canary, pki=pki)
    markov = BaselineScore.from_json(data)
    plots = {
        "epsilon": epsilon_plot(
            {s["site"]: [(p["round"], p["epsilon"]) for p in s["epsilon_by_round"]] for s in data["sites"]
             if s["verified"]},
            budgets={s["site"]: s["budget"] for s in data["sites"]},
            reported={s["site"]: [(p["round"], p["epsilon"]) for p in s["reported_epsilon_by_round"]]
                      for s in data["sites"]}),
        "heldout": heldout_plot([(r[layout.ROUND], r[layout.HELDOUT_BITS]) for r in data["rounds"]],
                                initial=data["initial_bits_per_base"],
                                baseline=None if markov is None else (markov.label, markov.bits_per_base)),
    }
    evaluated = [(r[layout.ROUND], r[layout.SITE_BITS]) for r in data["rounds"] if r.get(layout.SITE_BITS)]
    if evaluated:
        clip = float(run[layout.CONFIG].get("site-eval-clip", DEFAULT_CLIP))
        std = {r[layout.ROUND]: r.get(layout.SITE_BITS_STD) or {} for r in data["rounds"]}
        plots["site_bits"] = site_bits_plot(evaluated, clip=clip, std=std)
    return AuditReport(data, plots, result)


def cross_check(result: AuditResult, rounds: Sequence[Mapping[str, Any]], *,
                initial_sha256: str | None = None) -> list[AuditProblem]:
    """Problems where the ε a site reported to the server (run report) is not in its verified ledger.

    Also where none of the site's entries of a round records the run's initial checkpoint
    (``initial_sha256``, from the run report; None for a run that started from random weights).

    Args:
        result: The audit of the run's ledgers.
        rounds: The run report's rounds (each with ``round`` and ``epsilon`` {site: ε}).
        initial_sha256: The run report's initial checkpoint hash.

    Returns:
        One problem per (site, round) that disagrees; sites whose ledger did not verify are skipped
        (they already fail).
    """
    by_site = {s.site: s for s in result.sites}
    problems = []
    for record in rounds:
        rnd = record.get(layout.ROUND)
        for site, eps in sorted((record.get(layout.EPSILON) or {}).items()):
            audit = by_site.get(site)
            where = f"round {rnd}"
            if audit is None:
                problems.append(AuditProblem(site, where, f"the run report has its epsilon {eps:.6g} but "
                                             "no ledger of this site was found"))
                continue
            if not audit.verified:
                continue
            recorded = [e.recorded for e in audit.entries if e.round == rnd and e.status != "rotated"]
            if not recorded:
                problems.append(AuditProblem(site, where, f"the server received epsilon {eps:.6g}, but the "
                                             "ledger has no entry for this round"))
            elif not any(math.isclose(eps, r, rel_tol=_SAME_EPSILON) for r in recorded):
                problems.append(AuditProblem(site, where, f"the server received epsilon {eps:.6g}, the "
                                             f"ledger records {', '.join(f'{r:.6g}' for r in recorded)}"))
            starts = {e.initial_checkpoint_sha256 for e in audit.entries if e.round == rnd
                      and e.status != "rotated"}
            if recorded and initial_sha256 not in starts:
                problems.append(AuditProblem(site, where, f"the run report starts from initial "
                                             f"checkpoint {initial_sha256 or 'none (random weights)'}, "
                                             f"the ledger's entries of this round from "
                                             f"{', '.join(sorted(d or 'none' for d in starts))}"))
    return problems


def _data(run_dir: Path, run: Mapping[str, Any], result: AuditResult, canary: Any, *,
          pki: Path | None) -> dict[str, Any]:
    """The report's JSON content."""
    reported: dict[str, list[dict[str, float]]] = {}
    for record in run[layout.ROUNDS]:
        for site, eps in (record.get(layout.EPSILON) or {}).items():
            reported.setdefault(site, []).append({"round": record.get(layout.ROUND), "epsilon": eps})
    sites = []
    for audit in result.sites:
        row = audit.to_json()
        row["epsilon_by_round"] = [{"round": r, "epsilon": e} for r, e in audit.epsilon_by_round().items()]
        row["reported_epsilon_by_round"] = reported.get(audit.site, [])
        sites.append(row)
    markov = BaselineScore.from_json(run)
    return {
        "format": FORMAT, "run_dir": str(run_dir), "pki": None if pki is None else str(pki),
        "generated": utc_now_text(), "ok": result.ok,
        "problems": [p.line() for p in result.problems], "sites": sites,
        "cross_check": [p.line() for p in result.extra_problems],
        "initial_bits_per_base": run.get(layout.INITIAL_BITS),
        **(markov.to_json() if markov is not None else {}),
        "initial_checkpoint": run.get(layout.INITIAL_CHECKPOINT),
        "rounds": [{k: r.get(k) for k in layout.ROUND_FIELDS} for r in run[layout.ROUNDS]],
        "config": run.get(layout.CONFIG, {}), "canary_audit": canary,
        "tolerances": result.to_json()["tolerances"],
    }


def write_report(report: AuditReport, html_path: Path) -> tuple[Path, Path]:
    """Write the HTML (plots embedded) and the JSON beside it (same name, ``.json``).

    Returns:
        The HTML and JSON paths.

    Raises:
        ConfigError: The JSON would overwrite the run's own ``report.json``.
    """
    json_path = html_path.with_suffix(".json")
    if json_path.name == layout.REPORT and RunLayout(json_path.parent).state.exists():
        raise ConfigError(f"--out {html_path}: its JSON would replace the run report {json_path}; "
                          f"choose another name (default {DEFAULT_NAME})")
    write_text(json_path, json.dumps(report.data, indent=2) + "\n")
    write_bytes(html_path, render_html(report.data, report.plots).encode("utf-8"))
    return html_path, json_path


def _summary_budgets(path: Path) -> dict[str, Budget]:
    """Budgets in the demo's ``summary.json`` at ``path`` (reported by the operator: unsigned)."""
    if not path.exists():
        return {}
    sites = _read_json(path, "the demo summary").get(layout.SUMMARY_SITES) or {}
    budgets = {name: row.get(layout.SUMMARY_BUDGET) for name, row in sites.items() if isinstance(row, dict)}
    return {name: Budget(float(value), f"{path} (unsigned, from the operator)")
            for name, value in budgets.items() if isinstance(value, (int, float))}


def _read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from ``path``, or InputFileError naming it."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputFileError(f"{path}: {what} is missing; pass the run directory (runs/<name>)") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputFileError(f"{path}: {what} is not readable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise InputFileError(f"{path}: {what} is not a JSON object")
    return data

"""The audit report as one self-contained HTML page: inline CSS, PNG plots as base64 data URIs.

Every value from the run directory is escaped; nothing is fetched from anywhere when the page opens.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from fedgenome.shared.disparity import disparity, released
from fedgenome.shared.markov_fields import PRIVACY_NOTE, BaselineScore

PAGE_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.ok { color: #11662b; } .fail { color: #a4161a; font-weight: bold; }
.banner { padding: 0.6em 1em; border-radius: 4px; margin: 1em 0; }
.banner.ok { background: #e3f5e8; } .banner.fail { background: #fbe4e4; }
img { max-width: 100%; border: 1px solid #ddd; } pre { background: #f7f7f7; padding: 0.8em; overflow: auto; }
code { font-size: 0.9em; }
"""


def _num(value: Any, digits: int = 4) -> str:
    """A number for a table cell; '-' for None."""
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else escape(str(value))


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An HTML table; cells are already escaped HTML."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_img(png: bytes, alt: str) -> str:
    """An <img> whose source is the PNG itself, as a base64 data URI."""
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _ledger_section(data: Mapping[str, Any]) -> str:
    """The verification table, the key and budget sources, the notes."""
    rows, sources = [], []
    for s in data["sites"]:
        failed = f'<span class="fail">FAILED ({len(s["problems"])})</span>'
        counts = ["-"] * 4 if not s["verified"] else [
            _num(s[k]) for k in ("entries", "rounds_trained", "refusals", "rotations")]
        rows.append([
            escape(s["site"]), f"<code>{escape((s['key_fingerprint'] or '-')[:16])}</code>", *counts,
            "-" if s["delta"] is None else f"{s['delta']:g}", _num(s["epsilon_recorded"]),
            _num(s["epsilon_opacus"]), _num(s["epsilon_dp_accounting"]),
            "unknown" if s["budget"] is None else f"{s['budget']:g}",
            '<span class="ok">ok</span>' if s["ok"] else failed])
        notes = "".join(f"<br>note: {escape(n)}" for n in s["notes"])
        budget = "unknown" if s["budget_source"] == "unknown" else f"from {s['budget_source']}"
        sources.append(f"<li><b>{escape(s['site'])}</b>: key {escape(s['key_source'])}; budget "
                       f"{escape(budget)}{notes}</li>")
    table = html_table(["site", "key", "entries", "rounds trained", "refusals", "rotations", "δ",
                        "ε recorded",
                    "ε Opacus", "ε dp-accounting", "budget", "verdict"], rows)
    return f"<h2>Ledgers</h2>{table}<ul>{''.join(sources)}</ul>"


def _problems_section(data: Mapping[str, Any]) -> str:
    """The verdict banner and one line per failure."""
    if data["ok"]:
        return ('<div class="banner ok">Every ledger verified: signatures, hash chains and heads; every '
                "recorded ε recomputed by Opacus and dp-accounting; budgets respected; the run report "
                "agrees with the ledgers.</div>")
    items = "".join(f"<li>{escape(line)}</li>" for line in data["problems"])
    return (f'<div class="banner fail">The audit FAILED: {len(data["problems"])} problem(s).</div>'
            f"<ul class='fail'>{items}</ul>")


def _epsilon_rows(data: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Per round, each site's ε from its ledger and as reported to the server."""
    sites = [s["site"] for s in data["sites"]]
    ledger = {s["site"]: {p["round"]: p["epsilon"] for p in s["epsilon_by_round"]} for s in data["sites"]}
    server = {s["site"]: {p["round"]: p["epsilon"] for p in s["reported_epsilon_by_round"]}
              for s in data["sites"]}
    rounds = sorted({r for table in (*ledger.values(), *server.values()) for r in table})
    header = ["round"] + [f"{site} {what}" for site in sites for what in ("ledger", "run report")]
    rows = [[str(r)] + [_num(table[site].get(r)) for site in sites for table in (ledger, server)]
            for r in rounds]
    return header, rows


def markov_line(data: Mapping[str, Any]) -> str:
    """The Markov baseline beside the model's held-out bits ('' for a run report without one)."""
    markov = BaselineScore.from_json(data)
    if markov is None:
        return ""
    return (f"<p>{escape(markov.label)}: <b>{markov.bits_per_base:.4f}</b> bits per base on the same "
            f"held-out windows; it {escape(PRIVACY_NOTE)}.</p>")


def _rounds_section(data: Mapping[str, Any]) -> str:
    """Per round: held-out bits per base, loss, and which sites trained, refused, failed."""
    rows = [["0 (initial)", _num(data["initial_bits_per_base"]), "-", "", "", "", ""]]
    for r in data["rounds"]:
        sites = [escape(", ".join(r.get(k) or [])) for k in ("trained", "refused", "failed", "dropped")]
        rows.append([_num(r["round"]), _num(r["heldout_bits_per_base"]), _num(r["train_loss"]), *sites])
    return html_table(["round", "held-out bits/base", "train loss", "trained", "refused", "failed",
                       "dropped"],
                  rows)


def site_eval_section(data: Mapping[str, Any], plot: bytes | None = None) -> str:
    """The sites' private evaluations per round, with their plot ('' when the run asked for none)."""
    rounds = [r for r in data["rounds"] if r.get("site_bits")]
    if not rounds:
        return ""
    sites = sorted({s for r in rounds for s in r["site_bits"]})
    rows = [[_num(r["round"]), *(released(r["site_bits"], r.get("site_bits_std") or {}, s, digits=4)
                                 for s in sites)] for r in rounds]
    last = rounds[-1]
    gap = disparity(last["site_bits"], last.get("site_bits_std") or {})
    told = (f"Worst minus best site in the last evaluated round: <b>{escape(str(gap))}</b> (± the DP "
            "noise's standard deviation; the patients' own spread is not released)." if gap else "")
    return ("<h2>Private evaluation at the sites</h2><p>Each site's bits per base of the global model on "
            "its own patients' held-out haplotypes, released with the Gaussian mechanism and spent "
            "from its budget (an <code>evaluated</code> entry in its ledger), ± the standard deviation "
            f"its noise gives it. {told}</p>"
            + (html_img(plot, "released bits per base per site and round") if plot else "")
            + html_table(["round", *sites], rows))


def canary_section(canary: Mapping[str, Any] | None) -> str:
    """The empirical canary audit (``canary-audit.json`` of ``fedgenome audit canaries``), if any.

    The hook for the canary audit's result: its summary fields as a table (the empirical lower bound
    on ε beside the ledger's theoretical ε first), then the canaries (id, included, loss, exposure).
    Unknown fields are shown as they are, so a newer canary format still renders.

    Args:
        canary: The parsed ``canary-audit.json``, or None when the run has none.

    Returns:
        An HTML section, or '' without a canary audit.
    """
    if not canary:
        return ""
    first = ("empirical_epsilon", "theoretical_epsilon", "delta", "beta", "m", "included", "guesses",
             "correct")
    keys = [k for k in first if k in canary] + sorted(k for k in canary if k not in first and k != "canaries")
    summary = html_table(["what", "value"], [[escape(k), _num(canary[k])] for k in keys])
    canaries = canary.get("canaries") or []
    columns = sorted({k for c in canaries if isinstance(c, dict) for k in c},
                     key=lambda k: (k not in ("id", "included", "loss", "exposure"), k))
    table = html_table(columns, [[_num(c.get(k)) for k in columns] for c in canaries if isinstance(c, dict)])
    note = ("<p>The empirical ε is a lower bound from one run's membership guesses (Steinke, Nasr and "
            "Jagielski); it must not exceed the theoretical ε that the ledger records.</p>")
    return f"<h2>Empirical canary audit</h2>{note}{summary}<details><summary>{len(canaries)} canaries" \
           f"</summary>{table}</details>"


def render_html(data: Mapping[str, Any], plots: Mapping[str, bytes]) -> str:
    """The whole report: verdict, ledgers, ε per round, held-out bits, canaries, what was checked, config."""
    header, rows = _epsilon_rows(data)
    tol = data["tolerances"]
    checked = (f"<p>Recorded ε must equal Opacus' recomputation (relative {tol['opacus_rtol']:g}, absolute "
               f"{tol['opacus_atol']:g}); dp-accounting's PLD ε must not exceed the recorded ε by more than "
               f"relative {tol['dp_accounting_rtol']:g} plus {tol['dp_accounting_atol']:g}. Held-out bits "
               "per base and the ε per round in the run report are what the server recorded.</p>")
    cross = "".join(f"<li>{escape(line)}</li>" for line in data["cross_check"]) or "<li>agrees</li>"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Privacy audit: {escape(data["run_dir"])}</title>
<style>{PAGE_CSS}</style></head><body>
<h1>Privacy audit of {escape(data["run_dir"])}</h1>
<p>Generated {escape(data["generated"])}; keys from {escape(data["pki"] or "beside the ledgers")}.</p>
{_problems_section(data)}
{_ledger_section(data)}
<h2>Privacy spent per round</h2>
{html_img(plots["epsilon"], "cumulative epsilon per round per site, with budgets")}
{html_table(header, rows)}
<p>Run report against the ledgers:</p><ul>{cross}</ul>
<h2>Held-out bits per base</h2>
{html_img(plots["heldout"], "held-out bits per base per round")}
{markov_line(data)}
{_rounds_section(data)}
{site_eval_section(data, plots.get("site_bits"))}
{canary_section(data.get("canary_audit"))}
<h2>What was checked</h2>{checked}
<h2>Run configuration</h2><pre>{escape(json.dumps(data["config"], indent=2))}</pre>
</body></html>
"""

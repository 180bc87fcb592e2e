"""``fedgenome demo``: three hospitals train the genome LM together, privately, on one machine.

Fetches the data if needed, builds the hospital sites, makes the run's consortium PKI (a CA, the
SuperLink's certificate, each hospital's registered key), starts a SuperLink with TLS and SuperNode
authentication and one authenticated SuperNode per hospital as real processes on 127.0.0.1, runs
the rounds of DP federated training, stops everything, and writes ``runs/<name>/``: checkpoints
(the final one as ``final/``), the run report, each site's ledger and public key, the PKI's
public part (``pki/``: CA certificate, server certificate, site key registry), and the summary.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from fedgenome.configs.errors import ConfigError
from fedgenome.configs.schema import load_site_manifest
from fedgenome.localfed import LocalFederation
from fedgenome.privacy.ledger.entry import head_path
from fedgenome.privacy.site_state import ledger_path
from fedgenome.server.deploy import DeploymentError
from fedgenome.server.pki import PkiLayout
from fedgenome.server.progress import OnRound
from fedgenome.shared import run_layout as layout
from fedgenome.shared.fetch import fetch_data
from fedgenome.shared.markov_fields import PRIVACY_NOTE, BaselineScore
from fedgenome.shared.run_layout import PkiRegistry, RunLayout
from fedgenome.shared.sites import make_sites

log = logging.getLogger(__name__)
MARKER = ".fedgenome-demo"
MODEL_MINUS_MARKOV = "model_minus_markov_bits_per_base"
HOSPITALS = ("hospital-gbr-fin", "hospital-tsi", "hospital-ceu")


def prepare_run_dir(run_dir: Path) -> None:
    """An empty run directory; an earlier demo's output there is replaced, anything else refused."""
    if run_dir.exists():
        if not (run_dir / MARKER).exists():
            raise ConfigError(f"{run_dir} exists and is not a demo's output; choose another --name")
        log.info("replacing the earlier demo in %s", run_dir)
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / MARKER).write_text("made by fedgenome demo\n")


def run_demo(run_dir: Path, *, cache: Path, run_config: dict[str, Any], timeout: float,
             insecure: bool = False, on_submit: Callable[[int], None] | None = None,
             on_round: OnRound | None = None) -> dict[str, Any]:
    """Run the whole demo; the summary it prints, as a dict (also written to ``summary.json``).

    ``on_submit`` is called with the run id once the run is submitted, ``on_round`` with each
    round's record as it ends.
    """
    start = time.monotonic()
    prepare_run_dir(run_dir)
    files = RunLayout(run_dir)
    paths = fetch_data(cache)
    make_sites(paths, files.sites)
    sites = [files.sites / name for name in HOSPITALS]
    config = {**run_config, "run-dir": str(run_dir.resolve()),
              "reference": str(paths.reference.resolve()), "min-nodes": len(sites)}
    with LocalFederation(files.federation, sites, insecure=insecure) as federation:
        run_id = federation.submit(config)
        if on_submit is not None:
            on_submit(run_id)
        status = federation.wait(run_id, timeout=timeout, on_round=on_round)
    if federation.pki is not None:
        publish_pki(federation.pki, files.pki)
    if status != "finished:completed":
        raise DeploymentError(f"the federated run ended as {status}; logs: {files.federation / 'logs'}")
    summary = summarize(run_dir, sites, seconds=time.monotonic() - start)
    files.summary.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def publish_pki(pki: PkiLayout, out: PkiRegistry) -> None:
    """Copy the public part of the PKI (certificates and the site key registry), no private key."""
    shutil.copytree(pki.sites, out.sites)
    for path in (pki.ca_cert, pki.tls.server_cert):
        shutil.copy2(path, out.root / path.name)


def summarize(run_dir: Path, sites: list[Path], *, seconds: float) -> dict[str, Any]:
    """Collect the final checkpoint and the ledgers; held-out bits (and the baseline's), epsilon."""
    files = RunLayout(run_dir)
    report = json.loads(files.report.read_text())
    rounds = report[layout.ROUNDS]
    last = rounds[-1]
    markov = BaselineScore.from_json(report)
    state = json.loads(files.state.read_text())
    shutil.copytree(state["checkpoint"], files.final)
    files.ledgers.mkdir()
    budgets = {}
    for site in sites:
        manifest = load_site_manifest(site)
        budgets[manifest.name] = manifest.privacy.epsilon_budget
        ledger, copy = ledger_path(site / "state"), files.ledger_copy(manifest.name)
        for path, to in ((ledger, copy), (head_path(ledger), head_path(copy)),
                         (site / "keys" / f"{manifest.name}.pub", files.ledger_copy_key(manifest.name))):
            if path.exists():
                shutil.copy2(path, to)
    return {"rounds": len(rounds), "seconds": round(seconds, 1),
            "initial_checkpoint": report.get(layout.INITIAL_CHECKPOINT),
            "heldout_bits_per_base_before": report[layout.INITIAL_BITS],
            "heldout_bits_per_base_after": last[layout.HELDOUT_BITS],
            **(markov.to_json() if markov is not None else {}),
            MODEL_MINUS_MARKOV: (None if markov is None
                                 else last[layout.HELDOUT_BITS] - markov.bits_per_base),
            layout.SUMMARY_SITES: {name: {layout.SUMMARY_EPSILON: last[layout.EPSILON].get(name),
                                          layout.SUMMARY_BUDGET: budget} for name, budget in budgets.items()},
            "security": {"tls": files.pki.root.exists(),
                         "authenticated_sites": sorted(p.stem for p in files.pki.registered()),
                         "aggregation": report[layout.CONFIG].get("aggregation", "plain"),
                         "rejected_updates": sum(len(r.get(layout.REJECTED, {})) for r in rounds)},
            "final_checkpoint": str(files.final)}


def print_summary(summary: dict[str, Any]) -> None:
    """The table printed at the end of the demo."""
    console = Console()
    console.print(f"Federated DP training: {summary['rounds']} rounds across "
                  f"{len(summary[layout.SUMMARY_SITES])} hospitals in {summary['seconds'] / 60:.1f} min")
    start = summary.get("initial_checkpoint")
    console.print("started from " + (f"{start['path']} (weights SHA-256 {start['sha256'][:16]})" if start
                                     else "random weights"))
    console.print(f"held-out chr20 bits per base: {summary['heldout_bits_per_base_before']:.4f} "
                  f"before -> {summary['heldout_bits_per_base_after']:.4f} after")
    markov = BaselineScore.from_json(summary)
    if markov is not None:
        console.print(f"{markov.label}: {markov.bits_per_base:.4f} ({PRIVACY_NOTE}); model - baseline: "
                      f"{summary[MODEL_MINUS_MARKOV]:+.4f} bits per base")
    table = Table(title="Privacy spent (patient-level, cumulative)")
    for column in ("site", "epsilon", "budget"):
        table.add_column(column)
    for name, row in summary[layout.SUMMARY_SITES].items():
        eps = "-" if row[layout.SUMMARY_EPSILON] is None else f"{row[layout.SUMMARY_EPSILON]:.3f}"
        table.add_row(name, eps, f"{row[layout.SUMMARY_BUDGET]:g}")
    console.print(table)
    security = summary["security"]
    console.print(f"security: TLS {'on' if security['tls'] else 'OFF'}; authenticated SuperNodes: "
                  f"{', '.join(security['authenticated_sites']) or 'none'}; aggregation "
                  f"{security['aggregation']}; updates rejected by validation: "
                  f"{security['rejected_updates']}")
    console.print(f"final checkpoint: {summary['final_checkpoint']}")

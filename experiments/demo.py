"""``fedgenome demo``'s experiment: three hospitals train the genome LM together, privately, on one machine.

Fetches the data if needed, builds the hospital sites, makes the run's consortium PKI (a CA, the
SuperLink's certificate, each hospital's registered key), starts a SuperLink with TLS and SuperNode
authentication and one authenticated SuperNode per hospital as real processes on 127.0.0.1, runs
the rounds of DP federated training, stops everything, and writes ``runs/<name>/``: checkpoints
(the final one as ``final/``), the run report, each site's ledger and public key, the PKI's
public part (``pki/``: CA certificate, server certificate, site key registry), and the summary.
The sequence is :func:`fedgenome.experiments.runner.run_experiment`'s; the summary and its table
are the demo's own.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from fedgenome.configs.schema import FederationConfig, load_site_manifest
from fedgenome.configs.validation import validate
from fedgenome.experiments.runner import HOSPITALS, Experiment, run_experiment
from fedgenome.models import shipped_checkpoint
from fedgenome.privacy.ledger.entry import head_path
from fedgenome.privacy.site_state import ledger_path
from fedgenome.server.progress import OnRound
from fedgenome.shared import run_layout as layout
from fedgenome.shared.disparity import disparity, released
from fedgenome.shared.markov_fields import PRIVACY_NOTE, BaselineScore
from fedgenome.shared.run_layout import RunLayout
from fedgenome.shared.schedule import FINETUNE_LR

log = logging.getLogger(__name__)
UNSEEN = "unseen-ibs"
"""The unseen cohort of ``make_sites``: with site evaluations on, it joins the demo and evaluates only."""
MARKER = ".fedgenome-demo"
MADE_BY = "fedgenome demo"
MODEL_MINUS_MARKOV = "model_minus_markov_bits_per_base"
__all__ = ["HOSPITALS", "MODEL_MINUS_MARKOV", "demo_run_config", "print_summary", "run_demo",
           "summarize"]


def demo_run_config(*, preset: str, rounds: int, local_steps: int, patients_per_step: int,
                    target_epsilon: float, aggregation: str, init: Path | None = None,
                    lr: float | None = None, site_eval_every: int = 0,
                    panel: Path | None = None) -> dict[str, Any]:
    """The demo's run config, validated: from ``init`` (default: the preset's shipped checkpoint).

    With ``panel`` (a public list of variant positions) the sites' evaluations score their
    patients' bases at 4 of its positions in the held-out region, else one held-out window each.

    Starting from a checkpoint, the peak learning rate defaults to fine-tuning's
    (:data:`~fedgenome.shared.schedule.FINETUNE_LR`); from random weights to the run config's.
    """
    start = init or shipped_checkpoint(preset)
    config: dict[str, Any] = {
        "preset": preset, "num-server-rounds": rounds, "local-steps": local_steps,
        "target-epsilon": target_epsilon, "patients-per-step": patients_per_step, "eval-windows": 64,
        "aggregation": aggregation, "initial-checkpoint": "" if start is None else str(start.resolve()),
        "site-eval-every": site_eval_every, "site-eval-windows": 1}
    if panel is not None:
        config.update({"site-eval-panel": str(panel.resolve()), "site-eval-positions": 4,
                       "site-eval-context": 64})
    if lr is not None or start is not None:
        config["lr"] = lr if lr is not None else FINETUNE_LR
    validate(FederationConfig, config, source="demo options")
    return config


def demo_experiment(run_dir: Path, *, cache: Path, run_config: dict[str, Any], timeout: float,
                    insecure: bool = False) -> Experiment:
    """The demo as an :class:`Experiment`: the three hospitals, TLS and its PKI unless ``insecure``.

    With the sites' private evaluations on (``site-eval-every``), the unseen cohort joins as a
    fourth node that evaluates where it lives and never trains (its site's ``role = "unseen"``).
    """
    every = int(run_config.get("site-eval-every", 0))
    evaluates = 0 < every <= int(run_config.get("num-server-rounds", 0))
    sites = HOSPITALS + ((UNSEEN,) if evaluates else ())
    return Experiment(run_dir=run_dir, cache=cache, run_config=run_config, marker=MARKER,
                      hospitals=sites, insecure=insecure, timeout=timeout)


def run_demo(run_dir: Path, *, cache: Path, run_config: dict[str, Any], timeout: float,
             insecure: bool = False, on_submit: Callable[[int], None] | None = None,
             on_round: OnRound | None = None) -> dict[str, Any]:
    """Run the whole demo; the summary it prints, as a dict (also written to ``summary.json``).

    ``on_submit`` is called with the run id once the run is submitted, ``on_round`` with each
    round's record as it ends.
    """
    spec = demo_experiment(run_dir, cache=cache, run_config=run_config, timeout=timeout,
                           insecure=insecure)
    result = run_experiment(spec, made_by=MADE_BY, on_submit=on_submit, on_round=on_round)
    summary = summarize(run_dir, list(result.sites), seconds=result.seconds)
    RunLayout(run_dir).summary.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


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
            "final_checkpoint": str(files.final),
            layout.SITE_BITS: {str(r[layout.ROUND]): r[layout.SITE_BITS] for r in rounds
                               if r.get(layout.SITE_BITS)},
            layout.SITE_BITS_STD: {str(r[layout.ROUND]): r.get(layout.SITE_BITS_STD) or {}
                                   for r in rounds if r.get(layout.SITE_BITS)}}


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
    _print_site_bits(console, summary.get(layout.SITE_BITS) or {}, summary.get(layout.SITE_BITS_STD) or {})
    console.print(f"final checkpoint: {summary['final_checkpoint']}")


def _print_site_bits(console: Console, by_round: dict[str, dict[str, float]],
                     std_by_round: dict[str, dict[str, float]]) -> None:
    """Per site (the unseen cohort included) and evaluation round: its privately released bits."""
    if not by_round:
        return
    table = Table(title="Private evaluation at the sites: held-out bits per base on their own patients "
                        "(noisy releases ± the noise's std, spent from each budget)")
    table.add_column("site")
    for rnd in by_round:
        table.add_column(f"round {rnd}")
    for site in sorted({s for bits in by_round.values() for s in bits}):
        table.add_row(site, *(released(bits, std_by_round.get(rnd, {}), site)
                              for rnd, bits in by_round.items()))
    console.print(table)
    last = list(by_round)[-1]
    gap = disparity(by_round[last], std_by_round.get(last, {}))
    if gap is not None:
        console.print(f"disparity in round {last} (worst minus best site): {gap}", markup=False)


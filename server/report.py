"""The run report and the server's resumable state, rewritten atomically after every round.

``report.json`` / ``report.csv``: per round, the training loss, held-out bits per base, which sites
trained, refused, failed or dropped out, and each site's cumulative epsilon; for the run, its key
and the checkpoint it started from (path and SHA-256 of its weights), kept across a resume;
``report.json`` also has, at top level, the best-k Markov baseline on the same held-out windows (its
fields are :class:`fedgenome.shared.markov_fields.BaselineScore`'s: counted on the public reference, no
privacy cost).
``state.json``: the last completed round and its checkpoint, so a new run with ``resume = true``
continues from there.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedgenome.shared import run_layout as layout
from fedgenome.shared.atomic import write_text
from fedgenome.shared.markov_fields import BaselineScore
from fedgenome.shared.run_layout import RunLayout


@dataclass
class RoundRecord:
    """One round of a federated run (its fields include :data:`fedgenome.shared.run_layout.ROUND_FIELDS`)."""

    round: int
    train_loss: float | None
    heldout_bits_per_base: float
    trained: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # sampled, but no usable reply
    dropped: list[str] = field(default_factory=list)  # seen in earlier rounds, gone now
    epsilon: dict[str, float] = field(default_factory=dict)  # cumulative, per site
    rejected: dict[str, str] = field(default_factory=dict)  # site -> why the server rejected it
    update_norms: dict[str, float] = field(default_factory=dict)  # L2 norm of each accepted update
    claims: list[dict[str, Any]] = field(default_factory=list)  # replies naming a site not their own
    ledger_heads: dict[str, dict[str, Any]] = field(default_factory=dict)  # site -> {count, sha256}
    seconds: float = 0.0
    site_bits: dict[str, float] = field(default_factory=dict)  # site -> its private evaluation's bits
    site_bits_std: dict[str, float] = field(default_factory=dict)  # site -> the noise's std on them
    site_eval_refused: list[str] = field(default_factory=list)  # asked, but its budget refused it
    site_eval_failed: list[str] = field(default_factory=list)  # asked, but no usable reply


@dataclass
class RunReport:
    """Everything the server reports about a run (only aggregates and site-level metrics)."""

    run_dir: Path
    config: dict[str, Any]
    initial_bits_per_base: float | None = None
    rounds: list[RoundRecord] = field(default_factory=list)
    markov: BaselineScore | None = None  # the public-reference baseline on the held-out windows
    run_key: str = ""  # sent to the sites every round; they keep their optimizer state under it
    initial_checkpoint: dict[str, str] | None = None  # {"path", "sha256"}; None: random init

    def add(self, record: RoundRecord) -> None:
        """Append a round and rewrite the JSON and CSV reports."""
        self.rounds.append(record)
        self.write()

    def write(self) -> None:
        """Write ``report.json`` and ``report.csv`` atomically."""
        files = RunLayout(self.run_dir)
        data = {layout.CONFIG: self.config, layout.RUN_KEY: self.run_key,
                layout.INITIAL_CHECKPOINT: self.initial_checkpoint,
                layout.INITIAL_BITS: self.initial_bits_per_base,
                **(self.markov.to_json() if self.markov is not None else {}),
                layout.ROUNDS: [asdict(r) for r in self.rounds]}
        write_text(files.report, json.dumps(data, indent=2) + "\n")
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["round", "train_loss", "heldout_bits_per_base", "trained", "refused",
                         "failed", "dropped", "rejected", "epsilon", "seconds", "site_bits"])
        for r in self.rounds:
            writer.writerow([r.round, "" if r.train_loss is None else f"{r.train_loss:.5f}",
                             f"{r.heldout_bits_per_base:.5f}", ";".join(r.trained),
                             ";".join(r.refused), ";".join(r.failed), ";".join(r.dropped),
                             ";".join(sorted(r.rejected)),
                             ";".join(f"{k}={v:.4f}" for k, v in sorted(r.epsilon.items())),
                             f"{r.seconds:.1f}",
                             ";".join(f"{k}={v:.4f}" for k, v in sorted(r.site_bits.items()))])
        write_text(files.report_csv, buffer.getvalue())

    @classmethod
    def load(cls, run_dir: Path, config: dict[str, Any]) -> RunReport:
        """The report of an earlier run in ``run_dir`` (empty if there is none)."""
        path = RunLayout(run_dir).report
        if not path.exists():
            return cls(run_dir, config)
        data = json.loads(path.read_text())
        rounds = [RoundRecord(**r) for r in data.get(layout.ROUNDS, [])]
        return cls(run_dir, config, data.get(layout.INITIAL_BITS), rounds, BaselineScore.from_json(data),
                   run_key=data.get(layout.RUN_KEY, ""),
                   initial_checkpoint=data.get(layout.INITIAL_CHECKPOINT))


def read_report(run_dir: Path) -> RunReport | None:
    """The report in ``run_dir`` as its run wrote it (with that run's config); None if none yet."""
    path = RunLayout(run_dir).report
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    rounds = [RoundRecord(**r) for r in data.get(layout.ROUNDS, [])]
    return RunReport(run_dir, data.get(layout.CONFIG, {}), data.get(layout.INITIAL_BITS), rounds)


def write_state(run_dir: Path, *, last_round: int, checkpoint: Path) -> None:
    """Record the last completed round and its checkpoint."""
    write_text(RunLayout(run_dir).state,
               json.dumps({"last_round": last_round, "checkpoint": str(checkpoint)}) + "\n")


def read_state(run_dir: Path) -> tuple[int, Path] | None:
    """(last completed round, its checkpoint), or None for a fresh run directory."""
    path = RunLayout(run_dir).state
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return int(data["last_round"]), Path(data["checkpoint"])

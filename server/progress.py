"""Follow a submitted run: its rounds as the ServerApp reports them, then its final status.

The ServerApp rewrites ``report.json`` in the run directory after every round (server/report.py),
so reading that file is how a submitter on the same host (or a shared file system) sees rounds
finish; it costs a file read. Asking the SuperLink for the run's status takes a ``flwr`` command
(about 2 s of CPU), so that is done rarely while rounds remain, and every second once the last
round is in.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from fedgenome.configs.errors import DeploymentError
from fedgenome.server.deploy import SuperLinkUnreachable, run_log_tail, run_status
from fedgenome.server.report import RoundRecord, read_report

log = logging.getLogger(__name__)
MAX_DOWN_WAIT = 30.0  # seconds between looks at most while the SuperLink does not answer
OnRound = Callable[[RoundRecord], None]


class RoundFollower:
    """Hands each round that appears in ``run_dir/report.json`` to ``on_round``, once."""

    def __init__(self, run_dir: Path | None, on_round: OnRound | None) -> None:
        self.run_dir = run_dir
        self.on_round = on_round
        earlier = read_report(run_dir) if run_dir is not None else None
        self.seen = 0 if earlier is None else len(earlier.rounds)  # rounds before a resume
        self.last_round = 0
        self.final_round: int | None = None

    def poll(self) -> None:
        """Read the report; call ``on_round`` for every round not seen yet."""
        report = read_report(self.run_dir) if self.run_dir is not None else None
        if report is None:
            return
        if report.config:
            total = int(report.config.get("num-server-rounds", 0))
            stop = int(report.config.get("stop-after", 0) or 0)
            self.final_round = min(total, stop) if stop else total
        for record in report.rounds[self.seen:]:
            self.last_round = record.round
            if self.on_round is not None:
                self.on_round(record)
        self.seen = max(self.seen, len(report.rounds))

    @property
    def done(self) -> bool:
        """Whether the last round the run will do has been reported."""
        return self.final_round is not None and self.last_round >= self.final_round


def describe_round(record: RoundRecord) -> str:
    """One line about a finished round: sites trained, train loss, held-out bits per base, seconds."""
    loss = "-" if record.train_loss is None else f"{record.train_loss:.4f}"
    others = [f"{len(names)} {what}" for what, names in (
        ("refused", record.refused), ("failed", record.failed), ("rejected", record.rejected))
        if names]
    sites = ("; private site evaluations (bits/base): "
             + ", ".join(f"{k} {v:.3f}" for k, v in sorted(record.site_bits.items()))
             + "".join(f", {k} refused" for k in record.site_eval_refused)) if (
        record.site_bits or record.site_eval_refused) else ""
    return (f"round {record.round}: {len(record.trained)} sites trained"
            + "".join(f", {o}" for o in others)
            + f", train loss {loss}, held-out {record.heldout_bits_per_base:.4f} bits/base, "
            f"{record.seconds:.1f} s{sites}")


def follow_run(run_id: int, connection: str, *, flwr_home: Path, timeout: float,
               run_dir: Path | None = None, on_round: OnRound | None = None,
               tick: float = 0.25, status_every: float = 30.0) -> str:
    """Wait until a run has finished; its final status (``flwr run --stream`` exits 0 on failure).

    While the SuperLink does not answer (down, restarting) it keeps waiting, looking again with
    back-off up to :data:`MAX_DOWN_WAIT` seconds; a run the SuperLink does not know is an error.

    Args:
        run_id: The run.
        connection: The ``flwr`` connection name of its SuperLink.
        flwr_home: The ``flwr`` CLI's home.
        timeout: Seconds to wait at most.
        run_dir: The run directory, if visible here; its rounds go to ``on_round`` as they end.
        on_round: Called with each round's record, in order.
        tick: Seconds between looks at the report.
        status_every: Seconds between status checks while rounds remain.

    Raises:
        DeploymentError: The run did not finish within ``timeout``.
    """
    follower = RoundFollower(run_dir, on_round)
    every = status_every if run_dir is not None else min(status_every, 10.0)  # no report: ask more
    deadline = time.monotonic() + timeout
    next_status, last_seen_done = time.monotonic() + every, False
    down: float | None = None  # since when the SuperLink has not answered
    with ThreadPoolExecutor(max_workers=1) as pool:  # the report is read while the status comes
        asked: Future[str] | None = None
        while time.monotonic() < deadline:
            follower.poll()
            if follower.done and not last_seen_done:
                next_status, last_seen_done = time.monotonic(), True  # the run ends any moment
            if asked is None and time.monotonic() >= next_status:
                asked = pool.submit(run_status, run_id, connection, flwr_home=flwr_home)
            if asked is not None and asked.done():
                try:
                    status = asked.result()
                except SuperLinkUnreachable as exc:
                    down = down or time.monotonic()
                    wait = min(MAX_DOWN_WAIT, 2.0 * (time.monotonic() - down) + 1.0)
                    log.warning("%s; still waiting for run %d (down %.0f s, next look in %.0f s)",
                                exc, run_id, time.monotonic() - down, wait)
                    asked, next_status = None, time.monotonic() + wait
                    continue
                if down is not None:
                    log.info("the SuperLink answers again after %.0f s", time.monotonic() - down)
                    down = None
                if status.startswith("finished"):
                    follower.poll()
                    if status != "finished:completed":
                        log.error("run %d ended %s; the end of its ServerApp log:\n%s", run_id,
                                  status, run_log_tail(run_id, connection, flwr_home=flwr_home))
                    return status
                asked = None
                next_status = time.monotonic() + (1.0 if follower.done else every)
            time.sleep(tick)
    raise DeploymentError(f"run {run_id} did not finish within {timeout:.0f} s")

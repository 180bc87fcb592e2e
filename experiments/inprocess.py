"""A whole federation in one process: the server's round loop and the sites' ClientApp handler.

No SuperLink, SuperNodes or app processes: :class:`InProcessGrid` stands in for Flower's ``Grid``
and hands each train message straight to ``fedgenome.client.app.train`` with that site's ``Context``, as a
SuperNode would. Everything else is the real code: ``fedgenome.server.rounds.run_federation`` (quorum,
strategy, validation, aggregation, checkpoints, report, resume) and the sites' private rounds,
ledgers and ``state/``. For benchmarks and tests of training behaviour; what only the deployment
does (processes, TLS, authentication, time-outs) is tested with :mod:`fedgenome.experiments.localfed`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from flwr.app import Context, Message, MessageType, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from fedgenome.client import app as client_app
from fedgenome.configs.schema import FederationConfig
from fedgenome.server.report import RunReport
from fedgenome.server.rounds import run_federation
from fedgenome.shared import wire

FIRST_NODE_ID = 101


@contextlib.contextmanager
def server_task(run_id: int = 1) -> Iterator[None]:
    """The task identity a ServerApp process has (new, non-reply Messages need it); restored after."""
    attrs = {"_run_id": run_id, "_task_id": 1, "_node_id": SUPERLINK_NODE_ID}
    before = {name: getattr(TaskIdentity, name) for name in attrs}
    for name, value in attrs.items():
        setattr(TaskIdentity, name, value)
    try:
        yield
    finally:
        for name, value in before.items():
            setattr(TaskIdentity, name, value)


class InProcessGrid:
    """Flower's ``Grid``, as far as the round loop uses it, with every site in this process."""

    def __init__(self, sites: list[Path], fed: FederationConfig, *, run_id: int = 1) -> None:
        """One node per site directory (node ids from 101), all online.

        Args:
            sites: Site directories (each becomes a SuperNode's ``site`` node config).
            fed: The run config every site's context carries.
            run_id: Flower's run id in the contexts.
        """
        run_config = fed.to_run_config()  # what Flower hands a ClientApp
        self.contexts = {FIRST_NODE_ID + i: Context(run_id=run_id, node_id=FIRST_NODE_ID + i,
                                                    node_config={wire.NODE_SITE: str(site)},
                                                    state=RecordDict(), run_config=run_config)
                         for i, site in enumerate(sites)}
        self.seed = fed.seed

    def get_node_ids(self) -> list[int]:
        """Every site's node id."""
        return list(self.contexts)

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> list[Message]:
        """Run each train (or evaluate) message's site round now, in node order; their replies.

        Opacus draws the DP noise from torch's global generator: it is seeded per node and round,
        as each ClientApp process has its own.
        """
        replies = []
        for msg in sorted(messages, key=lambda m: m.metadata.dst_node_id):
            node = msg.metadata.dst_node_id
            rnd = int(str(msg.content.config_records[wire.CONFIG].get(wire.GLOBAL_ROUND, 0)))
            torch.manual_seed(self.seed * 1_000_003 + node * 1_009 + rnd)
            handler = (client_app.evaluate if msg.metadata.message_type == MessageType.EVALUATE
                       else client_app.train)
            replies.append(handler(msg, self.contexts[node]))
        return replies


def run_in_process(fed: FederationConfig, sites: list[Path]) -> RunReport:
    """Run (or resume) the rounds of ``fed`` with ``sites`` in this process; the run report."""
    with server_task():
        return run_federation(InProcessGrid(sites, fed), fed)  # type: ignore[arg-type]


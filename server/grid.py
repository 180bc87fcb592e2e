"""The ServerApp's grid, pulling replies every few tens of milliseconds instead of every 3 s.

Flower's ``Grid.send_and_receive`` (``flwr.superlink.grid.http_grid``) sleeps 3 s between pulls,
so every exchange of messages takes a multiple of about 3 s. :class:`PromptGrid` wraps the grid the
ServerApp is given and does the same with Flower's public ``push_messages``/``pull_messages``:
it pulls :data:`FIRST_PULL` s after the push, then backs off by :data:`BACKOFF` to at most
:data:`MAX_PULL` s between empty pulls, and pulls quickly again after any reply. The round loop,
Flower's strategies and the SecAgg+ workflow all exchange messages through ``send_and_receive``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid
from flwr.supercore.run import Run

FIRST_PULL = 0.02
MAX_PULL = 0.25  # one pull is one Runtime API call to the SuperLink (a few ms)
BACKOFF = 1.5


class PromptGrid(Grid):
    """``grid`` with a prompt ``send_and_receive``; every other call goes straight to ``grid``."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid

    def set_run(self, run: Run) -> None:
        """Delegated to the wrapped grid."""
        self.grid.set_run(run)

    @property
    def run(self) -> Run:
        """Delegated to the wrapped grid."""
        return self.grid.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        """Delegated to the wrapped grid."""
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        """Delegated to the wrapped grid."""
        return self.grid.get_node_ids()

    def get_nodes(self) -> Iterable[NodeInfo]:
        """Delegated to the wrapped grid."""
        return self.grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Delegated to the wrapped grid."""
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Delegated to the wrapped grid."""
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        """Push ``messages`` and pull replies until all are in or ``timeout`` seconds have passed.

        A message the SuperLink did not accept (no id) gets no reply and is not waited for.
        """
        pending = {i for i in self.push_messages(messages) if i}
        end = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        wait = FIRST_PULL
        while pending:
            time.sleep(wait if end is None else max(0.0, min(wait, end - time.monotonic())))
            got = list(self.pull_messages(pending))
            replies += got
            pending -= {m.metadata.reply_to_message_id for m in got}
            wait = FIRST_PULL if got else min(wait * BACKOFF, MAX_PULL)
            if end is not None and time.monotonic() >= end:
                break
        return replies

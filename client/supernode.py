"""``python -m fedgenome.client.supernode ARGS``: Flower's ``flower-supernode ARGS`` with its waits shortened.

The arguments are ``flower-supernode``'s own. Before handing over to Flower's entry point this
shortens the SuperNode's idle pull from the SuperLink (:data:`IDLE_FIRST` to :data:`IDLE_CAP`) and
its looks for the ClientApp's reply (:data:`REPLY_WAIT`), and makes object pulls back off from
:data:`PULL_FIRST` to :data:`PULL_CAP` seconds (see :mod:`fedgenome.shared.flower_patches`); a Flower
without those internals stops here with a one-line error.
"""

from __future__ import annotations

import sys

from fedgenome.configs.errors import FedGenomeError
from fedgenome.shared.flower_patches import (
    check_worker_internals,
    shorten_object_pulls,
    shorten_supernode_waits,
)

IDLE_FIRST, IDLE_CAP = 0.05, 0.25
"""Seconds an idle SuperNode waits between pulls from the SuperLink (Flower: 3 s): from IDLE_FIRST
after a message, growing by half per empty pull to IDLE_CAP. Each is one HTTPS request."""
REPLY_WAIT = 0.05
"""Seconds between looks for the worker's reply and its objects (Flower: 0.5 s); in-process."""
PULL_FIRST, PULL_CAP = 0.02, 0.25
"""Object pull back-off (Flower: 1 s doubling to 10 s), when a pull races the push of a message."""


def main() -> None:
    """Patch, then run Flower's SuperNode with this process's arguments."""
    try:
        check_worker_internals()  # the site's worker needs them: stop here, with one line
        shorten_supernode_waits(idle=IDLE_FIRST, idle_cap=IDLE_CAP, wait=REPLY_WAIT)
        shorten_object_pulls(initial=PULL_FIRST, cap=PULL_CAP)
    except FedGenomeError as exc:
        sys.exit(f"error: {exc}")
    from flwr.supernode.cli import flower_supernode

    sys.argv[0] = "flower-supernode"
    flower_supernode()


if __name__ == "__main__":
    main()

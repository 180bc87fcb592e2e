"""``python -m client.supernode ARGS``: Flower's ``flower-supernode ARGS`` with its waits shortened.

The arguments are ``flower-supernode``'s own. Before handing over to Flower's entry point this caps
the SuperNode's idle pull from the SuperLink and its look for the ClientApp's reply at
:data:`NODE_WAIT` seconds, and makes object pulls back off from :data:`PULL_FIRST` to
:data:`PULL_CAP` seconds (see :mod:`shared.flower_patches`); a Flower without those internals stops
here with a one-line error.
"""

from __future__ import annotations

import sys

from shared.errors import FedGenomeError
from shared.flower_patches import shorten_object_pulls, shorten_supernode_waits

NODE_WAIT = 0.1
"""Seconds an idle SuperNode waits between pulls from the SuperLink (Flower: 3 s), and between looks
for the reply (Flower: 0.5 s). Each idle pull is one HTTPS request to the SuperLink."""
PULL_FIRST, PULL_CAP = 0.02, 0.25
"""Object pull back-off (Flower: 1 s doubling to 10 s), when a pull races the push of a message."""


def main() -> None:
    """Patch, then run Flower's SuperNode with this process's arguments."""
    try:
        shorten_supernode_waits(cap=NODE_WAIT)
        shorten_object_pulls(initial=PULL_FIRST, cap=PULL_CAP)
    except FedGenomeError as exc:
        sys.exit(f"error: {exc}")
    from flwr.supernode.cli import flower_supernode

    sys.argv[0] = "flower-supernode"
    flower_supernode()


if __name__ == "__main__":
    main()

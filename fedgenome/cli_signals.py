"""Signal handling shared by the long-running commands (``demo``, ``server start``, ``audit canaries``)."""

from __future__ import annotations

import signal
from types import FrameType


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is: cleaned up like Ctrl-C, ending with exit 143."""


_received: set[int] = set()


def terminate_on_sigterm() -> None:
    """Turn SIGTERM into :class:`Terminated` so ``with`` blocks stop their processes."""
    def handler(signum: int, frame: FrameType | None) -> None:
        _received.add(signum)
        raise Terminated
    signal.signal(signal.SIGTERM, handler)


def was_terminated() -> bool:
    """Whether SIGTERM arrived (typer reports any interrupt as exit 130; the CLI makes it 143)."""
    return signal.SIGTERM in _received

"""Signal handling shared by the long-running commands (``demo``, ``server start``, ``audit canaries``)."""

from __future__ import annotations

import signal
from types import FrameType


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is: cleaned up like Ctrl-C, ending with exit 143."""


def terminate_on_sigterm() -> None:
    """Turn SIGTERM into :class:`Terminated` so ``with`` blocks stop their processes."""
    def handler(signum: int, frame: FrameType | None) -> None:
        raise Terminated
    signal.signal(signal.SIGTERM, handler)

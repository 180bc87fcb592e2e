"""Signal handling shared by the long-running commands (``demo``, ``server start``, ``audit canaries``)."""

from __future__ import annotations

import signal
from types import FrameType


def terminate_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt so ``with`` blocks stop their processes."""
    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, handler)

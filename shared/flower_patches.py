"""Shorter waits inside Flower's processes: patches of private names, pinned to one Flower version.

A message's round trip in Flower 1.42.0 passes several fixed waits that no CLI flag sets:

- an idle SuperNode sleeps 3 s between pulls from the SuperLink, and 0.5 s between looks for its
  ClientApp's reply (``time.sleep(3)`` / ``time.sleep(0.5)`` in
  ``flwr.supernode.start_client_internal``): :func:`shorten_supernode_waits` hands that module a
  stand-in for :mod:`time` whose ``sleep`` waits less;
- an object pull that races the push of the same message retries after 1 s, doubling to 10 s
  (the keyword defaults of ``flwr.supercore.inflatable.inflatable_utils.pull_objects`` and
  ``pull_and_inflate_object_from_tree``): :func:`shorten_object_pulls` lowers them, with as
  many more tries so the total patience stays what Flower gives.

(The ServerApp's 3 s between pulls is removed without a patch, by ``server.grid.PromptGrid``.)
Each patch checks that the names it changes exist and raises :class:`FlowerVersionError`, one line
naming the Flower version expected, when they do not; ``pyproject.toml`` pins that version.
"""

from __future__ import annotations

import logging
import time
import types
from typing import Any

from shared.errors import FedGenomeError

log = logging.getLogger(__name__)
FLOWER_VERSION = "1.42.0"
"""The Flower release whose internals these patches (and ``client.worker``) use."""
_PULL_FUNCTIONS = ("pull_objects", "pull_and_inflate_object_from_tree")
_PULL_KEYS = ("initial_backoff", "backoff_cap", "max_tries_per_object")


class FlowerVersionError(FedGenomeError):
    """The installed Flower lacks an internal name fedgenome relies on (another version)."""


def missing(name: str) -> FlowerVersionError:
    """The error for a Flower internal that is not there."""
    import flwr

    return FlowerVersionError(f"fedgenome needs flwr=={FLOWER_VERSION}: {name} is missing in the "
                              f"installed flwr {flwr.__version__}; install the pinned version "
                              "(bash scripts/setup.sh)")


def check_version() -> None:
    """Log a warning once when the installed Flower is not the pinned one (the patches may still fit)."""
    import flwr

    if flwr.__version__ != FLOWER_VERSION:
        log.warning("fedgenome is pinned to flwr %s but %s is installed; its patches of Flower "
                    "internals are checked name by name", FLOWER_VERSION, flwr.__version__)


class _ShortSleeps(types.ModuleType):
    """Stands in for :mod:`time` in Flower's SuperNode loop, whose only use of it is ``sleep``.

    Its idle sleep (3 s: no message from the SuperLink) becomes ``idle`` seconds, growing by half
    with every further empty pull up to ``idle_cap``; its other sleeps (0.5 s: waiting for the
    ClientApp's reply and its objects) take at most ``wait`` seconds, and reset the idle wait.
    """

    def __init__(self, *, idle: float, idle_cap: float, wait: float) -> None:
        super().__init__("time")
        self.idle, self.idle_cap, self.wait = idle, idle_cap, wait
        self._next_idle = idle

    def sleep(self, seconds: float) -> None:
        if seconds < 1.0:  # a message is being served
            self._next_idle = self.idle
            time.sleep(min(seconds, self.wait))
            return
        time.sleep(min(seconds, self._next_idle))
        self._next_idle = min(self._next_idle * 1.5, self.idle_cap)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def shorten_supernode_waits(*, idle: float, idle_cap: float, wait: float) -> None:
    """Shorten the SuperNode loop's sleeps: the idle pull's 3 s and the reply wait's 0.5 s.

    See :class:`_ShortSleeps` for ``idle``, ``idle_cap`` and ``wait`` (seconds).
    """
    check_version()
    from flwr.supernode import start_client_internal as loop

    for name in ("start_client_internal", "_push_messages"):
        if not callable(getattr(loop, name, None)):
            raise missing(f"flwr.supernode.start_client_internal.{name}")
    if not isinstance(getattr(loop, "time", None), types.ModuleType):
        raise missing("flwr.supernode.start_client_internal.time")
    loop.time = _ShortSleeps(idle=idle, idle_cap=idle_cap, wait=wait)  # type: ignore[attr-defined]
    log.debug("SuperNode waits: idle %.2f-%.2f s, reply %.2f s", idle, idle_cap, wait)


def shorten_object_pulls(*, initial: float, cap: float) -> None:
    """Object pulls retry after ``initial`` seconds, doubling to ``cap``, for as long as Flower's."""
    check_version()
    from flwr.supercore.inflatable import inflatable_utils

    for name in _PULL_FUNCTIONS:
        defaults = getattr(getattr(inflatable_utils, name, None), "__kwdefaults__", None)
        if not isinstance(defaults, dict) or any(k not in defaults for k in _PULL_KEYS):
            raise missing(f"flwr.supercore.inflatable.inflatable_utils.{name}({', '.join(_PULL_KEYS)})")
        tries, old_cap = defaults["max_tries_per_object"], float(defaults["backoff_cap"])
        if tries is not None and defaults["backoff_cap"] != cap:
            defaults["max_tries_per_object"] = int(tries * max(old_cap / cap, 1.0))
        defaults["initial_backoff"], defaults["backoff_cap"] = initial, cap
    log.debug("object pulls back off from %.3f s to %.2f s", initial, cap)

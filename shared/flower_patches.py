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

(The ServerApp's 3 s between pulls is removed without a patch, by ``fedgenome.server.grid.PromptGrid``.)
Each patch checks that the names it changes exist and raises :class:`FlowerVersionError`, one line
naming the Flower version expected, when they do not; ``pyproject.toml`` pins that version.
:func:`check_worker_internals` does the same for the internals the long-lived ClientApp worker
calls (:data:`WORKER_INTERNALS`); the SuperNode launcher runs it before anything starts.
"""

from __future__ import annotations

import importlib
import logging
import time
import types
from typing import Any

from fedgenome.configs.errors import FedGenomeError

log = logging.getLogger(__name__)
FLOWER_VERSION = "1.42.0"
"""The Flower release whose internals these patches (and ``fedgenome.client.worker``) use."""
WORKER_INTERNALS = {  # what client/worker.py and client/app_loader.py use beyond Flower's app API
    "flwr.supernode.runtime.run_clientapp": ("push_message", "push_task_output"),
    "flwr.supercore.runtime": ("RuntimeHttpClient",),
    "flwr.supercore.interceptors": ("RuntimeTokenHttpInterceptor", "RuntimeVersionHttpInterceptor",
                                    "SuperExecAuthHttpInterceptor"),
    "flwr.supercore.heartbeat": ("HeartbeatSender",),
    "flwr.supercore.task_identity": ("TaskIdentity",),
    "flwr.supercore.app_utils": ("start_parent_process_monitor",),
    "flwr.supercore.inflatable.inflatable_utils": ("pull_and_inflate_object_from_tree",),
    "flwr.supercore.inflatable.inflatable_protobuf_utils": (
        "make_pull_object_fn_protobuf", "make_confirm_message_received_fn_protobuf"),
    "flwr.cli.install": ("install_from_fab",),
    "flwr.clientapp.utils": ("get_load_client_app_fn",),
    "flwr.common.config": ("get_project_dir",),
}
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


def check_worker_internals() -> None:
    """Raise :class:`FlowerVersionError` unless every Flower internal the worker uses is there."""
    for module, names in WORKER_INTERNALS.items():
        try:
            found = importlib.import_module(module)
        except ImportError:
            raise missing(module) from None
        for name in names:
            if not hasattr(found, name):
                raise missing(f"{module}.{name}")


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

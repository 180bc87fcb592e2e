"""Where fedgenome keeps its state on this machine: one directory, the platform's user state dir.

Layout (``StateLayout``)::

    <state>/operator/            the flwr CLI home of 'run', 'runs' and 'server *-site' (config.toml)
    <state>/superlink/           'server start': the SuperLink's database superlink.db
    <state>/superlink/flwr-home/ the SuperLink's FLWR_HOME
    <state>/nodes/<site>/        'client start': the SuperNode's FLWR_HOME (one per site)

``$FEDGENOME_STATE`` moves all of it; every command's ``--flwr-home`` / ``--state`` moves one part.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

STATE_ENV = "FEDGENOME_STATE"
"""The environment variable that moves the whole state directory."""
STATE_HELP = f"${STATE_ENV}, else the user state directory (~/.local/state/fedgenome on Linux)"
"""Where :func:`default_state` looks, in words (the CLI's help texts)."""


def default_state() -> Path:
    """``$FEDGENOME_STATE`` if set, else ``platformdirs.user_state_dir("fedgenome")``.

    On Linux that is ``$XDG_STATE_HOME/fedgenome``, by default ``~/.local/state/fedgenome``.
    """
    env = os.environ.get(STATE_ENV)
    path = Path(env).expanduser() if env else Path(platformdirs.user_state_dir("fedgenome", appauthor=False))
    return path.absolute()


@dataclass(frozen=True)
class StateLayout:
    """The parts of one state directory (see the module docstring)."""

    root: Path

    @property
    def operator_home(self) -> Path:
        """The ``flwr`` CLI home holding the operator's SuperLink connection."""
        return self.root / "operator"

    @property
    def superlink(self) -> Path:
        """The SuperLink's state directory (its database)."""
        return self.root / "superlink"

    @property
    def superlink_home(self) -> Path:
        """The SuperLink process's ``FLWR_HOME``."""
        return self.superlink / "flwr-home"

    def node_home(self, site: str) -> Path:
        """The ``FLWR_HOME`` of the SuperNode of site ``site``."""
        return self.root / "nodes" / site


def state_layout() -> StateLayout:
    """The layout of :func:`default_state`."""
    return StateLayout(default_state())

"""Checks made before anything is trained or spent: the directories a run writes to, and their room.

A private run that trains and then cannot write its ledger entry or checkpoint has wasted the
compute and, worse, leaves the site unsure what was spent; so every writer checks first. Nothing
is created by a check: it probes the directory itself, or its nearest existing parent.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from fedgenome.configs.errors import InputFileError

MIN_FREE_BYTES = 64 * 2**20
"""Free space a run needs where it writes (a ledger entry, a cohort cache, a small checkpoint)."""


def check_writable(directory: Path, *, what: str, fix: str, need: int = MIN_FREE_BYTES) -> None:
    """Raise :class:`InputFileError` unless files can be created in ``directory`` with ``need`` bytes free.

    Args:
        directory: Where the run will write (it need not exist yet; its nearest parent is probed).
        what: What is written there, for the message ("the site's ledger and cache").
        fix: What to do about it, for the message.
        need: Bytes that must be free.
    """
    probe = directory
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    try:
        _probe(probe)
    except OSError as exc:
        raise InputFileError(f"{directory}: cannot write {what} ({exc.strerror or exc}); {fix}; "
                             "nothing was trained or spent") from None
    free = shutil.disk_usage(probe).free
    if free < need:
        raise InputFileError(f"{directory}: only {free / 2**20:.1f} MiB free for {what} (needs "
                             f"{need / 2**20:.0f} MiB); free some space; nothing was trained or spent")


def _probe(directory: Path) -> None:
    """Create and remove a file in ``directory`` (os.access is not enough: root, ACLs, read-only mounts)."""
    fd, name = tempfile.mkstemp(prefix=".fedgenome-probe.", dir=directory)
    os.close(fd)
    os.unlink(name)


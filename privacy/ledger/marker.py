"""Evidence that a site has trained: its ledger marker beside the key, and the traces rounds leave.

A ledger can be deleted (with its head) and a fresh one would start again at epsilon 0, so a site
keeps evidence of its ledger outside ``state/``: ``keys/<name>.ledger-head`` holds one canonical
JSON line, a copy of the ledger's signed head plus where the ledger lives::

    {"count", "format", "last_sha256", "ledger", "signature", "site"}

It is written before the ledger's first entry (count 0, the genesis digest) and after every head
rewrite, so it is never ahead of the ledger; a crash in between leaves it one entry behind, which
is a plain extension. A site opening its ledger (:func:`fedgenome.privacy.site_state.open_ledger`) then

* refuses an empty (or missing) ledger when there is any evidence of past training: the marker,
  a retired key (a rotation was recorded in a ledger), optimizer state, kept updates
  (:func:`training_evidence`); the operator restores the ledger or starts over on record
  (``fedgenome privacy reset``);
* refuses a ledger that does not continue the marker (an older copy restored, or a rewrite):
  :func:`fedgenome.privacy.ledger.head.check_head_continuity`;
* writes the marker for a ledger that has entries but none (sites from before markers).

The marker guards against accidents and against others; the site itself can delete it too, which
is why the signed head also leaves the site with every round (:mod:`fedgenome.privacy.ledger.head`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from fedgenome.configs.errors import LedgerError
from fedgenome.privacy.ledger.entry import canonical
from fedgenome.privacy.ledger.head import HeadDigest
from fedgenome.shared.atomic import write_text

log = logging.getLogger(__name__)
FORMAT = "fedgenome-ledger-marker/1"
OUTGOING = "outgoing"
"""The sub-directory of ``state/`` that keeps the last update sent (:mod:`fedgenome.client.outgoing`)."""
TRACES = {"optimizer": "*.pt", "outbox": "*.npz"}
"""Sub-directories of ``state/`` whose files only a recorded round leaves behind (both are written
after the ledger entry). Not ``outgoing/``: its update is written *before* the entry, so a crash
can leave one that no entry covers."""


@dataclass(frozen=True)
class LedgerMarker:
    """The ledger's last head the site recorded beside its key, and where that ledger lives."""

    ledger: str
    """The ledger's path, relative to the site directory when inside it."""
    head: HeadDigest


def marker_path(key_path: Path) -> Path:
    """The marker beside the private key ``keys/<name>``: ``keys/<name>.ledger-head``."""
    return key_path.with_name(f"{key_path.name}.ledger-head")


def ledger_location(site_dir: Path, ledger: Path) -> str:
    """How a marker names ``ledger``: relative to ``site_dir`` when inside it, else absolute."""
    resolved, root = ledger.resolve(), site_dir.resolve()
    return str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(resolved)


def read_marker(path: Path) -> LedgerMarker | None:
    """The marker at ``path``; None when there is none.

    Raises:
        LedgerError: The file is there but is not a marker (it still counts as evidence: fix or
            restore it rather than delete it).
    """
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="ascii"))
        if data.pop("format") != FORMAT:
            raise ValueError(f"format is not {FORMAT}")
        location = data.pop("ledger")
        return LedgerMarker(ledger=str(location), head=HeadDigest.from_json(data))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, AttributeError, TypeError) as exc:
        raise LedgerError(f"{path}: not a ledger marker ({exc}); restore it from a backup") from exc


def write_marker(path: Path, *, location: str, head: HeadDigest) -> None:
    """Write the marker atomically (a copy of ``head`` and the ledger's ``location``)."""
    fields = {**head.to_json(), "format": FORMAT, "ledger": location}
    write_text(path, canonical(fields).decode("ascii") + "\n")


def training_evidence(key_path: Path, state_dir: Path) -> list[str]:
    """What shows that the site of ``key_path`` trained before, in words (empty when nothing does)."""
    found = []
    marker = marker_path(key_path)
    if marker.exists():
        try:
            known = read_marker(marker)
            detail = "" if known is None else f" for {known.ledger} at {known.head.count} entries"
        except LedgerError:
            detail = " (unreadable)"
        found.append(f"its ledger marker {marker}{detail}")
    retired = sorted((key_path.parent / "retired").glob(f"{key_path.name}-*.pub"))
    if retired:
        found.append(f"{len(retired)} retired key(s) in {key_path.parent / 'retired'}")
    for sub, pattern in TRACES.items():
        files = sorted((state_dir / sub).glob(pattern))
        if files:
            found.append(f"{len(files)} file(s) in {state_dir / sub}")
    return found

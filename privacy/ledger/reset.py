"""Starting a site's ledger over, on record, after the old one was lost (``fedgenome privacy reset``).

A site that has trained refuses to train without its ledger
(:func:`fedgenome.privacy.site_state.open_ledger`).
When the ledger cannot be restored, the operator resets it with a reason. The reset:

1. refuses when there is nothing to reset: the ledger verifies with entries (nothing was lost: the
   budget is never reset by hand), or the site never trained (just train);
2. finds the old ledger's last known head: the largest of its head file (if still there), the
   heads of copies an earlier reset moved aside, and the marker beside the key
   (:mod:`fedgenome.privacy.ledger.marker`); none: 'lost';
3. moves whatever is left of the old ledger aside (``ledger.jsonl.lost-<UTC time>`` and its
   ``.head``), never deleting it, so that it can still be audited;
4. writes a new ledger whose entry 0 is a signed ``reset`` naming the reason and the old head.

Every audit shows the reset and its reason (:mod:`fedgenome.audit.verify`); a server that kept the site's
earlier head digests sees a ``reset`` continuity (:mod:`fedgenome.privacy.ledger.head`). The new ledger's
epsilon starts at 0: what the old ledger spent is not recoverable from a head, so the report says
that the true total is higher.

Crashes: after (3), or after the marker was rewritten for the new ledger but before its entry 0
was written, there is no ledger: running the reset again still finds the old head in the moved
copy (step 2). After entry 0 is written the reset is done (a second one refuses: the ledger
verifies with an entry).
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from fedgenome.configs.errors import ConfigError, LedgerError
from fedgenome.privacy.keys import load_private_key
from fedgenome.privacy.ledger import marker as markers
from fedgenome.privacy.ledger.core import Ledger, LedgerEntry, RetiredKeyError, head_path
from fedgenome.privacy.site_state import LedgerMissingError, ledger_path, open_ledger, site_key_path
from fedgenome.shared.atomic import fsync_dir
from fedgenome.shared.clock import utc_stamp

log = logging.getLogger(__name__)
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class LedgerReset:
    """What :func:`reset_site_ledger` did."""

    ledger: Path
    entry: LedgerEntry
    """The new ledger's entry 0, the signed reset."""
    previous: tuple[int, str] | None
    """The old ledger's last known head (count, last_sha256); None: lost."""
    previous_source: str
    """Where ``previous`` came from: the head file, the marker, or 'lost'."""
    moved_aside: tuple[Path, ...]
    """What was left of the old ledger, now under a ``.lost-<time>`` name."""


def reset_site_ledger(site_dir: Path, name: str, *, reason: str,
                      state_dir: Path | None = None) -> LedgerReset:
    """Start the site's ledger over with a signed reset entry naming ``reason`` and the old head.

    Raises:
        ConfigError: No reason, no key, nothing to reset, or the key keeps its ledger elsewhere.
        LedgerError: Writing the new ledger failed.
    """
    if not reason.strip():
        raise ConfigError("--reason is empty: say why the ledger is started over (auditors read it)")
    key = site_key_path(site_dir, name)
    if not key.exists():
        raise ConfigError(f"{key}: site {name} has no key, so it never trained: there is nothing to reset")
    state = state_dir or site_dir / "state"
    path, marker = ledger_path(state), markers.marker_path(key)
    known = markers.read_marker(marker)
    if known is not None and known.ledger != markers.ledger_location(site_dir, path):
        raise ConfigError(f"{marker}: site {name}'s ledger is at {known.ledger}, not {path}: reset that one")
    _refuse_needless(site_dir, name, state_dir=state_dir, evidence=markers.training_evidence(key, state))
    previous, source = _last_known_head(path, known.head.pair if known else None)
    moved = _move_aside(path)
    ledger = Ledger(path, site=name, private_key=load_private_key(key))
    location = markers.ledger_location(site_dir, path)
    ledger.on_head = lambda head: markers.write_marker(marker, location=location, head=head)
    entry = ledger.start_over(reason=reason, previous=previous)
    return LedgerReset(path, entry, previous, source, moved)


def _refuse_needless(site_dir: Path, name: str, *, state_dir: Path | None, evidence: list[str]) -> None:
    """ConfigError when the ledger is fine (it verifies with entries) or the site never trained."""
    try:
        ledger = open_ledger(site_dir, name, state_dir=state_dir)
    except RetiredKeyError:
        raise
    except LedgerMissingError:
        return
    except LedgerError as exc:
        log.warning("resetting a ledger that does not verify: %s", exc)
        return
    if ledger.entries:
        raise ConfigError(f"{ledger.path} verifies with {len(ledger.entries)} entries (epsilon "
                          f"{ledger.epsilon:g}): nothing was lost, so there is nothing to reset")
    if not evidence:
        raise ConfigError(f"{ledger.path}: site {name} has not trained yet: there is nothing to reset")


def _last_known_head(path: Path, from_marker: tuple[int, str] | None) -> tuple[tuple[int, str] | None, str]:
    """The old ledger's last head: the larger of its head file's and the marker's; else 'lost'."""
    found: list[tuple[tuple[int, str], str]] = []
    for head in (head_path(path), *sorted(path.parent.glob(f"{path.name}.lost-*.head"))):
        pair = _read_pair(head)
        if pair is not None:
            found.append((pair, f"head file {head} (as found, unverified)"))
    if from_marker is not None:
        found.append((from_marker, "the ledger marker beside the key"))
    if not found:
        return None, "lost"
    return max(found, key=lambda item: item[0][0])


def _read_pair(head: Path) -> tuple[int, str] | None:
    """(count, last_sha256) of a head file, or None when it is missing or unreadable."""
    try:
        fields = json.loads(head.read_text(encoding="ascii"))
        count, last = fields.get("count"), fields.get("last_sha256")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return None
    ok = type(count) is int and count >= 0 and isinstance(last, str) and _SHA256.fullmatch(last)
    return (count, last) if ok else None


def _move_aside(path: Path) -> tuple[Path, ...]:
    """Rename what is left of the old ledger (and its head) to ``<ledger>.lost-<UTC time>``."""
    stamp = utc_stamp()
    lost = path.with_name(f"{path.name}.lost-{stamp}")
    moved = []
    for old, new in ((path, lost), (head_path(path), head_path(lost))):
        if old.exists():
            os.replace(old, new)
            moved.append(new)
            log.warning("moved %s aside to %s", old, new)
    if moved:
        fsync_dir(path.parent)
    return tuple(moved)

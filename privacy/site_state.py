"""Where a site keeps its signing key and its privacy ledger (``keys/`` and ``state/``)."""

from __future__ import annotations

import logging
from pathlib import Path

from privacy.keys import create_site_key, load_private_key
from privacy.ledger import Ledger

log = logging.getLogger(__name__)
LEDGER_NAME = "ledger.jsonl"


def site_key_path(site_dir: Path, name: str) -> Path:
    """The site's private key: ``keys/<name>`` (OpenSSH ECDSA; ``keys/<name>.pub`` beside it)."""
    return site_dir / "keys" / name


def ledger_path(state_dir: Path) -> Path:
    """The ledger file in a state directory."""
    return state_dir / LEDGER_NAME


def open_ledger(site_dir: Path, name: str, *, state_dir: Path | None = None) -> Ledger:
    """Open (and verify) the site's ledger, creating the site key on first use.

    Until the consortium's PKI issues site keys, a site key is made here the first time the site
    trains privately; an existing key is always reused.
    """
    key = site_key_path(site_dir, name)
    if not key.exists():
        create_site_key(key.parent, name)
        log.info("created site key %s (and %s.pub)", key, key.name)
    return Ledger(ledger_path(state_dir or site_dir / "state"), site=name,
                  private_key=load_private_key(key))

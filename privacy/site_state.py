"""Where a site keeps its signing key and its privacy ledger (``keys/`` and ``state/``), and key rotation.

::

    keys/<name>, <name>.pub          the current key (OpenSSH ECDSA P-384; private 0600)
    keys/<name>.new                  a rotation in progress (the incoming private key, 0600)
    keys/<name>.ledger-head          the ledger's last head and location (evidence that it exists)
    keys/retired/<name>-<fp16>.pub   keys rotated out (public halves only; <fp16>: fingerprint prefix)
    state/ledger.jsonl (+ .head)     the privacy ledger, signed with the current key
    state/outgoing/                  the last update sent (re-sent if the server asks for it again)

A site that has trained before (see :mod:`fedgenome.privacy.ledger.marker`) never starts a ledger from zero
by accident: :func:`open_ledger` refuses, and ``fedgenome privacy reset`` starts one on record.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from fedgenome.configs.errors import ConfigError, FedGenomeError, LedgerError
from fedgenome.privacy.keys import (
    create_site_key,
    fingerprint,
    generate_key,
    load_private_key,
    load_public_key,
    same_key,
    write_private_key,
    write_public_key,
)
from fedgenome.privacy.ledger.core import Ledger, LedgerEntry, RetiredKeyError, verify_key_chain
from fedgenome.privacy.ledger.entry import rotations
from fedgenome.privacy.ledger.head import HeadDigest, check_head_continuity
from fedgenome.privacy.ledger.marker import (
    LedgerMarker,
    ledger_location,
    marker_path,
    read_marker,
    training_evidence,
    write_marker,
)
from fedgenome.shared.atomic import fsync_dir

log = logging.getLogger(__name__)
LEDGER_NAME = "ledger.jsonl"


class LedgerMissingError(LedgerError):
    """The site has trained before but its ledger is gone: nothing is trained until it is restored."""


@dataclass(frozen=True)
class KeyRotation:
    """What :func:`rotate_site_key` did."""

    site: str
    old_key: ec.EllipticCurvePublicKey
    new_key: ec.EllipticCurvePublicKey
    key_path: Path
    """The site's private key, now the new one."""
    retired_path: Path
    """The old public key under ``keys/retired/``."""
    entry: LedgerEntry
    """The ledger's rotation entry."""


def site_key_path(site_dir: Path, name: str) -> Path:
    """The site's private key: ``keys/<name>`` (OpenSSH ECDSA; ``keys/<name>.pub`` beside it)."""
    return site_dir / "keys" / name


def retired_key_path(directory: Path, name: str, public_key: ec.EllipticCurvePublicKey) -> Path:
    """Where a rotated-out public key goes: ``directory/retired/<name>-<fingerprint prefix>.pub``."""
    return directory / "retired" / f"{name}-{fingerprint(public_key)[:16]}.pub"


def ledger_path(state_dir: Path) -> Path:
    """The ledger file in a state directory."""
    return state_dir / LEDGER_NAME


def open_ledger(site_dir: Path, name: str, *, state_dir: Path | None = None) -> Ledger:
    """Open (and verify) the site's ledger with the site's current key, creating the key on first use.

    A site whose key was not issued by the consortium's PKI (``fedgenome pki add-site``) gets one
    here the first time it trains privately; an existing key is always reused (and adopted by
    ``pki add-site`` later). From then on the ledger's marker beside the key follows its head.

    Raises:
        LedgerMissingError: The ledger is empty or missing but the site has trained before.
        LedgerError: The ledger does not verify, or does not continue the head its marker recorded
            (an older copy was restored, or it was rewritten), or the key keeps another ledger.
    """
    key = site_key_path(site_dir, name)
    if not key.exists():
        create_site_key(key.parent, name)
        log.info("created site key %s (and %s.pub)", key, key.name)
    state = state_dir or site_dir / "state"
    marker, location = marker_path(key), ledger_location(site_dir, ledger_path(state))
    known = read_marker(marker)  # before Ledger() can repair (rewrite) the head
    ledger = Ledger(ledger_path(state), site=name, private_key=load_private_key(key))
    if not ledger.entries:
        _refuse_lost(ledger, site_dir, evidence=training_evidence(key, state))
    elif known is None or known.ledger == location:
        _check_marker(ledger, known, marker, site_dir)
        write_marker(marker, location=location, head=ledger.head_digest())
    else:
        raise LedgerError(f"{ledger.path}: site {name}'s key already keeps its ledger at {known.ledger} "
                          f"({marker}); one key signs one ledger: train with that ledger")
    ledger.on_head = lambda head: write_marker(marker, location=location, head=head)
    return ledger


def ledger_head_digest(site_dir: Path, name: str, *, state_dir: Path | None = None) -> HeadDigest:
    """The site's current ledger head, signed with its key: what each round's reply carries.

    Raises:
        LedgerError: As :func:`open_ledger`.
    """
    return open_ledger(site_dir, name, state_dir=state_dir).head_digest()


def _refuse_lost(ledger: Ledger, site_dir: Path, *, evidence: list[str]) -> None:
    """LedgerMissingError when a site with ``evidence`` of past training has an empty ledger."""
    if evidence:
        raise LedgerMissingError(
            f"{ledger.path} is missing or empty, but site {ledger.site} has trained before "
            f"({'; '.join(evidence)}); nothing was trained: restore the ledger and its head from a "
            f"backup, or start a new one on record with 'fedgenome privacy reset {site_dir} "
            "--reason \"...\"'")


def _check_marker(ledger: Ledger, known: LedgerMarker | None, marker: Path, site_dir: Path) -> None:
    """LedgerError unless the ledger continues the head its marker recorded."""
    if known is None:
        log.info("%s: recording the ledger's head in %s", ledger.path, marker)
        return
    found = check_head_continuity(known.head, ledger.head_digest(), ledger.entries)
    if not found.ok:
        raise LedgerError(
            f"{ledger.path}: {found.problem} (the marker {marker} recorded {known.head.count} entries); "
            f"nothing was trained: restore the ledger and its head with {known.head.count} or more "
            f"entries, or start a new one on record with 'fedgenome privacy reset {site_dir} "
            "--reason \"...\"'")
    if found.note:
        log.warning("%s: %s", ledger.path, found.note)


def site_public_key(site_dir: Path, name: str, *, state_dir: Path | None = None) -> ec.EllipticCurvePublicKey:
    """The public half of the site's current key, checked against its ledger.

    Rewrites ``keys/<name>.pub`` when it is missing or does not match the private key.

    Raises:
        ConfigError: The site has no key.
        LedgerError: The ledger does not verify, or it is signed with another key (a rotation
            that did not finish, or a key that was replaced by hand).
    """
    path = site_key_path(site_dir, name)
    if not path.exists():
        raise ConfigError(f"{path}: site {name} has no key yet; issue one with 'fedgenome pki add-site "
                          f"{name} --pki DIR --site {site_dir}'")
    public = load_private_key(path).public_key()
    pub_path = path.with_name(f"{name}.pub")
    try:
        stale = not same_key(load_public_key(pub_path), public)
    except FedGenomeError:
        stale = True
    if stale:
        log.warning("%s did not match %s; rewriting it", pub_path, path)
        write_public_key(pub_path, public, comment=name)
    ledger = ledger_path(state_dir or site_dir / "state")
    chain = verify_key_chain(ledger, public_key=public, site=name)
    if not same_key(chain.current_key, public):
        raise LedgerError(f"{ledger} is signed with key {fingerprint(chain.current_key)[:16]}, not with "
                          f"the site key {path} ({fingerprint(public)[:16]}): finish the rotation with "
                          "'fedgenome pki rotate-site', or restore the site's current key")
    return public


def rotate_site_key(site_dir: Path, name: str, *, state_dir: Path | None = None) -> KeyRotation:
    """Give the site a new key: the ledger records the rotation, then the key files are swapped.

    Order, so that a crash at any point can be finished by running this again: (1) the new private
    key is written to ``keys/<name>.new``; (2) the ledger appends the rotation, signed with the old
    key, and re-signs its head with the new one; (3) the old public key is kept under
    ``keys/retired/``; (4) ``keys/<name>.new`` replaces ``keys/<name>`` and ``keys/<name>.pub`` is
    rewritten. The old private key is gone after (4).

    Raises:
        ConfigError: The site has no key to rotate.
        LedgerError: The ledger does not verify with the site's key.
    """
    key_path = site_key_path(site_dir, name)
    if not key_path.exists():
        raise ConfigError(f"{key_path}: site {name} has no key to rotate; issue one first with "
                          f"'fedgenome pki add-site {name} --pki DIR --site {site_dir}'")
    old = load_private_key(key_path)
    pending = key_path.with_name(f"{name}.new")
    if pending.exists():
        log.info("%s exists: finishing an interrupted rotation with it", pending)
        new = load_private_key(pending)
    else:
        new = generate_key()
        write_private_key(pending, new)
    entry = _record_rotation(ledger_path(state_dir or site_dir / "state"), name, old=old, new=new)
    retired = retired_key_path(key_path.parent, name, old.public_key())
    write_public_key(retired, old.public_key(), comment=name)
    os.replace(pending, key_path)
    fsync_dir(key_path.parent)
    write_public_key(key_path.with_name(f"{name}.pub"), new.public_key(), comment=name)
    log.info("site %s: key %s rotated to %s; old public key kept as %s", name,
             fingerprint(old.public_key())[:16], fingerprint(new.public_key())[:16], retired)
    return KeyRotation(name, old.public_key(), new.public_key(), key_path, retired, entry)


def _record_rotation(path: Path, name: str, *, old: ec.EllipticCurvePrivateKey,
                     new: ec.EllipticCurvePrivateKey) -> LedgerEntry:
    """Append the rotation old -> new to the ledger, or find it when a previous attempt did."""
    try:
        ledger = Ledger(path, site=name, private_key=old)
    except RetiredKeyError as exc:
        if exc.current_fingerprint != fingerprint(new.public_key()):
            raise
        ledger = Ledger(path, site=name, private_key=new)
        return rotations(ledger.entries)[-1]
    return ledger.rotate(new_key=new)

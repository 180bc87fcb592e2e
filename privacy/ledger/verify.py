"""Verifying a privacy ledger: signatures, the hash chain, key rotations and the signed head file.

Key rotation: a ``rotated`` entry is signed with the key in force before it (its ``old_public_key``)
and names the key in force after it (its ``new_public_key``); every later entry and the head file
are signed with the new key. Entry 0 chains to the *genesis* key, the one the ledger started with.
So a verifier can anchor on either end of the chain of keys:

* the **current** key (the last rotation's new key, e.g. the site's key registered with the
  consortium): the strong check. Whoever does not hold the current private key cannot produce the
  head, and the head commits to the whole chain, retired keys included;
* the **genesis** key: everything is followed from the start, rotation by rotation. A retired key
  that leaked could still be used to fork the ledger at that point, so prefer the current key.

Anything else (an intermediate key, another site's key) is refused.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives.asymmetric import ec

from fedgenome.configs.errors import LedgerError
from fedgenome.privacy.keys import fingerprint, public_key_from_text, public_key_text, verify_signature
from fedgenome.privacy.ledger.entry import (
    LedgerEntry,
    canonical,
    entry_from_dict,
    genesis_sha256,
    head_path,
    order_problem,
    rotations,
    value_problem,
)

logger = logging.getLogger(__name__)


class LedgerEntryError(LedgerError):
    """One line of a ledger fails verification: names the file, the line, its seq and the problem.

    The message is ``"<path> line <n> (seq <seq>): <problem>"`` (no seq when the line did not parse);
    the parts are kept as attributes so that an auditor can name the entry.
    """

    def __init__(self, path: Path, *, line: int, seq: int | None, problem: str) -> None:
        where = f"{path} line {line}" if seq is None else f"{path} line {line} (seq {seq})"
        super().__init__(f"{where}: {problem}")
        self.path, self.line, self.seq, self.problem = path, line, seq, problem


@dataclass(frozen=True)
class KeyChain:
    """A verified ledger's entries and the key in force after each prefix of them."""

    entries: tuple[LedgerEntry, ...]
    keys: tuple[ec.EllipticCurvePublicKey, ...]
    """``keys[i]`` signs entry ``i`` and a head of ``i`` entries; ``len(entries) + 1`` items."""

    @property
    def genesis_key(self) -> ec.EllipticCurvePublicKey:
        """The key the ledger started with."""
        return self.keys[0]

    @property
    def current_key(self) -> ec.EllipticCurvePublicKey:
        """The key that signs the next entry and the head."""
        return self.keys[-1]


def verify_ledger(
    path: Path, *, public_key: ec.EllipticCurvePublicKey, site: str | None = None
) -> tuple[LedgerEntry, ...]:
    """Verify a whole ledger and its head file; return its entries.

    Checks that every line parses and is canonical, every signature (each with the key in force at
    that point, following rotations), the hash chain, that seq runs 0, 1, 2, ... and the site never
    changes (and equals ``site`` when given), that rounds and the cumulative epsilon never decrease,
    that rotations cost no epsilon, and the head (see :mod:`fedgenome.privacy.ledger.core` for what
    that can and cannot catch). A missing ledger with no head is an empty ledger.

    Args:
        path: The ledger (``state/ledger.jsonl``).
        public_key: The site's current key, or the key its ledger started with (see the module
            docstring: the current key is the stronger anchor).
        site: The site the ledger must belong to; None accepts the site of entry 0.

    Raises:
        LedgerError: Naming the file, the line and seq, and what is wrong.
    """
    return verify_key_chain(path, public_key=public_key, site=site).entries


def verify_key_chain(
    path: Path, *, public_key: ec.EllipticCurvePublicKey, site: str | None = None
) -> KeyChain:
    """:func:`verify_ledger`, returning the chain of keys too (e.g. to learn the current key)."""
    data = read_ledger(path)
    if data and not data.endswith(b"\n"):
        raise LedgerEntryError(path, line=data.count(b"\n") + 1, seq=None,
                               problem="incomplete last line (an interrupted append); open the ledger "
                               "with its site key to drop it, or remove the line by hand")
    chain = verify_lines(path, data, public_key=public_key, site=site)
    check_anchor(path, chain, public_key)
    from_genesis = fingerprint(public_key) == fingerprint(chain.genesis_key)
    if check_head(path, chain, trust_retired=from_genesis) == "behind":
        logger.warning("%s is one entry behind (a crash before it was rewritten); opening the ledger "
                       "with the site key repairs it", head_path(path))
    return chain


def read_ledger(path: Path) -> bytes:
    """The ledger's bytes; empty when it does not exist."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""
    except OSError as exc:
        raise LedgerError(f"{path}: cannot read the ledger ({exc.strerror}); check its permissions") from exc


def verify_lines(
    path: Path, data: bytes, *, public_key: ec.EllipticCurvePublicKey, site: str | None
) -> KeyChain:
    """Parse and verify every complete line of ``data`` (signatures, chain, seq, site, order, keys).

    The chain starts from ``public_key`` when entry 0 is bound to it, else from the first rotation's
    old key; the caller checks that ``public_key`` is an acceptable anchor (:func:`check_anchor`).
    """
    parsed = [_parse_line(path, n, raw) for n, raw in enumerate(data.split(b"\n")[:-1], start=1)]
    if not parsed:
        return KeyChain((), (public_key,))
    site = parsed[0].site if site is None else site
    key = _genesis_key(parsed, public_key, site)
    entries: list[LedgerEntry] = []
    keys = [key]
    for line_no, entry in enumerate(parsed, start=1):
        if not signature_ok(key, entry.signed_bytes(), entry.signature):
            raise LedgerEntryError(path, line=line_no, seq=entry.seq,
                                   problem="bad signature: the entry was altered or signed by another key")
        problem = _chain_problem(entries, entry, site, key)
        problem = problem or value_problem(entry) or order_problem(entries[-1] if entries else None, entry)
        if problem:
            raise LedgerEntryError(path, line=line_no, seq=entry.seq, problem=problem)
        if entry.status == "rotated":
            key = public_key_from_text(entry.new_public_key or "") or key  # checked by value_problem
        entries.append(entry)
        keys.append(key)
    return KeyChain(tuple(entries), tuple(keys))


def check_anchor(path: Path, chain: KeyChain, public_key: ec.EllipticCurvePublicKey) -> None:
    """Refuse a verification key that is neither the chain's genesis key nor its current key."""
    anchor = fingerprint(public_key)
    if anchor not in (fingerprint(chain.genesis_key), fingerprint(chain.current_key)):
        raise LedgerError(
            f"{path}: the key given ({anchor[:16]}) is neither the key this ledger started with "
            f"({fingerprint(chain.genesis_key)[:16]}) nor its current key "
            f"({fingerprint(chain.current_key)[:16]}): pass the site's current public key")


def _parse_line(path: Path, line: int, raw: bytes) -> LedgerEntry:
    """Line number ``line`` of ``path`` as a LedgerEntry, checking that it is canonical JSON."""
    try:
        fields = json.loads(raw.decode("ascii"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise LedgerEntryError(path, line=line, seq=None,
                               problem=f"not a JSON line ({' '.join(str(exc).split())})") from exc
    if not isinstance(fields, dict):
        raise LedgerEntryError(path, line=line, seq=None, problem="not a JSON object")
    where = f"{path} line {line}"
    try:
        entry = entry_from_dict(fields, where)
    except LedgerError as exc:
        seq = fields.get("seq")
        raise LedgerEntryError(path, line=line, seq=seq if type(seq) is int else None,
                               problem=str(exc).removeprefix(f"{where}: ")) from exc
    if entry.line() != raw:
        raise LedgerEntryError(path, line=line, seq=entry.seq,
                               problem="not in canonical form: the line was edited")
    return entry


def _genesis_key(
    entries: list[LedgerEntry], public_key: ec.EllipticCurvePublicKey, site: str
) -> ec.EllipticCurvePublicKey:
    """The key entry 0 is bound to: ``public_key`` itself, or the first rotation's old key.

    When neither fits, ``public_key`` is returned so that the signature check names the problem.
    """
    if entries[0].prev_sha256 == genesis_sha256(site, public_key):
        return public_key
    first = next(iter(rotations(entries)), None)
    old = public_key_from_text(first.old_public_key or "") if first is not None else None
    if old is not None and entries[0].prev_sha256 == genesis_sha256(site, old):
        return old
    return public_key


def _chain_problem(
    entries: list[LedgerEntry], entry: LedgerEntry, site: str, key: ec.EllipticCurvePublicKey
) -> str | None:
    """What is wrong with ``entry``'s place in the chain after ``entries``, or None."""
    if entry.seq != len(entries):
        return f"seq {entry.seq} where {len(entries)} was expected: an entry is missing or entries were moved"
    if entry.site != site:
        return f"site is {entry.site!r}, expected {site!r}: entries of another site's ledger"
    if entries and entry.prev_sha256 != entries[-1].sha256:
        return "prev_sha256 does not match the previous line: an entry was removed, inserted or altered"
    if not entries and entry.prev_sha256 != genesis_sha256(site, key):
        return "prev_sha256 is not the start of this site's ledger for this key: wrong key or site"
    if entry.status == "rotated" and entry.old_public_key != public_key_text(key):
        return "the rotation's old_public_key is not the key in force: a forged rotation"
    return None


def check_head(path: Path, chain: KeyChain, *, trust_retired: bool) -> Literal["ok", "behind"]:
    """Check the head file against the entries: 'ok', 'behind' by one (a crash), or LedgerError.

    A head of ``count`` entries must be signed by the key in force after them. A head one entry
    behind a rotation is signed by the retired key; it is accepted only with ``trust_retired``
    (verifying from the genesis key, or by the holder of the current key, who then re-signs it):
    anchored on the current key alone, nothing the current key signed would vouch for the ledger.
    """
    head = head_path(path)
    entries = chain.entries
    if not head.exists():
        if entries:
            raise LedgerError(f"{head} is missing while {path} has {len(entries)} entries: deleted last "
                              "entries cannot be ruled out; restore the head file")
        return "ok"
    count, last, site, signed, signature = _read_head(head)
    key = chain.keys[count] if 0 <= count < len(chain.keys) else chain.current_key
    if not signature_ok(key, signed, signature):
        raise LedgerError(f"{head}: bad signature: the head was altered or signed by another key")
    if entries and site != entries[0].site:
        raise LedgerError(f"{head}: site is {site!r} but {path} belongs to {entries[0].site!r}")
    if count == len(entries) and entries and last == entries[-1].sha256:
        return "ok"
    if count == len(entries) - 1 and count > 0 and last == entries[-2].sha256:
        if not trust_retired and fingerprint(key) != fingerprint(chain.current_key):
            raise LedgerError(f"{head}: one entry behind a key rotation and signed by the retired key: "
                              "open the ledger with the site's current key to repair it, or verify "
                              "with the key the ledger started with")
        return "behind"
    if count > len(entries):
        raise LedgerError(f"{head}: records {count} entries but {path} has {len(entries)}: "
                          "entries were deleted from the end of the ledger")
    raise LedgerError(f"{head}: does not match {path} (head: {count} entries, last {last[:12]}...; "
                      f"ledger: {len(entries)} entries): the ledger or its head was replaced")


def _read_head(head: Path) -> tuple[int, str, str, bytes, str]:
    """The head's count, last_sha256, site, signed bytes and signature, checked for form."""
    try:
        raw = head.read_bytes()
        fields = json.loads(raw.decode("ascii"))
        signature = fields.pop("signature")
        count, last, site = fields["count"], fields["last_sha256"], fields["site"]
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise LedgerError(f"{head}: not a ledger head file ({type(exc).__name__}: {exc})") from exc
    if set(fields) != {"count", "last_sha256", "site"} or not isinstance(signature, str):
        raise LedgerError(f"{head}: unexpected fields {sorted(fields)}")
    if type(count) is not int or not isinstance(last, str) or not isinstance(site, str):
        raise LedgerError(f"{head}: count must be an integer, last_sha256 and site strings")
    if raw != canonical({**fields, "signature": signature}) + b"\n":
        raise LedgerError(f"{head}: not in canonical form: the head was edited")
    return count, last, site, canonical(fields), signature


def signature_ok(public_key: ec.EllipticCurvePublicKey, data: bytes, signature: str) -> bool:
    """Whether ``signature`` is canonical base64 of a valid signature of ``data``."""
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        return False
    return base64.b64encode(raw).decode("ascii") == signature and verify_signature(public_key, data, raw)


def _reject_constant(name: str) -> float:
    """json.loads hook: NaN and Infinity are not valid in a ledger."""
    raise ValueError(f"{name} is not allowed")

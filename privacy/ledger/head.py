"""A ledger's head as a signed digest that leaves the site, and the continuity check of two of them.

The head file beside a ledger catches entries deleted from its end, but the site can replace both
the ledger and the head with an older copy (truncation plus a replayed older head verifies
locally). The defence is to keep the head somewhere the site cannot roll back alone: every round's
reply carries :class:`HeadDigest` (count, last_sha256, site, signature), the server keeps the
digests it received, and :func:`check_head_continuity` compares the one it kept with the next one:

* the count must never go down (``rolled-back``) and the same count must have the same digest
  (``forked``);
* given the ledger's entries (an auditor's copy, or the site's own on open) a larger count must
  extend the earlier head: entry ``count - 1`` of the earlier head still has its digest;
* a ledger that starts with a ``reset`` entry is a new ledger, on record: ``reset`` (not a failure,
  but a server should show it).

A head of ``count`` entries has the digest of entry ``count - 1``; the head of an empty ledger has
the genesis digest (:func:`fedgenome.privacy.ledger.entry.genesis_sha256`), so a first digest is meaningful.
The signature is the site key's over the canonical JSON of ``{"count", "last_sha256", "site"}``:
the bytes of the head file (:mod:`fedgenome.privacy.ledger.core`) without its signature.

>>> check_head_continuity((3, "a" * 64), (2, "b" * 64)).kind
'rolled-back'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric import ec

from fedgenome.privacy.ledger.entry import LedgerEntry, canonical
from fedgenome.privacy.ledger.verify import signature_ok

ContinuityKind = Literal["same", "extended", "reset", "rolled-back", "forked"]


@dataclass(frozen=True)
class HeadDigest:
    """A ledger's head, signed with the site's current key: what a round's reply carries."""

    site: str
    count: int
    last_sha256: str
    signature: str
    """Base64 of the site key's ECDSA/SHA-384 signature over :meth:`signed_bytes`."""

    @property
    def pair(self) -> tuple[int, str]:
        """(count, last_sha256)."""
        return self.count, self.last_sha256

    def signed_bytes(self) -> bytes:
        """The canonical JSON the signature covers (the head file's line without its signature)."""
        return canonical({"count": self.count, "last_sha256": self.last_sha256, "site": self.site})

    def to_json(self) -> dict[str, Any]:
        """The digest as JSON: the head file's fields."""
        return {"count": self.count, "last_sha256": self.last_sha256, "site": self.site,
                "signature": self.signature}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HeadDigest:
        """A digest from :meth:`to_json`'s form (types are checked; the signature is not)."""
        count, last, site, signature = (data.get(k) for k in ("count", "last_sha256", "site", "signature"))
        if type(count) is not int or not all(isinstance(v, str) for v in (last, site, signature)):
            raise ValueError(f"not a ledger head digest: {sorted(data)}")
        return cls(site=str(site), count=count, last_sha256=str(last), signature=str(signature))

    def verify(self, public_key: ec.EllipticCurvePublicKey) -> bool:
        """Whether ``public_key`` (the site's registered key) signed this digest."""
        return signature_ok(public_key, self.signed_bytes(), self.signature)


@dataclass(frozen=True)
class Continuity:
    """How a later head relates to an earlier one; ``problem`` is None when nothing is wrong."""

    kind: ContinuityKind
    problem: str | None = None
    note: str | None = None
    """Set for a reset: the new ledger's reason and what it says about the old one."""

    @property
    def ok(self) -> bool:
        """True unless the ledger was rolled back or forked."""
        return self.problem is None


def head_sha_after(entries: Sequence[LedgerEntry], count: int) -> str | None:
    """The digest of a head of ``count`` of ``entries``; None when there are fewer entries."""
    if count > len(entries) or count < 0 or not entries:
        return None
    return entries[count - 1].sha256 if count else entries[0].prev_sha256


def check_head_continuity(previous: HeadDigest | tuple[int, str], current: HeadDigest | tuple[int, str],
                          entries: Sequence[LedgerEntry] | None = None) -> Continuity:
    """Whether ``current`` continues ``previous``: the check a server makes on every reply.

    Pure: no files, no keys (check signatures with :meth:`HeadDigest.verify` first).

    Args:
        previous: The head the server (or the site's marker) saw earlier: a digest or (count, sha).
        current: The head now.
        entries: The ledger's entries now, when known: a larger count is then checked to extend
            ``previous`` and a leading reset is recognised; without them growth is taken on trust.

    Returns:
        ``same`` or ``extended`` (fine), ``reset`` (a new ledger on record: fine, but show its
        note), ``rolled-back`` or ``forked`` (with the problem).
    """
    (p_count, p_sha), (c_count, c_sha) = _pair(previous), _pair(current)
    if entries and entries[0].status == "reset" and head_sha_after(entries, p_count) != p_sha:
        first = entries[0]
        old = ("lost" if first.previous_count is None
               else f"{first.previous_count} entries, last {first.previous_last_sha256}")
        return Continuity("reset", note=f"the ledger was reset (old ledger: {old}; earlier head "
                          f"{p_count} entries, {p_sha[:12]}...): {first.reason}")
    if c_count < p_count:
        return Continuity("rolled-back", f"the ledger went back from {p_count} entries ({p_sha[:12]}...) to "
                          f"{c_count} ({c_sha[:12]}...): entries were removed or an older copy restored")
    if c_count == p_count:
        if c_sha == p_sha:
            return Continuity("same")
        return Continuity("forked", f"the ledger's head at {c_count} entries changed from {p_sha[:12]}... "
                          f"to {c_sha[:12]}...: the ledger was rewritten")
    if entries is not None and (head_sha_after(entries, p_count) != p_sha
                                or head_sha_after(entries, c_count) != c_sha):
        return Continuity("forked", f"the ledger of {len(entries)} entries does not extend the head seen "
                          f"at {p_count} entries ({p_sha[:12]}...): the ledger was rewritten")
    return Continuity("extended")


def _pair(head: HeadDigest | tuple[int, str]) -> tuple[int, str]:
    return head.pair if isinstance(head, HeadDigest) else (int(head[0]), str(head[1]))

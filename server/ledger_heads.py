"""The server's memory of each site's ledger head: a reply whose ledger went back is rejected.

Every reply carries the signed head of the site's ledger (:class:`fedgenome.privacy.ledger.head.HeadDigest`:
entry count, last entry's SHA-256, signed with the site key). The server verifies the signature
with the key the node was registered with, keeps the head in the run report (so a resumed run
still has it) and checks the next one continues it
(:func:`fedgenome.privacy.ledger.head.check_head_continuity`):
a site that deleted entries, restored an older copy of its ledger and head, or rewrote them, is
rejected and flagged. A ledger reset (``fedgenome privacy reset``) also shows as going back: the
server flags it; the site's own audit shows the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedgenome.privacy.ledger.head import HeadDigest, check_head_continuity
from fedgenome.server.report import RoundRecord
from fedgenome.server.validation import UpdateRejected


@dataclass
class HeadCheck:
    """The last ledger head the run has seen of each site."""

    last: dict[str, tuple[int, str]] = field(default_factory=dict)

    @classmethod
    def of_report(cls, rounds: Sequence[RoundRecord]) -> HeadCheck:
        """The heads of the run's report, latest last."""
        check = cls()
        for record in rounds:
            check.last.update({site: (int(h["count"]), str(h["sha256"]))
                               for site, h in record.ledger_heads.items()})
        return check

    def check(self, site: str, head: HeadDigest | None, *, public_key: bytes | None) -> None:
        """UpdateRejected unless ``head`` is the site's, signed by its key and continues the last.

        Args:
            site: The site the reply counts for.
            head: The head it carried.
            public_key: The PEM key its node was registered with; None without authentication
                (then the signature cannot be checked, only the continuity).
        """
        if head is None:
            raise UpdateRejected("the reply carries no ledger head (ledger-count, ledger-head, "
                                 "ledger-head-signature)")
        if head.site != site:
            raise UpdateRejected(f"the ledger head is site {head.site!r}'s, not {site!r}'s")
        if public_key is not None and not head.verify(_key(public_key)):
            raise UpdateRejected("the ledger head's signature does not verify with the key the node "
                                 "was registered with")
        if site in self.last:
            continuity = check_head_continuity(self.last[site], head.pair)
            if not continuity.ok:
                raise UpdateRejected(f"ledger {continuity.kind}: {continuity.problem}")


def _key(pem: bytes) -> ec.EllipticCurvePublicKey:
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise UpdateRejected("the node's registered key is not an EC key")
    return key

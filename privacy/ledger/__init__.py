"""A site's signed privacy ledger: what it spent, round by round, in a form no one can quietly edit.

* :mod:`fedgenome.privacy.ledger.core`: :class:`Ledger`, the append-only, hash-chained, signed file
  and its signed head file.
* :mod:`fedgenome.privacy.ledger.entry`: one line (:class:`LedgerEntry`), its canonical JSON and the
  checks it passes alone.
* :mod:`fedgenome.privacy.ledger.verify`: verifying a ledger (signatures, chain, key rotations, head).
* :mod:`fedgenome.privacy.ledger.head`: the signed head digest that leaves the site, and continuity.
* :mod:`fedgenome.privacy.ledger.marker`: evidence, beside the key, that a site has trained.
* :mod:`fedgenome.privacy.ledger.reset`: starting a lost ledger over, on record.

Where a site keeps its key and ledger is :mod:`fedgenome.privacy.site_state`; the keys themselves are
:mod:`fedgenome.privacy.keys`.
"""

from fedgenome.privacy.ledger.core import Ledger
from fedgenome.privacy.ledger.entry import LedgerEntry
from fedgenome.privacy.ledger.head import HeadDigest
from fedgenome.privacy.ledger.verify import verify_key_chain, verify_ledger

__all__ = ["HeadDigest", "Ledger", "LedgerEntry", "verify_key_chain", "verify_ledger"]

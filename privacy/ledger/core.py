"""A site's privacy ledger: append-only, hash-chained, signed JSON Lines, with a signed head file.

Each line of ``ledger.jsonl`` is one :class:`LedgerEntry` as canonical JSON (sorted keys, no spaces,
ASCII only). An entry's ``signature`` is the site key's ECDSA/SHA-384 signature (base64) over the
canonical JSON of all its other fields; its ``prev_sha256`` is the SHA-256 of the previous line's bytes
(signature included, newline excluded). Entry 0 chains to
``sha256("fedgenome-ledger:" + site + ":" + fingerprint(public_key))``, so a ledger cannot be moved to
another site or key. Beside it, ``ledger.jsonl.head`` holds one canonical JSON line
``{"count", "last_sha256", "site", "signature"}`` signed the same way, rewritten atomically after each
append, so that deleting entries from the end (which leaves a valid chain) is detected.

What verification can and cannot catch:

* Editing, inserting, deleting or reordering entries, or entries signed by another key: always.
* Truncation: caught by the head. Truncation together with a replayed *older* head (a copy of the
  head taken earlier) verifies locally; it can only be caught by comparing with what the server
  received (the run report's per-site rounds and epsilons).
* The site itself holds the signing key and could re-sign a rewritten ledger; again, only the run
  report catches that. The ledger protects against others and against accidents.
* After a rotation, whoever holds a *retired* key can fork the ledger at that rotation; verifying
  with the site's current (registered) key catches it, verifying from the genesis key does not.

Key rotation (:meth:`Ledger.rotate`): one ``rotated`` entry, signed with the old key, names the
new key; later entries and the head are signed with the new key. It costs no epsilon. How a
verifier follows the keys is in :mod:`fedgenome.privacy.ledger.verify`; the entry format is in
:mod:`fedgenome.privacy.ledger.entry`.

Rounds served: an entry of a federated round records the server's ``run_key`` with its (global)
``round``; :meth:`Ledger.append` refuses a second *trained* entry for the same (run_key, round), and
:meth:`Ledger.trained_entry` finds the first, so that a site asked again (a SuperLink resumed
mid-round) re-sends what it sent instead of spending again (:mod:`fedgenome.client.site`).

Reset (:meth:`Ledger.start_over`): when a ledger was lost, the operator starts a new one on record;
its entry 0 is a signed ``reset`` with the reason and the old head (or 'lost'). See
:mod:`fedgenome.privacy.ledger.reset`.

The head leaves the site: :meth:`Ledger.head_digest` is the signed (count, last_sha256) that a
round's reply carries, and a server compares consecutive ones with
:func:`fedgenome.privacy.ledger.head.check_head_continuity`. The attribute ``on_head`` (set by
:mod:`fedgenome.privacy.site_state`) is called with it before the first entry and after every head rewrite,
to keep the site's marker (:mod:`fedgenome.privacy.ledger.marker`).

Crashes: a head one entry behind (a crash after the line was fsynced, before the head was rewritten)
is accepted with a warning and rewritten by :class:`Ledger`; an incomplete last line (a crash while
appending, never acknowledged to the caller) is dropped by :class:`Ledger` when the head matches.
"""

from __future__ import annotations

import base64
import dataclasses
import fcntl
import logging
import os
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from fedgenome.configs.errors import ConfigError, LedgerError
from fedgenome.configs.names import SITE_NAME_RULE, is_site_name
from fedgenome.privacy.keys import fingerprint, public_key_text, sign
from fedgenome.privacy.ledger.entry import (
    ROTATION_ACCOUNTANT,
    SCHEMA,
    SPENDING,
    LedgerEntry,
    Status,
    canonical,
    entry_from_dict,
    genesis_sha256,
    head_path,
    order_problem,
    software_versions,
    value_problem,
)
from fedgenome.privacy.ledger.head import HeadDigest
from fedgenome.privacy.ledger.verify import (
    KeyChain,
    check_anchor,
    check_head,
    read_ledger,
    verify_key_chain,
    verify_ledger,
    verify_lines,
)
from fedgenome.privacy.mechanism import Mechanism
from fedgenome.shared.atomic import fsync_dir, write_text
from fedgenome.shared.clock import utc_now

__all__ = [
    "HeadDigest", "KeyChain", "Ledger", "LedgerEntry", "RetiredKeyError", "Status", "genesis_sha256",
    "head_path",
    "verify_key_chain", "verify_ledger",
]

logger = logging.getLogger(__name__)


class RetiredKeyError(LedgerError):
    """A ledger was opened for appending with a key that a rotation has retired."""

    def __init__(self, message: str, *, current_fingerprint: str) -> None:
        super().__init__(message)
        self.current_fingerprint = current_fingerprint


class Ledger:
    """A site's own ledger, opened with its current private key for appending.

    Construction reads and fully verifies the existing file (if any), following key rotations; the
    key must be the ledger's current one (a retired key raises :class:`RetiredKeyError`). Rounds
    must not decrease (``round >= last_round``; the same round may appear again, e.g. a refusal
    followed by a retry) and the cumulative epsilon must not decrease.
    """

    def __init__(self, path: Path, *, site: str, private_key: ec.EllipticCurvePrivateKey) -> None:
        if not is_site_name(site):
            raise ConfigError(f"{path}: site name {site!r} is invalid: use {SITE_NAME_RULE}")
        self.path = path
        self.site = site
        self._key = private_key
        self._public = private_key.public_key()
        self.on_head: Callable[[HeadDigest], None] | None = None
        """Called with the new head before the first entry and after every head rewrite."""
        data = read_ledger(path)
        if data and not data.endswith(b"\n"):
            data = self._drop_torn_tail(data)
        chain = self._open_chain(data)
        self._entries: list[LedgerEntry] = list(chain.entries)
        self._size = len(data)
        if check_head(path, chain, trust_retired=True) == "behind":
            logger.warning("%s was one entry behind (a crash before it was rewritten); repairing it", path)
            self._write_head()

    @property
    def entries(self) -> tuple[LedgerEntry, ...]:
        """All entries, oldest first."""
        return tuple(self._entries)

    def mechanisms(self) -> list[Mechanism]:
        """The mechanisms of the trained entries, in order (to rebuild the accountant from)."""
        return [m for m in (e.mechanism for e in self._entries) if m is not None]

    @property
    def last_round(self) -> int | None:
        """The last entry's round; None for an empty ledger."""
        return self._entries[-1].round if self._entries else None

    @property
    def epsilon(self) -> float:
        """The site's cumulative epsilon (the last entry's); 0.0 for an empty ledger."""
        return self._entries[-1].epsilon if self._entries else 0.0

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The key that signs this ledger now (the last rotation's new key)."""
        return self._public

    def trained_entry(self, *, run_key: str, round: int) -> LedgerEntry | None:
        """The trained entry that served round ``round`` of run ``run_key``; None if there is none."""
        return self.spent_entry("trained", run_key=run_key, round=round)

    def spent_entry(self, status: Status, *, run_key: str, round: int) -> LedgerEntry | None:
        """The first ``status`` entry of round ``round`` of run ``run_key``, or None."""
        return next((e for e in self._entries if e.status == status and e.run_key == run_key
                     and e.round == round), None)

    def head_digest(self) -> HeadDigest:
        """The current head (count, last_sha256), signed with the current key: for the round's reply.

        An empty ledger's head has count 0 and the genesis digest.
        """
        last = self._entries[-1].sha256 if self._entries else genesis_sha256(self.site, self._public)
        unsigned = HeadDigest(site=self.site, count=len(self._entries), last_sha256=last, signature="")
        signature = base64.b64encode(sign(self._key, unsigned.signed_bytes())).decode("ascii")
        return dataclasses.replace(unsigned, signature=signature)

    def append(
        self, *, round: int, status: Status, local_steps: int, sample_rate: float, noise_multiplier: float,
        max_grad_norm: float, delta: float, accountant: str, epsilon: float, update_sha256: str | None,
        epsilon_budget: float | None = None, initial_checkpoint_sha256: str | None = None,
        run_key: str | None = None,
    ) -> LedgerEntry:
        """Sign and append one entry; it is on disk (fsynced) when this returns.

        Callers rely on that: append first, send the update it covers only after this returns.
        ``epsilon_budget`` (the site's budget now) and ``initial_checkpoint_sha256`` (the weights the
        run started from) and ``run_key`` (the server's run key of this round) are signed with the
        entry when given; without them the entry has the format of ledgers written before the
        fields existed.

        Raises:
            LedgerError: A value is invalid, the round or epsilon would decrease, the (run_key,
                round) was already trained, another process changed the file since it was read, or
                the write failed (nothing was recorded then).
        """
        if status in ("rotated", "reset"):
            how = "Ledger.rotate" if status == "rotated" else "Ledger.start_over"
            raise LedgerError(f"{self.path}: record a {status} entry with {how}, not append")
        done = (self.spent_entry(status, run_key=run_key, round=round)
                if run_key and status in SPENDING else None)
        if done is not None:
            raise LedgerError(f"{self.path}: round {round} of run {run_key} was already {status} (entry "
                              f"seq {done.seq}); refusing to spend on it again")
        floats = {"sample_rate": sample_rate, "noise_multiplier": noise_multiplier,
                  "max_grad_norm": max_grad_norm, "delta": delta, "epsilon": epsilon}
        entry = self._commit({
            "round": round, "status": status, "local_steps": local_steps,
            **{k: float(v) if type(v) is int else v for k, v in floats.items()},
            "accountant": accountant, "update_sha256": update_sha256,
            **({} if epsilon_budget is None else {"epsilon_budget": float(epsilon_budget)}),
            **({} if initial_checkpoint_sha256 is None
               else {"initial_checkpoint_sha256": initial_checkpoint_sha256}),
            **({} if run_key is None else {"run_key": run_key}),
        })
        self._write_head()
        return entry

    def start_over(self, *, reason: str, previous: tuple[int, str] | None) -> LedgerEntry:
        """Start this (empty) ledger with a signed reset: the old ledger was lost, on record.

        Args:
            reason: Why, as the operator says it (kept in the entry, shown by every audit).
            previous: The lost ledger's last known head (count, last_sha256); None: lost too.

        Raises:
            LedgerError: The ledger already has entries, or the write failed.
        """
        if self._entries:
            raise LedgerError(f"{self.path} has {len(self._entries)} entries: a reset only starts a new "
                              "ledger; nothing was recorded")
        entry = self._commit({
            "round": 0, "status": "reset", "local_steps": 0, "sample_rate": 0.0, "noise_multiplier": 0.0,
            "max_grad_norm": 0.0, "delta": 0.0, "accountant": ROTATION_ACCOUNTANT, "epsilon": 0.0,
            "update_sha256": None, "reason": reason.strip(),
            **({} if previous is None
               else {"previous_count": previous[0], "previous_last_sha256": previous[1]}),
        })
        self._write_head()
        logger.warning("%s: started a new ledger on record (reset): %s", self.path, entry.reason)
        return entry

    def rotate(self, *, new_key: ec.EllipticCurvePrivateKey) -> LedgerEntry:
        """Record a key rotation: one entry signed with the current key that names ``new_key``.

        From then on this ledger signs with ``new_key`` (the head is re-signed with it at once). The
        entry costs nothing: same round and epsilon as the last entry, no mechanism, no update.

        Raises:
            LedgerError: ``new_key`` is the current key, or the write failed (as for :meth:`append`).
        """
        last = self._entries[-1] if self._entries else None
        entry = self._commit({
            "round": last.round if last else 0, "status": "rotated", "local_steps": 0,
            "sample_rate": 0.0, "noise_multiplier": 0.0, "max_grad_norm": 0.0, "delta": 0.0,
            "accountant": ROTATION_ACCOUNTANT, "epsilon": last.epsilon if last else 0.0,
            "update_sha256": None, "old_public_key": public_key_text(self._public),
            "new_public_key": public_key_text(new_key.public_key()),
        })
        self._key, self._public = new_key, new_key.public_key()
        self._write_head()
        logger.info("%s: rotated the signing key to %s (seq %d)", self.path,
                    fingerprint(self._public)[:16], entry.seq)
        return entry

    def _commit(self, values: dict[str, object]) -> LedgerEntry:
        """Check, sign with the current key, append and fsync one entry made of ``values``."""
        seq = len(self._entries)
        fields: dict[str, object] = {
            "seq": seq, "site": self.site, **values, "schema": SCHEMA, "software": software_versions(),
            "time": utc_now().isoformat(timespec="microseconds"),
            "prev_sha256": self._entries[-1].sha256 if seq else genesis_sha256(self.site, self._public),
            "signature": "",
        }
        where = f"{self.path} (seq {seq}): refusing to append"
        unsigned = entry_from_dict(fields, where)
        problem = value_problem(unsigned) or order_problem(self._entries[-1] if seq else None, unsigned)
        if problem:
            raise LedgerError(f"{where}: {problem}")
        if seq == 0 and self.on_head is not None:  # the site's marker exists before entry 0 does
            self.on_head(self.head_digest())
        signature = base64.b64encode(sign(self._key, unsigned.signed_bytes())).decode("ascii")
        entry = dataclasses.replace(unsigned, signature=signature)
        self._write_line(entry)
        self._entries.append(entry)
        return entry

    def _open_chain(self, data: bytes) -> KeyChain:
        """Verify ``data`` and check that this ledger's key is the one in force now."""
        chain = verify_lines(self.path, data, public_key=self._public, site=self.site)
        mine, current = fingerprint(self._public), fingerprint(chain.current_key)
        if mine != current:
            if mine in {fingerprint(k) for k in chain.keys}:
                raise RetiredKeyError(
                    f"{self.path}: the ledger's key was rotated to {current[:16]}; the key given "
                    f"({mine[:16]}) is retired: use the site's current key (finish an interrupted "
                    "rotation with 'fedgenome pki rotate-site')", current_fingerprint=current)
            check_anchor(self.path, chain, self._public)
        return chain

    def _write_line(self, entry: LedgerEntry) -> None:
        """Append one line under an exclusive lock, flush and fsync it (and the directory if new)."""
        line = entry.line() + b"\n"
        new = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            if os.fstat(fh.fileno()).st_size != self._size:
                raise LedgerError(f"{self.path} (seq {entry.seq}): the file changed on disk since it was read"
                                  " (another process writing it?); nothing was appended, open it again")
            try:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
            except OSError as exc:
                os.ftruncate(fh.fileno(), self._size)
                raise LedgerError(f"{self.path} (seq {entry.seq}): could not append ({exc.strerror}); "
                                  "nothing was recorded") from exc
        if new:
            fsync_dir(self.path.parent)
        self._size += len(line)

    def _write_head(self) -> None:
        """Rewrite the signed head file atomically for the current entries (then tell ``on_head``)."""
        digest = self.head_digest()
        try:
            write_text(head_path(self.path), canonical(digest.to_json()).decode("ascii") + "\n")
        except OSError as exc:
            raise LedgerError(f"{head_path(self.path)}: could not write the head file ({exc.strerror}); "
                              f"entry seq {len(self._entries) - 1} is recorded; do not send it") from exc
        if self.on_head is not None:
            self.on_head(digest)

    def _drop_torn_tail(self, data: bytes) -> bytes:
        """Drop an incomplete last line that the head shows was never acknowledged."""
        complete = data[: data.rfind(b"\n") + 1]
        chain = verify_lines(self.path, complete, public_key=self._public, site=self.site)
        if check_head(self.path, chain, trust_retired=True) != "ok":
            raise LedgerError(f"{self.path}: incomplete last line and a lagging head; remove the line")
        logger.warning("%s: dropping an incomplete last line (an interrupted append)", self.path)
        with open(self.path, "r+b") as fh:
            fh.truncate(len(complete))
            os.fsync(fh.fileno())
        return complete

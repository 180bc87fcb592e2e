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

Crashes: a head one entry behind (a crash after the line was fsynced, before the head was rewritten)
is accepted with a warning and rewritten by :class:`Ledger`; an incomplete last line (a crash while
appending, never acknowledged to the caller) is dropped by :class:`Ledger` when the head matches.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import fcntl
import hashlib
import json
import logging
import math
import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives.asymmetric import ec

from privacy.keys import fingerprint, sign, verify_signature
from privacy.mechanism import Mechanism
from shared.atomic import fsync_dir, write_text
from shared.errors import ConfigError, LedgerError

logger = logging.getLogger(__name__)

Status = Literal["trained", "refused"]

_TYPES: dict[str, tuple[type, ...]] = {
    **dict.fromkeys(("seq", "round", "local_steps"), (int,)),
    **dict.fromkeys(("sample_rate", "noise_multiplier", "max_grad_norm", "delta", "epsilon"), (float,)),
    **dict.fromkeys(("site", "status", "accountant", "time", "prev_sha256", "signature"), (str,)),
    "update_sha256": (str, type(None)),
}
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class LedgerEntry:
    """One line of a site's privacy ledger: what one round cost (or that it was refused)."""

    seq: int
    site: str
    round: int
    status: Status
    local_steps: int
    sample_rate: float
    noise_multiplier: float
    max_grad_norm: float
    delta: float
    accountant: str
    epsilon: float
    """The site's cumulative epsilon after this entry."""
    update_sha256: str | None
    """SHA-256 (hex) of the model update this entry covers; None for a refusal."""
    time: str
    prev_sha256: str
    signature: str

    @property
    def mechanism(self) -> Mechanism | None:
        """The subsampled Gaussian mechanism this entry ran; None for a refusal or zero steps."""
        if self.status != "trained" or self.local_steps == 0:
            return None
        return Mechanism(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate,
                         steps=self.local_steps)

    def signed_bytes(self) -> bytes:
        """The canonical JSON of every field but ``signature``: the bytes the signature covers."""
        return _canonical({f.name: getattr(self, f.name) for f in _FIELDS if f.name != "signature"})

    def line(self) -> bytes:
        """The entry's canonical JSON line (without the newline), as stored in the file."""
        return _canonical({f.name: getattr(self, f.name) for f in _FIELDS})

    @property
    def sha256(self) -> str:
        """SHA-256 (hex) of :meth:`line`: what the next entry's ``prev_sha256`` holds."""
        return hashlib.sha256(self.line()).hexdigest()


_FIELDS = dataclasses.fields(LedgerEntry)


def head_path(path: Path) -> Path:
    """The head file beside the ledger ``path``: ``<ledger>.head``."""
    return path.with_name(path.name + ".head")


def genesis_sha256(site: str, public_key: ec.EllipticCurvePublicKey) -> str:
    """The ``prev_sha256`` of entry 0: binds a ledger to its site and its key."""
    return hashlib.sha256(f"fedgenome-ledger:{site}:{fingerprint(public_key)}".encode()).hexdigest()


def verify_ledger(
    path: Path, *, public_key: ec.EllipticCurvePublicKey, site: str | None = None
) -> tuple[LedgerEntry, ...]:
    """Verify a whole ledger and its head file; return its entries.

    Checks that every line parses and is canonical, every signature, the hash chain, that seq runs
    0, 1, 2, ... and the site never changes (and equals ``site`` when given), that rounds and the
    cumulative epsilon never decrease, and the head (see the module docstring for what that can and
    cannot catch). A missing ledger with no head is an empty ledger.

    Raises:
        LedgerError: Naming the file, the line and seq, and what is wrong.
    """
    data = _read(path)
    if data and not data.endswith(b"\n"):
        line_no = data.count(b"\n") + 1
        raise LedgerError(f"{path} line {line_no}: incomplete last line (an interrupted append); "
                          "open the ledger with its site key to drop it, or remove the line by hand")
    entries = _verify_lines(path, data, public_key=public_key, site=site)
    if _check_head(path, entries, public_key) == "behind":
        logger.warning("%s is one entry behind (a crash before it was rewritten); opening the ledger "
                       "with the site key repairs it", head_path(path))
    return entries


class Ledger:
    """A site's own ledger, opened with its private key for appending.

    Construction reads and fully verifies the existing file (if any) with the key's public half.
    Rounds must not decrease (``round >= last_round``; the same round may appear again, e.g. a
    refusal followed by a retry) and the cumulative epsilon must not decrease.
    """

    def __init__(self, path: Path, *, site: str, private_key: ec.EllipticCurvePrivateKey) -> None:
        if not site or any(c.isspace() for c in site):
            raise ConfigError(f"{path}: site name {site!r} is invalid: use a non-empty name without spaces")
        self.path = path
        self.site = site
        self._key = private_key
        self._public = private_key.public_key()
        data = _read(path)
        if data and not data.endswith(b"\n"):
            data = self._drop_torn_tail(data)
        entries = _verify_lines(path, data, public_key=self._public, site=site)
        self._entries: list[LedgerEntry] = list(entries)
        self._size = len(data)
        if _check_head(path, entries, self._public) == "behind":
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

    def append(
        self, *, round: int, status: Status, local_steps: int, sample_rate: float, noise_multiplier: float,
        max_grad_norm: float, delta: float, accountant: str, epsilon: float, update_sha256: str | None,
    ) -> LedgerEntry:
        """Sign and append one entry; it is on disk (fsynced) when this returns.

        Callers rely on that: append first, send the update it covers only after this returns.

        Raises:
            LedgerError: A value is invalid, the round or epsilon would decrease, another process
                changed the file since it was read, or the write failed (nothing was recorded then).
        """
        seq = len(self._entries)
        floats = {"sample_rate": sample_rate, "noise_multiplier": noise_multiplier,
                  "max_grad_norm": max_grad_norm, "delta": delta, "epsilon": epsilon}
        fields: dict[str, object] = {
            "seq": seq, "site": self.site, "round": round, "status": status, "local_steps": local_steps,
            **{k: float(v) if type(v) is int else v for k, v in floats.items()},
            "accountant": accountant, "update_sha256": update_sha256,
            "time": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
            "prev_sha256": self._entries[-1].sha256 if seq else genesis_sha256(self.site, self._public),
            "signature": "",
        }
        where = f"{self.path} (seq {seq}): refusing to append"
        unsigned = _entry_from_dict(fields, where)
        problem = _value_problem(unsigned) or _order_problem(self._entries[-1] if seq else None, unsigned)
        if problem:
            raise LedgerError(f"{where}: {problem}")
        signature = base64.b64encode(sign(self._key, unsigned.signed_bytes())).decode("ascii")
        entry = dataclasses.replace(unsigned, signature=signature)
        self._write_line(entry)
        self._entries.append(entry)
        self._write_head()
        return entry

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
        """Rewrite the signed head file atomically for the current entries."""
        fields: dict[str, object] = {
            "count": len(self._entries), "last_sha256": self._entries[-1].sha256, "site": self.site,
        }
        fields["signature"] = base64.b64encode(sign(self._key, _canonical(fields))).decode("ascii")
        try:
            write_text(head_path(self.path), _canonical(fields).decode("ascii") + "\n")
        except OSError as exc:
            raise LedgerError(f"{head_path(self.path)}: could not write the head file ({exc.strerror}); "
                              f"entry seq {len(self._entries) - 1} is recorded; do not send it") from exc

    def _drop_torn_tail(self, data: bytes) -> bytes:
        """Drop an incomplete last line that the head shows was never acknowledged."""
        complete = data[: data.rfind(b"\n") + 1]
        entries = _verify_lines(self.path, complete, public_key=self._public, site=self.site)
        if _check_head(self.path, entries, self._public) != "ok":
            raise LedgerError(f"{self.path}: incomplete last line and a lagging head; remove the line")
        logger.warning("%s: dropping an incomplete last line (an interrupted append)", self.path)
        with open(self.path, "r+b") as fh:
            fh.truncate(len(complete))
            os.fsync(fh.fileno())
        return complete


def _canonical(fields: dict[str, object]) -> bytes:
    """Canonical JSON: sorted keys, no spaces, ASCII only, no NaN or infinity."""
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("ascii")


def _read(path: Path) -> bytes:
    """The ledger's bytes; empty when it does not exist."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""
    except OSError as exc:
        raise LedgerError(f"{path}: cannot read the ledger ({exc.strerror}); check its permissions") from exc


def _verify_lines(
    path: Path, data: bytes, *, public_key: ec.EllipticCurvePublicKey, site: str | None
) -> tuple[LedgerEntry, ...]:
    """Parse and verify every complete line of ``data`` (signatures, chain, seq, site, order)."""
    entries: list[LedgerEntry] = []
    for line_no, raw in enumerate(data.split(b"\n")[:-1], start=1):
        where = f"{path} line {line_no}"
        try:
            fields = json.loads(raw.decode("ascii"), parse_constant=_reject_constant)
        except (UnicodeDecodeError, ValueError) as exc:
            raise LedgerError(f"{where}: not a JSON line ({' '.join(str(exc).split())})") from exc
        if not isinstance(fields, dict):
            raise LedgerError(f"{where}: not a JSON object")
        entry = _entry_from_dict(fields, where)
        where = f"{where} (seq {entry.seq})"
        if entry.line() != raw:
            raise LedgerError(f"{where}: not in canonical form: the line was edited")
        if not _signature_ok(public_key, entry.signed_bytes(), entry.signature):
            raise LedgerError(f"{where}: bad signature: the entry was altered or signed by another key")
        site = entry.site if site is None else site
        problem = _chain_problem(entries, entry, site, public_key)
        problem = problem or _value_problem(entry) or _order_problem(entries[-1] if entries else None, entry)
        if problem:
            raise LedgerError(f"{where}: {problem}")
        entries.append(entry)
    return tuple(entries)


def _chain_problem(
    entries: list[LedgerEntry], entry: LedgerEntry, site: str, public_key: ec.EllipticCurvePublicKey
) -> str | None:
    """What is wrong with ``entry``'s place in the chain after ``entries``, or None."""
    if entry.seq != len(entries):
        return f"seq {entry.seq} where {len(entries)} was expected: an entry is missing or entries were moved"
    if entry.site != site:
        return f"site is {entry.site!r}, expected {site!r}: entries of another site's ledger"
    if entries and entry.prev_sha256 != entries[-1].sha256:
        return "prev_sha256 does not match the previous line: an entry was removed, inserted or altered"
    if not entries and entry.prev_sha256 != genesis_sha256(site, public_key):
        return "prev_sha256 is not the start of this site's ledger for this key: wrong key or site"
    return None


def _entry_from_dict(fields: dict[str, object], where: str) -> LedgerEntry:
    """A LedgerEntry from parsed JSON (or append's arguments), checking field names and types."""
    missing = sorted(set(_TYPES) - set(fields))
    unknown = sorted(set(fields) - set(_TYPES))
    if missing or unknown:
        raise LedgerError(f"{where}: missing fields {missing}, unknown fields {unknown}")
    for name, types in _TYPES.items():
        value = fields[name]
        if type(value) not in types:  # exact types: no bools for ints, no ints for floats
            expected = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise LedgerError(f"{where}: field {name!r} is {value!r}, expected {expected}")
    return LedgerEntry(**fields)  # type: ignore[arg-type]


def _value_problem(entry: LedgerEntry) -> str | None:
    """What is wrong with the values of one entry on its own, or None."""
    bad_floats = [
        name for name in ("sample_rate", "noise_multiplier", "max_grad_norm", "delta", "epsilon")
        if not math.isfinite(getattr(entry, name)) or getattr(entry, name) < 0.0
    ]
    if bad_floats:
        return f"{', '.join(bad_floats)} must be finite and >= 0"
    checks = [
        (entry.status in ("trained", "refused"), f"status {entry.status!r} is not 'trained' or 'refused'"),
        (entry.round >= 0 and entry.local_steps >= 0, "round and local_steps must be >= 0"),
        (entry.sample_rate <= 1.0 and entry.delta < 1.0, "sample_rate must be <= 1 and delta < 1"),
        (bool(entry.site) and bool(entry.accountant), "site and accountant must not be empty"),
        (entry.status == "trained" or entry.update_sha256 is None, "a refusal has no update_sha256"),
        (entry.status == "refused" or _SHA256.fullmatch(entry.update_sha256 or "") is not None,
         "a trained entry needs update_sha256 as 64 lowercase hex digits"),
        (entry.status == "refused" or entry.local_steps == 0 or entry.sample_rate > 0.0,
         "a trained entry with steps needs sample_rate > 0"),
        (_SHA256.fullmatch(entry.prev_sha256) is not None, "prev_sha256 is not 64 lowercase hex digits"),
        (_is_utc_time(entry.time), f"time {entry.time!r} is not an ISO 8601 UTC time"),
    ]
    return next((message for ok, message in checks if not ok), None)


def _order_problem(previous: LedgerEntry | None, entry: LedgerEntry) -> str | None:
    """What is wrong with ``entry`` following ``previous`` (rounds and epsilon never decrease), or None."""
    if previous is None:
        return None
    if entry.round < previous.round:
        return f"round {entry.round} is before the previous entry's round {previous.round}"
    if entry.epsilon < previous.epsilon:
        return f"epsilon {entry.epsilon} is below the previous cumulative epsilon {previous.epsilon}"
    return None


def _check_head(
    path: Path, entries: tuple[LedgerEntry, ...], public_key: ec.EllipticCurvePublicKey
) -> Literal["ok", "behind"]:
    """Check the head file against the entries: 'ok', 'behind' by one (a crash), or LedgerError."""
    head = head_path(path)
    if not head.exists():
        if entries:
            raise LedgerError(f"{head} is missing while {path} has {len(entries)} entries: deleted last "
                              "entries cannot be ruled out; restore the head file")
        return "ok"
    try:
        raw = head.read_bytes()
        fields = json.loads(raw.decode("ascii"))
        signature = fields.pop("signature")
        count, last, site = fields["count"], fields["last_sha256"], fields["site"]
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise LedgerError(f"{head}: not a ledger head file ({type(exc).__name__}: {exc})") from exc
    if set(fields) != {"count", "last_sha256", "site"} or not isinstance(signature, str):
        raise LedgerError(f"{head}: unexpected fields {sorted(fields)}")
    if raw != _canonical({**fields, "signature": signature}) + b"\n":
        raise LedgerError(f"{head}: not in canonical form: the head was edited")
    if not _signature_ok(public_key, _canonical(fields), signature):
        raise LedgerError(f"{head}: bad signature: the head was altered or signed by another key")
    if entries and site != entries[0].site:
        raise LedgerError(f"{head}: site is {site!r} but {path} belongs to {entries[0].site!r}")
    if count == len(entries) and entries and last == entries[-1].sha256:
        return "ok"
    if count == len(entries) - 1 and count > 0 and last == entries[-2].sha256:
        return "behind"
    if isinstance(count, int) and count > len(entries):
        raise LedgerError(f"{head}: records {count} entries but {path} has {len(entries)}: "
                          "entries were deleted from the end of the ledger")
    raise LedgerError(f"{head}: does not match {path} (head: {count} entries, last {str(last)[:12]}...; "
                      f"ledger: {len(entries)} entries): the ledger or its head was replaced")


def _signature_ok(public_key: ec.EllipticCurvePublicKey, data: bytes, signature: str) -> bool:
    """Whether ``signature`` is canonical base64 of a valid signature of ``data``."""
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        return False
    return base64.b64encode(raw).decode("ascii") == signature and verify_signature(public_key, data, raw)


def _is_utc_time(text: str) -> bool:
    """Whether ``text`` is an ISO 8601 time with a zero UTC offset."""
    try:
        return datetime.fromisoformat(text).utcoffset() == timedelta(0)
    except ValueError:
        return False


def _reject_constant(name: str) -> float:
    """json.loads hook: NaN and Infinity are not valid in a ledger."""
    raise ValueError(f"{name} is not allowed")

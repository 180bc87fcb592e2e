"""One line of a site's privacy ledger: its fields, its canonical JSON, and the checks it must pass alone.

Three kinds of entry share one record: ``trained`` (a round that ran DP-SGD, with its mechanism and
the hash of the update it produced), ``refused`` (a round the budget did not allow) and ``rotated``
(the site's signing key changed; see :mod:`fedgenome.privacy.ledger.verify`). A rotation carries two extra
fields, ``old_public_key`` and ``new_public_key`` (OpenSSH lines without a comment); other entries
never carry them, so ledgers written before rotations existed keep their exact bytes.

A trained or refused entry may carry ``epsilon_budget``: the site's budget when the entry was
written (its ``[privacy] epsilon_budget``), signed with the entry so that an auditor learns the budget
from signed data. It is optional in the same way: entries written before it existed (and rotations,
which never carry it) keep their exact bytes and signatures.

A trained or refused entry of a run that started from a checkpoint may carry
``initial_checkpoint_sha256``: the SHA-256 (``fedgenome.shared.checkpoint.state_sha256``) of the weights the
run's global model started from, as the server announced it (and, in round 1, as the site checked
against the weights it received). Optional and signed like ``epsilon_budget``; never on a rotation.

A trained or refused entry of a federated round may carry ``run_key``: the server's per-run key (32
hex digits, the same across a SuperLink resume). With ``round`` (the server's global round) it names
the (run, round) the entry served, so that a round trained twice for the same run is visible
(:func:`duplicate_rounds`). Optional like the others: entries written before it keep their bytes.

Every entry this fedgenome writes carries ``schema`` (:data:`SCHEMA`; an entry without it is
schema 1) and ``software``: the versions of fedgenome, Opacus and dp-accounting that wrote it, so an
auditor knows which code did the accounting. A newer schema may only add optional fields that leave
the meaning of the known ones unchanged; an entry of a schema above :data:`SCHEMA` may therefore
carry fields this version does not know, which are kept (in ``extra``), signed and hash-chained like
the others and named in the audit, but not interpreted. In an entry of a known schema an unknown
field is an error (a typo or an edit).

A fifth kind, ``evaluated`` (schema 3), is a private evaluation the site released
(:mod:`fedgenome.privacy.evaluation`): one Gaussian mechanism without subsampling, recorded as
``local_steps`` 1, ``sample_rate`` 1.0, its ``noise_multiplier`` and, in ``max_grad_norm``, the bound
each patient's contribution was clipped to (bits per base). It spends like a trained round, carries
no update, and may carry ``run_key``, ``epsilon_budget`` and ``initial_checkpoint_sha256``.

A fourth kind, ``reset``, can only be entry 0: an operator started a new ledger on record after the
old one was lost (``fedgenome privacy reset``). It spends nothing (epsilon 0, no mechanism), names
its ``reason`` and, when known, the old ledger's last head (``previous_count``,
``previous_last_sha256``); without them the old head is lost. Auditors see it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives.asymmetric import ec

from fedgenome.configs.errors import LedgerError
from fedgenome.privacy.keys import fingerprint, public_key_from_text
from fedgenome.privacy.mechanism import Mechanism

Status = Literal["trained", "refused", "rotated", "reset", "evaluated"]
STATUSES: tuple[Status, ...] = ("trained", "refused", "rotated", "reset", "evaluated")
SPENDING: tuple[Status, ...] = ("trained", "evaluated")
"""The kinds of entry that run a mechanism (and so spend epsilon)."""
EVALUATED_SCHEMA = 3
"""The first schema with ``evaluated`` entries."""
SCHEMA = 3
"""The ledger schema this fedgenome writes; it reads every schema up to it (and newer ones' entries,
keeping their unknown optional fields)."""
SOFTWARE = ("fedgenome", "opacus", "dp-accounting")
"""The distributions whose versions every new entry records."""
ROTATION_ACCOUNTANT = "none"
"""The ``accountant`` of a rotation or reset entry: it spends nothing."""

_TYPES: dict[str, tuple[type, ...]] = {
    **dict.fromkeys(("seq", "round", "local_steps"), (int,)),
    **dict.fromkeys(("sample_rate", "noise_multiplier", "max_grad_norm", "delta", "epsilon"), (float,)),
    **dict.fromkeys(("site", "status", "accountant", "time", "prev_sha256", "signature"), (str,)),
    "update_sha256": (str, type(None)),
}
_KEY_FIELDS = ("old_public_key", "new_public_key")
_RESET_FIELDS = ("reason", "previous_count", "previous_last_sha256")
_OPTIONAL_FIELDS = (*_KEY_FIELDS, "epsilon_budget", "initial_checkpoint_sha256", "run_key", *_RESET_FIELDS,
                    "schema", "software")
_OPTIONAL_TYPES: dict[str, type] = {
    **dict.fromkeys((*_KEY_FIELDS, "initial_checkpoint_sha256", "run_key", "reason",
                     "previous_last_sha256"), str),
    "epsilon_budget": float, "previous_count": int, "schema": int, "software": dict,
}
"""Fields stored only when set, so that entries written before they existed keep their bytes."""
_FLOATS = ("sample_rate", "noise_multiplier", "max_grad_norm", "delta", "epsilon")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_FIELD_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_KIND = {"rotated": "rotation", "reset": "reset"}
RUN_KEY = re.compile(r"[0-9a-f]{32}")
"""A run key as the server sends it: 32 lowercase hex digits."""


@dataclass(frozen=True)
class LedgerEntry:
    """One line of a site's privacy ledger: what one round cost, that it was refused, or a new key."""

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
    """SHA-256 (hex) of the model update this entry covers; None for a refusal or a rotation."""
    time: str
    prev_sha256: str
    signature: str
    old_public_key: str | None = None
    """A rotation's outgoing key (OpenSSH, no comment): it signs the rotation entry itself."""
    new_public_key: str | None = None
    """A rotation's incoming key: it signs every later entry and the head."""
    epsilon_budget: float | None = None
    """The site's epsilon budget when this entry was written; None in older entries and rotations."""
    initial_checkpoint_sha256: str | None = None
    """SHA-256 of the weights the run started from; None without an initial checkpoint."""
    run_key: str | None = None
    """The server's run key of the round this entry served; None outside a federated run (or older)."""
    reason: str | None = None
    """A reset's reason, as the operator gave it."""
    previous_count: int | None = None
    """A reset: the entry count of the lost ledger's last known head; None when it is lost."""
    previous_last_sha256: str | None = None
    """A reset: the lost ledger's last known head digest; None when it is lost."""
    schema: int | None = None
    """The schema the entry was written in; None: schema 1 (written before the field existed)."""
    software: dict[str, str] | None = None
    """Versions of :data:`SOFTWARE` that wrote the entry; None in schema-1 entries."""
    extra: dict[str, object] = field(default_factory=dict)
    """Fields of a newer schema than :data:`SCHEMA`, kept as read (signed, not interpreted)."""

    @property
    def mechanism(self) -> Mechanism | None:
        """The (subsampled) Gaussian mechanism this entry ran; None for a refusal, rotation or zero steps."""
        if self.status not in SPENDING or self.local_steps == 0:
            return None
        return Mechanism(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate,
                         steps=self.local_steps)

    def signed_bytes(self) -> bytes:
        """The canonical JSON of every field but ``signature``: the bytes the signature covers."""
        return canonical(self._stored_fields(with_signature=False))

    def line(self) -> bytes:
        """The entry's canonical JSON line (without the newline), as stored in the file."""
        return canonical(self._stored_fields(with_signature=True))

    @property
    def sha256(self) -> str:
        """SHA-256 (hex) of :meth:`line`: what the next entry's ``prev_sha256`` holds."""
        return hashlib.sha256(self.line()).hexdigest()

    def _stored_fields(self, *, with_signature: bool) -> dict[str, object]:
        """The fields as stored: the optional fields only when set, the signature when asked for."""
        fields = {f.name: getattr(self, f.name) for f in _FIELDS}
        if not with_signature:
            del fields["signature"]
        for name in _OPTIONAL_FIELDS:
            if fields[name] is None:
                del fields[name]
        return {**fields, **self.extra}


_FIELDS = tuple(f for f in dataclasses.fields(LedgerEntry) if f.name != "extra")


@cache
def _installed_versions() -> tuple[tuple[str, str], ...]:
    found = {}
    for name in SOFTWARE:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "unknown"
    return tuple(found.items())


def software_versions() -> dict[str, str]:
    """The installed versions of :data:`SOFTWARE` (``"unknown"`` for one not installed), read once."""
    return dict(_installed_versions())


def canonical(fields: dict[str, object]) -> bytes:
    """Canonical JSON: sorted keys, no spaces, ASCII only, no NaN or infinity."""
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("ascii")


def head_path(path: Path) -> Path:
    """The head file beside the ledger ``path``: ``<ledger>.head``."""
    return path.with_name(path.name + ".head")


def genesis_sha256(site: str, public_key: ec.EllipticCurvePublicKey) -> str:
    """The ``prev_sha256`` of entry 0: binds a ledger to its site and the key it started with."""
    return hashlib.sha256(f"fedgenome-ledger:{site}:{fingerprint(public_key)}".encode()).hexdigest()


def rotations(entries: Sequence[LedgerEntry]) -> list[LedgerEntry]:
    """The key rotations among ``entries``, oldest first."""
    return [e for e in entries if e.status == "rotated"]


def entry_from_dict(fields: dict[str, object], where: str) -> LedgerEntry:
    """A LedgerEntry from parsed JSON (or append's arguments), checking field names and types."""
    missing = sorted(set(_TYPES) - set(fields))
    unknown = sorted(set(fields) - set(_TYPES) - set(_OPTIONAL_FIELDS))
    schema = fields.get("schema")
    newer = type(schema) is int and schema > SCHEMA
    if missing or (unknown and not newer):
        hint = "" if not unknown else (f" (schema {schema if schema is not None else 1} has no other "
                                        f"fields; a newer schema's entry names its schema, > {SCHEMA})")
        raise LedgerError(f"{where}: missing fields {missing}, unknown fields {unknown}{hint}")
    bad_names = [name for name in unknown if not _FIELD_NAME.fullmatch(name)]
    if bad_names:
        raise LedgerError(f"{where}: fields {bad_names} are not field names (lowercase, digits, _)")
    for name, types in _TYPES.items():
        value = fields[name]
        if type(value) not in types:  # exact types: no bools for ints, no ints for floats
            expected = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise LedgerError(f"{where}: field {name!r} is {value!r}, expected {expected}")
    for name, kind in _OPTIONAL_TYPES.items():
        if name in fields and type(fields[name]) is not kind:
            raise LedgerError(f"{where}: field {name!r} is {fields[name]!r}, expected {kind.__name__}")
    software = fields.get("software")
    if isinstance(software, dict) and not all(type(k) is str and type(v) is str for k, v in software.items()):
        raise LedgerError(f"{where}: field 'software' is {software!r}, expected names mapped to versions")
    known = {name: value for name, value in fields.items() if name not in unknown}
    return LedgerEntry(**known, extra={name: fields[name] for name in unknown})  # type: ignore[arg-type]


def value_problem(entry: LedgerEntry) -> str | None:
    """What is wrong with the values of one entry on its own, or None."""
    bad_floats = [name for name in _FLOATS
                  if not math.isfinite(getattr(entry, name)) or getattr(entry, name) < 0.0]
    if bad_floats:
        return f"{', '.join(bad_floats)} must be finite and >= 0"
    trained = entry.status == "trained"
    checks = [
        (entry.status in STATUSES, f"status {entry.status!r} is not one of {', '.join(STATUSES)}"),
        (entry.round >= 0 and entry.local_steps >= 0, "round and local_steps must be >= 0"),
        (entry.sample_rate <= 1.0 and entry.delta < 1.0, "sample_rate must be <= 1 and delta < 1"),
        (bool(entry.site) and bool(entry.accountant), "site and accountant must not be empty"),
        (trained or entry.update_sha256 is None, "a refusal or a rotation has no update_sha256"),
        (not trained or _SHA256.fullmatch(entry.update_sha256 or "") is not None,
         "a trained entry needs update_sha256 as 64 lowercase hex digits"),
        (not trained or entry.local_steps == 0 or entry.sample_rate > 0.0,
         "a trained entry with steps needs sample_rate > 0"),
        (_SHA256.fullmatch(entry.prev_sha256) is not None, "prev_sha256 is not 64 lowercase hex digits"),
        (_is_utc_time(entry.time), f"time {entry.time!r} is not an ISO 8601 UTC time"),
    ]
    if entry.schema is not None and entry.schema < 2:
        return f"schema {entry.schema} is not written (schema 1 has no field; this version writes {SCHEMA})"
    return (next((message for ok, message in checks if not ok), None) or _budget_problem(entry)
            or _initial_problem(entry) or _run_key_problem(entry) or _rotation_problem(entry)
            or _reset_problem(entry) or _evaluation_problem(entry))


def _evaluation_problem(entry: LedgerEntry) -> str | None:
    """What is wrong with an evaluated entry: one unsampled Gaussian release, schema 3 or later."""
    if entry.status != "evaluated":
        return None
    if (entry.schema or 1) < EVALUATED_SCHEMA:
        return f"an evaluated entry needs schema {EVALUATED_SCHEMA} or later (it has {entry.schema or 1})"
    if (entry.local_steps, entry.sample_rate) != (1, 1.0) or not entry.noise_multiplier > 0.0:
        return "an evaluated entry is one release: local_steps 1, sample_rate 1.0, noise_multiplier > 0"
    if not entry.max_grad_norm > 0.0:
        return "an evaluated entry needs its clipping bound (max_grad_norm) > 0"
    return None


def _run_key_problem(entry: LedgerEntry) -> str | None:
    """What is wrong with ``run_key``: when set, 32 lowercase hex digits, on a trained or refused entry."""
    if entry.run_key is None:
        return None
    if entry.status not in ("trained", "refused", "evaluated"):
        return f"a {entry.status} entry carries no run_key"
    if RUN_KEY.fullmatch(entry.run_key) is None:
        return "run_key must be 32 lowercase hex digits"
    return None


def _reset_problem(entry: LedgerEntry) -> str | None:
    """What is wrong with the reset fields: only a reset has them; it spends nothing and says why."""
    if entry.status != "reset":
        if any(getattr(entry, name) is not None for name in _RESET_FIELDS):
            return f"a {entry.status} entry carries no reset fields"
        return None
    if not (entry.reason or "").strip():
        return "a reset needs a non-empty reason"
    if (entry.local_steps, entry.epsilon, entry.round) != (0, 0.0, 0) or entry.update_sha256 is not None:
        return "a reset starts a new ledger: round 0, no steps, epsilon 0 and no update"
    if (entry.previous_count is None) != (entry.previous_last_sha256 is None):
        return "a reset names both previous_count and previous_last_sha256, or neither (lost)"
    if entry.previous_count is not None and entry.previous_count < 0:
        return "previous_count must be >= 0"
    if entry.previous_last_sha256 is not None and _SHA256.fullmatch(entry.previous_last_sha256) is None:
        return "previous_last_sha256 must be 64 lowercase hex digits"
    return None


def _initial_problem(entry: LedgerEntry) -> str | None:
    """What is wrong with ``initial_checkpoint_sha256``: when set, 64 hex digits, not on a rotation."""
    digest = entry.initial_checkpoint_sha256
    if digest is None:
        return None
    if entry.status in ("rotated", "reset"):
        return f"a {_KIND[entry.status]} carries no initial_checkpoint_sha256"
    if _SHA256.fullmatch(digest) is None:
        return "initial_checkpoint_sha256 must be 64 lowercase hex digits"
    return None


def _budget_problem(entry: LedgerEntry) -> str | None:
    """What is wrong with ``epsilon_budget``: when set, finite and > 0, and never on a rotation."""
    budget = entry.epsilon_budget
    if budget is None:
        return None
    if entry.status in ("rotated", "reset"):
        return f"a {_KIND[entry.status]} carries no epsilon_budget"
    if not (math.isfinite(budget) and budget > 0.0):
        return f"epsilon_budget {budget} must be finite and > 0"
    return None


def _rotation_problem(entry: LedgerEntry) -> str | None:
    """What is wrong with the key fields: only a rotation has them, and both as canonical keys."""
    if entry.status != "rotated":
        if entry.old_public_key is not None or entry.new_public_key is not None:
            return f"a {entry.status} entry carries no public keys"
        return None
    keys = [public_key_from_text(text) if text is not None else None
            for text in (entry.old_public_key, entry.new_public_key)]
    old, new = keys
    if old is None or new is None:
        return ("a rotation needs old_public_key and new_public_key as OpenSSH "
                "ecdsa-sha2-nistp384 lines without a comment")
    if fingerprint(old) == fingerprint(new):
        return "a rotation's new key is its old key"
    if entry.local_steps != 0:
        return "a rotation trains nothing: local_steps must be 0"
    return None


def order_problem(previous: LedgerEntry | None, entry: LedgerEntry) -> str | None:
    """What is wrong with ``entry`` following ``previous`` (rounds and epsilon never decrease), or None.

    A rotation costs nothing: its epsilon is the previous cumulative epsilon (0 for a first entry). A
    reset can only be the first entry.
    """
    if entry.status == "reset" and previous is not None:
        return "a reset can only be the first entry of a new ledger"
    if entry.status == "rotated":
        before = previous.epsilon if previous is not None else 0.0
        if entry.epsilon != before:
            return f"a rotation costs no privacy: epsilon {entry.epsilon} differs from {before}"
    if previous is None:
        return None
    if entry.round < previous.round:
        return f"round {entry.round} is before the previous entry's round {previous.round}"
    if entry.epsilon < previous.epsilon:
        return f"epsilon {entry.epsilon} is below the previous cumulative epsilon {previous.epsilon}"
    return None


def duplicate_rounds(entries: Sequence[LedgerEntry]) -> list[tuple[LedgerEntry, LedgerEntry]]:
    """Pairs (first, again) of trained entries that served the same (run_key, round).

    Entries without a run key are compared among themselves by round: two trained entries of one
    round with no run key are a round trained twice as well (written before run keys were recorded).
    """
    seen: dict[tuple[str | None, int], LedgerEntry] = {}
    pairs = []
    for entry in entries:
        if entry.status != "trained":
            continue
        slot = (entry.run_key, entry.round)
        if slot in seen:
            pairs.append((seen[slot], entry))
        else:
            seen[slot] = entry
    return pairs


def _is_utc_time(text: str) -> bool:
    """Whether ``text`` is an ISO 8601 time with a zero UTC offset."""
    try:
        return datetime.fromisoformat(text).utcoffset() == timedelta(0)
    except ValueError:
        return False

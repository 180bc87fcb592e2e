"""Key rotation in the privacy ledger: the chain of keys, what each anchor catches, no privacy cost."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedgenome.configs.errors import InputFileError, LedgerError
from fedgenome.privacy.keys import (
    generate_key,
    load_public_key,
    public_key_from_text,
    public_key_text,
    sign,
    verify_signature,
)
from fedgenome.privacy.ledger.core import Ledger, LedgerEntry, head_path, verify_ledger
from fedgenome.privacy.ledger.entry import canonical


def train(ledger: Ledger, round_: int, epsilon: float) -> LedgerEntry:
    return ledger.append(round=round_, status="trained", local_steps=5, sample_rate=0.05,
                         noise_multiplier=1.1, max_grad_norm=1.0, delta=1e-5, accountant="rdp",
                         epsilon=epsilon, update_sha256=hashlib.sha256(b"%d" % round_).hexdigest())


def signed_by(entry: LedgerEntry, key: ec.EllipticCurvePublicKey) -> bool:
    return verify_signature(key, entry.signed_bytes(), base64.b64decode(entry.signature))


def resign(entry: LedgerEntry, key: ec.EllipticCurvePrivateKey, **changes: object) -> LedgerEntry:
    unsigned = dataclasses.replace(entry, signature="", **changes)  # type: ignore[arg-type]
    signature = base64.b64encode(sign(key, unsigned.signed_bytes())).decode()
    return dataclasses.replace(unsigned, signature=signature)


def write_chain(path: Path, entries: list[LedgerEntry], key: ec.EllipticCurvePrivateKey) -> None:
    """Write entries as a ledger (re-chaining prev_sha256 after the first) with a head signed by key."""
    path.write_bytes(b"".join(e.line() + b"\n" for e in entries))
    fields: dict[str, object] = {"count": len(entries), "last_sha256": entries[-1].sha256,
                                 "site": entries[0].site}
    fields["signature"] = base64.b64encode(sign(key, canonical(fields))).decode()
    head_path(path).write_text(canonical(fields).decode() + "\n")


def test_a_fork_with_a_leaked_retired_key_is_caught_by_the_current_key(tmp_path: Path) -> None:
    retired, current = generate_key(), generate_key()
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path, site="s", private_key=retired)
    train(ledger, 1, 0.5)
    train(ledger, 2, 0.9)
    ledger.rotate(new_key=current)
    train(ledger, 3, 1.2)
    # Whoever holds the *retired* key forks the ledger at the rotation: a lower epsilon, then a
    # rotation to their own key, which signs the rest.
    attacker = generate_key()
    entries = list(verify_ledger(path, public_key=current.public_key()))[:3]
    entries[1] = resign(entries[1], retired, epsilon=0.6)
    entries[2] = resign(entries[2], retired, prev_sha256=entries[1].sha256, epsilon=0.6,
                        new_public_key=public_key_text(attacker.public_key()))
    write_chain(path, entries, attacker)
    # Anchored on the genesis key alone, the fork verifies (see fedgenome.privacy.ledger.verify) ...
    assert len(verify_ledger(path, public_key=retired.public_key())) == 3
    # ... anchored on the current (registered) key, it does not: that key never signed it.
    with pytest.raises(LedgerError, match=r"is neither the key this ledger started with .* nor its current"):
        verify_ledger(path, public_key=current.public_key())


def test_every_byte_flip_in_a_rotated_ledger_is_detected(tmp_path: Path) -> None:
    old, new = generate_key(), generate_key()
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path, site="s", private_key=old)
    train(ledger, 1, 0.5)
    ledger.rotate(new_key=new)
    for target in (path, head_path(path)):
        original = target.read_bytes()
        for offset in range(len(original)):
            flipped = bytearray(original)
            flipped[offset] ^= 0x01
            target.write_bytes(bytes(flipped))
            with pytest.raises(LedgerError):
                verify_ledger(path, public_key=new.public_key())
        target.write_bytes(original)
    verify_ledger(path, public_key=new.public_key())


def test_a_compressed_point_key_is_a_one_line_error(tmp_path: Path) -> None:
    point = generate_key().public_key().public_bytes(serialization.Encoding.X962,
                                                     serialization.PublicFormat.CompressedPoint)
    blob = b"".join(struct.pack(">I", len(part)) + part
                    for part in (b"ecdsa-sha2-nistp384", b"nistp384", point))
    line = "ecdsa-sha2-nistp384 " + base64.b64encode(blob).decode()
    (tmp_path / "k.pub").write_text(line + " x\n")
    with pytest.raises(InputFileError, match="is not an OpenSSH or PEM public key"):
        load_public_key(tmp_path / "k.pub")
    assert public_key_from_text(line) is None


def test_a_rotation_must_cost_nothing(tmp_path: Path) -> None:
    old, new = generate_key(), generate_key()
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path, site="s", private_key=old)
    train(ledger, 1, 0.5)
    rotation = ledger.rotate(new_key=new)
    entries = list(verify_ledger(path, public_key=old.public_key()))
    entries[1] = resign(rotation, old, epsilon=0.4)
    write_chain(path, entries, new)
    with pytest.raises(LedgerError, match=r"a rotation costs no privacy"):
        verify_ledger(path, public_key=old.public_key())
    with pytest.raises(LedgerError, match=r"rotate, not append"):
        Ledger(tmp_path / "other.jsonl", site="s", private_key=old).append(
            round=1, status="rotated", local_steps=0, sample_rate=0.0, noise_multiplier=0.0,
            max_grad_norm=0.0, delta=0.0, accountant="none", epsilon=0.0, update_sha256=None)

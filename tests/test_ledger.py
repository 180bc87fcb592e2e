"""The signed, hash-chained privacy ledger and the site keys that sign it: tampering is detected."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import os
import re
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

import fedgenome.privacy.ledger.core as ledger_core
from fedgenome.configs.errors import ConfigError, InputFileError, LedgerError
from fedgenome.privacy.keys import (
    create_site_key,
    fingerprint,
    load_private_key,
    load_public_key,
    sign,
    verify_signature,
)
from fedgenome.privacy.ledger.core import Ledger, LedgerEntry, head_path, verify_ledger
from fedgenome.privacy.mechanism import Mechanism


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("keys")
    create_site_key(directory, "siteA")
    create_site_key(directory, "siteB")
    return directory


@pytest.fixture(scope="module")
def key_a(key_dir: Path) -> ec.EllipticCurvePrivateKey:
    return load_private_key(key_dir / "siteA")


@pytest.fixture(scope="module")
def key_b(key_dir: Path) -> ec.EllipticCurvePrivateKey:
    return load_private_key(key_dir / "siteB")


def _update(n: int) -> str:
    return hashlib.sha256(f"update {n}".encode()).hexdigest()


def _append(ledger: Ledger, round_: int, epsilon: float, *, refused: bool = False) -> LedgerEntry:
    return ledger.append(
        round=round_,
        status="refused" if refused else "trained",
        local_steps=0 if refused else 10,
        sample_rate=0.05,
        noise_multiplier=1.1,
        max_grad_norm=1.0,
        delta=1e-5,
        accountant="rdp",
        epsilon=epsilon,
        update_sha256=None if refused else _update(round_),
    )


def _three(path: Path, key: ec.EllipticCurvePrivateKey) -> Ledger:
    ledger = Ledger(path, site="siteA", private_key=key)
    _append(ledger, 1, 0.5)
    _append(ledger, 2, 0.8)
    _append(ledger, 3, 1.0)
    return ledger


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_append_writes_one_line_per_entry_and_verifies(
    tmp_path: Path, key_a: ec.EllipticCurvePrivateKey
) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = _three(path, key_a)
    lines = _lines(path)
    assert len(lines) == 3
    assert [json.loads(line)["seq"] for line in lines] == [0, 1, 2]
    entries = verify_ledger(path, public_key=key_a.public_key(), site="siteA")
    assert entries == ledger.entries
    assert [e.round for e in entries] == [1, 2, 3]
    assert entries[1].prev_sha256 == hashlib.sha256(lines[0].rstrip(b"\n")).hexdigest()
    assert ledger.epsilon == 1.0 and ledger.last_round == 3
    assert ledger.mechanisms() == [Mechanism(noise_multiplier=1.1, sample_rate=0.05, steps=10)] * 3
    head = json.loads(head_path(path).read_text())
    assert head["count"] == 3 and head["last_sha256"] == entries[-1].sha256


def test_refusal_has_no_mechanism(tmp_path: Path, key_a: ec.EllipticCurvePrivateKey) -> None:
    ledger = Ledger(tmp_path / "ledger.jsonl", site="siteA", private_key=key_a)
    _append(ledger, 1, 0.5)
    refusal = _append(ledger, 2, 0.5, refused=True)
    assert refusal.mechanism is None and refusal.update_sha256 is None
    assert len(ledger.mechanisms()) == 1
    with pytest.raises(LedgerError, match="update_sha256"):
        ledger.append(round=3, status="trained", local_steps=1, sample_rate=0.1, noise_multiplier=1.0,
                      max_grad_norm=1.0, delta=1e-5, accountant="rdp", epsilon=0.6, update_sha256=None)


def _flip_each_byte(path: Path, ledger: Path, public: ec.EllipticCurvePublicKey) -> list[int]:
    """Flip each byte of ``path`` in turn (in place: rewriting is slow on ext4); offsets ``ledger`` missed."""
    original = path.read_bytes()
    undetected = []
    fd = os.open(path, os.O_WRONLY)
    try:
        for offset, byte in enumerate(original):
            os.pwrite(fd, bytes([byte ^ 0x01]), offset)
            try:
                verify_ledger(ledger, public_key=public, site="siteA")
                undetected.append(offset)
            except LedgerError:
                pass
            os.pwrite(fd, bytes([byte]), offset)
    finally:
        os.close(fd)
    assert path.read_bytes() == original
    return undetected


def test_every_single_byte_flip_is_detected(tmp_path: Path, key_a: ec.EllipticCurvePrivateKey) -> None:
    path = tmp_path / "ledger.jsonl"
    _three(path, key_a)
    assert path.stat().st_size > 1000
    assert _flip_each_byte(path, path, key_a.public_key()) == []
    verify_ledger(path, public_key=key_a.public_key(), site="siteA")


def test_every_byte_flip_in_the_head_is_detected(tmp_path: Path, key_a: ec.EllipticCurvePrivateKey) -> None:
    path = tmp_path / "ledger.jsonl"
    _three(path, key_a)
    assert _flip_each_byte(head_path(path), path, key_a.public_key()) == []


@pytest.mark.parametrize(("order", "says"), [((0, 2), r"line 2 \(seq 2\).*missing"),
                                             ((0, 2, 1), r"line 2 \(seq 2\)")],
                         ids=["a-middle-entry-deleted", "entries-reordered"])
def test_a_deleted_or_moved_entry_is_detected(tmp_path: Path, key_a: ec.EllipticCurvePrivateKey,
                                              order: tuple[int, ...], says: str) -> None:
    path = tmp_path / "ledger.jsonl"
    _three(path, key_a)
    lines = _lines(path)
    path.write_bytes(b"".join(lines[i] for i in order))
    with pytest.raises(LedgerError, match=says):
        verify_ledger(path, public_key=key_a.public_key())


def test_truncation_is_detected_by_the_head(tmp_path: Path, key_a: ec.EllipticCurvePrivateKey) -> None:
    path = tmp_path / "ledger.jsonl"
    _three(path, key_a)
    lines = _lines(path)
    path.write_bytes(lines[0] + lines[1])
    with pytest.raises(LedgerError, match=r"records 3 entries but .* has 2"):
        verify_ledger(path, public_key=key_a.public_key())
    with pytest.raises(LedgerError, match="deleted from the end"):
        Ledger(path, site="siteA", private_key=key_a)
    path.unlink()  # the whole ledger deleted: the budget must not start again from zero
    with pytest.raises(LedgerError, match=r"records 3 entries but .* has 0"):
        Ledger(path, site="siteA", private_key=key_a)
    path.write_bytes(b"".join(lines))
    head_path(path).unlink()
    with pytest.raises(LedgerError, match=r"\.head is missing"):
        verify_ledger(path, public_key=key_a.public_key())


def test_an_entry_signed_by_another_key_is_detected(
    tmp_path: Path, key_a: ec.EllipticCurvePrivateKey, key_b: ec.EllipticCurvePrivateKey
) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = _three(path, key_a)
    forged = dataclasses.replace(ledger.entries[1], epsilon=0.6, signature="")
    signature = base64.b64encode(sign(key_b, forged.signed_bytes())).decode()
    lines = _lines(path)
    lines[1] = dataclasses.replace(forged, signature=signature).line() + b"\n"
    path.write_bytes(b"".join(lines))
    with pytest.raises(LedgerError, match=r"line 2 \(seq 1\): bad signature"):
        verify_ledger(path, public_key=key_a.public_key())
    # A whole ledger written with site B's key does not verify as site A's.
    other = tmp_path / "other.jsonl"
    _three(other, key_b)
    with pytest.raises(LedgerError, match=r"line 1 \(seq 0\): bad signature"):
        verify_ledger(other, public_key=key_a.public_key())
    with pytest.raises(LedgerError, match="bad signature"):
        Ledger(other, site="siteA", private_key=key_a)


def test_ledger_of_another_site_is_refused(tmp_path: Path, key_a: ec.EllipticCurvePrivateKey) -> None:
    path = tmp_path / "ledger.jsonl"
    _three(path, key_a)
    with pytest.raises(LedgerError, match=r"line 1 \(seq 0\): site is 'siteA', expected 'siteZ'"):
        Ledger(path, site="siteZ", private_key=key_a)
    with pytest.raises(ConfigError, match="site name"):
        Ledger(tmp_path / "new.jsonl", site="two words", private_key=key_a)


def test_reopening_resumes_the_chain(tmp_path: Path, key_a: ec.EllipticCurvePrivateKey) -> None:
    path = tmp_path / "ledger.jsonl"
    first = _three(path, key_a)
    again = Ledger(path, site="siteA", private_key=key_a)
    assert again.entries == first.entries
    assert again.epsilon == 1.0 and again.last_round == 3
    entry = _append(again, 4, 1.2)
    assert entry.seq == 3 and entry.prev_sha256 == first.entries[-1].sha256
    assert len(verify_ledger(path, public_key=key_a.public_key(), site="siteA")) == 4
    assert len(_lines(path)) == 4


def test_lower_epsilon_or_round_is_refused(tmp_path: Path, key_a: ec.EllipticCurvePrivateKey) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = _three(path, key_a)
    size = path.stat().st_size
    with pytest.raises(LedgerError, match=r"\(seq 3\): refusing to append: epsilon 0.9 is below .* 1.0"):
        _append(ledger, 4, 0.9)
    with pytest.raises(LedgerError, match="round 2 is before"):
        _append(ledger, 2, 1.5)
    with pytest.raises(LedgerError, match="finite"):
        _append(ledger, 4, float("nan"))
    assert path.stat().st_size == size and len(ledger.entries) == 3
    _append(ledger, 3, 1.0, refused=True)  # the same round again, the same epsilon: allowed


def test_append_refuses_when_another_process_wrote(tmp_path: Path, key_a: ec.EllipticCurvePrivateKey) -> None:
    path = tmp_path / "ledger.jsonl"
    first = _three(path, key_a)
    second = Ledger(path, site="siteA", private_key=key_a)
    _append(second, 4, 1.1)
    with pytest.raises(LedgerError, match="changed on disk"):
        _append(first, 4, 1.2)
    assert len(verify_ledger(path, public_key=key_a.public_key())) == 4


def test_crash_before_the_head_update_is_repaired(
    tmp_path: Path, key_a: ec.EllipticCurvePrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "ledger.jsonl"
    _three(path, key_a)
    old_head = head_path(path).read_bytes()
    ledger = Ledger(path, site="siteA", private_key=key_a)
    _append(ledger, 4, 1.1)
    head_path(path).write_bytes(old_head)  # as if the process died before rewriting the head
    with caplog.at_level(logging.WARNING):
        assert len(verify_ledger(path, public_key=key_a.public_key())) == 4
        reopened = Ledger(path, site="siteA", private_key=key_a)
    assert "one entry behind" in caplog.text
    assert json.loads(head_path(path).read_text())["count"] == 4 == len(reopened.entries)


def test_an_interrupted_append_is_dropped(tmp_path: Path, key_a: ec.EllipticCurvePrivateKey) -> None:
    path = tmp_path / "ledger.jsonl"
    _three(path, key_a)
    with open(path, "ab") as fh:
        fh.write(b'{"accountant":"rdp","del')
    with pytest.raises(LedgerError, match="line 4: incomplete last line"):
        verify_ledger(path, public_key=key_a.public_key())
    ledger = Ledger(path, site="siteA", private_key=key_a)
    assert len(ledger.entries) == 3
    assert _append(ledger, 4, 1.1).seq == 3
    assert len(verify_ledger(path, public_key=key_a.public_key())) == 4


def test_site_key_files(key_dir: Path, key_a: ec.EllipticCurvePrivateKey) -> None:
    private = key_dir / "siteA"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    kind, blob, comment = (key_dir / "siteA.pub").read_text().split()
    assert kind == "ecdsa-sha2-nistp384" and comment == "siteA"
    public = load_public_key(key_dir / "siteA.pub")
    assert isinstance(key_a.curve, ec.SECP384R1)
    assert fingerprint(public) == fingerprint(key_a.public_key())
    assert fingerprint(public) == hashlib.sha256(f"{kind} {blob}".encode()).hexdigest()
    signature = sign(key_a, b"data")
    assert verify_signature(public, b"data", signature)
    assert not verify_signature(public, b"other", signature)
    assert not verify_signature(load_public_key(key_dir / "siteB.pub"), b"data", signature)


def test_create_site_key_refuses_to_overwrite(key_dir: Path) -> None:
    before = (key_dir / "siteA").read_bytes()
    with pytest.raises(ConfigError, match="already exists"):
        create_site_key(key_dir, "siteA")
    assert (key_dir / "siteA").read_bytes() == before
    with pytest.raises(ConfigError, match="invalid"):
        create_site_key(key_dir, "../x")


def test_loading_bad_keys_names_the_path(
    tmp_path: Path, key_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "nokey"
    with pytest.raises(InputFileError, match=f"{re.escape(str(missing))} does not exist"):
        load_private_key(missing)
    with pytest.raises(InputFileError, match=f"{re.escape(str(missing))} does not exist"):
        load_public_key(missing)
    with pytest.raises(InputFileError, match="holds a private key"):
        load_public_key(key_dir / "siteA")
    with pytest.raises(InputFileError, match="holds a public key"):
        load_private_key(key_dir / "siteA.pub")
    junk = tmp_path / "junk"
    junk.write_text("hello\n")
    with pytest.raises(InputFileError, match=f"{re.escape(str(junk))} is not an OpenSSH or PEM public key"):
        load_public_key(junk)
    loose = tmp_path / "loose"
    loose.write_bytes((key_dir / "siteA").read_bytes())
    os.chmod(loose, 0o644)
    with caplog.at_level(logging.WARNING):
        load_private_key(loose)
    assert "chmod 600" in caplog.text


_OLD_FIELDS = {"seq", "site", "round", "status", "local_steps", "sample_rate", "noise_multiplier",
               "max_grad_norm", "delta", "accountant", "epsilon", "update_sha256", "time", "prev_sha256",
               "signature"}


def _budgeted(ledger: Ledger, round_: int, epsilon: float, budget: float) -> LedgerEntry:
    return ledger.append(round=round_, status="trained", local_steps=10, sample_rate=0.05,
                         noise_multiplier=1.1, max_grad_norm=1.0, delta=1e-5, accountant="rdp",
                         epsilon=epsilon, update_sha256=_update(round_), epsilon_budget=budget)


def test_entries_without_a_budget_keep_their_bytes(tmp_path: Path, key_a: ec.EllipticCurvePrivateKey,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _append(Ledger(tmp_path / "new.jsonl", site="siteA", private_key=key_a), 1, 0.5)
    assert set(json.loads((tmp_path / "new.jsonl").read_bytes())) == _OLD_FIELDS | {"schema", "software"}
    path = tmp_path / "ledger.jsonl"  # written as schema 1 did, before budget, schema and versions
    real = ledger_core.entry_from_dict
    monkeypatch.setattr(ledger_core, "entry_from_dict", lambda fields, where: real(
        {k: v for k, v in fields.items() if k not in ("schema", "software")}, where))
    _append(Ledger(path, site="siteA", private_key=key_a), 1, 0.5)
    monkeypatch.undo()
    old = path.read_bytes()
    assert set(json.loads(old)) == _OLD_FIELDS
    _budgeted(Ledger(path, site="siteA", private_key=key_a), 2, 0.8, 8)  # an int budget is stored as float
    assert path.read_bytes().startswith(old)
    entries = verify_ledger(path, public_key=key_a.public_key(), site="siteA")
    assert [e.epsilon_budget for e in entries] == [None, 8.0]
    assert json.loads(_lines(path)[1])["epsilon_budget"] == 8.0
    assert b"".join(e.line() + b"\n" for e in entries) == path.read_bytes()


def test_the_budget_is_signed(tmp_path: Path, key_a: ec.EllipticCurvePrivateKey) -> None:
    path = tmp_path / "ledger.jsonl"
    _budgeted(Ledger(path, site="siteA", private_key=key_a), 1, 0.5, 8.0)
    original = path.read_bytes()
    for edited in (original.replace(b'"epsilon_budget":8.0', b'"epsilon_budget":80.0'),
                   original.replace(b'"epsilon_budget":8.0,', b"")):
        assert edited != original
        path.write_bytes(edited)
        with pytest.raises(LedgerError, match="bad signature"):
            verify_ledger(path, public_key=key_a.public_key())


@pytest.mark.parametrize("budget", [0.0, -1.0, float("inf"), float("nan")])
def test_a_budget_must_be_finite_and_positive(tmp_path: Path, key_a: ec.EllipticCurvePrivateKey,
                                              budget: float) -> None:
    ledger = Ledger(tmp_path / "ledger.jsonl", site="siteA", private_key=key_a)
    with pytest.raises(LedgerError, match="epsilon_budget"):
        _budgeted(ledger, 1, 0.5, budget)
    assert not (tmp_path / "ledger.jsonl").exists()


def test_a_budget_must_be_a_float_in_the_file(tmp_path: Path, key_a: ec.EllipticCurvePrivateKey) -> None:
    path = tmp_path / "ledger.jsonl"
    _budgeted(Ledger(path, site="siteA", private_key=key_a), 1, 0.5, 8.0)
    path.write_bytes(path.read_bytes().replace(b'"epsilon_budget":8.0', b'"epsilon_budget":8'))
    with pytest.raises(LedgerError, match="'epsilon_budget' is 8, expected float"):
        verify_ledger(path, public_key=key_a.public_key())

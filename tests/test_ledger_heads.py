"""The server keeps each site's signed ledger head and rejects one that went back or is not the site's."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from fedgenome.privacy.keys import load_public_key
from fedgenome.privacy.site_state import ledger_head_digest, open_ledger, site_key_path
from fedgenome.server.ledger_heads import HeadCheck
from fedgenome.server.report import RoundRecord
from fedgenome.server.validation import UpdateRejected
from tests.test_ledger_reset import NAME, spend, trained_site


def pem(site: Path) -> bytes:
    key = load_public_key(site_key_path(site, NAME).with_suffix(".pub"))
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_a_growing_ledger_signed_by_the_registered_key_passes(tmp_path: Path) -> None:
    site = trained_site(tmp_path, rounds=2)
    check = HeadCheck()
    for next_round in (3, 4):
        head = ledger_head_digest(site, NAME)
        check.check(NAME, head, public_key=pem(site))
        check.last[NAME] = head.pair
        spend(open_ledger(site, NAME), next_round)
    check.check(NAME, ledger_head_digest(site, NAME), public_key=pem(site))


def test_a_ledger_that_went_back_is_rejected(tmp_path: Path) -> None:
    site = trained_site(tmp_path, rounds=2)
    head = ledger_head_digest(site, NAME)
    check = HeadCheck(last={NAME: (head.count + 1, "f" * 64)})  # the server saw a longer one
    with pytest.raises(UpdateRejected, match="ledger rolled-back: the ledger went back from 3 entries"):
        check.check(NAME, head, public_key=pem(site))
    forked = HeadCheck(last={NAME: (head.count, "e" * 64)})
    with pytest.raises(UpdateRejected, match="ledger forked"):
        forked.check(NAME, head, public_key=pem(site))


def test_a_head_not_signed_by_the_registered_key_or_not_the_sites_is_rejected(tmp_path: Path) -> None:
    site, other = trained_site(tmp_path / "a"), trained_site(tmp_path / "b")
    head = ledger_head_digest(site, NAME)
    with pytest.raises(UpdateRejected, match="does not verify with the key the node was registered"):
        HeadCheck().check(NAME, head, public_key=pem(other))
    with pytest.raises(UpdateRejected, match="signature does not verify"):
        HeadCheck().check(NAME, dataclasses.replace(head, count=head.count + 5), public_key=pem(site))
    with pytest.raises(UpdateRejected, match="not 'hospital-b''s"):
        HeadCheck().check("hospital-b", head, public_key=pem(site))
    with pytest.raises(UpdateRejected, match="carries no ledger head"):
        HeadCheck().check(NAME, None, public_key=pem(site))


def test_the_heads_come_from_the_runs_report() -> None:
    rounds = [RoundRecord(round=r, train_loss=1.0, heldout_bits_per_base=2.0,
                          ledger_heads={"a": {"count": r, "sha256": f"{r}" * 64}}) for r in (1, 2)]
    assert HeadCheck.of_report(rounds).last == {"a": (2, "2" * 64)}

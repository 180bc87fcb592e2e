"""Epsilon that cannot be lost: a site that trained refuses to train without its ledger; resets on record."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from fedgenome.cli import main
from fedgenome.configs.errors import ConfigError, LedgerError
from fedgenome.privacy.accounting import epsilon
from fedgenome.privacy.audit import audit_ledger
from fedgenome.privacy.audit_sources import find_key
from fedgenome.privacy.keys import create_site_key, load_public_key
from fedgenome.privacy.ledger import Ledger, head_path, verify_ledger
from fedgenome.privacy.ledger_head import HeadDigest, check_head_continuity
from fedgenome.privacy.ledger_marker import marker_path, read_marker
from fedgenome.privacy.ledger_reset import reset_site_ledger
from fedgenome.privacy.mechanism import Mechanism
from fedgenome.privacy.site_state import (
    LedgerMissingError,
    ledger_head_digest,
    ledger_path,
    open_ledger,
    site_key_path,
)
from tests.helpers import copy_site

NAME = "hospital-a"


def make_site(parent: Path) -> Path:
    site = parent / NAME
    site.mkdir(parents=True)
    (site / "site.toml").write_text(f'name = "{NAME}"\nkind = "fasta"\nfasta = "seqs.fa"\n')
    return site


def spend(ledger: Ledger, round_: int) -> None:
    """One trained round, its epsilon computed as a site computes it (so that audits agree)."""
    eps = epsilon(history=[*ledger.mechanisms(), Mechanism(1.1, 0.05, 5)], delta=1e-5, accountant="rdp")
    ledger.append(round=round_, status="trained", local_steps=5, sample_rate=0.05, noise_multiplier=1.1,
                  max_grad_norm=1.0, delta=1e-5, accountant="rdp", epsilon=eps,
                  update_sha256=hashlib.sha256(b"%d" % round_).hexdigest())


def trained_site(tmp_path: Path, rounds: int = 2) -> Path:
    site = make_site(tmp_path)
    ledger = open_ledger(site, NAME)
    for r in range(1, rounds + 1):
        spend(ledger, r)
    return site


def lose_ledger(site: Path) -> None:
    path = ledger_path(site / "state")
    path.unlink()
    head_path(path).unlink()


def test_the_marker_beside_the_key_follows_the_head(tmp_path: Path) -> None:
    site = trained_site(tmp_path, rounds=3)
    marker = read_marker(marker_path(site_key_path(site, NAME)))
    ledger = open_ledger(site, NAME)
    assert marker is not None and marker.ledger == "state/ledger.jsonl"
    assert marker.head.pair == (3, ledger.entries[-1].sha256)
    assert marker.head.verify(ledger.public_key)


def test_a_site_that_trained_refuses_a_missing_ledger_and_spends_nothing(tmp_path: Path) -> None:
    site = trained_site(tmp_path)
    lose_ledger(site)
    with pytest.raises(LedgerMissingError, match=r"has trained before \(its ledger marker .* at 2 entries\)"
                       r".*fedgenome privacy reset"):
        open_ledger(site, NAME)
    assert not ledger_path(site / "state").exists()  # nothing written, nothing spent


def test_other_traces_of_training_count_as_evidence(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    create_site_key(site / "keys", NAME)
    assert open_ledger(site, NAME).entries == ()  # a key issued by the PKI that never signed: fine
    (site / "state" / "optimizer").mkdir(parents=True)
    (site / "state" / "optimizer" / f"{'a' * 32}-adamw.pt").write_bytes(b"moments")
    with pytest.raises(LedgerMissingError, match=r"1 file\(s\) in .*optimizer"):
        open_ledger(site, NAME)


def test_an_older_copy_of_ledger_and_head_is_refused_by_the_site(tmp_path: Path) -> None:
    site = trained_site(tmp_path, rounds=2)
    path = ledger_path(site / "state")
    backup = tmp_path / "backup"
    backup.mkdir()
    for f in (path, head_path(path)):
        shutil.copy(f, backup / f.name)
    spend(open_ledger(site, NAME), 3)
    for f in (path, head_path(path)):
        shutil.copy(backup / f.name, f)  # verifies alone: a truncated ledger with its older head
    verify_ledger(path, public_key=open_ledger_key(site))
    with pytest.raises(LedgerError, match=r"went back from 3 entries .* to 2"):
        open_ledger(site, NAME)


def open_ledger_key(site: Path):  # type: ignore[no-untyped-def]
    return load_public_key(site / "keys" / f"{NAME}.pub")


def test_reset_starts_a_new_ledger_on_record_and_audits_show_it(tmp_path: Path) -> None:
    site = trained_site(tmp_path, rounds=2)
    old_head = open_ledger(site, NAME).head_digest()
    lose_ledger(site)
    done = reset_site_ledger(site, NAME, reason="disk failure, backup lost")
    assert done.previous == old_head.pair and done.previous_source.startswith("the ledger marker")
    [entry] = verify_ledger(done.ledger, public_key=open_ledger_key(site), site=NAME)
    assert entry.status == "reset" and entry.seq == 0 and entry.epsilon == 0.0
    assert entry.reason == "disk failure, backup lost"
    assert (entry.previous_count, entry.previous_last_sha256) == old_head.pair
    ledger = open_ledger(site, NAME)  # trains again from here
    spend(ledger, 3)
    found = audit_ledger(done.ledger, site=NAME, key=find_key(NAME, done.ledger))
    assert found.ok, [p.line() for p in found.problems]
    assert any("reset" in n and "disk failure, backup lost" in n and "2 entries" in n for n in found.notes)
    later = ledger.head_digest()
    assert check_head_continuity(old_head, later, ledger.entries).kind == "reset"
    assert not check_head_continuity(old_head, later).ok  # without the entries it looks rewritten


def test_reset_refuses_when_nothing_was_lost(tmp_path: Path) -> None:
    site = trained_site(tmp_path)
    with pytest.raises(ConfigError, match=r"verifies with 2 entries.*nothing to reset"):
        reset_site_ledger(site, NAME, reason="new year")
    fresh = make_site(tmp_path / "fresh")
    open_ledger(fresh, NAME)
    with pytest.raises(ConfigError, match="has not trained yet"):
        reset_site_ledger(fresh, NAME, reason="why not")
    with pytest.raises(ConfigError, match="--reason is empty"):
        reset_site_ledger(site, NAME, reason="  ")


def test_reset_of_a_ledger_lost_without_a_trace_of_its_head(tmp_path: Path) -> None:
    site = trained_site(tmp_path)
    lose_ledger(site)
    marker_path(site_key_path(site, NAME)).unlink()
    (site / "keys" / "retired").mkdir()
    (site / "keys" / "retired" / f"{NAME}-0123456789abcdef.pub").write_text("old key\n")
    with pytest.raises(LedgerMissingError, match="retired key"):
        open_ledger(site, NAME)
    done = reset_site_ledger(site, NAME, reason="restored keys only")
    assert done.previous is None and done.entry.previous_count is None
    found = audit_ledger(done.ledger, site=NAME, key=find_key(NAME, done.ledger))
    assert found.ok and any("old ledger: lost" in n for n in found.notes)


def test_a_broken_ledger_is_moved_aside_not_deleted(tmp_path: Path) -> None:
    site = trained_site(tmp_path)
    path = ledger_path(site / "state")
    path.write_bytes(path.read_bytes().replace(b'"round":2', b'"round":9'))
    with pytest.raises(LedgerError):
        open_ledger(site, NAME)
    done = reset_site_ledger(site, NAME, reason="ledger corrupted")
    kept = sorted(path.parent.glob("ledger.jsonl.lost-*"))
    assert [p.name for p in done.moved_aside] == [p.name for p in kept] and len(kept) == 2
    assert done.previous is not None and done.previous[0] == 2
    assert open_ledger(site, NAME).entries[0].status == "reset"


def test_reset_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = trained_site(tmp_path)
    lose_ledger(site)
    with pytest.raises(SystemExit) as stopped:
        main(["privacy", "reset", str(site), "--reason", "operator deleted state/"])
    assert stopped.value.code == 0
    assert "new ledger started on record" in capsys.readouterr().out
    code = run_verify(ledger_path(site / "state"), site)
    assert code == 0
    out = capsys.readouterr().out
    assert "reset" in out and "operator deleted state/" in out


def run_verify(ledger: Path, site: Path) -> int:
    with pytest.raises(SystemExit) as stopped:
        main(["audit", "verify", str(ledger), "--key", str(site / "keys" / f"{NAME}.pub")])
    return int(stopped.value.code or 0)


def test_the_head_digest_leaves_the_site_signed(tmp_path: Path) -> None:
    site = trained_site(tmp_path, rounds=2)
    digest = ledger_head_digest(site, NAME)
    assert digest.verify(open_ledger_key(site))
    assert HeadDigest.from_json(digest.to_json()) == digest
    on_disk = HeadDigest.from_json(json.loads(head_path(ledger_path(site / "state")).read_text()))
    assert on_disk.pair == digest.pair and on_disk.signed_bytes() == digest.signed_bytes()
    forged = HeadDigest(NAME, digest.count + 1, digest.last_sha256, digest.signature)
    assert not forged.verify(open_ledger_key(site))


def test_continuity_catches_an_older_head_replayed_with_a_truncated_ledger(tmp_path: Path) -> None:
    site = trained_site(tmp_path, rounds=2)
    path = ledger_path(site / "state")
    early = ledger_head_digest(site, NAME)  # what the server received after round 2
    backup = {f: f.read_bytes() for f in (path, head_path(path))}
    ledger = open_ledger(site, NAME)
    spend(ledger, 3)
    later = ledger.head_digest()  # what the server received after round 3
    assert check_head_continuity(early, later, ledger.entries).kind == "extended"
    assert check_head_continuity(early.pair, later.pair).ok
    for f, data in backup.items():
        f.write_bytes(data)
    marker_path(site_key_path(site, NAME)).unlink()  # the site rolls back everything it holds
    replayed = ledger_head_digest(site, NAME)  # verifies locally
    assert replayed == early or replayed.pair == early.pair
    found = check_head_continuity(later, replayed)
    assert not found.ok and found.kind == "rolled-back"
    assert "went back from 3 entries" in (found.problem or "")
    rewritten = (3, "f" * 64)
    assert check_head_continuity(later, rewritten).kind == "forked"
    entries = verify_ledger(path, public_key=open_ledger_key(site))
    assert check_head_continuity((1, "e" * 64), early, entries).kind == "forked"


@pytest.mark.data
def test_train_dp_refuses_after_the_ledger_is_deleted_until_a_reset_on_record(
        sites_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = copy_site(sites_dir, tmp_path, "hospital-ceu")
    path = ledger_path(site / "state")
    args = ["train", str(site), "--dp", "--preset", "tiny", "--steps", "2", "--noise-multiplier", "1.0"]

    def run(*extra: str) -> int:
        with pytest.raises(SystemExit) as stopped:
            main([*extra])
        return int(stopped.value.code or 0)

    assert run(*args, "--out", str(tmp_path / "a")) == 0
    spent = verify_ledger(path, public_key=load_public_key(site / "keys" / "hospital-ceu.pub"))
    path.unlink()
    head_path(path).unlink()
    capsys.readouterr()
    assert run(*args, "--out", str(tmp_path / "b")) == 2
    err = capsys.readouterr().err
    assert "has trained before" in err and "fedgenome privacy reset" in err
    assert not path.exists() and not (tmp_path / "b").exists()  # nothing trained, nothing spent
    assert run("privacy", "reset", str(site), "--reason", "state/ wiped by mistake") == 0
    assert run(*args, "--out", str(tmp_path / "c")) == 0
    entries = verify_ledger(path, public_key=load_public_key(site / "keys" / "hospital-ceu.pub"))
    assert [e.status for e in entries] == ["reset", "trained"]
    assert (entries[0].previous_count, entries[0].previous_last_sha256) == (1, spent[0].sha256)
    capsys.readouterr()
    assert run("audit", "verify", str(path)) == 0
    assert "state/ wiped by mistake" in capsys.readouterr().out

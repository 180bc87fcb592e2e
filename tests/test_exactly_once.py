"""Exactly-once rounds: a (run key, round) asked again spends nothing; audits flag a round trained twice."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from fedgenome.audit.results import KeyLookup
from fedgenome.audit.verify import audit_ledger
from fedgenome.cli import main
from fedgenome.client.outgoing import outgoing_path
from fedgenome.client.site import SiteNode, SiteReply
from fedgenome.configs.errors import LedgerError
from fedgenome.configs.schema import Preset
from fedgenome.privacy.accounting import epsilon
from fedgenome.privacy.keys import generate_key, write_public_key
from fedgenome.privacy.ledger.core import Ledger
from fedgenome.privacy.mechanism import Mechanism
from fedgenome.privacy.optim_state import OptimizerStore
from fedgenome.shared import wire
from tests.helpers import copy_site, ledger_entries
from tests.test_optim_state import fed, global_weights

RUN_A, RUN_B = "a" * 32, "0123456789abcdef" * 2


def same_update(a: SiteReply, b: SiteReply) -> bool:
    assert a.delta is not None and b.delta is not None
    return a.delta.keys() == b.delta.keys() and all(
        a.delta[k].dtype == b.delta[k].dtype and np.array_equal(a.delta[k], b.delta[k]) for k in a.delta)


@pytest.mark.data
def test_a_round_asked_for_again_spends_once_and_sends_the_same_update(
        sites_dir: Path, tiny: Preset, tmp_path: Path) -> None:
    site = copy_site(sites_dir, tmp_path, "hospital-ceu")
    node, weights = SiteNode(site), global_weights(tiny)
    first = node.train_round(weights, fed(), global_round=1, run_key=RUN_A)
    again = node.train_round(weights, fed(), global_round=1, run_key=RUN_A)  # a resumed SuperLink
    entries = ledger_entries(site)
    assert [(e.round, e.status, e.run_key) for e in entries] == [(1, "trained", RUN_A)]
    assert same_update(first, again) and again.metrics == first.metrics
    assert first.metrics[wire.STATUS] == wire.TRAINED and first.metrics[wire.EPSILON] == entries[0].epsilon
    assert again.ledger_head == first.ledger_head or (
        again.ledger_head is not None and first.ledger_head is not None
        and again.ledger_head.pair == first.ledger_head.pair == (1, entries[0].sha256))
    outgoing_path(site / "state").unlink()  # the kept update is lost: refuse, never spend again
    refused = node.train_round(weights, fed(), global_round=1, run_key=RUN_A)
    assert refused.delta is None and refused.metrics[wire.STATUS] == wire.REFUSED
    assert refused.metrics[wire.EPSILON] == entries[0].epsilon and len(ledger_entries(site)) == 1
    other_run = node.train_round(weights, fed(), global_round=1, run_key=RUN_B)  # another run's round 1
    later = node.train_round(weights, fed(), global_round=2, run_key=RUN_A)
    assert other_run.metrics[wire.STATUS] == later.metrics[wire.STATUS] == wire.TRAINED
    assert [(e.round, e.run_key) for e in ledger_entries(site)] == [(1, RUN_A), (1, RUN_B), (2, RUN_A)]


@pytest.mark.data
def test_every_crash_window_either_retrains_unspent_or_resends_what_was_recorded(
        sites_dir: Path, tiny: Preset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = copy_site(sites_dir, tmp_path, "hospital-ceu")
    node, weights = SiteNode(site), global_weights(tiny)
    real_append = Ledger.append

    def crash(*args: Any, **kwargs: Any) -> None:
        raise OSError("killed")

    monkeypatch.setattr(Ledger, "append", crash)  # killed after the update was kept, before the entry
    with pytest.raises(OSError, match="killed"):
        node.train_round(weights, fed(), global_round=1, run_key=RUN_A)
    assert outgoing_path(site / "state").exists() and ledger_entries(site) == []
    monkeypatch.setattr(Ledger, "append", real_append)
    monkeypatch.setattr(OptimizerStore, "save", crash)  # killed after the entry, before the reply
    with pytest.raises(OSError, match="killed"):
        node.train_round(weights, fed(), global_round=1, run_key=RUN_A)
    [entry] = ledger_entries(site)  # the unsent first update was never recorded: trained afresh
    monkeypatch.undo()
    resent = node.train_round(weights, fed(), global_round=1, run_key=RUN_A)
    assert resent.metrics[wire.STATUS] == wire.TRAINED and resent.metrics[wire.EPSILON] == entry.epsilon
    assert ledger_entries(site) == [entry]


def _trained(ledger: Ledger, round_: int, *, run_key: str | None) -> None:
    eps = epsilon(history=[*ledger.mechanisms(), Mechanism(1.1, 0.05, 5)], delta=1e-5, accountant="rdp")
    ledger.append(round=round_, status="trained", local_steps=5, sample_rate=0.05, noise_multiplier=1.1,
                  max_grad_norm=1.0, delta=1e-5, accountant="rdp", epsilon=eps, run_key=run_key,
                  update_sha256=hashlib.sha256(f"{round_} {len(ledger.entries)}".encode()).hexdigest())


def test_the_ledger_refuses_to_record_a_round_of_a_run_twice(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.jsonl", site="s", private_key=generate_key())
    _trained(ledger, 1, run_key=RUN_A)
    with pytest.raises(LedgerError, match=f"round 1 of run {RUN_A} was already trained"):
        _trained(ledger, 1, run_key=RUN_A)
    _trained(ledger, 1, run_key=RUN_B)
    assert ledger.trained_entry(run_key=RUN_A, round=1) == ledger.entries[0]
    assert ledger.trained_entry(run_key=RUN_A, round=2) is None


def _duplicated(path: Path, key: ec.EllipticCurvePrivateKey, monkeypatch: pytest.MonkeyPatch,
                *, run_key: str | None) -> None:
    """``r1; r2; r2`` as a site that ignored the check wrote it (or one from before run keys)."""
    monkeypatch.setattr(Ledger, "spent_entry", lambda self, *_, **__: None)
    ledger = Ledger(path, site="s", private_key=key)
    for round_ in (1, 2, 2):
        _trained(ledger, round_, run_key=run_key)


@pytest.mark.parametrize("run_key", [RUN_A, None])
def test_audit_verify_fails_on_a_round_trained_twice(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        run_key: str | None) -> None:
    key = generate_key()
    path = tmp_path / "s.jsonl"
    _duplicated(path, key, monkeypatch, run_key=run_key)
    found = audit_ledger(path, site="s", key=KeyLookup(key.public_key(), "test"))
    [problem] = found.problems
    assert problem.where == "entry 2" and "round 2" in problem.what and "trained twice" in problem.what
    assert "entries 1 and 2" in problem.what and (run_key or "no run key") in problem.what
    write_public_key(tmp_path / "s.pub", key.public_key(), comment="s")
    with pytest.raises(SystemExit) as stopped:
        main(["audit", "verify", str(path), "--key", str(tmp_path / "s.pub")])
    assert stopped.value.code == 4
    assert "site s, entry 2: round 2" in capsys.readouterr().out


def test_audit_report_fails_on_a_round_trained_twice(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    key, run_dir = generate_key(), tmp_path / "run"
    path = run_dir / "ledgers" / "s.jsonl"
    path.parent.mkdir(parents=True)
    _duplicated(path, key, monkeypatch, run_key=RUN_A)
    entries = Ledger(path, site="s", private_key=key).entries
    rounds = [{"round": r, "train_loss": 1.0, "heldout_bits_per_base": 1.9, "trained": ["s"], "refused": [],
               "failed": [], "dropped": [], "rejected": {}, "seconds": 1.0,
               "epsilon": {"s": [e.epsilon for e in entries if e.round == r][-1]}} for r in (1, 2)]
    (run_dir / "report.json").write_text(json.dumps({"config": {}, "initial_bits_per_base": 2.0,
                                                     "rounds": rounds}))
    write_public_key(run_dir / "pki" / "sites" / "s.pub", key.public_key(), comment="s")
    with pytest.raises(SystemExit) as stopped:
        main(["audit", "report", str(run_dir)])
    assert stopped.value.code == 4
    assert f"site s, entry 2: round 2 (run {RUN_A}) was trained twice" in capsys.readouterr().out
    assert "was trained twice" in (run_dir / "audit-report.html").read_text()

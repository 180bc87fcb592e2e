"""``fedgenome audit verify``: ledgers verified against the PKI, ε recomputed twice, and budgets."""

from __future__ import annotations

import base64
import dataclasses
import json
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric import ec
from torch.utils.data import Dataset

import fedgenome.privacy.ledger.core as ledger_core
from fedgenome.audit.results import Budget, KeyLookup, SiteAudit
from fedgenome.audit.sources import audit_ledgers, find_key
from fedgenome.audit.verify import audit_ledger
from fedgenome.configs.errors import LedgerError
from fedgenome.configs.schema import DPConfig, Preset, SitePrivacy
from fedgenome.privacy.accounting import epsilon
from fedgenome.privacy.keys import generate_key, sign, write_public_key
from fedgenome.privacy.ledger.core import Ledger, LedgerEntry
from fedgenome.privacy.ledger.entry import SCHEMA
from fedgenome.privacy.mechanism import Mechanism
from fedgenome.privacy.trainer import run_private_round
from fedgenome.shared.model import GenomeLM
from fedgenome.shared.tokenizer import A, T
from tests.auditkit import DELTA, SIGMA, Q, digest, write_ledger
from tests.helpers import run_cli

GOLDEN_RDP, GOLDEN_PLD = 7.3291, 6.7695  # sigma 1.5, q 0.04, 2,250 steps, delta 1e-5 (README)


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return generate_key()


@pytest.fixture(scope="module")
def other_key() -> ec.EllipticCurvePrivateKey:
    return generate_key()



def audit(path: Path, key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey, *, site: str = "siteA",
          fallback: Budget | None = None) -> SiteAudit:
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return audit_ledger(path, site=site, key=KeyLookup(public, "test"), fallback_budget=fallback)


def problem_lines(result: SiteAudit) -> list[str]:
    return [p.line() for p in result.problems]


def resign(entry: LedgerEntry, key: ec.EllipticCurvePrivateKey, **changes: object) -> LedgerEntry:
    unsigned = dataclasses.replace(entry, signature="", **changes)  # type: ignore[arg-type]
    signature = base64.b64encode(sign(key, unsigned.signed_bytes())).decode()
    return dataclasses.replace(unsigned, signature=signature)


# --- recomputation ---------------------------------------------------------------------------------


def test_golden_recompute_matches_the_known_epsilons(tmp_path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path = tmp_path / "ledger.jsonl"
    write_ledger(path, key)  # 3 x 750 steps = the golden 2,250
    result = audit(path, key)
    assert result.ok, problem_lines(result)
    assert (result.count("trained"), result.count("refused"), result.count("rotated")) == (3, 1, 0)
    assert result.last("opacus") == pytest.approx(GOLDEN_RDP, abs=1e-3)
    assert result.last("dp_accounting") == pytest.approx(GOLDEN_PLD, abs=1e-3)
    assert result.last("recorded") == pytest.approx(GOLDEN_RDP, abs=1e-3)
    for row, steps in zip(result.entries, (750, 1500, 2250, 2250), strict=True):
        history = [Mechanism(SIGMA, Q, steps)]
        assert row.opacus == pytest.approx(epsilon(history=history, delta=DELTA, accountant="rdp"), rel=1e-9)
        assert row.dp_accounting == pytest.approx(epsilon(history=history, delta=DELTA, accountant="pld"),
                                                  rel=1e-9)
        assert row.dp_accounting is not None and row.opacus is not None
        assert row.dp_accounting < row.opacus  # PLD is tighter than RDP
    assert result.budget == Budget(8.0, "ledger (signed, entry 3)")
    assert result.delta == DELTA


def test_a_prv_ledger_is_recomputed_with_prv(tmp_path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path = tmp_path / "ledger.jsonl"
    write_ledger(path, key, steps=50, rounds=2, accountant="prv", refuse_after=False)
    result = audit(path, key)
    assert result.ok, problem_lines(result)
    assert result.entries[-1].accountant == "prv"
    assert result.last("opacus") == pytest.approx(result.last("recorded"), rel=1e-9)


def test_a_site_that_under_reports_its_epsilon_fails_both_checks(
        tmp_path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path = tmp_path / "ledger.jsonl"
    write_ledger(path, key, scale=0.5, refuse_after=False)  # validly signed, but half the true epsilon
    lines = problem_lines(audit(path, key))
    assert any(line.startswith("site siteA, entry 0: recorded epsilon") and "Opacus' rdp" in line
               for line in lines)
    assert any(line.startswith("site siteA, entry 2:") and "under-reported" in line for line in lines)


def test_an_unknown_accountant_cannot_be_recomputed(tmp_path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path = tmp_path / "ledger.jsonl"
    Ledger(path, site="siteA", private_key=key).append(
        round=1, status="trained", local_steps=10, sample_rate=Q, noise_multiplier=SIGMA, max_grad_norm=1.0,
        delta=DELTA, accountant="magic", epsilon=0.1, update_sha256=digest(1))
    assert problem_lines(audit(path, key)) == [
        "site siteA, entry 0: accountant 'magic' is not one a site runs (prv, rdp): "
        "its ε cannot be recomputed"]


class _RandomPatients(Dataset[torch.Tensor]):
    """40 'patients', each a fixed random A/C/G/T window of the tiny preset's span."""

    def __len__(self) -> int:
        return 40

    def __getitem__(self, unit: int) -> torch.Tensor:
        return torch.randint(A, T + 1, (129,), generator=torch.Generator().manual_seed(unit))


def test_private_rounds_sign_the_site_budget_and_audit_clean(
        tmp_path: Path, key: ec.EllipticCurvePrivateKey, tiny: Preset) -> None:
    path = tmp_path / "ledger.jsonl"
    dp = DPConfig(noise_multiplier=1.0, max_grad_norm=1.0, patients_per_step=8)

    def one(rnd: int, budget: float) -> None:
        run_private_round(model=GenomeLM(tiny.model), dataset=_RandomPatients(),
                          ledger=Ledger(path, site="siteA", private_key=key),
                          site=SitePrivacy(epsilon_budget=budget, delta=1e-5), dp=dp, train=tiny.train,
                          noise_multiplier=1.0, round=rnd, local_steps=2, device=torch.device("cpu"))

    one(1, 50.0)
    one(2, 50.0)
    clean = audit(path, key)
    assert clean.ok, problem_lines(clean)
    assert [e.budget for e in clean.entries] == [50.0, 50.0]
    assert clean.budget == Budget(50.0, "ledger (signed, entry 1)")
    one(3, 80.0)  # the hospital raises its budget: allowed, and every auditor is told
    raised = audit(path, key)
    assert raised.ok and raised.entries[-1].status == "trained"
    [note] = [n for n in raised.notes if "budget" in n]
    assert note.startswith("the budget was raised from 50 to 80 at entry 2 (round 3, ")
    one(4, 0.5)  # it lowers its budget below what it has spent: refused, and reported
    lowered = audit(path, key)
    assert lowered.entries[-1].status == "refused"
    [line] = problem_lines(lowered)
    assert line.startswith("site siteA, entry 3:") and "the budget was lowered below" in line
    assert [n.split(" (round")[0] for n in lowered.notes if "budget" in n] == [
        "the budget was raised from 50 to 80 at entry 2", "the budget was lowered from 80 to 0.5 at entry 3"]


# --- tampering -------------------------------------------------------------------------------------


def test_a_flipped_byte_fails_naming_the_site_and_entry(
        tmp_path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path = tmp_path / "ledger.jsonl"
    write_ledger(path, key)
    lines = path.read_bytes().splitlines(keepends=True)
    at = lines[1].index(b'"epsilon":') + len(b'"epsilon":') + 3  # a digit after the decimal point
    digit = lines[1][at:at + 1]
    lines[1] = lines[1][:at] + (b"3" if digit != b"3" else b"4") + lines[1][at + 1:]
    path.write_bytes(b"".join(lines))
    result = audit(path, key)
    assert not result.ok and not result.verified
    assert problem_lines(result) == [
        f"site siteA, entry 1: bad signature: the entry was altered or signed by another key ({path} line 2)"]


def test_an_epsilon_edited_and_resigned_with_another_key_fails(
        tmp_path: Path, key: ec.EllipticCurvePrivateKey, other_key: ec.EllipticCurvePrivateKey) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = write_ledger(path, key)
    entries = list(ledger.entries)
    entries[1] = resign(entries[1], other_key, epsilon=entries[0].epsilon)
    path.write_bytes(b"".join(e.line() + b"\n" for e in entries))
    [line] = problem_lines(audit(path, key))
    assert line.startswith("site siteA, entry 1: bad signature")


def test_a_dropped_entry_fails(tmp_path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path = tmp_path / "ledger.jsonl"
    write_ledger(path, key)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:1] + lines[2:]))
    [line] = problem_lines(audit(path, key))
    assert line.startswith("site siteA, entry 2: seq 2 where 1 was expected")


def test_dropped_last_entries_fail_on_the_head(tmp_path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path = tmp_path / "ledger.jsonl"
    write_ledger(path, key)
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:2]))
    [line] = problem_lines(audit(path, key))
    assert line.startswith("site siteA, head file:") and "entries were deleted" in line


def test_the_wrong_key_in_the_pki_fails(tmp_path: Path, key: ec.EllipticCurvePrivateKey,
                                        other_key: ec.EllipticCurvePrivateKey) -> None:
    path = tmp_path / "siteA.jsonl"
    write_ledger(path, key)
    pki = tmp_path / "pki"
    write_public_key(pki / "sites" / "siteA.pub", other_key.public_key(), comment="siteA")
    write_public_key(path.with_name("siteA.pub"), key.public_key(), comment="siteA")  # ignored with a PKI
    result = audit_ledgers([path], pki=pki)
    [line] = [p.line() for p in result.problems]
    assert line.startswith("site siteA, entry 0: bad signature")
    assert not result.ok and result.sites[0].key_source.startswith("PKI registry")


def test_a_site_missing_from_the_pki_fails(tmp_path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path = tmp_path / "siteA.jsonl"
    write_ledger(path, key, rounds=1, refuse_after=False)
    (tmp_path / "pki" / "sites").mkdir(parents=True)
    [line] = [p.line() for p in audit_ledgers([path], pki=tmp_path / "pki").problems]
    assert line.startswith("site siteA, public key: site siteA is not registered in the PKI")


def test_a_rotated_ledger_verifies_with_the_registered_current_key(tmp_path: Path) -> None:
    old, new = generate_key(), generate_key()
    path = tmp_path / "siteA.jsonl"
    ledger = write_ledger(path, old, rounds=1, refuse_after=False)
    ledger.rotate(new_key=new)
    ledger.append(round=2, status="trained", local_steps=750, sample_rate=Q, noise_multiplier=SIGMA,
                  max_grad_norm=1.0, delta=DELTA, accountant="rdp", update_sha256=digest(2),
                  epsilon_budget=8.0, epsilon=epsilon(history=[Mechanism(SIGMA, Q, 1500)], delta=DELTA))
    write_public_key(tmp_path / "pki" / "sites" / "siteA.pub", new.public_key(), comment="siteA")
    site = audit_ledgers([path], pki=tmp_path / "pki").sites[0]
    assert site.ok, problem_lines(site)
    assert site.count("rotated") == 1 and site.entries[1].opacus == site.entries[0].opacus


# --- budgets ---------------------------------------------------------------------------------------


def test_epsilon_above_the_signed_budget_fails(tmp_path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path = tmp_path / "ledger.jsonl"
    write_ledger(path, key, budget=6.0, refuse_after=False)  # 4.00, 5.83, then 7.33
    [line] = problem_lines(audit(path, key))
    assert line.startswith("site siteA, entry 2: cumulative epsilon 7.329")
    assert "exceeds the epsilon_budget 6 it records (this round took it past the budget)" in line


def test_an_old_ledger_without_budgets_uses_the_site_toml(
        tmp_path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path = tmp_path / "ledger.jsonl"
    write_ledger(path, key, budget=None)
    assert b"epsilon_budget" not in path.read_bytes()
    unknown = audit(path, key)
    assert unknown.ok and unknown.budget == Budget(None, "unknown")
    assert audit(path, key, fallback=Budget(8.0, "site.toml")).ok
    [line] = problem_lines(audit(path, key, fallback=Budget(7.0, "site.toml")))
    assert line.startswith("site siteA, entry 3: cumulative epsilon 7.329") and "7 from site.toml" in line


def test_find_key_beside_the_ledger(tmp_path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    site_dir = tmp_path / "siteA"
    write_public_key(site_dir / "keys" / "siteA.pub", key.public_key(), comment="siteA")
    found = find_key("siteA", site_dir / "state" / "ledger.jsonl")
    assert found.key is not None and "not from the PKI" in found.source
    missing = find_key("siteB", site_dir / "state" / "ledger.jsonl")
    assert missing.key is None and missing.problem is not None and "--pki" in missing.problem


# --- the command line ------------------------------------------------------------------------------




def test_verify_exits_0_when_clean_and_4_when_not(tmp_path: Path, key: ec.EllipticCurvePrivateKey,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "siteA.jsonl"
    write_ledger(path, key)
    write_public_key(tmp_path / "siteA.pub", key.public_key(), comment="siteA")
    code, out, _ = run_cli(["audit", "verify", str(path), "--json", str(tmp_path / "a.json")], capsys)
    assert code == 0 and "all 1 ledger(s) verified" in out and "siteA" in out
    written = json.loads((tmp_path / "a.json").read_text())
    assert written["ok"] and written["sites"][0]["epsilon_opacus"] == pytest.approx(GOLDEN_RDP, abs=1e-3)

    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:1] + lines[2:]))
    code, out, err = run_cli(["audit", "verify", str(path), "--key", str(tmp_path / "siteA.pub")], capsys)
    assert code == 4
    assert "site siteA, entry 2: seq 2 where 1 was expected" in out
    assert err.strip().splitlines()[-1].startswith("fedgenome: error: audit failed: 1 problem(s)")


def test_verify_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["audit", "verify", str(tmp_path / "a.jsonl"), "--pki", str(tmp_path),
                            "--key", str(tmp_path / "k.pub")], capsys)
    assert code == 2 and "--pki and --key" in err
    code, _, err = run_cli(["audit", "verify", str(tmp_path / "a.jsonl"), "--site", str(tmp_path)], capsys)
    assert code == 2 and "site.toml" in err


def test_verify_reads_the_budget_from_site_dir(tmp_path: Path, key: ec.EllipticCurvePrivateKey,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "siteA.jsonl"
    write_ledger(path, key, budget=None)
    write_public_key(tmp_path / "siteA.pub", key.public_key(), comment="siteA")
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    (site_dir / "site.toml").write_text('name = "siteA"\nkind = "fasta"\nfasta = "x.fa"\n'
                                        "[privacy]\nepsilon_budget = 6.0\ndelta = 1e-5\n")
    code, out, _ = run_cli(["audit", "verify", str(path), "--site", str(site_dir)], capsys)
    assert code == 4 and "exceeds the budget 6 from" in out and "(unsigned)" in out


# --- the report ------------------------------------------------------------------------------------



# --- provenance and newer schemas ----------------------------------------------------------------


def test_every_entry_records_its_schema_and_the_software_that_did_the_accounting(
        tmp_path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path = tmp_path / "ledger.jsonl"
    write_ledger(path, key, rounds=2)
    expected = {name: version(name) for name in ("fedgenome", "opacus", "dp-accounting")}
    for line in path.read_text().splitlines():
        stored = json.loads(line)
        assert stored["schema"] == SCHEMA and stored["software"] == expected
    rows = audit(path, key).entries
    assert [(r.schema, r.software) for r in rows] == [(SCHEMA, expected)] * 3


def test_an_entry_of_a_newer_schema_verifies_and_its_new_field_is_named(
        tmp_path: Path, key: ec.EllipticCurvePrivateKey, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = write_ledger(path, key, rounds=1, refuse_after=False)
    monkeypatch.setattr(ledger_core, "SCHEMA", SCHEMA + 1)  # a later fedgenome writes entry 1
    ledger._commit({"round": 2, "status": "refused", "local_steps": 0, "sample_rate": Q,
                    "noise_multiplier": SIGMA, "max_grad_norm": 1.0, "delta": DELTA,
                    "accountant": "rdp", "epsilon": ledger.epsilon, "update_sha256": None,
                    "energy_kwh": 0.25})
    monkeypatch.undo()
    result = audit(path, key)  # this fedgenome reads it
    assert result.ok, problem_lines(result)
    assert [r.schema for r in result.entries] == [SCHEMA, SCHEMA + 1]
    [note] = [n for n in result.notes if "schema" in n]
    assert f"from entry 1 on, are of schema {SCHEMA + 1}" in note and "energy_kwh" in note
    # The new field is signed: changing it breaks the entry's signature.
    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace('"energy_kwh":0.25', '"energy_kwh":0.5')
    path.write_text("\n".join(lines) + "\n")
    assert not audit(path, key).ok


def test_an_unknown_field_in_an_entry_of_a_known_schema_is_refused(
        tmp_path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path, site="siteA", private_key=key)
    with pytest.raises(LedgerError, match=rf"unknown fields \['energy_kwh'\] \(schema {SCHEMA} has no other"):
        ledger._commit({"round": 1, "status": "refused", "local_steps": 0, "sample_rate": Q,
                        "noise_multiplier": SIGMA, "max_grad_norm": 1.0, "delta": DELTA,
                        "accountant": "rdp", "epsilon": 0.0, "update_sha256": None,
                        "energy_kwh": 0.25})
    assert not path.exists() or path.read_text() == ""

"""Runs that start from a checkpoint: exactly its weights, recorded in the report and signed in ledgers."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric import ec

import fedgenome.privacy.trainer
import fedgenome.shared.train
from fedgenome.cli import main
from fedgenome.client.site import SiteNode
from fedgenome.configs.errors import ConfigError, IncompatibleModelError, LedgerError
from fedgenome.configs.schema import Preset
from fedgenome.experiments.inprocess import run_in_process
from fedgenome.privacy.accounting import epsilon
from fedgenome.privacy.audit_report import build_report
from fedgenome.privacy.keys import generate_key, write_public_key
from fedgenome.privacy.ledger import Ledger, verify_ledger
from fedgenome.privacy.mechanism import Mechanism
from fedgenome.server.rounds import Federation
from fedgenome.shared import wire
from fedgenome.shared.checkpoint import load_checkpoint, load_initial, save_checkpoint, state_sha256
from fedgenome.shared.fetch import DataPaths
from fedgenome.shared.model import GenomeLM
from tests.helpers import copy_site, fed_config, ledger_entries


def weights_sha256(checkpoint: Path) -> str:
    return state_sha256(load_checkpoint(checkpoint).model.state_dict())


def record_start(monkeypatch: pytest.MonkeyPatch, module: Any) -> list[str]:
    """The SHA-256 of the weights each training run has when it builds its optimizer."""
    seen: list[str] = []
    real = module.make_optimizer

    def recording(model: torch.nn.Module, cfg: Any) -> torch.optim.Optimizer:
        seen.append(state_sha256(model.state_dict()))
        return real(model, cfg)

    monkeypatch.setattr(module, "make_optimizer", recording)
    return seen


# --- the ledger field --------------------------------------------------------------------------------


def _append(ledger: Ledger, rnd: int, initial: str | None) -> None:
    ledger.append(round=rnd, status="trained", local_steps=2, sample_rate=0.1, noise_multiplier=1.0,
                  max_grad_norm=1.0, delta=1e-5, accountant="rdp", epsilon=0.5 * rnd,
                  update_sha256=hashlib.sha256(b"%d" % rnd).hexdigest(), epsilon_budget=8.0,
                  initial_checkpoint_sha256=initial)


def test_the_initial_checkpoint_hash_is_signed_and_old_entries_keep_their_bytes(tmp_path: Path) -> None:
    key: ec.EllipticCurvePrivateKey = generate_key()
    path = tmp_path / "ledger.jsonl"
    _append(Ledger(path, site="siteA", private_key=key), 1, None)  # an entry as written before
    old = path.read_bytes()
    assert b"initial_checkpoint" not in old
    digest = hashlib.sha256(b"weights").hexdigest()
    _append(Ledger(path, site="siteA", private_key=key), 2, digest)
    assert path.read_bytes().startswith(old)
    entries = verify_ledger(path, public_key=key.public_key(), site="siteA")
    assert [e.initial_checkpoint_sha256 for e in entries] == [None, digest]
    signed = path.read_bytes()
    other = digest[:10] + ("0" if digest[10] != "0" else "1") + digest[11:]
    for tampered in (signed.replace(digest.encode(), other.encode()),
                     signed.replace(f',"initial_checkpoint_sha256":"{digest}"'.encode(), b"")):
        assert tampered != signed
        path.write_bytes(tampered)
        with pytest.raises(LedgerError, match=r"line 2 .*bad signature"):
            verify_ledger(path, public_key=key.public_key(), site="siteA")
    path.write_bytes(signed)
    with pytest.raises(LedgerError, match="initial_checkpoint_sha256 must be 64 lowercase hex"):
        _append(Ledger(path, site="siteA", private_key=key), 3, "ABC")


def test_audit_verify_shows_the_signed_initial_checkpoint(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    key = generate_key()
    path = tmp_path / "siteA.jsonl"
    digest = hashlib.sha256(b"weights").hexdigest()
    ledger = Ledger(path, site="siteA", private_key=key)
    for rnd in (1, 2):
        eps = epsilon(history=[Mechanism(1.0, 0.1, 2)] * rnd, delta=1e-5, accountant="rdp")
        ledger.append(round=rnd, status="trained", local_steps=2, sample_rate=0.1, noise_multiplier=1.0,
                      max_grad_norm=1.0, delta=1e-5, accountant="rdp", epsilon=eps,
                      update_sha256=hashlib.sha256(b"%d" % rnd).hexdigest(), epsilon_budget=8.0,
                      initial_checkpoint_sha256=digest)
    write_public_key(tmp_path / "siteA.pub", key.public_key(), comment="siteA")
    with pytest.raises(SystemExit) as done:
        main(["audit", "verify", str(path), "--json", str(tmp_path / "a.json")])
    out = " ".join(capsys.readouterr().out.split())
    assert done.value.code == 0, out
    assert f"initial checkpoint sha256 {digest} (signed; rounds 1-2)" in out
    rows = json.loads((tmp_path / "a.json").read_text())["sites"][0]["entry_audits"]
    assert [r["initial_checkpoint_sha256"] for r in rows] == [digest, digest]


# --- model mismatch ----------------------------------------------------------------------------------


def test_a_checkpoint_of_another_model_is_refused_in_one_line(tiny: Preset, tmp_path: Path) -> None:
    other = GenomeLM(tiny.model.model_copy(update={"d_model": 32}))
    save_checkpoint(tmp_path / "other", other, meta={})
    with pytest.raises(IncompatibleModelError) as err:
        load_initial(tmp_path / "other", model=tiny.model)
    assert str(err.value) == (f"{tmp_path / 'other'}: the checkpoint's model has d_model = 32, the preset's "
                              "model 64; start from a checkpoint of the same model, or choose its preset")


# --- centralized training ----------------------------------------------------------------------------


@pytest.mark.data
def test_train_and_train_dp_start_from_exactly_the_checkpoint(
        site_copy: Any, tiny_checkpoint: Path, tiny: Preset, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    site = site_copy("hospital-ceu")
    digest = weights_sha256(tiny_checkpoint)
    plain_starts = record_start(monkeypatch, fedgenome.shared.train)
    private_starts = record_start(monkeypatch, fedgenome.privacy.trainer)
    args = ["train", str(site), "--preset", "tiny", "--steps", "2", "--init", str(tiny_checkpoint)]
    for extra, out in (([], "plain"), (["--dp", "--noise-multiplier", "1.0"], "private")):
        with pytest.raises(SystemExit) as done:
            main([*args, *extra, "--out", str(tmp_path / out)])
        assert done.value.code == 0, capsys.readouterr().err
        meta = load_checkpoint(tmp_path / out).meta
        assert meta["initial_checkpoint"] == {"path": str(tiny_checkpoint.resolve()), "sha256": digest}
    assert plain_starts == private_starts == [digest]
    [entry] = ledger_entries(site)
    assert entry.initial_checkpoint_sha256 == digest
    bad = tmp_path / "other"
    save_checkpoint(bad, GenomeLM(tiny.model.model_copy(update={"n_layer": 3})), meta={})
    with pytest.raises(SystemExit) as refused:
        main([*args[:-1], str(bad), "--out", str(tmp_path / "never")])
    err = capsys.readouterr().err.strip().splitlines()
    assert refused.value.code == 2
    assert err[-1].startswith("fedgenome: error: ") and "n_layer = 3, the preset's model 2;" in err[-1]
    assert not (tmp_path / "never").exists()


# --- federated runs ----------------------------------------------------------------------------------


@pytest.mark.data
def test_a_federated_run_starts_from_the_checkpoint_records_it_and_keeps_it_on_resume(
        sites_dir: Path, data_paths: DataPaths, tiny_checkpoint: Path, tmp_path: Path) -> None:
    digest = weights_sha256(tiny_checkpoint)
    site = copy_site(sites_dir, tmp_path, "hospital-ceu")
    fed = fed_config(data_paths, tmp_path / "run", **{"initial-checkpoint": str(tiny_checkpoint),
                                                      "local-steps": 1, "stop-after": 1})
    federation = Federation(fed)
    start = load_checkpoint(tiny_checkpoint).model.state_dict()
    assert all(torch.equal(v, start[k]) for k, v in federation.model.state_dict().items())
    assert federation.round_config(1)[wire.INITIAL_SHA256] == digest
    run_in_process(fed, [site])
    resumed = fed.model_copy(update={"initial_checkpoint": "", "stop_after": 0, "resume": True})
    run_in_process(resumed, [site])
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["initial_checkpoint"] == {"path": str(tiny_checkpoint.resolve()), "sha256": digest}
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    recorded = [(e.round, e.initial_checkpoint_sha256) for e in ledger_entries(site)]
    assert recorded == [(1, digest), (2, digest)]
    elsewhere = resumed.model_copy(update={"initial_checkpoint": str(tmp_path)})
    with pytest.raises(ConfigError, match="a resumed run keeps its start"):
        Federation(elsewhere)
    assert_audit_report_cross_checks_the_start(tmp_path / "run", site, digest)


def assert_audit_report_cross_checks_the_start(run_dir: Path, site: Path, digest: str) -> None:
    """The audit report agrees with the signed starts, and flags a report that names another one."""
    copies = run_dir / "ledgers"
    copies.mkdir()
    for name in ("ledger.jsonl", "ledger.jsonl.head"):
        shutil.copy(site / "state" / name, copies / name.replace("ledger", site.name))
    shutil.copy(site / "keys" / f"{site.name}.pub", copies / f"{site.name}.pub")
    report = build_report(run_dir)
    assert report.ok, [p.line() for p in report.result.problems]
    assert report.data["initial_checkpoint"]["sha256"] == digest
    run = json.loads((run_dir / "report.json").read_text())
    run["initial_checkpoint"]["sha256"] = "f" * 64
    (run_dir / "report.json").write_text(json.dumps(run))
    lines = [p.line() for p in build_report(run_dir).result.problems]
    assert lines == [f"site {site.name}, round {r}: the run report starts from initial checkpoint "
                     f"{'f' * 64}, the ledger's entries of this round from {digest}" for r in (1, 2)]


@pytest.mark.data
def test_a_site_refuses_round_one_weights_that_are_not_the_announced_checkpoint(
        sites_dir: Path, data_paths: DataPaths, tiny: Preset, tmp_path: Path) -> None:
    site = copy_site(sites_dir, tmp_path, "hospital-ceu")
    weights = wire.state_to_arrays(GenomeLM(tiny.model).state_dict())
    fed = fed_config(data_paths, tmp_path / "run")
    with pytest.raises(ConfigError, match="round 1's global weights have another SHA-256"):
        SiteNode(site).train_round(weights, fed, global_round=1, initial_sha256="0" * 64)
    assert not (site / "state" / "ledger.jsonl").exists()  # nothing trained, nothing signed

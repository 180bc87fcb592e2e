"""The run directory's layout is defined once (shared.run_layout), and its writers and readers agree."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from fedgenome.audit.canaries import CanaryAudit, draw_canaries
from fedgenome.audit.canary_run import write_commitment, write_report
from fedgenome.audit.report import _summary_budgets
from fedgenome.audit.sources import run_ledgers
from fedgenome.server.pki import PkiLayout
from fedgenome.server.report import RoundRecord, RunReport, read_state, write_state
from fedgenome.server.site_policy import policy_path
from fedgenome.shared import run_layout as layout
from fedgenome.shared.run_layout import PkiRegistry, RunLayout


def test_the_server_report_writes_the_fields_readers_use(tmp_path: Path) -> None:
    assert set(layout.ROUND_FIELDS) <= {f.name for f in dataclasses.fields(RoundRecord)}
    report = RunReport(tmp_path, {"preset": "tiny"}, initial_bits_per_base=2.0, run_key="k",
                       initial_checkpoint={layout.CHECKPOINT_PATH: "p", layout.CHECKPOINT_SHA256: "ab"})
    report.add(RoundRecord(round=1, train_loss=1.0, heldout_bits_per_base=1.9, epsilon={"s": 0.5}))
    files = RunLayout(tmp_path)
    data = json.loads(files.report.read_text())
    assert data[layout.CONFIG] == {"preset": "tiny"} and data[layout.RUN_KEY] == "k"
    assert data[layout.INITIAL_BITS] == 2.0
    assert data[layout.INITIAL_CHECKPOINT][layout.CHECKPOINT_SHA256] == "ab"
    [record] = data[layout.ROUNDS]
    assert {k: record[k] for k in (layout.ROUND, layout.EPSILON, layout.HELDOUT_BITS)} == {
        "round": 1, "epsilon": {"s": 0.5}, "heldout_bits_per_base": 1.9}
    assert files.report_csv.exists()
    write_state(tmp_path, last_round=1, checkpoint=files.checkpoint(1))
    assert files.state.exists() and read_state(tmp_path) == (1, tmp_path / "checkpoints" / "round-0001")


def test_the_pki_registry_is_the_one_the_server_writes(tmp_path: Path) -> None:
    server, public = PkiLayout(tmp_path), PkiRegistry(tmp_path)
    assert server.sites == public.sites == tmp_path / "sites"
    assert server.site_public("a") == public.site_public("a") == tmp_path / "sites" / "a.pub"
    assert policy_path(tmp_path, "a") == public.site_policy("a") == tmp_path / "sites" / "a.toml"
    assert public.registered() == []
    public.retired.mkdir(parents=True)
    (public.sites / "b.pub").write_text("x\n")
    (public.retired / "a-0123.pub").write_text("x\n")
    assert public.registered() == [tmp_path / "sites" / "b.pub"]


def test_readers_find_what_the_demo_writes(tmp_path: Path) -> None:
    files = RunLayout(tmp_path)
    files.ledgers.mkdir()
    files.ledger_copy("s").write_text("")
    assert run_ledgers(tmp_path) == [tmp_path / "ledgers" / "s.jsonl"]
    assert files.ledger_copy_key("s") == tmp_path / "ledgers" / "s.pub"
    files.summary.write_text(json.dumps({layout.SUMMARY_SITES: {"s": {layout.SUMMARY_EPSILON: 1.0,
                                                                      layout.SUMMARY_BUDGET: 8}}}))
    assert _summary_budgets(files.summary)["s"].value == 8.0


def test_the_canary_audit_writes_where_the_readers_look(tmp_path: Path) -> None:
    files = RunLayout(tmp_path)
    draw = draw_canaries(m=4, span=9, seed=1)
    write_commitment(files, draw, site="hospital-ceu")
    commitment = json.loads((tmp_path / "canary-commitment.json").read_text())
    assert commitment["commitment"] == draw.commitment and commitment["m"] == 4
    assert "canaries" not in commitment and "included" not in commitment  # those stay sealed
    report = CanaryAudit(m=4, repeats=1, included=2, guesses=2, correct=1, k_plus=1, k_minus=1, beta=0.05,
                         delta=1e-5, empirical_epsilon=0.0, theoretical_epsilon=8.0, references=10,
                         reference_loss_median=1.4, exposure_included_mean=0.5,
                         exposure_excluded_mean=0.4, commitment=draw.commitment, canaries=())
    assert write_report(files, report) == tmp_path / "canary-audit.json" == files.canary_audit
    assert json.loads(files.canary_audit.read_text())["empirical_epsilon"] == 0.0

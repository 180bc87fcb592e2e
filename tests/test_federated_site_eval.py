"""Private evaluation at every site inside the federation's round loop (the real server round and
ClientApp handlers, in one process): per-site bits in the report, one evaluated ledger entry per
site and evaluation round, the report's epsilon the ledger's, and audits that recompute it."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest

from fedgenome.audit.html import site_eval_section
from fedgenome.audit.results import KeyLookup
from fedgenome.audit.verify import audit_ledger
from fedgenome.experiments.inprocess import run_in_process
from fedgenome.privacy.keys import load_public_key
from fedgenome.server.progress import describe_round
from fedgenome.shared.fetch import DataPaths
from tests.helpers import copy_site, fed_config, ledger_entries

pytestmark = pytest.mark.data
SITES = ("hospital-ceu", "hospital-tsi")


def test_sites_evaluate_privately_every_second_round(sites_dir: Path, data_paths: DataPaths,
                                                    tmp_path: Path) -> None:
    sites = [copy_site(sites_dir, tmp_path, name) for name in SITES]
    fed = fed_config(data_paths, tmp_path / "run", **{
        "num-server-rounds": 2, "site-eval-every": 2, "site-eval-windows": 1, "site-eval-noise": 3.0})
    report = run_in_process(fed, sites)
    first, second = report.rounds
    assert first.site_bits == {} and set(second.site_bits) == set(SITES)  # only in round 2
    assert all(0.0 <= b <= fed.site_eval_clip for b in second.site_bits.values())
    assert second.trained == sorted(SITES) and second.site_eval_refused == second.site_eval_failed == []
    assert "private site evaluations (bits/base): hospital-ceu" in describe_round(second)
    assert second.site_bits_std.keys() == second.site_bits.keys()
    assert all(0.0 < s < 1.0 for s in second.site_bits_std.values())  # sigma 3, 85-181 patients
    html = site_eval_section({"rounds": [asdict(r) for r in report.rounds]})
    ranked = sorted(second.site_bits, key=second.site_bits.__getitem__)
    worst, best = ranked[-1], ranked[0]
    gap = second.site_bits[worst] - second.site_bits[best]
    both = (second.site_bits_std[worst] ** 2 + second.site_bits_std[best] ** 2) ** 0.5
    assert "<th>hospital-ceu</th><th>hospital-tsi</th>" in html
    assert f"<b>{worst} - {best} = {gap:.3f} ± {both:.3f} bits per base</b>" in html
    for site in sites:
        entries = ledger_entries(site)
        assert [(e.round, e.status) for e in entries] == [(1, "trained"), (2, "trained"), (2, "evaluated")]
        assert entries[-1].run_key == report.run_key
        assert second.epsilon[site.name] == entries[-1].epsilon > entries[-2].epsilon
        key = load_public_key(site / "keys" / f"{site.name}.pub")
        audit = audit_ledger(site / "state" / "ledger.jsonl", site=site.name, key=KeyLookup(key, "test"))
        assert audit.problems == () and audit.entries[-1].status == "evaluated"


def test_a_site_without_room_in_its_budget_refuses_the_evaluation(sites_dir: Path, data_paths: DataPaths,
                                                                  tmp_path: Path) -> None:
    site = copy_site(sites_dir, tmp_path, "hospital-tsi")
    fed = fed_config(data_paths, tmp_path / "run", **{
        "num-server-rounds": 1, "site-eval-every": 1, "site-eval-noise": 0.05})  # far too little noise
    [record] = run_in_process(fed, [site]).rounds
    assert record.trained == ["hospital-tsi"] and record.site_bits == {}
    assert record.site_eval_refused == ["hospital-tsi"]
    assert [e.status for e in ledger_entries(site)] == ["trained", "refused"]


def test_a_calibrated_run_spends_training_and_evaluations_up_to_the_target(
        sites_dir: Path, data_paths: DataPaths, tmp_path: Path) -> None:
    from fedgenome.privacy.accounting import EPSILON_TOLERANCE

    site = copy_site(sites_dir, tmp_path, "hospital-ceu")
    fed = fed_config(data_paths, tmp_path / "run", **{
        "num-server-rounds": 2, "site-eval-every": 1, "site-eval-windows": 1, "site-eval-noise": 3.0,
        "noise-multiplier": 0.0, "target-epsilon": 6.0})  # each site calibrates, reserving 2 releases
    report = run_in_process(fed, [site])
    assert [r.trained for r in report.rounds] == [["hospital-ceu"]] * 2  # the server's floor holds
    assert all(r.site_bits.keys() == {"hospital-ceu"} for r in report.rounds)
    entries = ledger_entries(site)
    assert [e.status for e in entries] == ["trained", "evaluated"] * 2
    assert 6.0 - EPSILON_TOLERANCE <= entries[-1].epsilon <= 6.0


def test_the_unseen_cohort_evaluates_where_it_lives_and_the_audit_agrees(
        sites_dir: Path, data_paths: DataPaths, tmp_path: Path) -> None:
    from fedgenome.audit.html import render_html
    from fedgenome.audit.report import build_report
    from fedgenome.experiments.demo import summarize

    sites = [copy_site(sites_dir, tmp_path, name) for name in ("hospital-tsi", "unseen-ibs")]
    run_dir = tmp_path / "run"
    panel = data_paths.bim  # public positions: the sites score their bases there
    fed = fed_config(data_paths, run_dir, **{"num-server-rounds": 2, "site-eval-every": 2, "min-nodes": 2,
                                              "site-eval-panel": str(panel), "site-eval-positions": 4,
                                              "site-eval-context": 32})
    report = run_in_process(fed, sites)
    assert [r.trained for r in report.rounds] == [["hospital-tsi"]] * 2
    assert [r.refused for r in report.rounds] == [["unseen-ibs"]] * 2  # it never trains
    assert set(report.rounds[-1].site_bits) == {"hospital-tsi", "unseen-ibs"}
    assert [(e.round, e.status) for e in ledger_entries(sites[1])] == [
        (1, "refused"), (2, "refused"), (2, "evaluated")]
    summarize(run_dir, sites, seconds=0.0)  # the ledgers beside the report, as the demo leaves them
    audit = build_report(run_dir)
    assert audit.ok, audit.data.get("cross_check")
    assert audit.plots["site_bits"][:8] == b"\x89PNG\r\n\x1a\n"
    html = render_html(audit.data, audit.plots)
    assert "Private evaluation at the sites" in html and 'alt="released bits per base per site' in html

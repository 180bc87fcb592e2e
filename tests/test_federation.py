"""Federated training on Flower's real deployment engine: SuperLink + SuperNodes on 127.0.0.1.

Each site's messages are served by its long-lived ClientApp worker (client/worker.py), which
records every task it served, with its process id, in the site's ``state/worker.jsonl``.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedgenome.client.node import JOURNAL
from fedgenome.configs.schema import load_preset
from fedgenome.experiments.localfed import LocalFederation
from fedgenome.privacy.keys import load_public_key
from fedgenome.privacy.ledger import verify_ledger
from fedgenome.shared.checkpoint import load_checkpoint, state_sha256
from fedgenome.shared.fetch import DataPaths
from fedgenome.shared.model import GenomeLM

pytestmark = pytest.mark.integration


def run_config(data_paths: DataPaths, run_dir: Path, **extra: Any) -> dict[str, Any]:
    return {"preset": "tiny", "local-steps": 2, "patients-per-step": 8, "eval-windows": 8,
            "min-nodes": 2, "run-dir": str(run_dir), "reference": str(data_paths.reference),
            "round-timeout": 150.0, "sample-timeout": 60.0, **extra}


def ledger_entries(site: Path) -> list[Any]:
    name = site.name
    return list(verify_ledger(site / "state" / "ledger.jsonl",
                              public_key=load_public_key(site / "keys" / f"{name}.pub"), site=name))


def served(site: Path) -> list[dict[str, Any]]:
    """The tasks the site's worker served, in order (its journal; local, never sent)."""
    return [json.loads(line) for line in (site / "state" / JOURNAL).read_text().splitlines()]


def wait_for_round(run_dir: Path, rnd: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        report = run_dir / "report.json"
        if report.exists() and len(json.loads(report.read_text())["rounds"]) >= rnd:
            return
        time.sleep(1)
    raise AssertionError(f"round {rnd} not reported within {timeout} s")


@pytest.mark.data
def test_two_sites_two_rounds_over_tls(site_copy: Callable[[str], Path], data_paths: DataPaths,
                                       tmp_path: Path) -> None:
    sites = [site_copy("hospital-ceu"), site_copy("hospital-tsi")]
    run_dir = tmp_path / "run"
    with LocalFederation(tmp_path / "fed", sites) as federation:
        assert federation.tls is not None and federation.auth
        run_id = federation.submit(run_config(data_paths, run_dir, **{"num-server-rounds": 2}))
        assert federation.wait(run_id, timeout=600) == "finished:completed"
        workers = {site.name: federation.nodes[site.name].worker_pid for site in sites}
    assert federation.group.survivors() == []  # no process left behind
    for site in sites:  # one long-lived ClientApp process served every message of the site
        tasks = served(site)
        assert [(t["round"], t["status"]) for t in tasks] == [("1", "completed"), ("2", "completed")]
        assert {t["pid"] for t in tasks} == {workers[site.name]}
    report = json.loads((run_dir / "report.json").read_text())
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    for r in report["rounds"]:
        assert r["trained"] == ["hospital-ceu", "hospital-tsi"]
        assert 1.0 < r["heldout_bits_per_base"] < 3.0
    torch.manual_seed(0)
    initial = GenomeLM(load_preset("tiny").model).state_dict()
    final = load_checkpoint(run_dir / "checkpoints" / "round-0002").model.state_dict()
    assert any(not torch.equal(initial[k], final[k]) for k in initial)  # the global model changed
    for site in sites:
        entries = ledger_entries(site)
        assert [(e.round, e.status) for e in entries] == [(1, "trained"), (2, "trained")]
        assert entries[0].epsilon < entries[1].epsilon
        assert report["rounds"][-1]["epsilon"][site.name] == pytest.approx(entries[1].epsilon)


@pytest.mark.data
def test_a_supernode_restarted_3_s_after_a_crash_rejoins_by_itself(
        site_copy: Callable[[str], Path], data_paths: DataPaths, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    ceu, tsi = site_copy("hospital-ceu"), site_copy("hospital-tsi")
    run_dir = tmp_path / "run"
    config = run_config(data_paths, run_dir, **{"num-server-rounds": 4, "sample-timeout": 240.0,
                                               "round-timeout": 240.0})
    with LocalFederation(tmp_path / "fed", [ceu, tsi]) as federation:
        run_id = federation.submit(config)
        wait_for_round(run_dir, 1)
        crashed = federation.nodes[tsi.name].group.procs[f"supernode-{tsi.name}"].pid
        federation.kill_node(tsi)
        time.sleep(3.0)
        federation.start_node(tsi)  # Flower still counts the node online: activation is refused
        assert federation.wait(run_id, timeout=900) == "finished:completed"
        restarted = federation.nodes[tsi.name].group.procs[f"supernode-{tsi.name}"].pid
    assert federation.group.survivors() == []  # every process stopped with the federation
    assert restarted != crashed
    assert "the SuperNode of hospital-tsi stopped with an error (Exit Code: 305 [code: 2004] Failed to " \
           "activate SuperNode.); retrying in" in caplog.text
    rounds = json.loads((run_dir / "report.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3, 4]
    # Back by itself: while Flower still counts the crashed node online, the round after the crash
    # may be sent to it and fail; a later one is trained.
    assert any(r["trained"] == ["hospital-ceu", "hospital-tsi"] for r in rounds[2:]), rounds
    assert rounds[1]["trained"] == ["hospital-ceu"]  # the run went on without it
    assert rounds[1]["failed"] == ["hospital-tsi"]  # once, under its name: no phantom 'node 1'
    trained = [e.round for e in ledger_entries(tsi) if e.status == "trained"]
    assert len(trained) == len(set(trained))  # no global round spent twice


@pytest.mark.data
def test_server_stops_after_round_one_and_resumes(site_copy: Callable[[str], Path],
                                                  data_paths: DataPaths, tmp_path: Path) -> None:
    sites = [site_copy("hospital-ceu"), site_copy("hospital-tsi")]
    run_dir = tmp_path / "run"
    with LocalFederation(tmp_path / "fed1", sites) as first:
        run_id = first.submit(run_config(data_paths, run_dir, **{"num-server-rounds": 3,
                                                                  "stop-after": 1}))
        assert first.wait(run_id, timeout=600) == "finished:completed"
    assert json.loads((run_dir / "state.json").read_text())["last_round"] == 1
    assert [len(ledger_entries(site)) for site in sites] == [1, 1]
    # Everything was stopped; a new SuperLink and new SuperNodes continue from the checkpoint.
    with LocalFederation(tmp_path / "fed2", sites) as second:
        run_id = second.submit(run_config(data_paths, run_dir, **{"num-server-rounds": 3,
                                                                   "resume": True}))
        assert second.wait(run_id, timeout=600) == "finished:completed"
    rounds = json.loads((run_dir / "report.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    for site in sites:
        entries = ledger_entries(site)
        assert [e.round for e in entries] == [1, 2, 3]  # no round counted twice
        assert entries[0].epsilon < entries[1].epsilon < entries[2].epsilon  # no reset


def trained_rounds(site: Path) -> list[int]:
    """The rounds the site's ledger records as trained, read line by line (it may be mid-write)."""
    path = site / "state" / "ledger.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    entries = [json.loads(line) for line in lines if line.endswith("}")]
    return [e["round"] for e in entries if e["status"] == "trained"]


@pytest.mark.data
def test_a_superlink_killed_mid_round_and_resumed_spends_each_round_once(
        site_copy: Callable[[str], Path], data_paths: DataPaths, tmp_path: Path) -> None:
    sites = [site_copy("hospital-ceu"), site_copy("hospital-tsi")]
    run_dir = tmp_path / "run"
    with LocalFederation(tmp_path / "fed1", sites) as first:
        first.submit(run_config(data_paths, run_dir, **{"num-server-rounds": 3}))
        deadline = time.monotonic() + 600
        while not any(2 in trained_rounds(site) for site in sites):  # a site spent round 2
            assert time.monotonic() < deadline, "no site trained round 2"
            time.sleep(0.05)
        first.group.kill("superlink")  # SIGKILL: the SuperLink, its SuperExec and the ServerApp
    assert json.loads((run_dir / "state.json").read_text())["last_round"] == 1  # 2 never ended
    with LocalFederation(tmp_path / "fed2", sites) as second:
        run_id = second.submit(run_config(data_paths, run_dir, **{"num-server-rounds": 3,
                                                                   "resume": True}))
        assert second.wait(run_id, timeout=900) == "finished:completed"
    rounds = json.loads((run_dir / "report.json").read_text())["rounds"]
    assert [(r["round"], r["trained"]) for r in rounds] == [
        (n, ["hospital-ceu", "hospital-tsi"]) for n in (1, 2, 3)]
    for site in sites:
        entries = ledger_entries(site)
        assert [e.round for e in entries if e.status == "trained"] == [1, 2, 3]  # each round once
        assert rounds[-1]["epsilon"][site.name] == pytest.approx(entries[-1].epsilon)


@pytest.mark.data
def test_a_run_from_an_initial_checkpoint_starts_from_exactly_its_weights(
        site_copy: Callable[[str], Path], data_paths: DataPaths, tiny_checkpoint: Path,
        tmp_path: Path) -> None:
    sites = [site_copy("hospital-ceu"), site_copy("hospital-tsi")]  # 100 examples each: equal weights
    run_dir = tmp_path / "run"
    config = run_config(data_paths, run_dir, **{"num-server-rounds": 1,
                                                "initial-checkpoint": str(tiny_checkpoint)})
    with LocalFederation(tmp_path / "fed", sites, keep_updates=True) as federation:
        run_id = federation.submit(config)
        assert federation.wait(run_id, timeout=600) == "finished:completed"
    start = load_checkpoint(tiny_checkpoint).model.state_dict()
    digest = state_sha256(start)
    report = json.loads((run_dir / "report.json").read_text())
    assert report["initial_checkpoint"] == {"path": str(tiny_checkpoint.resolve()), "sha256": digest}
    assert report["rounds"][0]["trained"] == ["hospital-ceu", "hospital-tsi"]
    deltas = []
    for site in sites:  # each site checked round 1's weights against the hash before signing it
        [entry] = ledger_entries(site)
        assert entry.initial_checkpoint_sha256 == digest
        (kept,) = (site / "state" / "outbox").glob("round-0001-*.npz")
        with np.load(kept) as delta:
            deltas.append({k: torch.from_numpy(delta[k].astype(np.float32)) for k in delta.files})
    final = load_checkpoint(run_dir / "checkpoints" / "round-0001").model.state_dict()
    for name, weights in start.items():  # the global model = the checkpoint + the sites' mean update
        assert torch.allclose(final[name], weights + (deltas[0][name] + deltas[1][name]) / 2, atol=1e-5)


@pytest.mark.data
def test_a_killed_worker_is_restarted_and_the_run_goes_on(site_copy: Callable[[str], Path],
                                                         data_paths: DataPaths, tmp_path: Path) -> None:
    ceu, tsi = site_copy("hospital-ceu"), site_copy("hospital-tsi")
    run_dir = tmp_path / "run"
    with LocalFederation(tmp_path / "fed", [ceu, tsi]) as federation:
        run_id = federation.submit(run_config(data_paths, run_dir, **{"num-server-rounds": 3}))
        wait_for_round(run_dir, 1)
        killed = federation.kill_worker(ceu)  # a hard crash of the site's ClientApp process
        assert federation.wait(run_id, timeout=900) == "finished:completed"
        restarted = federation.nodes[ceu.name].worker_pid
    assert federation.group.survivors() == []
    assert restarted != killed and federation.nodes[ceu.name].restarts >= 1
    rounds = json.loads((run_dir / "report.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert rounds[-1]["trained"] == ["hospital-ceu", "hospital-tsi"]  # the site is back
    tasks = served(ceu)
    assert tasks[0]["pid"] == killed and tasks[-1]["pid"] == restarted
    assert tasks[-1]["round"] == "3" and tasks[-1]["status"] == "completed"
    # The restarted worker went on from the site's state on disk: no round counted twice.
    entries = ledger_entries(ceu)
    assert len({e.round for e in entries}) == len(entries) and entries[-1].round == 3
    assert all(a.epsilon < b.epsilon for a, b in itertools.pairwise(entries))
    assert {t["pid"] for t in served(tsi)} == {federation.nodes[tsi.name].worker_pid}

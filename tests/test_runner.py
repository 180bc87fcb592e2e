"""The experiment runner (experiments/runner.py): the demo's whole sequence, and its run directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedgenome.configs.errors import ConfigError
from fedgenome.experiments.runner import prepare_run_dir
from fedgenome.shared.fetch import DataPaths, default_cache


def test_a_run_dir_is_replaced_only_when_its_marker_says_the_same_kind_made_it(tmp_path: Path) -> None:
    run = tmp_path / "run"
    prepare_run_dir(run, marker=".mine", made_by="canary audit")
    (run / "old.txt").write_text("earlier output")
    prepare_run_dir(run, marker=".mine", made_by="canary audit")
    assert not (run / "old.txt").exists() and (run / ".mine").read_text() == "made by canary audit\n"
    other = tmp_path / "other"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not an earlier canary audit"):
        prepare_run_dir(other, marker=".mine", made_by="canary audit")
    assert (other / "precious.txt").read_text() == "keep me"
    prepare_run_dir(other, marker=None)  # the benches' folders: used as they are
    assert (other / "precious.txt").exists()


@pytest.mark.integration
@pytest.mark.data
def test_the_demo_runs_on_the_runner_and_writes_its_summary(data_paths: DataPaths, tmp_path: Path) -> None:
    from fedgenome.experiments.demo import MARKER, demo_run_config, run_demo

    config = demo_run_config(preset="tiny", rounds=1, local_steps=2, patients_per_step=8,
                             target_epsilon=8.0, aggregation="plain")
    submitted: list[int] = []
    rounds: list[int] = []
    summary = run_demo(tmp_path / "demo", cache=default_cache(), run_config=config, timeout=600,
                       on_submit=submitted.append, on_round=lambda record: rounds.append(record.round))
    assert len(submitted) == 1 and rounds == [1]
    assert summary["rounds"] == 1 and len(summary["sites"]) == 3
    assert all(0.0 < row["epsilon"] <= row["budget"] for row in summary["sites"].values())
    assert summary["security"]["tls"] and len(summary["security"]["authenticated_sites"]) == 3
    run = tmp_path / "demo"
    assert json.loads((run / "summary.json").read_text()) == summary
    assert (run / MARKER).exists() and (run / "final").is_dir() and (run / "pki" / "ca.crt").is_file()
    assert not list((run / "pki").rglob("*.key"))  # the public part only
    assert len(list((run / "ledgers").glob("*.jsonl"))) == 3

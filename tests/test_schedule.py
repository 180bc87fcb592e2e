"""One learning-rate schedule over the whole run: centralized, private and federated, across resumes."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import torch

import fedgenome.privacy.trainer
from fedgenome.configs.errors import ConfigError
from fedgenome.configs.schema import FederationConfig, TrainConfig
from fedgenome.configs.validation import validate
from fedgenome.experiments.inprocess import run_in_process
from fedgenome.shared.checkpoint import load_checkpoint
from fedgenome.shared.fetch import DataPaths
from fedgenome.shared.schedule import LRSchedule, first_step
from fedgenome.shared.train import lr_at
from tests.helpers import copy_site, fed_config


def test_federated_schedule_spans_all_rounds() -> None:
    fed = FederationConfig(num_server_rounds=4, local_steps=5, lr=2e-3, warmup_steps=3,
                           min_lr_ratio=0.2)
    schedule = LRSchedule.of_federation(fed)
    lrs = [schedule.at(first_step(r, 5) + s) for r in range(1, 5) for s in range(5)]
    assert lrs[:3] == pytest.approx([2e-3 / 3, 4e-3 / 3, 2e-3])  # warm-up once, in round 1 only
    assert lrs[3] == pytest.approx(2e-3)
    assert all(a > b for a, b in itertools.pairwise(lrs[3:]))  # then one decay: no restart per round
    assert lrs[-1] > 0.2 * 2e-3 and schedule.at(20) == pytest.approx(0.2 * 2e-3)  # floor at the end


def test_centralized_training_uses_the_same_schedule() -> None:
    cfg = TrainConfig(steps=50, lr=1e-3, warmup_steps=7, min_lr_ratio=0.1)
    schedule = LRSchedule.of_training(cfg)
    assert [lr_at(s, cfg) for s in range(60)] == [schedule.at(s) for s in range(60)]


def test_warmup_longer_than_the_run_is_a_config_error() -> None:
    expected = r"warmup-steps=11 is longer than the run's num-server-rounds x local-steps = 10 steps"
    with pytest.raises(ConfigError, match=expected + ": lower warmup-steps"):
        validate(FederationConfig, {"num-server-rounds": 2, "local-steps": 5, "warmup-steps": 11},
                 source="run config")


def _record_lrs(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the learning rate of every private step a site takes."""
    seen: list[float] = []
    real = fedgenome.privacy.trainer.private_step

    def recording(setup: Any, windows: torch.Tensor, *, device: torch.device) -> float:
        seen.append(setup.optimizer.param_groups[0]["lr"])
        return real(setup, windows, device=device)

    monkeypatch.setattr(fedgenome.privacy.trainer, "private_step", recording)
    return seen


@pytest.mark.data
def test_a_resumed_run_continues_the_schedule_and_optimizer_exactly(
        sites_dir: Path, data_paths: DataPaths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lrs = _record_lrs(monkeypatch)
    common = {"num-server-rounds": 3, "local-steps": 2, "warmup-steps": 2}
    whole_site = copy_site(sites_dir, tmp_path / "a", "hospital-ceu")
    whole = fed_config(data_paths, tmp_path / "a" / "run", **common)
    run_in_process(whole, [whole_site])
    straight = list(lrs)
    lrs.clear()
    split_site = copy_site(sites_dir, tmp_path / "b", "hospital-ceu")
    first = fed_config(data_paths, tmp_path / "b" / "run", **common, **{"stop-after": 1})
    report = run_in_process(first, [split_site])
    assert [r.round for r in report.rounds] == [1]
    resumed = run_in_process(first.model_copy(update={"stop_after": 0, "resume": True}), [split_site])
    assert [r.round for r in resumed.rounds] == [1, 2, 3]
    assert resumed.run_key == report.run_key  # so the site found its optimizer state again
    schedule = LRSchedule.of_federation(whole)
    assert straight == lrs == [schedule.at(g) for g in range(6)]
    final = [load_checkpoint(root / "run" / "checkpoints" / "round-0003").model.state_dict()
             for root in (tmp_path / "a", tmp_path / "b")]
    assert all(torch.equal(final[0][k], final[1][k]) for k in final[0])  # bit for bit

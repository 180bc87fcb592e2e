"""The experiment runner (experiments/runner.py): its run directory rule. The demo's whole sequence on
the runner runs end to end, from the wheel, in tests/test_wheel.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedgenome.configs.errors import ConfigError
from fedgenome.experiments.runner import prepare_run_dir


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

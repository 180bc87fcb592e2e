"""Helpers the test modules share: the CLI in-process, Flower's task identity, real sites and runs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from fedgenome.configs.schema import FederationConfig
from fedgenome.configs.validation import validate
from fedgenome.privacy.keys import load_public_key
from fedgenome.privacy.ledger import LedgerEntry, verify_ledger
from fedgenome.shared import sites
from fedgenome.shared.fetch import DataPaths


def copy_site(sites_dir: Path, root: Path, name: str) -> Path:
    """A private copy of the real site ``name`` (own key, ledger, state) sharing the real VCF."""
    return sites.copy_site(sites_dir / name, root / name)


def fed_config(data_paths: DataPaths, run_dir: Path, **extra: Any) -> FederationConfig:
    """A small private run: tiny preset, fixed sigma (no calibration), few windows to evaluate."""
    return validate(FederationConfig, {
        "preset": "tiny", "num-server-rounds": 2, "local-steps": 2, "patients-per-step": 8,
        "noise-multiplier": 1.0, "eval-windows": 8, "min-nodes": 1, "seed": 0,
        "run-dir": str(run_dir), "reference": str(data_paths.reference), **extra}, source="test")


def ledger_entries(site: Path) -> list[LedgerEntry]:
    """The site's ledger, verified with its public key."""
    name = site.name
    return list(verify_ledger(site / "state" / "ledger.jsonl",
                              public_key=load_public_key(site / "keys" / f"{name}.pub"), site=name))


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``fedgenome ARGS`` in-process: its exit code, standard output and standard error."""
    from fedgenome.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    """A failed command: non-zero exit, one ``fedgenome: error:`` line naming every needle."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0
    assert len(lines) == 1, err
    assert lines[0].startswith("fedgenome: error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


@contextmanager
def task_identity(node_id: int = SUPERLINK_NODE_ID) -> Iterator[None]:
    """Flower's task identity, which new (non-reply) Messages need: a ServerApp's by default."""
    with pytest.MonkeyPatch.context() as mp:
        for attr, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", node_id)):
            mp.setattr(TaskIdentity, attr, value)
        yield

"""Helpers for in-process federated runs on real sites (``fedgenome.inprocess``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedgenome.configs.schema import FederationConfig, validate
from fedgenome.privacy.keys import load_public_key
from fedgenome.privacy.ledger.core import LedgerEntry, verify_ledger
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

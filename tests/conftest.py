"""Shared fixtures: the real genomes (fetched once into the cache) and hospital sites built from them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from fedgenome.configs.schema import Preset, Region, load_preset
from fedgenome.shared.fetch import DataPaths, default_cache, fetch_data
from fedgenome.shared.markov_prior import MarkovPrior, markov_prior
from fedgenome.shared.state import STATE_ENV
from fedgenome.shared.train import CPU_BF16_ENV
from tests.helpers import task_identity

CE_HOLDOUT = Region(contig="CHROMOSOME_I", start=0, end=50_000)

# Two cores in all: under pytest-xdist (the README's ``-n 2``) each worker process takes its share.
torch.set_num_threads(max(1, 2 // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
# Exact comparisons (DP against vanilla, resumed against uninterrupted) need one precision: float32.
os.environ.setdefault(CPU_BF16_ENV, "0")


@pytest.fixture(scope="session", autouse=True)
def _state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """fedgenome's state directory ($FEDGENOME_STATE) in the session's temporary directory, never ~."""
    path = tmp_path_factory.mktemp("state")
    before = os.environ.get(STATE_ENV)
    os.environ[STATE_ENV] = str(path)
    yield path
    if before is None:
        os.environ.pop(STATE_ENV, None)
    else:
        os.environ[STATE_ENV] = before


@pytest.fixture(scope="session")
def data_paths() -> DataPaths:
    """The real data from Debian packages, fetched once (idempotent) into the user's cache."""
    return fetch_data(default_cache())


@pytest.fixture(scope="session")
def sites_dir(data_paths: DataPaths, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the four site folders built from the 379 real people."""
    from fedgenome.shared.sites import make_sites

    out = tmp_path_factory.mktemp("sites")
    make_sites(data_paths, out)
    return out


@pytest.fixture(scope="session")
def small_prior(data_paths: DataPaths, tmp_path_factory: pytest.TempPathFactory) -> MarkovPrior:
    """The best-k Markov prior (orders up to 5) of the C. elegans chunks minus 50 kb, cached apart."""
    return markov_prior(data_paths.ce_fasta, exclude=[CE_HOLDOUT], max_order=5,
                        cache=tmp_path_factory.mktemp("prior-cache"))


@pytest.fixture(scope="session")
def tiny() -> Preset:
    """The tiny preset: a model under 1M parameters and short windows, for fast tests."""
    return load_preset("tiny")


@pytest.fixture(scope="session")
def tiny_checkpoint(sites_dir: Path, tiny: Preset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny baseline trained briefly on the three real hospital sites."""
    from fedgenome.cmd_model import find_sites
    from fedgenome.experiments.training import run_baseline

    out = tmp_path_factory.mktemp("ckpt") / "baseline"
    run_baseline(find_sites([sites_dir]), tiny, out=out, preset_name="tiny", device_name="cpu")
    return out


@pytest.fixture()
def site_copy(sites_dir: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Factory: a private copy of a real site (own key, ledger, state) sharing the real VCF."""

    def make(name: str) -> Path:
        from fedgenome.shared.sites import copy_site

        return copy_site(sites_dir / name, tmp_path / "sites" / name)

    return make


@pytest.fixture()
def serverapp_task() -> Iterator[None]:
    """The task identity a ServerApp process has, which new (non-reply) Messages need."""
    with task_identity():
        yield


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse to run a test that needs the real genomes (the ``data_paths`` fixture, directly or
    through another fixture) without the ``data`` marker, so ``-m "not data"`` runs offline."""
    unmarked = [item.nodeid for item in items if "data_paths" in getattr(item, "fixturenames", ())
                and item.get_closest_marker("data") is None]
    if unmarked:
        raise pytest.UsageError(f"{len(unmarked)} tests need the real genomes but lack @pytest.mark.data: "
                                + ", ".join(unmarked))
    # The federations (minutes each, mostly waiting on processes) first, so that with -n 2 the
    # workers overlap them with the short tests instead of one worker finishing alone.
    items.sort(key=lambda item: item.get_closest_marker("integration") is None)

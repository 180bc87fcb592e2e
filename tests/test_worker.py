"""The long-lived ClientApp worker's parts, in one process: the site cache, reloading an app bundle,
reseeding, the packed wire format, Flower's patched internals and round progress.

The worker itself, its supervisor and the shortened waits run in the real deployments of
tests/test_federation.py and tests/test_security.py.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import flwr
import numpy as np
import pytest
import torch
from flwr.supercore.inflatable import inflatable_utils

from fedgenome.client import cache
from fedgenome.client.app_loader import forget_directory, purge_modules, top_level_names
from fedgenome.client.worker import reseed_from_os_entropy
from fedgenome.configs.schema import DPConfig, Preset, SitePrivacy
from fedgenome.privacy import round_plan
from fedgenome.server.progress import RoundFollower, describe_round
from fedgenome.server.report import RoundRecord, RunReport
from fedgenome.shared import datasets, wire
from fedgenome.shared.flower_patches import FLOWER_VERSION, check_worker_internals, shorten_object_pulls

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def fresh_cache() -> Iterator[None]:
    cache.clear()
    yield
    cache.clear()


@pytest.mark.data
@pytest.mark.usefixtures("fresh_cache")
def test_the_cache_keeps_a_sites_inputs_and_gives_a_fresh_dataset_every_time(
        site_copy: Callable[[str], Path], tiny: Preset) -> None:
    ceu, tsi = site_copy("hospital-ceu"), site_copy("hospital-tsi")
    first = cache.open_site(ceu, tiny.data, seed=1, cache_dir=ceu / "state")
    again = cache.open_site(ceu, tiny.data, seed=2, cache_dir=ceu / "state")
    other = cache.open_site(tsi, tiny.data, seed=1, cache_dir=tsi / "state")
    assert again.dataset is not first.dataset and again.dataset.rng is not first.dataset.rng
    assert again.dataset.cohort is first.dataset.cohort and again.reference is first.reference
    assert other.reference is first.reference  # one copy of the shared reference's tokens
    assert first.reference is not None
    tokens = first.reference.tokens("20")
    with pytest.raises(ValueError, match="read-only"):
        tokens[0] = 0
    # The same windows as reading the site afresh.
    plain = datasets.open_site(ceu, tiny.data, seed=1, cache_dir=ceu / "state")
    cached = cache.open_site(ceu, tiny.data, seed=1, cache_dir=ceu / "state")
    for unit in range(3):
        assert torch.equal(plain.dataset[unit], cached.dataset[unit])


@pytest.mark.data
@pytest.mark.usefixtures("fresh_cache")
def test_the_cache_reads_state_every_time_and_a_changed_file_again(
        site_copy: Callable[[str], Path], tiny: Preset) -> None:
    site = site_copy("hospital-ceu")
    first = cache.open_site(site, tiny.data, seed=0, cache_dir=site / "state")
    assert first.dataset.planted is None
    span = tiny.data.window + 1
    datasets.write_planted(site, np.full((2, span), 5, np.uint8), repeats=3, commitment="c")
    planted = cache.open_site(site, tiny.data, seed=0, cache_dir=site / "state")
    assert planted.dataset.planted is not None and len(planted.dataset.planted) == 6
    assert planted.dataset.cohort is first.dataset.cohort  # state/ is not part of the cached data
    stat = (site / "site.toml").stat()
    os.utime(site / "site.toml", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    changed = cache.open_site(site, tiny.data, seed=0, cache_dir=site / "state")
    assert changed.dataset.cohort is not first.dataset.cohort


def test_a_preset_is_parsed_once_per_version_of_its_file(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import fedgenome.configs.schema

    monkeypatch.setattr(fedgenome.configs.schema, "PRESETS_DIR", tmp_path)  # presets are names, not paths
    preset = tmp_path / "mine.toml"
    preset.write_text((ROOT / "configs" / "presets" / "tiny.toml").read_text())
    assert cache.load_preset("mine") is cache.load_preset("mine")
    first = cache.load_preset("mine")
    preset.write_text(preset.read_text() + "\n")
    assert cache.load_preset("mine") is not first


@pytest.mark.usefixtures("fresh_cache")
def test_the_calibrated_noise_is_kept_per_setting_and_equals_a_fresh_calibration() -> None:
    dp = DPConfig(target_epsilon=8.0, max_grad_norm=1.0, patients_per_step=8)
    site = SitePrivacy(epsilon_budget=8.0, delta=1e-5)
    first = cache.noise_for(dp=dp, site=site, sample_rate=0.08, total_steps=10)
    assert cache.noise_for(dp=dp, site=site, sample_rate=0.08, total_steps=10) == first
    assert first == round_plan.noise_for(dp=dp, site=site, sample_rate=0.08, total_steps=10)
    assert cache.noise_for(dp=dp, site=site, sample_rate=0.08, total_steps=20) > first


def write_package(root: Path, version: int) -> None:
    (root / "fgpkg").mkdir(parents=True)
    (root / "fgpkg" / "__init__.py").write_text(f"VERSION = {version}\n")
    (root / "fgpkg" / "extra.py").write_text(f"VERSION = {version}\n")


def test_a_new_bundle_is_imported_afresh_not_served_from_the_old(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    write_package(old, 1)
    write_package(new, 2)
    sys.path.insert(0, str(old))
    try:
        assert importlib.import_module("fgpkg.extra").VERSION == 1
        assert top_level_names(new) == {"fgpkg"}
        forget_directory(old)
        assert str(old) not in sys.path and "fgpkg" not in sys.modules
        sys.path.insert(0, str(new))
        purge_modules(top_level_names(new))
        reloaded = importlib.import_module("fgpkg.extra")
        assert reloaded.VERSION == 2 and Path(reloaded.__file__).is_relative_to(new)
    finally:
        forget_directory(new)
        forget_directory(old)


def test_every_task_starts_from_fresh_random_generators() -> None:
    draws = []
    for _ in range(2):
        torch.manual_seed(0)  # an earlier task seeded the generators for reproducibility
        np.random.seed(0)
        reseed_from_os_entropy()
        draws.append((torch.randn(8), np.random.standard_normal(8)))
    assert not torch.equal(draws[0][0], draws[1][0])
    assert not np.array_equal(draws[0][1], draws[1][1])


def test_a_packed_model_unpacks_to_the_same_arrays() -> None:
    arrays = {"embed.weight": np.arange(12, dtype=np.float32).reshape(3, 4),
              "norm.bias": np.ones(4, np.float32), "scale": np.float32(2.0).reshape(())}
    flat = wire.pack(arrays, wire.WIRE_DTYPE)
    assert flat.dtype == np.float16 and flat.shape == (17,)
    back = wire.unpack(flat, wire.layout(arrays))
    assert list(back) == list(arrays)
    for name, value in arrays.items():
        np.testing.assert_array_equal(back[name], value)
    with pytest.raises(ValueError, match="does not fit its layout"):
        wire.unpack(flat[:-1], wire.layout(arrays))
    with pytest.raises(ValueError, match="malformed model layout"):
        wire.unpack(flat, "{not json")


def test_the_pinned_flower_is_the_installed_one_and_the_pulls_are_patched() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert f"flwr=={FLOWER_VERSION}" in project["dependencies"]
    assert flwr.__version__ == FLOWER_VERSION
    check_worker_internals()
    saved = {name: dict(getattr(inflatable_utils, name).__kwdefaults__)
             for name in ("pull_objects", "pull_and_inflate_object_from_tree")}
    try:
        shorten_object_pulls(initial=0.02, cap=0.25)
        for name, before in saved.items():
            after = getattr(inflatable_utils, name).__kwdefaults__
            assert (after["initial_backoff"], after["backoff_cap"]) == (0.02, 0.25)
            patience = before["max_tries_per_object"] * before["backoff_cap"]
            assert after["max_tries_per_object"] * 0.25 >= patience  # as much as Flower's
    finally:
        for name, before in saved.items():
            getattr(inflatable_utils, name).__kwdefaults__.update(before)


def test_rounds_are_reported_once_each_and_an_earlier_runs_rounds_not_at_all(tmp_path: Path) -> None:
    report = RunReport(tmp_path, {"num-server-rounds": 3, "stop-after": 0})
    report.add(RoundRecord(round=1, train_loss=1.5, heldout_bits_per_base=1.98, trained=["a"]))
    seen: list[int] = []
    follower = RoundFollower(tmp_path, lambda r: seen.append(r.round))
    report.add(RoundRecord(round=2, train_loss=None, heldout_bits_per_base=1.97, refused=["a"],
                           seconds=3.25))
    follower.poll()
    follower.poll()
    assert seen == [2] and not follower.done
    report.add(RoundRecord(round=3, train_loss=1.25, heldout_bits_per_base=1.96, trained=["a", "b"]))
    follower.poll()
    assert seen == [2, 3] and follower.done
    assert describe_round(report.rounds[1]) == ("round 2: 0 sites trained, 1 refused, train loss -, "
                                                "held-out 1.9700 bits/base, 3.2 s")

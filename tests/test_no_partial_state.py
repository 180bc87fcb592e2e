"""A run that cannot write what it must (ledger, cache, checkpoint) fails before spending anything.

Read-only directories and full disks are simulated (the tests may run as root, whom permissions do
not stop): the probe of a directory, the free space, or a write function raises ``OSError``.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import pytest

import fedgenome.shared.checkpoint
import fedgenome.shared.genomes
import fedgenome.shared.preflight
from fedgenome.cli import main
from fedgenome.client.site import SiteNode
from fedgenome.configs.errors import InputFileError, PrivacyBudgetExhausted
from fedgenome.configs.schema import FederationConfig, Preset, load_site_manifest
from fedgenome.experiments.training import run_baseline, run_private
from fedgenome.privacy.site_state import open_ledger
from fedgenome.shared.datasets import open_site
from tests.minisite import Spec, make_site, written


class Disk(NamedTuple):
    total: int
    used: int
    free: int


@pytest.fixture()
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FEDGENOME_CACHE", str(tmp_path / "cache"))  # the Markov baseline's cache
    return make_site(tmp_path / "sites")


@pytest.fixture()
def quick(tiny: Preset) -> Preset:
    return tiny.model_copy(update={"train": tiny.train.model_copy(update={"steps": 2})})


def deny(monkeypatch: pytest.MonkeyPatch, code: int = errno.EACCES) -> None:
    """Every directory probe fails as on a read-only site (or a read-only mount)."""
    def probe(directory: Path) -> None:
        raise OSError(code, os.strerror(code), str(directory))
    monkeypatch.setattr(fedgenome.shared.preflight, "_probe", probe)


def spent(site: Path) -> float:
    """The site's cumulative epsilon in its ledger (0.0 when it has none)."""
    ledger = open_ledger(site, load_site_manifest(site).name)
    return ledger.epsilon


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_a_read_only_site_with_a_warm_cache_fails_before_training(
        site: Path, quick: Preset, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    open_site(site, quick.data, seed=0, cache_dir=site / "state")  # warm: the cohort is cached
    before = written(site)
    deny(monkeypatch)
    out = tmp_path / "out" / "ckpt"
    with pytest.raises(InputFileError) as err:
        run_private([site], quick, out=out, preset_name="tiny", device_name="cpu", state_dir=None)
    message = str(err.value)
    assert "cannot write the site's cache (Permission denied)" in message and "chmod u+w" in message
    assert "nothing was trained or spent" in message and "\n" not in message
    assert written(site) == before and not out.parent.exists()


def test_a_federated_round_on_a_read_only_site_fails_before_training(
        site: Path, quick: Preset, monkeypatch: pytest.MonkeyPatch) -> None:
    open_site(site, quick.data, seed=0, cache_dir=site / "state")
    before = written(site)
    deny(monkeypatch, errno.EROFS)
    with pytest.raises(InputFileError, match=r"cannot write the site's ledger and cache "
                       r"\(Read-only file system\)"):
        SiteNode(site).train_round({}, FederationConfig(), global_round=1)
    assert written(site) == before


def test_fedgenome_train_on_a_read_only_site_is_one_line(
        site: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        tmp_path: Path) -> None:
    deny(monkeypatch)
    with pytest.raises(SystemExit) as done:
        main(["-q", "train", str(site), "--dp", "--preset", "tiny", "--steps", "2",
              "--out", str(tmp_path / "ckpt")])
    err = capsys.readouterr().err
    assert done.value.code not in (0, None) and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "Permission denied" in err
    assert written(site) == [] and not (tmp_path / "ckpt").exists()


def test_too_little_free_space_fails_before_training(
        site: Path, quick: Preset, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(fedgenome.shared.preflight.shutil, "disk_usage", lambda p: Disk(10**9, 10**9, 10**6))
    with pytest.raises(InputFileError, match=r"only 1.0 MiB free for the site's cache"):
        run_private([site], quick, out=tmp_path / "ckpt", preset_name="tiny", device_name="cpu",
                    state_dir=None)
    assert written(site) == [] and not (tmp_path / "ckpt").exists()


def test_a_full_disk_writing_the_cohort_cache_leaves_no_partial_file(
        site: Path, quick: Preset, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fh: Any, **arrays: Any) -> None:
        fh.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fedgenome.shared.genomes.np, "savez", full)
    with pytest.raises(InputFileError) as err:
        open_site(site, quick.data, seed=0, cache_dir=site / "state")
    assert "cannot write the cohort cache (No space left on device)" in str(err.value)
    assert leftovers(site / "state") == []


def test_a_checkpoint_that_cannot_be_saved_records_no_epsilon(
        site: Path, quick: Preset, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def full(state: Any, path: str) -> None:
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(fedgenome.shared.checkpoint, "save_file", full)
    out = tmp_path / "out" / "ckpt"
    with pytest.raises(InputFileError) as err:
        run_private([site], quick, out=out, preset_name="tiny", device_name="cpu", state_dir=None)
    assert "cannot write the checkpoint (No space left on device)" in str(err.value)
    assert spent(site) == 0.0
    assert not out.exists() and leftovers(out.parent) == []  # no staging directory left


def test_a_saved_private_checkpoint_carries_the_epsilon_the_ledger_recorded(
        site: Path, quick: Preset, tmp_path: Path) -> None:
    out = tmp_path / "ckpt"
    run = run_private([site], quick, out=out, preset_name="tiny", device_name="cpu", state_dir=None)
    meta = json.loads((out / "config.json").read_text())["meta"]
    assert run.privacy is not None and run.privacy.status == "trained"
    assert meta["privacy"]["epsilon"] == pytest.approx(spent(site)) and spent(site) > 0.0
    assert meta["heldout_bits_per_base"] == run.after.bits_per_base and meta["steps"] == 2
    assert leftovers(tmp_path) == ["cache", "ckpt", "sites"]  # no staging directory left


def test_a_refused_run_leaves_no_checkpoint(tmp_path: Path, quick: Preset,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDGENOME_CACHE", str(tmp_path / "cache"))
    poor = make_site(tmp_path / "sites", Spec(site_toml_extra="[privacy]\nepsilon_budget = 0.5\n"))
    out = tmp_path / "out" / "ckpt"
    with pytest.raises(PrivacyBudgetExhausted):
        run_private([poor], quick, out=out, preset_name="tiny", device_name="cpu", state_dir=None)
    assert spent(poor) == 0.0 and not out.exists() and leftovers(out.parent) == []


def test_a_plain_run_checks_its_output_before_training(
        site: Path, quick: Preset, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = fedgenome.shared.preflight._probe

    def probe(directory: Path) -> None:
        if directory == tmp_path:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))
        real(directory)

    monkeypatch.setattr(fedgenome.shared.preflight, "_probe", probe)
    with pytest.raises(InputFileError, match=r"cannot write the checkpoint ckpt \(No space left"):
        run_baseline([site], quick, out=tmp_path / "ckpt", preset_name="tiny", device_name="cpu")
    assert written(site) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_really_read_only_site_is_refused(site: Path, quick: Preset, tmp_path: Path) -> None:
    (site / "state").mkdir()
    os.chmod(site / "state", 0o555)
    try:
        with pytest.raises(InputFileError, match="Permission denied"):
            run_private([site], quick, out=tmp_path / "ckpt", preset_name="tiny",
                        device_name="cpu", state_dir=None)
    finally:
        os.chmod(site / "state", 0o755)

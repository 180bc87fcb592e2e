"""Fetching the real data from Debian packages: verified, idempotent, clear when it cannot."""

from __future__ import annotations

import fcntl
import logging
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import platformdirs
import pysam
import pytest
from typer.testing import CliRunner

import fedgenome.shared.fetch as fetch
from fedgenome.cmd_data import app
from fedgenome.configs.errors import DataFetchError
from fedgenome.shared.fetch import (
    SOURCES,
    DataPaths,
    fetch_data,
    find_problems,
    verify_data,
)
from fedgenome.shared.fetch import data_paths as layout

pytestmark = pytest.mark.data


def _no_subprocess(*args: object, **kwargs: object) -> subprocess.CompletedProcess[str]:
    raise AssertionError(f"no command may run when the data is already fetched: {args}")


def _copy_cache(src: Path, dst: Path) -> Path:
    """Copy only the data files (not apt's state) of a cache."""
    for source in SOURCES:
        (dst / source.rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / source.rel, dst / source.rel)
    return dst


def _empty_path(tmp_path: Path) -> str:
    empty = tmp_path / "empty-bin"
    empty.mkdir(exist_ok=True)
    return str(empty)


def test_fetched_files_are_the_real_data(data_paths: DataPaths) -> None:
    assert verify_data(data_paths.cache) == data_paths == layout(data_paths.cache)
    with pysam.FastaFile(str(data_paths.reference)) as fa:
        assert list(fa.references) == ["20"]
        assert fa.get_reference_length("20") == 63_025_520
        assert fa.fetch("20", 30_000_000, 30_000_010).upper().strip("ACGTN") == ""
    for suffix in (".bed", ".bim", ".fam"):
        assert Path(f"{data_paths.plink_prefix}{suffix}").is_file()
    with pysam.VariantFile(str(data_paths.eagle_vcf)) as vcf:
        assert len(vcf.header.samples) == 379
    with pysam.FastaFile(str(data_paths.mt_fasta)) as fa:
        assert list(fa.lengths) == [16_569]
    ce = data_paths.ce_fasta.read_text().splitlines()
    assert sum(len(line) for line in ce if not line.startswith(">")) == 1_039_800


def test_second_fetch_does_not_call_apt(data_paths: DataPaths, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch,
                                        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(fetch, "_run", _no_subprocess)
    monkeypatch.setattr(subprocess, "run", _no_subprocess)
    monkeypatch.setenv("PATH", _empty_path(tmp_path))
    with caplog.at_level(logging.INFO, logger="fedgenome.shared.fetch"):
        assert fetch_data(data_paths.cache) == data_paths
        assert fetch_data(data_paths.cache, verify=True) == data_paths
    assert "already fetched" in caplog.text


def test_a_fetch_waits_for_one_under_way_and_downloads_nothing_it_finished(
        data_paths: DataPaths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = _copy_cache(data_paths.cache, tmp_path / "cache")
    missing = cache / SOURCES[0].rel
    missing.unlink()
    monkeypatch.setattr(fetch, "_run", _no_subprocess)
    result: list[DataPaths] = []
    with open(cache / ".fetch.lock", "a+b") as other:  # another process is fetching
        fcntl.flock(other, fcntl.LOCK_EX)
        waiting = threading.Thread(target=lambda: result.append(fetch_data(cache)))
        waiting.start()
        waiting.join(timeout=1.0)
        assert waiting.is_alive() and not result  # it waits for the lock, downloading nothing
        shutil.copyfile(data_paths.cache / SOURCES[0].rel, missing)  # the other fetch finishes
        fcntl.flock(other, fcntl.LOCK_UN)
    waiting.join(timeout=30.0)
    assert result == [layout(cache)]  # it found the file in place: apt was never called


def test_missing_apt_get_names_the_tool_and_where_to_put_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", _empty_path(tmp_path))
    cache = tmp_path / "cache"
    with pytest.raises(DataFetchError) as err:
        fetch_data(cache)
    message = str(err.value)
    assert "\n" not in message
    assert "apt-get" in message and "by hand" in message
    assert str(cache / "grch37" / "20.fa.gz") in message and "vt-examples" in message
    assert str(cache / "genotypes" / "EUR_subset.bed") in message
    assert not cache.exists() or not any(cache.iterdir())


def test_a_package_apt_cannot_download_is_named(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apt-get").write_text(
        '#!/bin/sh\nfor last; do :; done\n[ "$last" = update ] && exit 0\n'
        'echo "E: Unable to locate package $last" >&2\nexit 100\n'
    )
    (bin_dir / "dpkg").write_text("#!/bin/sh\nexit 1\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    cache = tmp_path / "cache"
    with pytest.raises(DataFetchError, match="package 'vt-examples'") as err:
        fetch_data(cache)
    message = str(err.value)
    assert "\n" not in message
    assert "Unable to locate package vt-examples" in message
    assert str(cache / "grch37" / "20.fa.gz") in message
    assert not list(cache.glob(".staging-*")), "the temporary download directory was left behind"
    assert not (cache / "grch37").exists(), "nothing may be half-written"


def test_corruption_is_detected_and_repaired(data_paths: DataPaths, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    cache = _copy_cache(data_paths.cache, tmp_path / "cache")
    bim = cache / "genotypes" / "EUR_subset.bim"
    raw = bytearray(bim.read_bytes())
    raw[100] ^= 0x01  # same size, different content
    bim.write_bytes(bytes(raw))
    assert find_problems(cache) == []  # the cheap size check cannot see it ...
    assert find_problems(cache, full=True) == [bim]  # ... the SHA-256 check can
    with pytest.raises(DataFetchError, match=re.escape(str(bim))):
        verify_data(cache)

    fam = cache / "genotypes" / "EUR_subset.fam"
    fam.write_bytes(fam.read_bytes()[:-10])  # truncated: caught by the size check on every call
    with monkeypatch.context() as m:
        m.setenv("PATH", _empty_path(tmp_path))
        with pytest.raises(DataFetchError, match=re.escape(str(fam))):
            fetch_data(cache)

    assert fetch_data(cache, verify=True) == layout(cache)  # real apt-get: repairs both
    verify_data(cache)
    assert not list(cache.glob(".staging-*"))


def test_cli_fetch_twice_is_a_no_op(data_paths: DataPaths, monkeypatch: pytest.MonkeyPatch,
                                    caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(fetch, "_run", _no_subprocess)
    runner = CliRunner()
    with caplog.at_level(logging.INFO, logger="fedgenome.shared.fetch"):
        result = runner.invoke(app, ["fetch", "--cache", str(data_paths.cache)])
    assert result.exit_code == 0, result.output
    assert "already fetched" in caplog.text
    assert "20.fa.gz" in result.output


def test_cli_cache_comes_from_the_environment(data_paths: DataPaths,
                                              monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(fetch, "_run", _no_subprocess)
    monkeypatch.setenv("FEDGENOME_CACHE", str(data_paths.cache))
    with caplog.at_level(logging.INFO, logger="fedgenome.shared.fetch"):
        result = CliRunner().invoke(app, ["fetch", "--verify"])
    assert result.exit_code == 0, result.output
    assert f"already fetched in {data_paths.cache}" in caplog.text


def test_default_cache_follows_the_environment(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDGENOME_CACHE", str(tmp_path / "c"))
    assert fetch.default_cache() == tmp_path / "c"
    assert layout().reference == tmp_path / "c" / "grch37" / "20.fa.gz"
    monkeypatch.delenv("FEDGENOME_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    if sys.platform.startswith("linux"):
        assert fetch.default_cache() == Path.home() / ".cache" / "fedgenome"
    assert fetch.default_cache() == Path(platformdirs.user_cache_dir("fedgenome", appauthor=False))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="XDG_CACHE_HOME is Linux's")
def test_the_default_cache_respects_xdg_cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDGENOME_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert fetch.default_cache() == tmp_path / "xdg" / "fedgenome"
    assert layout().reference == tmp_path / "xdg" / "fedgenome" / "grch37" / "20.fa.gz"
    monkeypatch.setenv("FEDGENOME_CACHE", str(tmp_path / "mine"))  # the project's own override wins
    assert fetch.default_cache() == tmp_path / "mine"

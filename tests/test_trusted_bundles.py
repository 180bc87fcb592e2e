"""A hospital's node runs only the app bundle of the fedgenome it installed, or one it pinned.

The integration test submits, through a real SuperLink, a bundle whose ClientApp is fedgenome's with
its egress guard removed: both trusting nodes refuse it before installing any of it, nothing is
trained, spent or sent, and the same nodes then run the untampered bundle to completion.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from flwr.cli.build import build_fab_from_disk, build_fab_from_files

from fedgenome.client.node import JOURNAL
from fedgenome.client.trust import TrustedBundles
from fedgenome.configs.errors import ConfigError, UntrustedBundleError
from fedgenome.experiments.localfed import LocalFederation
from fedgenome.shared.app_bundle import APP_DIR, bundle_digest, installed_digest, parse_digest
from fedgenome.shared.fetch import DataPaths
from tests.helpers import ledger_entries
from tests.test_federation import run_config

UNGUARDED = '''"""fedgenome's ClientApp without its egress guard: whatever the app returns leaves the site."""
import fedgenome.client.egress as egress
from fedgenome.client import app as fedgenome

egress.check_content = lambda content, model: None
app = fedgenome.app
'''


def unguarded_app(directory: Path) -> Path:
    """An app directory: fedgenome's pyproject.toml naming a ClientApp without the egress guard."""
    directory.mkdir(parents=True)
    pyproject = (APP_DIR / "pyproject.toml").read_text()
    assert 'clientapp = "fedgenome.client.app:app"' in pyproject
    (directory / "pyproject.toml").write_text(
        pyproject.replace('clientapp = "fedgenome.client.app:app"', 'clientapp = "unguarded:app"'))
    (directory / "unguarded.py").write_text(UNGUARDED)
    return directory


def rezipped(content: bytes) -> bytes:
    """The same files in another zip: other order, other timestamps, compressed."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(content)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in reversed(src.infolist()):
            dst.writestr(zipfile.ZipInfo(info.filename, date_time=(2030, 1, 2, 3, 4, 6)), src.read(info))
    return out.getvalue()


def test_the_installed_bundle_is_trusted_whatever_zip_carries_it() -> None:
    trusted = TrustedBundles.of_installed()
    fab = build_fab_from_disk(APP_DIR)
    assert trusted.check(fab, run_id=1) == installed_digest() == trusted.installed
    assert rezipped(fab) != fab and trusted.check(rezipped(fab), run_id=1) == trusted.installed


def test_a_changed_or_added_file_is_refused_with_its_digest_and_the_fix(tmp_path: Path) -> None:
    trusted = TrustedBundles.of_installed()
    unguarded = build_fab_from_disk(unguarded_app(tmp_path / "app"))
    pyproject = (APP_DIR / "pyproject.toml").read_bytes()
    extra, _ = build_fab_from_files({"pyproject.toml": pyproject, "helper.py": b"x = 1\n"})
    edited, _ = build_fab_from_files({"pyproject.toml": pyproject.replace(b"steps = 5", b"steps = 6")})
    for fab in (unguarded, extra, edited):
        with pytest.raises(UntrustedBundleError) as refused:
            trusted.check(fab, run_id=7)
        message = str(refused.value)
        assert "\n" not in message and "refused the app bundle of run 7" in message
        assert f"--trust {bundle_digest(fab)}" in message and trusted.installed in message
    with pytest.raises(UntrustedBundleError, match="not a readable zip"):
        trusted.check(b"not a zip", run_id=7)


def test_a_pinned_bundle_is_trusted_and_digests_are_parsed_or_refused(tmp_path: Path) -> None:
    unguarded = build_fab_from_disk(unguarded_app(tmp_path / "app"))
    digest = bundle_digest(unguarded)
    bare = digest.removeprefix("sha256:")
    assert TrustedBundles.of_installed([bare.upper()]).check(unguarded, run_id=3) == digest
    assert parse_digest(digest) == parse_digest(f" {bare} ") == digest
    for bad in ("sha256:abc", bare + "0", "md5:" + bare):
        with pytest.raises(ConfigError, match="not a bundle digest"):
            parse_digest(bad)


@pytest.mark.integration
@pytest.mark.data
def test_a_bundle_without_the_egress_guard_is_refused_and_the_installed_one_runs(
        site_copy: Callable[[str], Path], data_paths: DataPaths, tmp_path: Path) -> None:
    sites = [site_copy("hospital-ceu"), site_copy("hospital-tsi")]
    names = [site.name for site in sites]
    tampered = unguarded_app(tmp_path / "unguarded")
    one_round = {"num-server-rounds": 1}
    with LocalFederation(tmp_path / "fed", sites) as federation:
        bad = federation.submit(run_config(data_paths, tmp_path / "bad", **one_round), app_dir=tampered)
        assert federation.wait(bad, timeout=600) == "finished:completed"
        assert [len(ledger_entries(site)) for site in sites] == [0, 0]  # nothing trained or spent
        good = federation.submit(run_config(data_paths, tmp_path / "good", **one_round))
        assert federation.wait(good, timeout=600) == "finished:completed"
        log_dir = federation.group.log_dir
        assert log_dir is not None
        logs = {name: (log_dir / f"worker-{name}.log").read_text() for name in names}
    [refused] = json.loads((tmp_path / "bad" / "report.json").read_text())["rounds"]
    assert refused["trained"] == [] and refused["failed"] == names  # the operator sees both fail
    [ran] = json.loads((tmp_path / "good" / "report.json").read_text())["rounds"]
    assert ran["trained"] == names
    digest = bundle_digest(build_fab_from_disk(tampered))
    for site in sites:
        assert f"refused the app bundle of run {bad}: its content {digest}" in logs[site.name]
        served = [json.loads(line) for line in (site / "state" / JOURNAL).read_text().splitlines()]
        assert {(t["run"], t["status"]) for t in served} == {(bad, "failed"), (good, "completed")}
        assert [e.round for e in ledger_entries(site)] == [1]  # the good run's round only
        assert not list((federation.workdir / "nodes" / site.name).glob("apps/*unguarded*"))

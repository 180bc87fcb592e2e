"""A hospital makes its own key (``client keygen``) and the operator registers only its public half."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest

from fedgenome.privacy.keys import fingerprint, load_public_key
from fedgenome.privacy.site_state import site_key_path
from fedgenome.server import pki
from tests.helpers import assert_one_line_error as cli_error
from tests.helpers import run_cli
from tests.test_pki import make_site


@pytest.fixture()
def fresh(tmp_path: Path) -> Path:
    out = tmp_path / "pki"
    pki.init_pki(out, hosts=("localhost", "127.0.0.1"))
    return out


def test_a_hospitals_own_key_is_registered_without_its_private_key_leaving_it(
        fresh: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = make_site(tmp_path / "hospital")
    code, out, err = run_cli(["client", "keygen", "--site", str(site)], capsys)
    assert code == 0, err
    public = site / "keys" / "hospital-a.pub"
    assert f"public key {public}" in out and "new" in out
    assert stat.S_IMODE(site_key_path(site, "hospital-a").stat().st_mode) == 0o600
    again = run_cli(["client", "keygen", "--site", str(site)], capsys)[1]
    assert "existing key, kept" in again  # a second keygen keeps the key the ledger is signed with
    handed = tmp_path / "sent-to-operator" / "hospital-a.pub"  # the only file the operator receives
    handed.parent.mkdir()
    shutil.copyfile(public, handed)
    code, out, err = run_cli(["pki", "add-site", "hospital-a", "--pki", str(fresh), "--public-key",
                              str(handed)], capsys)
    assert code == 0, err
    assert "its private key stays at the hospital" in out
    registered = load_public_key(fresh / "sites" / "hospital-a.pub")
    assert fingerprint(registered) == fingerprint(load_public_key(public))
    assert not (fresh / "kits").exists() or not any((fresh / "kits").iterdir())  # no key issued here
    assert [s.name for s in pki.registered_sites(fresh)] == ["hospital-a"]


def test_a_public_key_that_is_not_one_or_goes_with_site_is_refused(
        fresh: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = make_site(tmp_path / "hospital")
    run_cli(["client", "keygen", "--site", str(site)], capsys)
    private = site_key_path(site, "hospital-a")
    code, _, err = run_cli(["pki", "add-site", "hospital-a", "--pki", str(fresh), "--public-key",
                            str(private)], capsys)
    cli_error(code, err, str(private))
    code, _, err = run_cli(["pki", "add-site", "hospital-a", "--pki", str(fresh), "--public-key",
                            str(private.with_name("hospital-a.pub")), "--site", str(site)], capsys)
    cli_error(code, err, "--site and --public-key exclude each other")
    assert pki.registered_sites(fresh) == ()

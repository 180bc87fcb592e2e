"""The consortium PKI: CA and server certificate, site keys, key rotation in the ledger, one-line checks."""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from fedgenome.configs.errors import ConfigError, LedgerError
from fedgenome.privacy.keys import (
    fingerprint,
    generate_key,
    load_private_key,
    load_public_key,
    public_key_text,
    write_private_key,
)
from fedgenome.privacy.ledger.core import RetiredKeyError, verify_key_chain, verify_ledger
from fedgenome.privacy.site_state import ledger_path, open_ledger, site_key_path
from fedgenome.server import pki
from fedgenome.server.pki_checks import check_ca, check_server_tls
from fedgenome.shared.tls import issue_ca, issue_server_certificate, make_certificates, write_certificate
from tests.helpers import assert_one_line_error as cli_error
from tests.helpers import run_cli
from tests.test_ledger_rotation import resign, signed_by, train, write_chain

NOW = dt.datetime.now(dt.timezone.utc)


def one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


@pytest.fixture(scope="module")
def consortium(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PKI made once; tests that change it use their own."""
    out = tmp_path_factory.mktemp("consortium") / "pki"
    pki.init_pki(out, hosts=("superlink.example.org", "10.0.0.5", "localhost"), days=90)
    return out


@pytest.fixture()
def fresh(tmp_path: Path) -> Path:
    out = tmp_path / "pki"
    pki.init_pki(out, hosts=("localhost", "127.0.0.1"))
    return out


def make_site(parent: Path, name: str = "hospital-a") -> Path:
    site = parent / name
    site.mkdir(parents=True)
    (site / "site.toml").write_text(f'name = "{name}"\nkind = "fasta"\nfasta = "seqs.fa"\n')
    return site


# --- pki init -----------------------------------------------------------------------------------

def test_init_writes_the_ca_and_the_server_certificate(consortium: Path) -> None:
    for name in ("ca.crt", "ca.key", "server.pem", "server.key"):
        assert (consortium / name).is_file()
    for key in ("ca.key", "server.key"):
        assert stat.S_IMODE((consortium / key).stat().st_mode) == 0o600
    assert stat.S_IMODE(consortium.stat().st_mode) == 0o700
    assert (consortium / "sites" / "retired").is_dir()
    ca = x509.load_pem_x509_certificate((consortium / "ca.crt").read_bytes())
    cert = x509.load_pem_x509_certificate((consortium / "server.pem").read_bytes())
    cert.verify_directly_issued_by(ca)  # raises if the CA did not sign it
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["superlink.example.org", "localhost"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5")]
    assert cert.not_valid_after_utc - cert.not_valid_before_utc < dt.timedelta(days=91)
    assert ca.not_valid_after_utc > cert.not_valid_after_utc
    report = pki.check_pki(consortium, host="10.0.0.5")
    assert report.tls.server.hosts == ("superlink.example.org", "localhost", "10.0.0.5")
    assert report.sites == () and report.retired == 0


def test_init_refuses_to_overwrite(consortium: Path) -> None:
    before = (consortium / "ca.key").read_bytes()
    with pytest.raises(ConfigError, match=r"ca.crt already exists: refusing to overwrite") as exc:
        pki.init_pki(consortium, hosts=("localhost",))
    assert "another --out" in one_line(exc)
    assert (consortium / "ca.key").read_bytes() == before


def test_bad_hosts_and_days_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not a DNS name"):
        pki.init_pki(tmp_path / "a", hosts=("bad host",))
    with pytest.raises(ConfigError, match=r"no --host"):
        pki.init_pki(tmp_path / "b", hosts=())
    with pytest.raises(ConfigError, match=r"at least 1 day"):
        pki.init_pki(tmp_path / "c", hosts=("localhost",), days=0)
    assert not (tmp_path / "a" / "ca.key").exists()


def test_make_certificates_still_makes_a_valid_set(tmp_path: Path) -> None:
    files = make_certificates(tmp_path / "tls")
    assert check_server_tls(files, host="127.0.0.1").server.hosts == ("localhost", "127.0.0.1")
    assert stat.S_IMODE(files.server_key.stat().st_mode) == 0o600
    make_certificates(tmp_path / "tls")  # throwaway sets may be replaced


# --- add-site -----------------------------------------------------------------------------------

def test_add_site_with_a_site_directory(fresh: Path, tmp_path: Path) -> None:
    site = make_site(tmp_path)
    result = pki.add_site(fresh, "hospital-a", site_dir=site)
    key = site_key_path(site, "hospital-a")
    assert result.private_path == key and not result.adopted and result.kit is None
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    registered = load_public_key(fresh / "sites" / "hospital-a.pub")
    issued = load_private_key(key).public_key()
    assert fingerprint(registered) == fingerprint(issued) == result.site.fingerprint
    assert (fresh / "sites" / "hospital-a.pub").read_text().split()[-1] == "hospital-a"
    train(open_ledger(site, "hospital-a"), 1, 0.5)  # the ledger signs with the issued key
    assert len(verify_ledger(ledger_path(site / "state"), public_key=registered, site="hospital-a")) == 1
    assert pki.check_site(fresh, "hospital-a", site_dir=site).fingerprint == result.site.fingerprint


def test_add_site_without_a_site_directory_writes_a_kit(fresh: Path) -> None:
    result = pki.add_site(fresh, "hospital-b")
    kit = fresh / "kits" / "hospital-b"
    assert result.kit == kit and result.private_path == kit / "hospital-b"
    assert stat.S_IMODE(kit.stat().st_mode) == 0o700
    assert stat.S_IMODE((kit / "hospital-b").stat().st_mode) == 0o600
    assert (kit / "ca.crt").read_bytes() == (fresh / "ca.crt").read_bytes()
    assert (kit / "hospital-b.pub").read_text() == (fresh / "sites" / "hospital-b.pub").read_text()
    assert [s.name for s in pki.registered_sites(fresh)] == ["hospital-b"]


def test_add_site_adopts_the_key_private_training_made(fresh: Path, tmp_path: Path) -> None:
    site = make_site(tmp_path)
    ledger = open_ledger(site, "hospital-a")  # first private training makes the key
    train(ledger, 1, 0.5)
    before = site_key_path(site, "hospital-a").read_bytes()
    result = pki.add_site(fresh, "hospital-a", site_dir=site)
    assert result.adopted
    assert site_key_path(site, "hospital-a").read_bytes() == before
    assert result.site.fingerprint == fingerprint(ledger.public_key)


def test_add_site_refusals(fresh: Path, tmp_path: Path) -> None:
    site = make_site(tmp_path)
    pki.add_site(fresh, "hospital-a", site_dir=site)
    with pytest.raises(ConfigError, match=r"site hospital-a is already registered") as exc:
        pki.add_site(fresh, "hospital-a")
    assert "rotate-site" in one_line(exc)
    with pytest.raises(ConfigError, match=r"names the site 'hospital-a', not 'hospital-z'"):
        pki.add_site(fresh, "hospital-z", site_dir=site)
    with pytest.raises(ConfigError, match=r"site name '../x' is invalid"):
        pki.add_site(fresh, "../x")
    with pytest.raises(ConfigError, match=r"not a consortium PKI"):
        pki.add_site(tmp_path / "nowhere", "hospital-c")


# --- rotate-site --------------------------------------------------------------------------------

Rotated = tuple[Path, Path, ec.EllipticCurvePublicKey, pki.SiteRotation]


@pytest.fixture()
def rotated(fresh: Path, tmp_path: Path) -> Rotated:
    """A registered site that trained two rounds, then rotated its key."""
    site = make_site(tmp_path)
    pki.add_site(fresh, "hospital-a", site_dir=site)
    old = load_private_key(site_key_path(site, "hospital-a")).public_key()
    ledger = open_ledger(site, "hospital-a")
    train(ledger, 1, 0.5)
    train(ledger, 2, 0.9)
    return fresh, site, old, pki.rotate_site(fresh, "hospital-a", site_dir=site)


def test_rotation_retires_the_old_key_and_registers_the_new(rotated: Rotated) -> None:
    consortium, site, old, result = rotated
    new = load_private_key(site_key_path(site, "hospital-a")).public_key()
    assert result.old_fingerprint == fingerprint(old) != fingerprint(new) == result.site.fingerprint
    assert fingerprint(load_public_key(consortium / "sites" / "hospital-a.pub")) == fingerprint(new)
    retired = consortium / "sites" / "retired" / f"hospital-a-{fingerprint(old)[:16]}.pub"
    assert result.retired_path == retired and fingerprint(load_public_key(retired)) == fingerprint(old)
    assert fingerprint(load_public_key(site / "keys" / "hospital-a.pub")) == fingerprint(new)
    assert (site / "keys" / "retired" / retired.name).is_file()
    assert not (site / "keys" / "hospital-a.new").exists()
    assert stat.S_IMODE(site_key_path(site, "hospital-a").stat().st_mode) == 0o600
    assert pki.check_pki(consortium).retired == 1


def test_the_ledger_verifies_across_the_rotation(rotated: Rotated) -> None:
    _, site, old, result = rotated
    path = ledger_path(site / "state")
    ledger = open_ledger(site, "hospital-a")
    new = ledger.public_key
    assert fingerprint(new) == result.site.fingerprint
    rotation = ledger.entries[-1]
    assert rotation.status == "rotated" and rotation.mechanism is None and rotation.update_sha256 is None
    assert rotation.epsilon == 0.9 and rotation.round == 2
    assert rotation.old_public_key == public_key_text(old) and rotation.new_public_key == public_key_text(new)
    assert signed_by(rotation, old) and not signed_by(rotation, new)
    after = train(ledger, 3, 1.2)
    assert signed_by(after, new) and not signed_by(after, old)
    assert len(ledger.mechanisms()) == 3  # the rotation spends nothing
    from_genesis = verify_key_chain(path, public_key=old, site="hospital-a")
    from_current = verify_key_chain(path, public_key=new, site="hospital-a")
    assert from_genesis == from_current
    assert [e.status for e in from_genesis.entries] == ["trained", "trained", "rotated", "trained"]
    assert fingerprint(from_genesis.genesis_key) == fingerprint(old)
    assert fingerprint(from_genesis.current_key) == fingerprint(new)
    with pytest.raises(LedgerError, match=r"is neither the key this ledger started with .* nor its current"):
        verify_ledger(path, public_key=generate_key().public_key())
    assert open_ledger(site, "hospital-a").epsilon == 1.2  # reopened with the new key


def test_a_swapped_rotation_key_is_caught(rotated: Rotated) -> None:
    _, site, old, _ = rotated
    path = ledger_path(site / "state")
    new = open_ledger(site, "hospital-a").public_key
    entries = list(verify_ledger(path, public_key=old))
    attacker = generate_key()
    # The attacker names their own key in the rotation and signs everything from there on with it.
    entries[2] = resign(entries[2], attacker, new_public_key=public_key_text(attacker.public_key()))
    write_chain(path, entries, attacker)
    for anchor in (old, new, attacker.public_key()):
        with pytest.raises(LedgerError, match=r"line 3 \(seq 2\): bad signature"):
            verify_ledger(path, public_key=anchor)


def test_an_interrupted_rotation_is_finished(fresh: Path, tmp_path: Path) -> None:
    site = make_site(tmp_path)
    pki.add_site(fresh, "hospital-a", site_dir=site)
    key_path = site_key_path(site, "hospital-a")
    ledger = open_ledger(site, "hospital-a")
    train(ledger, 1, 0.5)
    pending = generate_key()  # as if rotate-site died after the ledger entry, before the key swap
    write_private_key(key_path.with_name("hospital-a.new"), pending)
    ledger.rotate(new_key=pending)
    with pytest.raises(RetiredKeyError, match=r"rotated to .* is retired.*rotate-site") as exc:
        open_ledger(site, "hospital-a")
    one_line(exc)
    result = pki.rotate_site(fresh, "hospital-a", site_dir=site)
    assert result.site.fingerprint == fingerprint(pending.public_key())
    assert [e.status for e in open_ledger(site, "hospital-a").entries] == ["trained", "rotated"]


def test_rotate_refuses_unregistered_and_mismatched_keys(fresh: Path, tmp_path: Path) -> None:
    site = make_site(tmp_path)
    with pytest.raises(ConfigError, match=r"site hospital-a is not registered .*add-site") as exc:
        pki.rotate_site(fresh, "hospital-a", site_dir=site)
    one_line(exc)
    pki.add_site(fresh, "hospital-a", site_dir=site)
    shutil.copyfile(pki.add_site(fresh, "other").kit / "other.pub",  # type: ignore[operator]
                    fresh / "sites" / "hospital-a.pub")
    with pytest.raises(ConfigError, match=r"is not the key registered for site hospital-a") as exc:
        pki.rotate_site(fresh, "hospital-a", site_dir=site)
    one_line(exc)
    with pytest.raises(ConfigError, match=r"is not the key registered"):
        pki.check_site(fresh, "hospital-a", site_dir=site)


# --- certificate checks -------------------------------------------------------------------------

def test_expired_and_not_yet_valid_certificates(consortium: Path) -> None:
    files = pki.PkiLayout(consortium).tls
    with pytest.raises(ConfigError, match=r"server.pem: certificate expired on \d{4}-\d\d-\d\d") as exc:
        check_server_tls(files, now=NOW + dt.timedelta(days=100))
    assert "renew-server" in one_line(exc) and "valid " in one_line(exc)
    with pytest.raises(ConfigError, match=r"ca.crt: certificate expired on .*pki init") as exc:
        check_ca(files.ca_cert, now=NOW + dt.timedelta(days=4000))
    with pytest.raises(ConfigError, match=r"not valid until .* clock") as exc:
        check_server_tls(files, now=NOW - dt.timedelta(days=2))
    one_line(exc)


def test_mismatched_key_other_ca_and_missing_host(consortium: Path, tmp_path: Path) -> None:
    mixed = tmp_path / "mixed"
    shutil.copytree(consortium, mixed)
    other = make_certificates(tmp_path / "other")
    shutil.copyfile(other.server_key, mixed / "server.key")
    with pytest.raises(ConfigError, match=r"server.key: private key does not match the certificate") as exc:
        check_server_tls(pki.PkiLayout(mixed).tls)
    one_line(exc)
    shutil.copyfile(other.server_cert, mixed / "server.pem")
    with pytest.raises(ConfigError, match=r"server.pem: not signed by the CA .*different PKIs") as exc:
        check_server_tls(pki.PkiLayout(mixed).tls)
    one_line(exc)
    with pytest.raises(ConfigError, match=r"host 'elsewhere.org' is not in the certificate's subject "
                                          "alternative names") as exc:
        check_server_tls(pki.PkiLayout(consortium).tls, host="elsewhere.org")
    one_line(exc)
    with pytest.raises(ConfigError, match=r"not a CA certificate"):
        check_ca(consortium / "server.pem")


def test_renew_server_keeps_the_ca(fresh: Path) -> None:
    ca_before = (fresh / "ca.crt").read_bytes()
    pki.renew_server(fresh, hosts=("new.example.org",), days=10)
    assert (fresh / "ca.crt").read_bytes() == ca_before
    assert pki.check_pki(fresh, host="new.example.org").tls.server.days_left() < 11


# --- the command line ---------------------------------------------------------------------------

def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    """A usage/input error: exit 2 and one line (tests/test_cli.py's check, plus the code)."""
    assert code == 2, err
    cli_error(code, err, *needles)


def expire_server_certificate(directory: Path) -> None:
    """Replace server.pem by a certificate for the same key and CA that expired yesterday."""
    from fedgenome.server.pki_checks import load_pem_key

    ca_key = load_pem_key(directory / "ca.key")
    ca = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
    _, cert = issue_server_certificate(ca_key, ca, hosts=("localhost",), days=1,
                                       now=NOW - dt.timedelta(days=2))
    write_certificate(directory / "server.pem", cert)


def test_cli_session(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, site = tmp_path / "pki", make_site(tmp_path)
    code, stdout, _ = run_cli(["pki", "init", "--out", str(out), "--host", "localhost", "--days", "30"],
                              capsys)
    assert code == 0 and "SuperLink" in stdout and "hosts localhost" in stdout
    code, stdout, _ = run_cli(["pki", "add-site", "hospital-a", "--pki", str(out), "--site", str(site)],
                              capsys)
    assert code == 0 and "site hospital-a registered" in stdout
    code, stdout, _ = run_cli(["pki", "rotate-site", "hospital-a", "--pki", str(out), "--site", str(site)],
                              capsys)
    assert code == 0 and "rotated to" in stdout and "ledger entry seq 0" in stdout
    code, stdout, _ = run_cli(["pki", "check", "--pki", str(out), "--site", str(site)], capsys)
    assert code == 0 and "hospital-a" in stdout and "1 retired keys" in stdout
    code, _, err = run_cli(["pki", "add-site", "hospital-a", "--pki", str(out)], capsys)
    assert_one_line_error(code, err, "already registered")


def test_cli_refuses_expired_or_mismatched_certificates(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pki"
    pki.init_pki(out, hosts=("localhost",))
    good_key = (out / "server.key").read_bytes()
    expire_server_certificate(out)
    capsys.readouterr()
    for args in (["server", "start", "--pki", str(out)], ["server", "start", "--tls-dir", str(out)],
                 ["pki", "check", "--pki", str(out)]):
        code, _, err = run_cli(args, capsys)
        assert_one_line_error(code, err, "server.pem: certificate expired on",
                              f"renew-server --pki {out}'")
    pki.renew_server(out, hosts=("localhost",))
    (out / "server.key").write_bytes(good_key)  # the key of the certificate before renewal
    capsys.readouterr()
    code, _, err = run_cli(["server", "start", "--pki", str(out)], capsys)
    assert_one_line_error(code, err, "server.key: private key does not match the certificate")
    site = make_site(tmp_path)
    old_ca = tmp_path / "old-ca.crt"
    _, ca = issue_ca(days=1, now=NOW - dt.timedelta(days=3))
    write_certificate(old_ca, ca)
    capsys.readouterr()
    code, _, err = run_cli(["client", "start", "--site", str(site), "--superlink", "localhost:9092",
                            "--root-certificates", str(old_ca)], capsys)
    assert_one_line_error(code, err, "old-ca.crt: certificate expired on")
    code, _, err = run_cli(["client", "start", "--site", str(site), "--superlink", "localhost:9092",
                            "--root-certificates", str(out / "ca.crt")], capsys)
    assert_one_line_error(code, err, "keys/hospital-a: the site has no key", "client keygen", "pki add-site")

"""The consortium's PKI: a CA, the SuperLink's certificate, and the registry of site keys.

::

    PKI/                                 (mode 0700)
      ca.crt, ca.key                     the consortium CA (EC P-384; ca.key 0600)
      server.pem, server.key             the SuperLink's certificate, its SANs the hosts given
      sites/<NAME>.pub                   each site's current public key (OpenSSH ECDSA P-384)
      sites/retired/<NAME>-<fp16>.pub    keys rotated out (fp16: the fingerprint's first 16 hex)
      kits/<NAME>/                       a handover kit for a site set up elsewhere (0700):
                                         <NAME> (private key, 0600), <NAME>.pub, ca.crt

A site key is the site's identity twice over: its SuperNode authenticates to the SuperLink with it
(``flwr supernode register sites/<NAME>.pub``) and its privacy ledger is signed with it. Rotating
it is therefore recorded in the ledger (:func:`fedgenome.privacy.site_state.rotate_site_key`). No flwr here.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from fedgenome.configs.errors import ConfigError, LedgerError
from fedgenome.configs.names import check_site_name
from fedgenome.configs.schema import load_site_manifest
from fedgenome.privacy.keys import (
    create_site_key,
    fingerprint,
    generate_key,
    load_private_key,
    load_public_key,
    public_key_text,
    same_key,
    write_private_key,
    write_public_key,
)
from fedgenome.privacy.ledger.core import verify_key_chain
from fedgenome.privacy.ledger.entry import rotations
from fedgenome.privacy.site_state import (
    KeyRotation,
    ledger_path,
    retired_key_path,
    rotate_site_key,
    site_key_path,
    site_public_key,
)
from fedgenome.server.pki_checks import (
    ServerTls,
    check_server_tls,
    load_certificate,
    load_pem_key,
    public_keys_match,
)
from fedgenome.shared.atomic import atomic_dir
from fedgenome.shared.run_layout import PkiRegistry
from fedgenome.shared.tls import (
    TlsFiles,
    issue_ca,
    issue_server_certificate,
    tls_files,
    write_certificate,
    write_private_key_pem,
)

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class PkiLayout:
    """The paths of a PKI directory."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        """The CA certificate (``ca.crt``), handed to every site."""
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        """The CA's private key (``ca.key``, 0600): only for issuing server certificates."""
        return self.root / "ca.key"

    @property
    def tls(self) -> TlsFiles:
        """The SuperLink's TLS files (``ca.crt``, ``server.pem``, ``server.key``)."""
        return tls_files(self.root)

    @property
    def registry(self) -> PkiRegistry:
        """The registry of site public keys (:class:`fedgenome.shared.run_layout.PkiRegistry`)."""
        return PkiRegistry(self.root)

    @property
    def sites(self) -> Path:
        """The registry of site public keys: ``sites/``."""
        return self.registry.sites

    def site_public(self, name: str) -> Path:
        """A site's registered public key: ``sites/<name>.pub``."""
        return self.registry.site_public(name)

    def kit(self, name: str) -> Path:
        """A site's handover kit: ``kits/<name>/``."""
        return self.root / "kits" / name


@dataclass(frozen=True)
class RegisteredSite:
    """A site in the registry."""

    name: str
    public_path: Path
    fingerprint: str


@dataclass(frozen=True)
class SiteKey:
    """What :func:`add_site` did."""

    site: RegisteredSite
    private_path: Path | None
    """The site's private key (site directory or handover kit); None when only its public key came."""
    adopted: bool
    """True when the site already had a key (made by private training) and it was kept."""
    kit: Path | None


@dataclass(frozen=True)
class SiteRotation:
    """What :func:`rotate_site` did."""

    site: RegisteredSite
    old_fingerprint: str
    retired_path: Path
    """The old key in ``sites/retired/``."""
    at_site: KeyRotation | None
    """The site-side rotation; None when it had already happened and only the registry followed."""


@dataclass(frozen=True)
class PkiReport:
    """What :func:`check_pki` found."""

    sites: tuple[RegisteredSite, ...]
    """The registered sites' keys, in name order."""
    retired: int
    """How many retired (rotated-out) keys ``sites/retired/`` keeps."""
    layout: PkiLayout
    tls: ServerTls


def init_pki(out: Path, *, hosts: tuple[str, ...], days: int = 365, ca_days: int = 3650) -> PkiLayout:
    """Create a consortium PKI in ``out``: the CA, the SuperLink's certificate, an empty registry.

    Args:
        out: The PKI directory (created with mode 0700 if missing).
        hosts: DNS names and IP addresses clients reach the SuperLink at (its SANs).
        days: Validity of the server certificate (renew with :func:`renew_server`).
        ca_days: Validity of the CA.

    Raises:
        ConfigError: ``out`` already holds a PKI (nothing is overwritten), or a bad host or days.
    """
    layout = PkiLayout(out)
    for path in (layout.ca_cert, layout.ca_key, *_tls_paths(layout), layout.sites):
        if path.exists():
            raise ConfigError(f"{path} already exists: refusing to overwrite a consortium PKI; choose "
                              "another --out, or move the old directory away first")
    ca_key, ca = issue_ca(days=ca_days)
    key, cert = issue_server_certificate(ca_key, ca, hosts=hosts, days=days)
    _make_private_dir(out)
    write_private_key_pem(layout.ca_key, ca_key)
    write_certificate(layout.ca_cert, ca)
    write_private_key_pem(layout.tls.server_key, key)
    write_certificate(layout.tls.server_cert, cert)
    layout.registry.retired.mkdir(parents=True, exist_ok=True)
    log.info("consortium PKI in %s: CA and SuperLink certificate for %s", out, ", ".join(hosts))
    return layout


def renew_server(pki: Path, *, hosts: tuple[str, ...], days: int = 365) -> TlsFiles:
    """Issue a new SuperLink key and certificate with the consortium CA (sites keep trusting it).

    Raises:
        ConfigError: Not a PKI, the CA key is missing or does not match the CA, or a bad host.
    """
    layout = open_pki(pki)
    ca = load_certificate(layout.ca_cert)
    ca_key = _ca_key(layout)
    key, cert = issue_server_certificate(ca_key, ca, hosts=hosts, days=days)
    write_private_key_pem(layout.tls.server_key, key)
    write_certificate(layout.tls.server_cert, cert)
    return layout.tls


def open_pki(pki: Path) -> PkiLayout:
    """The layout of an existing PKI directory, or ConfigError saying how to make one."""
    layout = PkiLayout(pki)
    if not layout.ca_cert.is_file():
        raise ConfigError(f"{pki}: not a consortium PKI (no ca.crt); make one with "
                          f"'fedgenome pki init --out {pki}'")
    return layout


def add_site(pki: Path, name: str, *, site_dir: Path | None = None,
             public_key: Path | None = None) -> SiteKey:
    """Register a site's public key: the hospital's own (``public_key``), or a key pair issued here.

    With ``public_key`` (what ``fedgenome client keygen`` made at the hospital) only that key is
    registered: the private key never leaves the hospital. With ``site_dir`` the key becomes the
    site's own (``keys/<name>``): its SuperNode authenticates and its ledger is signed with it; a key
    the site already has (from private training) is adopted. With neither, a handover kit
    ``kits/<name>/`` is written for the site to install as ``keys/<name>``.

    Raises:
        ConfigError: Not a PKI, a bad name, the name already registered, both ``site_dir`` and
            ``public_key``, or ``site.toml`` names another site.
        InputFileError: ``public_key`` is not an ECDSA public key file.
        LedgerError: An adopted key does not sign the site's ledger.
    """
    layout = open_pki(pki)
    check_site_name(name)
    if site_dir is not None and public_key is not None:
        raise ConfigError("--site and --public-key exclude each other: give --public-key for a "
                          "hospital that made its own key, --site for a site directory on this machine")
    registered = layout.site_public(name)
    if registered.exists():
        fp = fingerprint(load_public_key(registered))
        raise ConfigError(f"site {name} is already registered ({registered}, fingerprint {fp[:16]}): "
                          f"give its key a new pair with 'fedgenome pki rotate-site {name}'")
    kit = private_path = None
    if public_key is not None:
        public, adopted = load_public_key(public_key), False
    elif site_dir is not None:
        _check_manifest_name(site_dir, name)
        private_path = site_key_path(site_dir, name)
        adopted = private_path.exists()
        if adopted:
            log.info("site %s already has a key (%s): adopting it", name, private_path)
        else:
            create_site_key(private_path.parent, name)
        public = site_public_key(site_dir, name)
    else:
        kit, adopted = _write_kit(layout, name), False
        private_path = kit / name
        public = load_public_key(kit / f"{name}.pub")
    layout.sites.mkdir(parents=True, exist_ok=True)
    write_public_key(registered, public, comment=name)
    log.info("registered site %s (%s, fingerprint %s)", name, registered, fingerprint(public)[:16])
    return SiteKey(RegisteredSite(name, registered, fingerprint(public)), private_path, adopted, kit)


def rotate_site(pki: Path, name: str, *, site_dir: Path) -> SiteRotation:
    """Give a registered site a new key pair: its ledger records the rotation, the registry follows.

    The old public key moves to ``sites/retired/``. Re-running after an interruption finishes the
    rotation (see :func:`fedgenome.privacy.site_state.rotate_site_key`).

    Raises:
        ConfigError: Not a PKI, the site is not registered, or its key is not the registered one.
        LedgerError: The site's ledger does not verify.
    """
    layout = open_pki(pki)
    check_site_name(name)
    registered_path = _registered(layout, name)
    registered = load_public_key(registered_path)
    _check_manifest_name(site_dir, name)
    key_path = site_key_path(site_dir, name)
    if not key_path.exists():
        raise ConfigError(f"{key_path}: missing; site {name}'s key must be installed there to rotate it")
    current = load_private_key(key_path).public_key()
    at_site: KeyRotation | None = None
    if same_key(current, registered):
        at_site = rotate_site_key(site_dir, name)
        old, new = at_site.old_key, at_site.new_key
    elif _site_rotated_from(site_dir, name, registered, current):
        log.warning("site %s already rotated to %s: bringing the registry up to date", name,
                    fingerprint(current)[:16])
        old, new = registered, site_public_key(site_dir, name)
    else:
        raise _mismatch(layout, name, key_path, current, registered, site_dir)
    retired = retired_key_path(layout.sites, name, old)
    write_public_key(retired, old, comment=name)
    write_public_key(registered_path, new, comment=name)
    site = RegisteredSite(name, registered_path, fingerprint(new))
    return SiteRotation(site, fingerprint(old), retired, at_site)


def check_site(pki: Path, name: str, *, site_dir: Path) -> RegisteredSite:
    """Check that a site's key is the one registered for it (and signs its ledger).

    Raises:
        ConfigError: Not registered, or the keys differ.
        LedgerError: The site's ledger does not verify with its key.
    """
    layout = open_pki(pki)
    registered_path = _registered(layout, name)
    registered = load_public_key(registered_path)
    key_path = site_key_path(site_dir, name)
    current = site_public_key(site_dir, name)
    if not same_key(current, registered):
        raise _mismatch(layout, name, key_path, current, registered, site_dir)
    return RegisteredSite(name, registered_path, fingerprint(current))


def registered_sites(pki: Path) -> tuple[RegisteredSite, ...]:
    """Every site in the registry, by name; a malformed entry raises InputFileError naming it."""
    layout = open_pki(pki)
    paths = layout.registry.registered()
    return tuple(RegisteredSite(p.name[:-4], p, fingerprint(load_public_key(p))) for p in paths)


def check_pki(pki: Path, *, host: str | None = None, now: dt.datetime | None = None) -> PkiReport:
    """Check the whole PKI: the TLS files as a set (and ``host`` in the SANs), the CA key, the registry.

    Raises:
        ConfigError: One line naming the file, what is wrong and the fix.
    """
    layout = open_pki(pki)
    tls = check_server_tls(layout.tls, host=host, now=now)
    if layout.ca_key.exists():
        _ca_key(layout)
    retired = layout.registry.retired
    count = len(list(retired.glob("*.pub"))) if retired.is_dir() else 0
    return PkiReport(sites=registered_sites(pki), retired=count, layout=layout, tls=tls)


def _ca_key(layout: PkiLayout) -> ec.EllipticCurvePrivateKey:
    """The CA's private key, checked against ``ca.crt``."""
    key = load_pem_key(layout.ca_key, fix="restore the CA key of this PKI (ca.key)")
    if not public_keys_match(key.public_key(), load_certificate(layout.ca_cert).public_key()):
        raise ConfigError(f"{layout.ca_key}: private key does not match the CA certificate "
                          f"{layout.ca_cert}; restore the CA key of this PKI")
    return key


def _tls_paths(layout: PkiLayout) -> tuple[Path, Path]:
    return layout.tls.server_cert, layout.tls.server_key


def _make_private_dir(path: Path) -> None:
    """Create ``path`` with mode 0700 (it holds the CA key); tighten an existing empty one."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _registered(layout: PkiLayout, name: str) -> Path:
    path = layout.site_public(name)
    if not path.exists():
        raise ConfigError(f"site {name} is not registered ({path} is missing): add it with "
                          f"'fedgenome pki add-site {name} --pki {layout.root}'")
    return path


def _check_manifest_name(site_dir: Path, name: str) -> None:
    """The site directory's ``site.toml`` must name the site ``name`` (its key is ``keys/<name>``)."""
    manifest = load_site_manifest(site_dir)
    if manifest.name != name:
        raise ConfigError(f"{site_dir / 'site.toml'}: names the site {manifest.name!r}, not {name!r}; "
                          f"pass NAME {manifest.name}")


def _write_kit(layout: PkiLayout, name: str) -> Path:
    """Write ``kits/<name>/``: a new private key (0600), its .pub, and ca.crt; the directory 0700."""
    kit = layout.kit(name)
    if kit.exists():
        raise ConfigError(f"{kit} already exists: hand that kit over, or move it away first")
    key = generate_key()
    with atomic_dir(kit) as tmp:
        os.chmod(tmp, 0o700)
        write_private_key(tmp / name, key)
        write_public_key(tmp / f"{name}.pub", key.public_key(), comment=name)
        shutil.copyfile(layout.ca_cert, tmp / "ca.crt")
    return kit


def _site_rotated_from(site_dir: Path, name: str, old: ec.EllipticCurvePublicKey,
                       new: ec.EllipticCurvePublicKey) -> bool:
    """Whether the site's ledger's last rotation went from ``old`` to ``new`` (an unfinished rotation)."""
    try:
        chain = verify_key_chain(ledger_path(site_dir / "state"), public_key=new, site=name)
    except LedgerError:
        return False
    done = rotations(chain.entries)
    return bool(done) and done[-1].old_public_key == public_key_text(old) and same_key(chain.current_key, new)


def _mismatch(layout: PkiLayout, name: str, key_path: Path, current: ec.EllipticCurvePublicKey,
              registered: ec.EllipticCurvePublicKey, site_dir: Path) -> ConfigError:
    return ConfigError(
        f"{key_path} (fingerprint {fingerprint(current)[:16]}) is not the key registered for site {name} "
        f"in {layout.site_public(name)} ({fingerprint(registered)[:16]}): rotate keys only with "
        f"'fedgenome pki rotate-site', or re-register the site: move {layout.site_public(name)} away, "
        f"then 'fedgenome pki add-site {name} --pki {layout.root} --site {site_dir}'")

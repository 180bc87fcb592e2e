"""Checks of the consortium's certificates before anything starts: each failure is one line with a fix.

Expired or not-yet-valid certificates (with their dates), a server key that does not match its
certificate, a server certificate that the CA did not sign, and a host that the certificate's
subject alternative names do not cover. gRPC would refuse all of these too, but later, on the other
side of the connection, and with a message that names neither the file nor the fix.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedgenome.configs.errors import ConfigError
from fedgenome.shared.clock import utc_now
from fedgenome.shared.tls import TlsFiles

log = logging.getLogger(__name__)

NEW_PKI = "make a new consortium PKI with 'fedgenome pki init --out NEW_DIR'"


@dataclass(frozen=True)
class CertInfo:
    """What a checked certificate says."""

    path: Path
    subject: str
    issuer: str
    not_before: dt.datetime
    not_after: dt.datetime
    fingerprint: str
    """SHA-256 (hex) of the certificate's DER bytes."""
    hosts: tuple[str, ...]
    """Its subject alternative names (DNS names and IP addresses); empty for the CA."""

    def days_left(self, now: dt.datetime | None = None) -> float:
        """Days until it expires (negative once expired)."""
        return (self.not_after - (_aware(now) if now is not None else _utcnow())).total_seconds() / 86400.0


@dataclass(frozen=True)
class ServerTls:
    """A checked set of SuperLink TLS files."""

    ca: CertInfo
    """The CA certificate: subject, key, validity."""
    server: CertInfo
    """The SuperLink's certificate, signed by ``ca`` and valid for the SuperLink's host."""


def renew_hint(path: Path) -> str:
    """How to replace the server certificate or key at ``path`` (in a PKI directory)."""
    return f"renew it with 'fedgenome pki renew-server --pki {path.parent}'"


def _read(path: Path, *, fix: str) -> bytes:
    """A file's bytes, or ConfigError: missing (with ``fix``) or unreadable."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: missing; {fix}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror}); check its owner and mode") from exc


def load_certificate(path: Path) -> x509.Certificate:
    """A PEM certificate, or ConfigError naming the file and the fix."""
    data = _read(path, fix=f"{NEW_PKI}, or pass the directory that holds it")
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise ConfigError(f"{path}: not a PEM certificate ({' '.join(str(exc).split())}); pass the "
                          "certificate file itself") from exc


def describe(path: Path, cert: x509.Certificate) -> CertInfo:
    """A :class:`CertInfo` of a loaded certificate."""
    hosts: tuple[str, ...] = ()
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        hosts = (*sans.get_values_for_type(x509.DNSName),
                 *(str(ip) for ip in sans.get_values_for_type(x509.IPAddress)))
    except x509.ExtensionNotFound:
        pass
    return CertInfo(path, cert.subject.rfc4514_string(), cert.issuer.rfc4514_string(),
                    cert.not_valid_before_utc, cert.not_valid_after_utc,
                    cert.fingerprint(hashes.SHA256()).hex(), hosts)


def check_validity(info: CertInfo, *, now: dt.datetime | None = None, fix: str) -> None:
    """Refuse a certificate outside its validity period, showing both dates."""
    when = _aware(now) if now is not None else _utcnow()
    period = f"valid {_date(info.not_before)} to {_date(info.not_after)}"
    if when > info.not_after:
        raise ConfigError(f"{info.path}: certificate expired on {_date(info.not_after)} ({period}); {fix}")
    if when < info.not_before:
        raise ConfigError(f"{info.path}: certificate is not valid until {_date(info.not_before)} ({period});"
                          " check this machine's clock, or wait")


def check_ca(path: Path, *, now: dt.datetime | None = None) -> CertInfo:
    """Check the consortium CA certificate: a self-signed CA within its validity period.

    Raises:
        ConfigError: Missing, unreadable, not a CA, not self-signed, expired or not yet valid.
    """
    cert = load_certificate(path)
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise ConfigError(f"{path}: not a CA certificate; pass the consortium's ca.crt")
    if not _issued_by(cert, cert):
        raise ConfigError(f"{path}: a CA certificate that is not self-signed; pass the consortium's "
                          "root ca.crt")
    info = describe(path, cert)
    check_validity(info, now=now, fix=NEW_PKI)
    return info


def check_server_tls(
    files: TlsFiles, *, host: str | None = None, now: dt.datetime | None = None
) -> ServerTls:
    """Check a SuperLink's TLS files as a set, before the server starts.

    Args:
        files: The CA certificate and the server's certificate and private key.
        host: A name or address that clients reach the server at; it must be among the server
            certificate's subject alternative names. None skips that check.
        now: The time to check validity at (default: now).

    Raises:
        ConfigError: One line naming the file, what is wrong and the fix.
    """
    ca = check_ca(files.ca_cert, now=now)
    ca_cert, cert = load_certificate(files.ca_cert), load_certificate(files.server_cert)
    if not _issued_by(cert, ca_cert):
        raise ConfigError(
            f"{files.server_cert}: not signed by the CA {files.ca_cert} (issued by "
            f"'{cert.issuer.rfc4514_string()}'): the two come from different PKIs; use the ca.crt of "
            "the PKI that issued it, or renew the server certificate with 'fedgenome pki renew-server'")
    server = describe(files.server_cert, cert)
    check_validity(server, now=now, fix=renew_hint(files.server_cert))
    key = load_pem_key(files.server_key)
    if not public_keys_match(key.public_key(), cert.public_key()):
        raise ConfigError(f"{files.server_key}: private key does not match the certificate "
                          f"{files.server_cert}; use the key issued with it, or "
                          f"{renew_hint(files.server_key).replace('renew it', 'issue both again')}")
    if host is not None:
        check_host(server, host)
    return ServerTls(ca, server)


def check_host(info: CertInfo, host: str) -> None:
    """Refuse a host the certificate's subject alternative names do not cover."""
    if not host_matches(info.hosts, host):
        raise ConfigError(
            f"{info.path}: host {host!r} is not in the certificate's subject alternative names "
            f"({', '.join(info.hosts) or 'none'}); renew it with 'fedgenome pki renew-server --pki "
            f"{info.path.parent} --host {host}' (repeat --host for every name clients use)")


def host_matches(names: tuple[str, ...], host: str) -> bool:
    """Whether ``host`` is one of ``names`` (IP addresses by value, DNS names case-insensitively)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        wanted = host.lower().rstrip(".")
        return any(_dns_match(name.lower(), wanted) for name in names)
    for name in names:
        try:
            if ipaddress.ip_address(name) == address:
                return True
        except ValueError:
            continue
    return False


def load_pem_key(path: Path, *, fix: str | None = None) -> ec.EllipticCurvePrivateKey:
    """An unencrypted PEM EC private key (e.g. ``server.key``), warning when others can read it."""
    data = _read(path, fix=fix or renew_hint(path))
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        log.warning("private key %s is readable by group/others; run 'chmod 600 %s'", path, path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"{path}: not an unencrypted PEM private key ({' '.join(str(exc).split())}); "
                          f"{fix}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{path}: holds a {type(key).__name__}, not an EC key; {fix}")
    return key


def _dns_match(name: str, host: str) -> bool:
    """Exact match, or a left-most ``*.`` wildcard matching exactly one label."""
    if name.startswith("*."):
        head, _, rest = host.partition(".")
        return bool(head) and rest == name[2:]
    return name.rstrip(".") == host


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether ``issuer`` signed ``cert`` (names and signature)."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def public_keys_match(a: object, b: object) -> bool:
    """Whether two public keys (e.g. a private key's and a certificate's) are the same EC key."""
    if not isinstance(a, ec.EllipticCurvePublicKey) or not isinstance(b, ec.EllipticCurvePublicKey):
        return False
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return a.public_bytes(der, spki) == b.public_bytes(der, spki)


def _date(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M UTC")


def _aware(when: dt.datetime) -> dt.datetime:
    """A naive time taken as UTC."""
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.timezone.utc)


def _utcnow() -> dt.datetime:
    return utc_now()

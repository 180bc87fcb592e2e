"""TLS material for a SuperLink: a consortium CA and a server certificate (EC P-384).

:func:`make_certificates` makes a throwaway set (the demo and the tests make one per run);
:mod:`fedgenome.server.pki` keeps a long-lived consortium PKI built from the same pieces, and
:mod:`fedgenome.server.pki_checks` checks them before a server or a client starts.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedgenome.configs.errors import ConfigError
from fedgenome.shared.atomic import atomic_path, write_bytes
from fedgenome.shared.clock import utc_now
from fedgenome.shared.hosts import LOCAL_NAMES

ORGANIZATION = "fedgenome consortium"
_BACKDATE = dt.timedelta(minutes=5)  # tolerate clocks a little behind


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the CA certificate and the server's certificate and key (PEM)."""

    ca_cert: Path
    """The consortium CA's certificate, which every node pins as its root certificate."""
    server_cert: Path
    """The SuperLink's certificate, signed by the CA, with the SuperLink's hosts as its names."""
    server_key: Path
    """The SuperLink's private key (mode 0600); it never leaves the aggregator."""


def tls_files(directory: Path) -> TlsFiles:
    """The standard file names in ``directory``: ``ca.crt``, ``server.pem``, ``server.key``."""
    return TlsFiles(directory / "ca.crt", directory / "server.pem", directory / "server.key")


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                      x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _check_days(days: int, what: str) -> None:
    if days < 1:
        raise ConfigError(f"{what} = {days}: a certificate must be valid for at least 1 day")


def san_entry(host: str) -> x509.GeneralName:
    """A subject alternative name for ``host``: an IP address if it parses as one, else a DNS name.

    Raises:
        ConfigError: ``host`` is empty, has spaces or slashes, or is not ASCII.
    """
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not host or not host.isascii() or any(c.isspace() or c in "/:@" for c in host):
        raise ConfigError(f"--host {host!r} is not a DNS name or an IP address; pass e.g. "
                          "superlink.example.org or 10.0.0.5")
    return x509.DNSName(host.lower())


def _with_key_identifiers(builder: x509.CertificateBuilder, *, ca: bool, key: ec.EllipticCurvePublicKey,
                          issuer: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
    """Key usage and the Subject and Authority Key Identifiers that RFC 5280 (and Python 3.13) ask for.

    A CA signs certificates (and CRLs); a TLS server's EC key signs the handshake.
    """
    usage = x509.KeyUsage(digital_signature=not ca, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                          encipher_only=False, decipher_only=False)
    return (builder.add_extension(usage, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer), critical=False))


def issue_ca(
    *, days: int, now: dt.datetime | None = None
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new self-signed consortium CA, valid ``days`` days from ``now`` (default: the current time)."""
    _check_days(days, "CA days")
    start = now or utc_now()
    key = ec.generate_private_key(ec.SECP384R1())
    name = _name("fedgenome CA")
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start - _BACKDATE).not_valid_after(start + dt.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True))
    cert = _with_key_identifiers(builder, ca=True, key=key.public_key(), issuer=key.public_key()).sign(
        key, hashes.SHA384())
    return key, cert


def issue_server_certificate(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, *, hosts: tuple[str, ...], days: int,
    now: dt.datetime | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new server key and certificate for ``hosts`` (its SANs), signed by the CA.

    The certificate never outlives the CA. ``hosts[0]`` is also its common name.

    Raises:
        ConfigError: No hosts, an invalid host, or ``days`` < 1.
    """
    if not hosts:
        raise ConfigError("no --host given: name at least one DNS name or IP address of the SuperLink")
    _check_days(days, "days")
    names = [san_entry(host) for host in hosts]
    start = now or utc_now()
    end = min(start + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    key = ec.generate_private_key(ec.SECP384R1())
    builder = (x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start - _BACKDATE).not_valid_after(end)
               .add_extension(x509.SubjectAlternativeName(names), critical=False)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
    cert = _with_key_identifiers(builder, ca=False, key=key.public_key(), issuer=ca_key.public_key()).sign(
        ca_key, hashes.SHA384())
    return key, cert


def write_certificate(path: Path, cert: x509.Certificate) -> None:
    """Write a certificate as PEM, atomically."""
    write_bytes(path, cert.public_bytes(serialization.Encoding.PEM))


def write_private_key_pem(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Write a private key as unencrypted PKCS#8 PEM with mode 0600 (set before any byte is written)."""
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    with atomic_path(path) as tmp:
        os.chmod(tmp, 0o600)
        tmp.write_bytes(data)


def make_certificates(directory: Path, *, hosts: tuple[str, ...] = LOCAL_NAMES,
                      days: int = 30, keep_ca_key: bool = True) -> TlsFiles:
    """A fresh CA and server certificate valid for ``hosts`` (DNS names or IP addresses).

    Writes ``ca.crt``, ``ca.key`` (unless ``keep_ca_key`` is false: then the CA can never sign
    again), ``server.pem`` and ``server.key`` (keys 0600) into ``directory``, replacing what is
    there: for throwaway deployments. ``fedgenome.server.pki.init_pki`` makes a consortium PKI that
    is never overwritten.
    """
    ca_key, ca = issue_ca(days=days)
    key, cert = issue_server_certificate(ca_key, ca, hosts=hosts, days=days)
    files = tls_files(directory)
    if keep_ca_key:
        write_private_key_pem(directory / "ca.key", ca_key)
    write_certificate(files.ca_cert, ca)
    write_private_key_pem(files.server_key, key)
    write_certificate(files.server_cert, cert)
    return files

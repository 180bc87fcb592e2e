"""TLS material for a SuperLink: a consortium CA and a server certificate (EC P-384).

The demo and the tests make a fresh set per run; the PKI commands will issue long-lived ones.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.atomic import write_bytes


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the CA certificate and the server's certificate and key (PEM)."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedgenome consortium"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    write_bytes(path, key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
    path.chmod(0o600)


def make_certificates(directory: Path, *, hosts: tuple[str, ...] = ("localhost", "127.0.0.1"),
                      days: int = 30) -> TlsFiles:
    """A CA and a server certificate valid for ``hosts`` (DNS names or IP addresses)."""
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = (x509.CertificateBuilder().subject_name(_name("fedgenome CA")).issuer_name(_name("fedgenome CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA384()))
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA384()))
    files = TlsFiles(directory / "ca.crt", directory / "server.pem", directory / "server.key")
    write_bytes(files.ca_cert, ca.public_bytes(serialization.Encoding.PEM))
    write_bytes(files.server_cert, cert.public_bytes(serialization.Encoding.PEM))
    _write_key(files.server_key, key)
    _write_key(directory / "ca.key", ca_key)
    return files

"""The consortium's certificates follow RFC 5280: ``cryptography``'s verifier and Python 3.13's default
``ssl`` context (``VERIFY_X509_STRICT``) accept them."""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from fedgenome.shared.tls import (
    issue_ca,
    issue_server_certificate,
    make_certificates,
    write_certificate,
    write_private_key_pem,
)

# A TLS server in a thread and a client with the default context, both in the interpreter under test.
HANDSHAKE = """
import socket, ssl, sys, threading
ca, cert, key = sys.argv[1:4]
server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
server.load_cert_chain(cert, key)
listener = socket.create_server(("127.0.0.1", 0))
port = listener.getsockname()[1]
def serve():
    conn, _ = listener.accept()
    try:
        with server.wrap_socket(conn, server_side=True):
            pass
    except (ssl.SSLError, OSError):
        pass
threading.Thread(target=serve, daemon=True).start()
client = ssl.create_default_context(cafile=ca)
assert client.verify_flags & ssl.VERIFY_X509_STRICT, "not Python 3.13's strict default"
try:
    with socket.create_connection(("127.0.0.1", port)) as raw:
        with client.wrap_socket(raw, server_hostname="localhost"):
            print("verified")
except ssl.SSLCertVerificationError as exc:
    print("refused:", exc.verify_message)
"""


def test_issued_certificates_verify_with_cryptographys_rfc5280_verifier() -> None:
    ca_key, ca = issue_ca(days=30)
    _, cert = issue_server_certificate(ca_key, ca, hosts=("localhost", "127.0.0.1"), days=10)

    def verify(trusted: x509.Certificate, subject: x509.DNSName | x509.IPAddress) -> list[x509.Certificate]:
        return PolicyBuilder().store(Store([trusted])).build_server_verifier(subject).verify(cert, [])

    for subject in (x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))):
        assert verify(ca, subject)[-1] == ca
    with pytest.raises(VerificationError):
        verify(ca, x509.DNSName("other.example"))
    with pytest.raises(VerificationError):
        verify(issue_ca(days=30)[1], x509.DNSName("localhost"))


def without_key_identifiers(ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate,
                            key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    """A server certificate as the project issued them before: no AKI, no SKI."""
    now = dt.datetime.now(dt.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA384()))


def python_3_13() -> str | None:
    """A working Python 3.13 interpreter on this machine (a pyenv shim may exist and not work)."""
    candidates = [shutil.which("python3.13"), "/usr/bin/python3.13",
                  *map(str, sorted(Path.home().glob(".pyenv/versions/3.13*/bin/python3.13")))]
    for candidate in filter(None, candidates):
        try:
            done = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"],
                                  capture_output=True, text=True, timeout=30)
        except OSError:
            continue
        if done.returncode == 0 and done.stdout.strip() == "(3, 13)":
            return candidate
    return None


PYTHON_3_13 = python_3_13()


def handshake(ca: Path, cert: Path, key: Path) -> str:
    """Python 3.13's default client context against a server with ``cert``: what it said."""
    assert PYTHON_3_13 is not None
    done = subprocess.run([PYTHON_3_13, "-c", HANDSHAKE, str(ca), str(cert), str(key)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.skipif(PYTHON_3_13 is None, reason="no working python3.13 on this machine")
def test_python_3_13s_default_context_accepts_them_and_refuses_one_without_key_identifiers(
        tmp_path: Path) -> None:
    files = make_certificates(tmp_path / "tls", hosts=("localhost", "127.0.0.1"), days=10)
    assert handshake(files.ca_cert, files.server_cert, files.server_key) == "verified"
    # The same handshake with a certificate as the project issued them before (no AKI, no SKI).
    ca_key, ca = issue_ca(days=30)
    key = ec.generate_private_key(ec.SECP384R1())
    write_certificate(tmp_path / "old-ca.crt", ca)
    write_certificate(tmp_path / "old.pem", without_key_identifiers(ca_key, ca, key))
    write_private_key_pem(tmp_path / "old.key", key)
    said = handshake(tmp_path / "old-ca.crt", tmp_path / "old.pem", tmp_path / "old.key")
    assert said == "refused: Missing Authority Key Identifier"

"""``fedgenome client check``: can this hospital's node reach its SuperLink, and trust it?

Each check says what it found and, when it fails, how to fix it: the address parses; the root
certificate is a CA certificate; the SuperLink accepts a TCP connection; its TLS certificate is
signed by that CA, valid now, and names the host the node dials (what the SuperNode's gRPC channel
will check); and, with a site directory, the site's key loads (its fingerprint is printed for the
operator to compare with ``fedgenome pki check``: whether the SuperLink has registered it shows only
when the node activates, so that check stays the operator's).
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from fedgenome.configs.errors import ConfigError, FedGenomeError
from fedgenome.shared.hosts import split_address

_VERIFY_FIXES = {  # OpenSSL's verify codes
    10: "the SuperLink's certificate has expired: the operator renews it ('fedgenome pki renew-server')",
    62: "the SuperLink's certificate does not name this host: dial a name it lists (see 'fedgenome pki "
        "check' at the operator), or the operator renews it with --host for this name",
}
_WRONG_CA = ("the SuperLink's certificate is not signed by this root certificate: use the consortium's "
             "ca.crt that the operator sent")


@dataclass(frozen=True)
class Check:
    """One preflight check: what it checked, whether it passed, what it found, and the fix."""

    name: str
    ok: bool
    detail: str
    fix: str | None = None


class PreflightFailed(FedGenomeError):
    """A preflight check failed (exit 4); the checks printed before say which and how to fix it."""

    exit_code = 4


def check_superlink(address: str, *, root_certificates: Path, timeout: float = 10.0) -> list[Check]:
    """Run the checks in order; the first that fails ends the list (the later ones depend on it)."""
    try:
        host, port = split_address(address)
    except ConfigError as exc:
        return [Check("address", False, str(exc), "give --superlink HOST:PORT, e.g. example.org:9092")]
    checks = [Check("address", True, f"{host} port {port}")]
    try:
        context = ssl.create_default_context(cafile=str(root_certificates))
    except (OSError, ssl.SSLError) as exc:
        return [*checks, Check("root certificate", False, f"{root_certificates}: {exc}",
                               "pass the consortium's ca.crt (PEM) as --root-certificates")]
    checks.append(Check("root certificate", True, str(root_certificates)))
    context.set_alpn_protocols(["h2"])  # as gRPC dials
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        return [*checks, Check("reachable", False, f"no connection to {host}:{port} ({exc.strerror or exc})",
                               "check the address, that the SuperLink runs, and the firewall between")]
    checks.append(Check("reachable", True, f"{host}:{port} accepts connections"))
    with raw:
        try:
            with context.wrap_socket(raw, server_hostname=host) as tls:
                version = tls.version()
        except ssl.SSLCertVerificationError as exc:
            fix = _VERIFY_FIXES.get(exc.verify_code, _WRONG_CA)
            return [*checks, Check("TLS", False, exc.verify_message or str(exc), fix)]
        except (ssl.SSLError, OSError) as exc:
            return [*checks, Check("TLS", False, f"no TLS handshake with {host}:{port} ({exc})",
                                   "is this the SuperLink's port (not the Control API's)? is it started "
                                   "with TLS?")]
    checks.append(Check("TLS", True, f"{version}; the certificate is signed by the root certificate and "
                                     f"names {host}"))
    return checks


def check_site_key(key: Path) -> Check:
    """The site's private key loads; its fingerprint, for the operator to compare with the registry."""
    from fedgenome.privacy.keys import fingerprint, load_private_key

    try:
        private = load_private_key(key)
    except FedGenomeError as exc:
        return Check("site key", False, str(exc), "make one with 'fedgenome client keygen --site DIR'")
    return Check("site key", True, f"{key}: fingerprint {fingerprint(private.public_key())[:16]} (the "
                                   "operator's 'fedgenome pki check' lists the registered ones)")

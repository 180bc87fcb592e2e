"""``fedgenome client check``: can this hospital's node reach its SuperLink, and trust it?

Each check says what it found and, when it fails, how to fix it: the address parses; the root
certificate is a CA certificate; the SuperLink accepts a TCP connection; its TLS certificate is
signed by that CA, valid now, and names the host the node dials (what the SuperNode's gRPC channel
will check); and, with a site directory, the site's key loads and the SuperLink has registered it.

That last check asks the SuperLink to activate the node with an out-of-range heartbeat interval,
signed with the site's key as a SuperNode signs: Flower 1.42 looks the key up first ("no SuperNode
found with the given public key" when it is not registered) and checks the interval only after,
refusing it; so a registered key is told apart from an unknown one and nothing is activated.
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


ACTIVATION_FAILED, BAD_HEARTBEAT = 2004, 2003
"""Flower's API error codes (``flwr.supercore.error.ApiErrorCode``): the key is unknown; it is known."""


def check_key_registered(address: str, *, root_certificates: Path, key: Path,
                         timeout: float = 20.0) -> Check:
    """Whether the SuperLink at ``address`` has registered the site's key (nothing is activated)."""
    import httpx
    from flwr.proto.fleet_pb2 import ActivateNodeRequest
    from flwr.supercore.error import FlowerError
    from flwr.supercore.interceptors.http.runtime_version import RuntimeVersionHttpInterceptor
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes
    from flwr.supercore.protobuf.client import ProtobufClientInterceptor
    from flwr.supernode.fleet_http_client import FleetHttpClient
    from flwr.supernode.node_auth_http_interceptor import NodeAuthHttpInterceptor

    from fedgenome.privacy.keys import fingerprint, load_private_key

    private = load_private_key(key)
    public = private.public_key()
    short = fingerprint(public)[:16]
    interceptors: list[ProtobufClientInterceptor] = [
        RuntimeVersionHttpInterceptor(component_name="SuperNode"), NodeAuthHttpInterceptor(private, public)]
    request = ActivateNodeRequest(public_key=public_key_to_bytes(public), heartbeat_interval=-1.0)
    try:
        with FleetHttpClient.from_server_address(address, False, root_certificates.read_bytes(),
                                                 interceptors=interceptors) as client:
            client.ActivateNode(request)
    except httpx.HTTPStatusError as exc:
        error = FlowerError.from_json(exc.response.text)
        code = error.code if error is not None else None
        if code == BAD_HEARTBEAT:
            return Check("key registered", True, f"the SuperLink knows key {short}")
        if code == ACTIVATION_FAILED:
            return Check("key registered", False, f"the SuperLink has not registered key {short}",
                         "send keys/NAME.pub to the operator, who runs 'fedgenome pki add-site NAME "
                         "--public-key FILE' and 'fedgenome server register-site NAME'")
        return Check("key registered", False, f"the SuperLink answered HTTP {exc.response.status_code}"
                     f"{f' (Flower error {code})' if code else ''}: {exc.response.text[:200]}",
                     "ask the operator whether SuperNode authentication is on ('server start' "
                     "without --no-auth) and the SuperLink runs flwr 1.42")
    except httpx.HTTPError as exc:
        return Check("key registered", False, f"no answer from the Fleet API at {address} ({exc})",
                     "check that this is the SuperLink's Fleet API port")
    return Check("key registered", False, "the SuperLink accepted an invalid activation",
                 "the SuperLink is not the Flower 1.42 this node runs: ask the operator which it is")

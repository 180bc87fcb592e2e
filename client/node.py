"""A hospital's node: Flower's SuperNode pointed at the site directory, and its ClientApp worker.

The SuperNode runs with ``--isolation process``: it starts no ClientApp process of its own, and
the site's long-lived worker (``python -m fedgenome.client.worker``) serves its tasks. The two talk over the
SuperNode's local Runtime API, which is locked down on two counts: HTTPS with a certificate for
127.0.0.1 from a throwaway CA made for this node at every start (:func:`runtime_security`; the
CA's key is never written), and an HMAC secret (``--superexec-auth-secret-file``, 32 random bytes,
mode 0600) without which no task is handed out. The SuperNode is started through
``python -m fedgenome.client.supernode``, which shortens Flower's fixed waits before running it.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from fedgenome.configs.errors import ConfigError
from fedgenome.shared import wire
from fedgenome.shared.atomic import atomic_path
from fedgenome.shared.hosts import LOOPBACK
from fedgenome.shared.tls import TlsFiles, make_certificates

HOST = LOOPBACK  # the Runtime API listens on loopback only
JOURNAL = "worker.jsonl"  # in the site's state/: one line per task its worker served


@dataclass(frozen=True)
class RuntimeSecurity:
    """The files that lock a SuperNode's local Runtime API: TLS for 127.0.0.1 and the HMAC secret."""

    tls: TlsFiles
    secret: Path


def runtime_security(directory: Path, *, days: int = 365) -> RuntimeSecurity:
    """A fresh CA, a Runtime API certificate for 127.0.0.1 and a secret, in ``directory``."""
    files = make_certificates(directory, hosts=(HOST,), days=days, keep_ca_key=False)
    secret = directory / "superexec.secret"
    with atomic_path(secret) as tmp:
        os.chmod(tmp, 0o600)
        tmp.write_bytes(os.urandom(32))
    return RuntimeSecurity(files, secret)


def supernode_command(*, site: Path, superlink: str, clientappio_port: int,
                      root_cert: Path | None, runtime: RuntimeSecurity, insecure: bool = False,
                      auth_key: Path | None = None, keep_updates: bool = False,
                      max_retries: int | None = None, max_wait_time: float | None = None) -> list[str]:
    """The SuperNode for ``site``; TLS to the SuperLink unless ``insecure`` was asked for explicitly.

    ``auth_key`` is the site's private key for SuperNode authentication (its public half must be
    registered with the SuperLink); ``keep_updates`` keeps a copy of every update sent;
    ``runtime`` locks the local Runtime API its worker uses. ``max_retries`` and ``max_wait_time``
    bound how long a lost SuperLink is retried (Flower backs off between tries); None, the
    default, retries for as long as it takes, as a hospital's service should.
    """
    node_config = f"{wire.NODE_SITE}='{site.resolve()}'" + (
        f" {wire.NODE_KEEP_UPDATES}=true" if keep_updates else "")
    command = [sys.executable, "-m", "fedgenome.client.supernode", "--superlink", superlink,
               "--host", HOST, "--port", str(clientappio_port),
               "--node-config", node_config, "--isolation", "process",
               "--ssl-certfile", str(runtime.tls.server_cert),
               "--ssl-keyfile", str(runtime.tls.server_key),
               "--ssl-ca-certfile", str(runtime.tls.ca_cert),
               "--superexec-auth-secret-file", str(runtime.secret)]
    if max_retries is not None:
        command += ["--max-retries", str(max_retries)]
    if max_wait_time is not None:
        command += ["--max-wait-time", str(max_wait_time)]
    if insecure:
        command.append("--insecure")
    elif root_cert is None:
        raise ConfigError("TLS is on by default: give --root-certificates (the consortium CA), or "
                          "--insecure explicitly for a plaintext test deployment")
    else:
        command += ["--root-certificates", str(root_cert)]
    if auth_key is not None:
        command += ["--auth-supernode-private-key", str(auth_key)]
    return command


def worker_command(*, site: Path, clientappio_port: int, runtime: RuntimeSecurity,
                   supernode_pid: int, trust: tuple[str, ...] = ()) -> list[str]:
    """The site's long-lived ClientApp worker, serving the SuperNode at ``clientappio_port``.

    It runs the app bundle of the installed fedgenome and those whose digests are in ``trust``.
    """
    return [sys.executable, "-m", "fedgenome.client.worker", "--runtime-api-address",
            f"{HOST}:{clientappio_port}", "--root-certificates", str(runtime.tls.ca_cert),
            "--superexec-auth-secret-file", str(runtime.secret),
            "--parent-pid", str(supernode_pid),
            "--journal", str(site.resolve() / "state" / JOURNAL),
            *(arg for digest in trust for arg in ("--trust", digest))]

"""Flower's real deployment engine, driven as processes: the SuperLink and the ``flwr`` CLI.

Every command binds to the address it is given (the demo and the tests use 127.0.0.1 only). TLS
is the default; plaintext needs an explicit ``insecure=True``. The SuperLink never installs app
dependencies at run time: the environment that runs it already has them.
"""

from __future__ import annotations

import json
import logging
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import tomli_w

from fedgenome.configs.errors import ConfigError
from fedgenome.configs.errors import (
    DeploymentError as DeploymentError,  # re-exported; it lives in fedgenome.configs.errors
)
from fedgenome.configs.validation import read_toml
from fedgenome.shared.app_bundle import bundle_digest, installed_digest
from fedgenome.shared.atomic import write_text
from fedgenome.shared.processes import flower_env, flower_tool
from fedgenome.shared.tls import TlsFiles

log = logging.getLogger(__name__)


IN_MEMORY = ":flwr-in-memory:"  # a SuperLink database that lives and dies with the process


def superlink_command(*, host: str, port: int, database: Path | str, tls: TlsFiles | None,
                      insecure: bool = False, auth: bool = False) -> list[str]:
    """``flower-superlink`` listening on ``host:port`` (Fleet, Control and Runtime APIs).

    ``database`` is a SQLite file for runs, nodes and messages, or :data:`IN_MEMORY`.
    """
    command = [flower_tool("flower-superlink"), "--host", host, "--port", str(port),
               "--database", str(database), "--disable-runtime-dependency-installation"]
    if auth:
        command.append("--enable-supernode-auth")
    return command + _tls_server_args(tls, insecure)


def _tls_server_args(tls: TlsFiles | None, insecure: bool) -> list[str]:
    if insecure:
        return ["--insecure"]
    if tls is None:
        raise ConfigError("TLS is on by default: give the certificate files, or --insecure "
                          "explicitly for a plaintext test deployment")
    return ["--ssl-ca-certfile", str(tls.ca_cert), "--ssl-certfile", str(tls.server_cert),
            "--ssl-keyfile", str(tls.server_key)]


def wait_healthy(host: str, port: int, *, ca_cert: Path | None, timeout: float = 60.0) -> None:
    """Poll ``/health`` of a SuperLink until it answers 200."""
    scheme = "http" if ca_cert is None else "https"
    context = ssl.create_default_context(cafile=str(ca_cert)) if ca_cert is not None else None
    deadline = time.monotonic() + timeout
    url = f"{scheme}://{host}:{port}/health"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5, context=context) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise DeploymentError(f"the SuperLink at {url} did not become healthy within {timeout:.0f} s")


def write_connection(flwr_home: Path, name: str, *, address: str, ca_cert: Path | None) -> None:
    """Set the SuperLink connection ``name`` in ``$FLWR_HOME/config.toml`` and make it the default.

    An existing file is merged into: the operator's other connections and settings stay, and only
    the connection ``name`` is replaced (so a switch to TLS drops its old ``insecure``).

    Raises:
        ConfigError: The existing file is not valid TOML, or its ``superlink`` is not a table.
    """
    path = flwr_home / "config.toml"
    document = read_toml(path) if path.is_file() else {}
    superlink = document.setdefault("superlink", {})
    if not isinstance(superlink, dict):
        raise ConfigError(f"{path}: 'superlink' is not a table; fix or move the file")
    connection: dict[str, Any] = {"address": address}
    if ca_cert is None:
        connection["insecure"] = True
    else:
        connection["root-certificates"] = str(ca_cert)
    superlink["default"] = name
    superlink[name] = connection
    write_text(path, tomli_w.dumps(document))


def flwr(args: list[str], *, flwr_home: Path, timeout: float = 120.0) -> str:
    """Run a ``flwr`` CLI command; its stdout, or DeploymentError with its output."""
    proc = subprocess.run([flower_tool("flwr"), *args], capture_output=True, text=True,
                          env=flower_env(flwr_home), timeout=timeout, check=False)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
        raise DeploymentError(f"flwr {args[0]} failed (exit {proc.returncode}): {' | '.join(tail)}")
    return proc.stdout


class SuperLinkUnreachable(DeploymentError):
    """The SuperLink did not answer: it is down, restarting, or the address is wrong."""


def flwr_json(args: list[str], *, flwr_home: Path, timeout: float = 120.0) -> dict[str, Any]:
    """Run a ``flwr`` command with ``--format json``; its answer, or why it failed.

    ``flwr`` exits 0 when it cannot reach the SuperLink and says so in ``error-message``:
    that is :class:`SuperLinkUnreachable`; any other refusal is a :class:`DeploymentError`.
    """
    out = flwr([*args, "--format", "json"], flwr_home=flwr_home, timeout=timeout)
    data: dict[str, Any] = json.loads(out[out.index("{"):])
    if data.get("success", True):
        return data
    message = " ".join(str(data.get("error-message", data)).split())
    if "Connection to the SuperLink is unavailable" in message:
        raise SuperLinkUnreachable(f"the SuperLink did not answer 'flwr {args[0]}': {message}")
    raise DeploymentError(f"flwr {args[0]} was refused: {message}")


def submit_run(app_dir: Path, connection: str, run_config: dict[str, Any], *,
               flwr_home: Path) -> int:
    """Submit the app in ``app_dir`` as a new run; its run id.

    The bundle's content digest is logged: trusting SuperNodes run it only when it is their
    installed fedgenome's or one they pinned (client/trust.py).
    """
    from flwr.cli.build import build_fab_from_disk

    digest = bundle_digest(build_fab_from_disk(app_dir))
    # A TOML file, not KEY=VALUE words: Flower splits those at quotes, so no path could hold one.
    with tempfile.TemporaryDirectory() as tmp:
        overrides = Path(tmp) / "run-config.toml"
        overrides.write_text(tomli_w.dumps(run_config), encoding="utf-8")
        data = flwr_json(["run", str(app_dir), connection, "--run-config", str(overrides)],
                         flwr_home=flwr_home, timeout=300)
    if "run-id" not in data:
        raise DeploymentError(f"flwr run did not start a run: {data}")
    run_id = int(data["run-id"])
    log.info("run %d submitted: app bundle %s%s", run_id, digest,
             " (the installed fedgenome's)" if digest == installed_digest() else "")
    return run_id


def register_supernode(public_key: Path, connection: str, *, flwr_home: Path,
                       name: str | None = None) -> int:
    """Register a site's public key with a SuperLink that runs with SuperNode authentication.

    Returns the node id the SuperLink gave it. Only registered keys may connect.
    """
    if not public_key.is_file():
        raise ConfigError(f"{public_key}: no such public key; make the site's key pair with "
                          "'fedgenome pki add-site'")
    args = ["supernode", "register", str(public_key), connection]
    data = flwr_json(args + (["--name", name] if name else []), flwr_home=flwr_home)
    if "node-id" not in data:
        raise DeploymentError(f"flwr supernode register did not register {public_key}: {data}")
    return int(data["node-id"])


def unregister_supernode(node_id: int, connection: str, *, flwr_home: Path) -> None:
    """Revoke a registered SuperNode at the SuperLink: its key may no longer connect."""
    flwr_json(["supernode", "unregister", str(node_id), connection], flwr_home=flwr_home)


def list_supernodes(connection: str, *, flwr_home: Path) -> list[dict[str, Any]]:
    """The SuperNodes registered with the SuperLink, as ``flwr supernode ls`` lists them."""
    nodes: list[dict[str, Any]] = flwr_json(["supernode", "ls", connection], flwr_home=flwr_home).get(
        "nodes", [])
    return nodes


def run_status(run_id: int, connection: str, *, flwr_home: Path) -> str:
    """The status of a run, e.g. 'running' or 'finished:completed'."""
    data = flwr_json(["ls", connection, "--run-id", str(run_id)], flwr_home=flwr_home)
    runs = data.get("runs", [])
    if not runs:
        raise DeploymentError(f"run {run_id} is unknown to the SuperLink")
    return str(runs[0].get("status", "unknown"))


def list_runs(connection: str, *, flwr_home: Path) -> list[dict[str, Any]]:
    """The SuperLink's runs as ``flwr ls`` lists them (run id, app, status, times)."""
    runs: list[dict[str, Any]] = flwr_json(["ls", connection], flwr_home=flwr_home).get("runs", [])
    return runs


def stop_run(run_id: int, connection: str, *, flwr_home: Path) -> None:
    """Ask the SuperLink to stop a run (``flwr stop``); DeploymentError when it refuses."""
    flwr_json(["stop", str(run_id), connection], flwr_home=flwr_home, timeout=60)


def online_nodes(connection: str, *, flwr_home: Path) -> set[int]:
    """The ids of the SuperNodes that are connected to the SuperLink now."""
    return {int(n["node-id"]) for n in list_supernodes(connection, flwr_home=flwr_home)
            if n.get("status") == "online"}


def wait_online(count: int, connection: str, *, flwr_home: Path, timeout: float = 120.0) -> None:
    """Wait until at least ``count`` SuperNodes are online; DeploymentError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while len(online := online_nodes(connection, flwr_home=flwr_home)) < count:
        if time.monotonic() > deadline:
            raise DeploymentError(f"{len(online)} of {count} SuperNodes were online after "
                                  f"{timeout:.0f} s; see their logs")
        time.sleep(0.5)


def run_log_tail(run_id: int, connection: str, *, flwr_home: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a run's ServerApp log (what ``flwr log --show`` prints), or why not."""
    try:
        out = flwr(["log", str(run_id), connection, "--show"], flwr_home=flwr_home, timeout=60)
    except (DeploymentError, subprocess.TimeoutExpired) as err:
        return f"(the run's log could not be read: {err})"
    return "\n".join(out.rstrip().splitlines()[-lines:])

"""A whole federation on one machine: a SuperLink and, per site, a SuperNode and its ClientApp worker.

Used by ``fedgenome demo``, the benchmark and the integration tests. Everything listens on
127.0.0.1. Each site's long-lived worker (``client/worker.py``) serves every message of a run in
one process; a thread restarts a worker that dies (``client/supervisor.py``). The SuperLink keeps
its state in memory: a local federation's runs end with it (checkpoints and reports are in each
run's directory, and a resumed run starts from there). Unless
``insecure`` is asked for, the federation has its own consortium PKI (``<workdir>/pki``, as
``fedgenome pki init`` makes it: a CA and the SuperLink's certificate) and SuperNode
authentication is on: each site's key (``keys/<site>``, the one that signs its ledger) is added to
the PKI's registry and registered with the SuperLink before its SuperNode starts. Leaving the
``with`` block (normally, on an exception or on Ctrl-C) stops every process and its children.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from fedgenome.client.supervisor import NodeProcesses, NodeSpec
from fedgenome.configs.schema import load_site_manifest
from fedgenome.privacy.keys import create_site_key
from fedgenome.privacy.site_state import site_key_path
from fedgenome.server.deploy import (
    IN_MEMORY,
    register_supernode,
    submit_run,
    superlink_command,
    wait_healthy,
    wait_online,
    write_connection,
)
from fedgenome.server.pki import PkiLayout, add_site, init_pki, open_pki
from fedgenome.server.progress import OnRound, follow_run
from fedgenome.shared.app_bundle import APP_DIR
from fedgenome.shared.hosts import LOCAL_NAMES, LOOPBACK
from fedgenome.shared.processes import ProcessGroup, flower_env
from fedgenome.shared.tls import TlsFiles

log = logging.getLogger(__name__)
HOST = LOOPBACK
CONNECTION = "local"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class LocalFederation:
    """Start with ``with LocalFederation(workdir, sites) as fed:``, then ``fed.run(config)``."""

    def __init__(self, workdir: Path, sites: list[Path], *, insecure: bool = False,
                 auth: bool = True, keep_updates: bool = False,
                 relay: Callable[[int, TlsFiles | None], int] | None = None) -> None:
        """Describe the federation; ``start`` (or ``with``) starts it.

        Args:
            workdir: Where certificates, Flower's state and the processes' logs go.
            sites: The site directories, one SuperNode each.
            insecure: Plaintext instead of TLS (tests that must read the wire only).
            auth: SuperNode authentication: only the sites' registered keys may connect (Flower
                allows it with TLS only, so ``insecure`` turns it off).
            keep_updates: Sites keep a copy of every update they send (``state/outbox/``).
            relay: Given the SuperLink's port and TLS files, start something in between and
                return the port the SuperNodes should connect to instead (the tests' wire tap).
        """
        self.workdir = workdir.resolve()
        self.sites = [s.resolve() for s in sites]
        self.insecure = insecure
        self.auth = auth and not insecure
        self.keep_updates = keep_updates
        self.relay = relay
        self.fleet_port = 0
        self.flwr_home = self.workdir / "flwr-home"
        self.group = ProcessGroup(self.workdir / "logs")
        self.tls: TlsFiles | None = None
        self.pki: PkiLayout | None = None
        self.port = 0
        self.nodes: dict[str, NodeProcesses] = {}  # by site directory name
        self._run_dirs: dict[int, Path] = {}
        self._stopping = threading.Event()
        self._supervisor = threading.Thread(target=self._supervise, name="node-supervisor",
                                            daemon=True)

    def __enter__(self) -> LocalFederation:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop supervising, then stop every process and its children."""
        self._stopping.set()
        if self._supervisor.is_alive():
            self._supervisor.join()
        self.group.stop()

    def _supervise(self) -> None:
        while not self._stopping.wait(0.5):
            for node in list(self.nodes.values()):
                node.supervise()

    def start(self) -> None:
        """Start the SuperLink, wait until it is healthy, then start one SuperNode per site."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.insecure:
            root = self.workdir / "pki"
            self.pki = open_pki(root) if root.exists() else init_pki(root, hosts=LOCAL_NAMES,
                                                                     days=30)
            self.tls = self.pki.tls
        self.port = free_port()
        self.group.start("superlink", superlink_command(
            host=HOST, port=self.port, database=IN_MEMORY, tls=self.tls,
            insecure=self.insecure, auth=self.auth), env=flower_env(self.flwr_home), cwd=self.workdir)
        ca = None if self.tls is None else self.tls.ca_cert
        wait_healthy(HOST, self.port, ca_cert=ca)
        write_connection(self.flwr_home, CONNECTION, address=f"{HOST}:{self.port}", ca_cert=ca)
        self.fleet_port = self.relay(self.port, self.tls) if self.relay else self.port
        for site in self.sites:
            if self.auth:
                self.register(site)
            self.start_node(site)
        self._supervisor.start()
        wait_online(len(self.sites), CONNECTION, flwr_home=self.flwr_home)  # round 1 sees all
        log.info("SuperLink on %s:%d (%s, %s) with %d SuperNodes", HOST, self.port,
                 "plaintext" if self.insecure else "TLS",
                 "authenticated nodes" if self.auth else "no node authentication", len(self.sites))

    def site_key(self, site: Path) -> Path:
        """The site's private key (created if it has none yet); its ``.pub`` lies beside it."""
        name = load_site_manifest(site).name
        key = site_key_path(site, name)
        if not key.exists():
            create_site_key(key.parent, name)
        return key

    def register(self, site: Path) -> int:
        """Add the site's key to the PKI registry and the SuperLink; the node id it was given."""
        assert self.pki is not None, "SuperNode authentication needs TLS and the PKI"
        name = load_site_manifest(site).name
        if not self.pki.site_public(name).exists():
            add_site(self.pki.root, name, site_dir=site)
        return register_supernode(self.pki.site_public(name), CONNECTION, flwr_home=self.flwr_home,
                                  name=name)  # the name the node's replies must carry

    def start_node(self, site: Path, *, key: Path | None = None,
                   env: dict[str, str] | None = None) -> None:
        """Start (or restart) the SuperNode of ``site`` and its ClientApp worker.

        Args:
            site: The site directory.
            key: The key its SuperNode authenticates with (default: the site's own).
            env: Extra environment for both processes.
        """
        # Several hospitals share this machine's cores: a share of the math threads each.
        threads = max(1, (os.cpu_count() or 1) // len(self.sites))
        auth_key = (key or self.site_key(site)) if self.auth else None
        spec = NodeSpec(site=site, superlink=f"{HOST}:{self.fleet_port}", port=free_port(),
                        home=self.workdir / "nodes" / site.name,
                        root_cert=None if self.tls is None else self.tls.ca_cert,
                        insecure=self.insecure, auth_key=auth_key,
                        keep_updates=self.keep_updates, threads=threads,
                        max_retries=10, max_wait_time=120.0,  # a test's lost SuperLink is gone
                        env=tuple(sorted((env or {}).items())))
        node = NodeProcesses(spec, self.group, cwd=self.workdir)
        node.start()
        self.nodes[site.name] = node

    def kill_node(self, site: Path) -> None:
        """SIGKILL a site's SuperNode and its worker (a crashed hospital)."""
        self.nodes[site.name].kill()

    def kill_worker(self, site: Path) -> int:
        """SIGKILL a site's ClientApp worker only (a crashed app); the supervisor restarts it.

        Returns the process id of the worker killed.
        """
        node = self.nodes[site.name]
        pid = node.worker_pid
        node.kill_worker()
        return pid

    def submit(self, run_config: dict[str, Any], *, app_dir: Path = APP_DIR) -> int:
        """Submit a run of the fedgenome app (or of the app in ``app_dir``); its run id."""
        if self.pki is not None:  # the declared patient counts of the sites registered here
            run_config = {"pki": str(self.pki.root.resolve()), **run_config}
        run_id = submit_run(app_dir, CONNECTION, run_config, flwr_home=self.flwr_home)
        if run_config.get("run-dir"):
            self._run_dirs[run_id] = Path(str(run_config["run-dir"]))
        return run_id

    def wait(self, run_id: int, *, timeout: float, on_round: OnRound | None = None) -> str:
        """Wait for a run to finish; its final status. ``on_round`` is called as each round ends."""
        return follow_run(run_id, CONNECTION, flwr_home=self.flwr_home, timeout=timeout,
                          run_dir=self._run_dirs.get(run_id), on_round=on_round)

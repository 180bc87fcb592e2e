"""A site's processes, kept running: its SuperNode and its long-lived ClientApp worker.

:class:`NodeProcesses` starts both (the Runtime API's TLS files and secret made fresh first, see
``client/node.py``) and, on each :meth:`NodeProcesses.supervise`, restarts a worker that died (a
hard crash, ``sys.exit`` in the app), at once the first time and backing off up to 30 s while it
keeps dying within seconds. A restarted worker, like a restarted site, resumes from the site's
``state/`` on disk: nothing of a round lives only in the worker. When the SuperNode itself ends,
the worker is stopped and not restarted. ``fedgenome client start`` runs :func:`run_node` in the
foreground; the local federation supervises its nodes from a thread.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from fedgenome.client.node import RuntimeSecurity, runtime_security, supernode_command, worker_command
from fedgenome.configs.errors import DeploymentError
from fedgenome.shared.processes import ProcessGroup, flower_env

log = logging.getLogger(__name__)
QUICK_DEATH = 10.0  # a worker that dies sooner than this after its start is restarted with back-off
MAX_BACKOFF = 30.0
#: flower-supernode's exit status for every error (its own code, e.g. 305 when it cannot connect or
#: the SuperLink refuses to activate it, is only printed). The SuperLink refuses a node it still
#: counts online, for about 50 s after a crash (Flower's heartbeat patience), so a failed SuperNode
#: is restarted with back-off for ``NodeSpec.retry_for`` seconds.
FLOWER_ERROR_STATUS = 1
NODE_MAX_BACKOFF = 10.0  # seconds between SuperNode restarts at most: rejoin soon after the refusal
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class NodeSpec:
    """What to start for one site."""

    site: Path
    superlink: str
    port: int  # the SuperNode's local Runtime API port (one per node on a host)
    home: Path  # the node's FLWR_HOME; the Runtime API files go to home/runtime/
    root_cert: Path | None
    insecure: bool = False
    auth_key: Path | None = None
    keep_updates: bool = False
    threads: int | None = None  # OMP/MKL threads for the worker (None: torch's default)
    retry_for: float = 900.0  # seconds to keep restarting a SuperNode that cannot connect (0: never)
    env: tuple[tuple[str, str], ...] = ()  # extra environment of both processes
    trust: tuple[str, ...] = ()  # app bundles run besides the installed fedgenome's (client/trust.py)
    max_retries: int | None = None  # reconnection tries to a lost SuperLink (None: no limit)
    max_wait_time: float | None = None  # seconds of reconnecting at most (None: no limit)


class NodeProcesses:
    """A site's SuperNode and ClientApp worker in ``group``, as ``supernode-NAME`` and ``worker-NAME``."""

    def __init__(self, spec: NodeSpec, group: ProcessGroup, *, cwd: Path | None = None) -> None:
        self.spec = spec
        self.group = group
        self.cwd = cwd
        self.supernode = f"supernode-{spec.site.name}"
        self.worker = f"worker-{spec.site.name}"
        self.restarts = 0
        self._runtime: RuntimeSecurity | None = None
        self._lock = threading.Lock()
        self._started = 0.0
        self._quick_deaths = 0
        self._restart_at: float | None = None
        self._node_started = 0.0
        self._refused_since: float | None = None  # when the SuperNode first failed to connect
        self._node_retries = 0
        self._node_retry_at: float | None = None
        env = flower_env(spec.home.resolve())
        if spec.threads is not None:
            env |= {"OMP_NUM_THREADS": str(spec.threads), "MKL_NUM_THREADS": str(spec.threads)}
        self.env = env | dict(spec.env)

    def start(self) -> None:
        """Start the SuperNode, then its worker."""
        with self._lock:
            self._start_both()

    def _start_both(self) -> None:
        spec = self.spec
        self._runtime = runtime_security(spec.home / "runtime")
        self.group.start(self.supernode, supernode_command(
            site=spec.site, superlink=spec.superlink, clientappio_port=spec.port,
            root_cert=spec.root_cert, runtime=self._runtime, insecure=spec.insecure,
            auth_key=spec.auth_key, keep_updates=spec.keep_updates, max_retries=spec.max_retries,
            max_wait_time=spec.max_wait_time), env=self.env, cwd=self.cwd)
        self._node_started = time.monotonic()
        self._start_worker()

    def _start_worker(self) -> None:
        assert self._runtime is not None
        command = worker_command(site=self.spec.site, clientappio_port=self.spec.port,
                                 runtime=self._runtime,
                                 supernode_pid=self.group.procs[self.supernode].pid,
                                 trust=self.spec.trust)
        self.group.start(self.worker, command, env=self.env, cwd=self.cwd)
        self._started = time.monotonic()

    @property
    def runtime(self) -> RuntimeSecurity:
        """The files locking the SuperNode's Runtime API (made by :meth:`start`)."""
        if self._runtime is None:
            raise RuntimeError(f"the node of {self.spec.site.name} has not been started")
        return self._runtime

    @property
    def worker_pid(self) -> int:
        """The process id of the current worker."""
        return self.group.procs[self.worker].pid

    def supervise(self) -> int | None:
        """Restart the worker if it died; the SuperNode's exit status once it has ended, else None."""
        with self._lock:
            if self._node_retry_at is not None:
                return self._retry_node()
            code = self.group.procs[self.supernode].poll()
            if code is not None:
                if self.group.running(self.worker):
                    self.group.procs[self.worker].terminate()
                if code == FLOWER_ERROR_STATUS and self._may_retry_node():
                    return None
                return code
            if time.monotonic() - self._node_started > 2 * MAX_BACKOFF:  # it has stayed connected
                self._refused_since, self._node_retries = None, 0
            if self.group.running(self.worker):
                return None
            now = time.monotonic()
            if self._restart_at is None:
                quick = now - self._started < QUICK_DEATH
                self._quick_deaths = self._quick_deaths + 1 if quick else 0
                delay = min(MAX_BACKOFF, 2.0 ** self._quick_deaths) if quick else 0.0
                log.warning("the ClientApp worker of %s exited with status %s; restarting it in "
                            "%.0f s", self.spec.site.name, self.group.procs[self.worker].returncode,
                            delay)
                self._restart_at = now + delay
            if now >= self._restart_at:
                self._restart_at = None
                self.restarts += 1
                self._start_worker()
            return None

    def _may_retry_node(self) -> bool:
        """Schedule a restart of a SuperNode that could not connect, unless retry_for is spent."""
        now = time.monotonic()
        self._refused_since = self._refused_since or now
        if now - self._refused_since >= self.spec.retry_for:
            log.error("the SuperNode of %s could not connect to %s for %.0f s; giving up",
                      self.spec.site.name, self.spec.superlink, now - self._refused_since)
            return False
        delay = min(NODE_MAX_BACKOFF, 2.0 ** self._node_retries)
        self._node_retries += 1
        log.warning("the SuperNode of %s stopped with an error (%s); retrying in %.0f s (a SuperLink "
                    "that is down, or that still counts this node online after a crash, for up to "
                    "about 50 s, refuses it for a while)", self.spec.site.name, self._reason(), delay)
        self._node_retry_at = now + delay
        return True

    def _reason(self) -> str:
        """Flower's own exit code and message from the SuperNode's log, where there is one."""
        if self.group.log_dir is None:
            return "Flower's reason is in its output above"
        path = self.group.log_dir / f"{self.supernode}.log"
        lines = path.read_text(errors="replace").splitlines()[-40:] if path.exists() else []
        said = [ANSI.sub("", line).replace("ERROR :", "").strip() for line in lines
                if "Exit Code:" in line or line.startswith("[code:")]
        return " ".join(said[-2:]) or f"see {path}"

    def _retry_node(self) -> int | None:
        assert self._node_retry_at is not None
        if time.monotonic() >= self._node_retry_at:
            self._node_retry_at = None
            if self.group.running(self.worker):
                self.group.procs[self.worker].wait(timeout=30)
            self._start_both()
        return None

    def kill(self) -> None:
        """SIGKILL the SuperNode and the worker (a crashed hospital)."""
        with self._lock:
            for name in (self.supernode, self.worker):
                if name in self.group.procs:
                    self.group.kill(name)

    def kill_worker(self) -> None:
        """SIGKILL the worker only (a crashed ClientApp); :meth:`supervise` restarts it."""
        self.group.kill(self.worker)


def run_node(spec: NodeSpec, *, poll: float = 0.5) -> None:
    """Run a site's node in the foreground until its SuperNode ends or Ctrl-C (KeyboardInterrupt).

    Raises:
        DeploymentError: The SuperNode exited with a non-zero status.
    """
    with ProcessGroup(None) as group:
        node = NodeProcesses(spec, group)
        node.start()
        while (code := node.supervise()) is None:
            time.sleep(poll)
    if code != 0:
        raise DeploymentError(f"the SuperNode of {spec.site} exited with status {code}")

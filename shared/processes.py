"""Child processes that are always cleaned up: each in its own session, killed as a group.

Flower's SuperLink starts children of its own (SuperExec, one ServerApp process per run) that
outlive a killed parent; killing the whole process group leaves nothing behind, also
on Ctrl-C, on an exception, or when the owning process is terminated.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import psutil

from fedgenome.configs.errors import FedGenomeError

log = logging.getLogger(__name__)


class ProcessGroup:
    """Starts commands in new sessions and stops every one of them, with all their children."""

    def __init__(self, log_dir: Path | None) -> None:
        self.log_dir = log_dir  # None: the children write to this process's stdout and stderr
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, command: Sequence[str], *, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        """Start ``command`` as ``name``; its output goes to ``log_dir/name.log``.

        A name already in the group (a process that ended) is replaced.
        """
        with contextlib.ExitStack() as stack:
            out = None
            if self.log_dir is not None:
                self.log_dir.mkdir(parents=True, exist_ok=True)
                out = stack.enter_context(open(self.log_dir / f"{name}.log", "ab"))
            proc = subprocess.Popen(list(command), stdout=out,
                                    stderr=None if out is None else subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                                    start_new_session=True)
        self.procs[name] = proc
        log.debug("started %s (pid %d): %s", name, proc.pid, " ".join(command))
        return proc

    def kill(self, name: str) -> None:
        """SIGKILL ``name`` and every process it started (Flower detaches some into new sessions)."""
        proc = self.procs[name]
        for pid in tree(proc.pid):
            _signal(pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def running(self, name: str) -> bool:
        """Whether ``name`` was started and has not exited."""
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is None

    def stop(self, *, grace: float = 10.0) -> None:
        """SIGTERM every process tree, wait up to ``grace`` seconds, then SIGKILL what is left."""
        pids = set().union(*(tree(p.pid) for p in self.procs.values())) if self.procs else set()
        for pid in pids:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        while (alive := [p for p in pids if _alive(p)]) and time.monotonic() < deadline:
            time.sleep(0.2)
        pids |= set().union(*(tree(p.pid) for p in self.procs.values()))
        for pid in alive + [p for p in pids if _alive(p)]:
            _signal(pid, signal.SIGKILL)  # what ignored SIGTERM, and its children
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        self.stopped = pids

    def survivors(self) -> list[int]:
        """Processes of the stopped trees that are still running (should be none)."""
        return [p for p in getattr(self, "stopped", set()) if _alive(p)]

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, waiting to be reaped, does not)."""
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # someone else's process that exists
        return True


def _group(pgid: int) -> set[int]:
    """The processes whose process group is ``pgid`` (those the group started, wherever reparented)."""
    members = set()
    for pid in psutil.pids():
        with contextlib.suppress(OSError):  # gone meanwhile
            if os.getpgid(pid) == pgid:
                members.add(pid)
    return members


def tree(root: int) -> set[int]:
    """``root``, its descendants (also those in sessions of their own) and its process group."""
    found = {root}
    with contextlib.suppress(psutil.Error):  # root has exited: its group may still be running
        found |= {child.pid for child in psutil.Process(root).children(recursive=True)}
    return found | _group(root)


def flower_tool(name: str) -> str:
    """Path of a Flower executable installed beside this Python (or on PATH)."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise FedGenomeError(f"'{name}' not found: install fedgenome's dependencies "
                              "(bash scripts/setup.sh) and run from that environment")
    return found


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Environment for Flower processes: own FLWR_HOME, no update checks, dep installs, telemetry."""
    bin_dir = str(Path(sys.executable).parent)  # Flower starts flower-superexec etc. by name
    path = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "FLWR_HOME": str(flwr_home), "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "PYTHONUNBUFFERED": "1",
            "FLWR_TELEMETRY_ENABLED": "0",  # Flower would report usage to its servers
            "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2"}  # a run's ServerApp starts sooner (default 1 s)

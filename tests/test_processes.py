"""Process trees (psutil): a group stops every process it started, also those in sessions of their own."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from fedgenome.shared.processes import ProcessGroup, _alive, tree

# A parent whose child detaches into a session of its own (as Flower's SuperLink starts SuperExec),
# and a grandchild that stays in the parent's group; it prints their pids and waits.
SPAWN = """
import subprocess, sys, time
detached = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
grouped = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(detached.pid, grouped.pid, flush=True)
time.sleep(60)
"""


def _pids(log: Path) -> list[int]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if log.exists() and (text := log.read_text().split()):
            return [int(x) for x in text]
        time.sleep(0.1)
    raise AssertionError("the parent never reported its children")


def test_a_tree_holds_the_detached_children_and_stop_kills_them_all(tmp_path: Path) -> None:
    with ProcessGroup(tmp_path) as group:
        parent = group.start("parent", [sys.executable, "-c", SPAWN])
        detached, grouped = _pids(tmp_path / "parent.log")
        assert {parent.pid, detached, grouped} <= tree(parent.pid)
        group.stop(grace=5.0)
        assert group.survivors() == []
        assert not any(_alive(p) for p in (parent.pid, detached, grouped))


def test_kill_takes_the_children_too_and_a_reaped_process_is_not_alive(tmp_path: Path) -> None:
    with ProcessGroup(tmp_path) as group:
        parent = group.start("parent", [sys.executable, "-c", SPAWN])
        children = _pids(tmp_path / "parent.log")
        group.kill("parent")
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not group.running("parent") and not any(_alive(p) for p in [parent.pid, *children])
    assert tree(2**22 + 7) == {2**22 + 7}  # beyond Linux's largest pid: no process, no children

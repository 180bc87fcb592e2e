"""Following a run: a SuperLink that is down is waited for; a run it does not know is an error; an
operator's interrupt stops the run at the SuperLink (a real one on 127.0.0.1)."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fedgenome.configs.errors import DeploymentError
from fedgenome.experiments.localfed import CONNECTION, LocalFederation
from fedgenome.server import progress
from fedgenome.server.deploy import SuperLinkUnreachable, run_status, write_connection
from fedgenome.shared.fetch import DataPaths


def test_a_superlink_that_does_not_answer_is_unreachable_not_an_unknown_run(tmp_path: Path) -> None:
    write_connection(tmp_path, "dead", address="127.0.0.1:1", ca_cert=None)  # nothing listens there
    with pytest.raises(SuperLinkUnreachable, match="Connection to the SuperLink is unavailable"):
        run_status(7, "dead", flwr_home=tmp_path)


def test_follow_run_waits_while_the_superlink_is_down(monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    answers: list[str | Exception] = [SuperLinkUnreachable("down"), SuperLinkUnreachable("down"),
                                      "running", "finished:completed"]

    def status(run_id: int, connection: str, *, flwr_home: Path) -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(progress, "run_status", status)
    monkeypatch.setattr(progress, "MAX_DOWN_WAIT", 0.05)
    caplog.set_level(logging.INFO, logger="fedgenome.server.progress")
    got = progress.follow_run(3, "x", flwr_home=Path("."), timeout=30, tick=0.01, status_every=0.01)
    assert got == "finished:completed" and answers == []
    assert caplog.text.count("still waiting for run 3") == 2
    assert "the SuperLink answers again" in caplog.text


def test_follow_run_stops_on_a_run_the_superlink_does_not_know(monkeypatch: pytest.MonkeyPatch) -> None:
    def status(run_id: int, connection: str, *, flwr_home: Path) -> str:
        raise DeploymentError(f"run {run_id} is unknown to the SuperLink")

    monkeypatch.setattr(progress, "run_status", status)
    with pytest.raises(DeploymentError, match="run 3 is unknown"):
        progress.follow_run(3, "x", flwr_home=Path("."), timeout=30, tick=0.01, status_every=0.01)


def _interruptible() -> None:
    """In the child: take SIGINT as a terminal's Ctrl-C, even where pytest runs as a background job
    (a non-interactive shell's background jobs inherit SIGINT ignored, and Python keeps it so)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _run(args: list[str], **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "fedgenome", *args], text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=_interruptible, **kwargs)


def _wait_finished(run_id: int, home: Path, timeout: float = 120.0) -> str:
    deadline = time.monotonic() + timeout
    while not (status := run_status(run_id, CONNECTION, flwr_home=home)).startswith("finished"):
        assert time.monotonic() < deadline, f"run {run_id} still {status}"
        time.sleep(0.5)
    return status


@pytest.mark.integration
@pytest.mark.data
def test_run_prints_its_id_and_an_interrupt_stops_the_run_at_the_superlink(
        data_paths: DataPaths, tmp_path: Path) -> None:
    with LocalFederation(tmp_path / "fed", []) as federation:  # no site: every run waits for its quorum
        assert federation.tls is not None
        home = tmp_path / "operator"
        connect = ["--superlink", f"127.0.0.1:{federation.port}", "--root-certificates",
                   str(federation.tls.ca_cert), "--flwr-home", str(home)]
        run = ["run", *connect, "--reference", str(data_paths.reference), "-c", "min-nodes=2",
               "-c", "sample-timeout=600"]
        detached = _run([*run, "--run-dir", str(tmp_path / "detached"), "--detach"])
        out, err = detached.communicate(timeout=120)
        assert detached.returncode == 0, err
        first = int(re.fullmatch(r"run (\d+) submitted; follow it with .*", out.strip()).group(1))  # type: ignore[union-attr]
        listed = _run(["runs", "ls", "--json", "--flwr-home", str(home)])
        runs = json.loads(listed.communicate(timeout=120)[0])["runs"]
        assert [int(r["run-id"]) for r in runs] == [first] and not runs[0]["status"].startswith("finished")
        stopped = _run(["runs", "stop", str(first), "--flwr-home", str(home)])
        said = stopped.communicate(timeout=120)[0].strip()
        assert said == f"run {first}: the SuperLink was asked to stop it"
        assert _wait_finished(first, federation.flwr_home) == "finished:stopped"
        for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
            following = _run([*run, "--run-dir", str(tmp_path / sig.name)])
            assert following.stdout is not None
            line = following.stdout.readline()  # printed at once, long before any round
            run_id = int(re.match(r"run (\d+) submitted", line).group(1))  # type: ignore[union-attr]
            following.send_signal(sig)
            _, err = following.communicate(timeout=120)
            assert following.returncode == code, err
            assert f"the SuperLink was asked to stop run {run_id}" in " ".join(err.split())
            assert _wait_finished(run_id, federation.flwr_home) == "finished:stopped"

"""Following a run: a SuperLink that is down is waited for; a run it does not know is an error."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from fedgenome.configs.errors import DeploymentError
from fedgenome.server import progress
from fedgenome.server.deploy import SuperLinkUnreachable, run_status, write_connection


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

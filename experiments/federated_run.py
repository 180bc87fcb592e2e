"""A federated run on a real SuperLink (``fedgenome run``): its run config, submission, rounds, end.

The SuperLink, SuperNodes and sites are the consortium's own (``fedgenome server start``,
``fedgenome client start``); this submits the fedgenome app to the SuperLink, follows the rounds
(when this host can read the run directory) and checks that the run completed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fedgenome.configs.schema import FederationConfig
from fedgenome.configs.validation import validate
from fedgenome.server.deploy import DeploymentError, stop_run, submit_run
from fedgenome.server.progress import OnRound, follow_run
from fedgenome.shared.app_bundle import APP_DIR

log = logging.getLogger(__name__)
CONNECTION = "fedgenome"
"""The name of the SuperLink connection in Flower's CLI config (``flwr_home``)."""


def remote_run_config(overrides: Mapping[str, Any], *, run_dir: Path, reference: Path,
                      pki_dir: Path | None = None) -> dict[str, Any]:
    """The run config: ``overrides`` plus the run directory, reference and PKI; validated.

    Args:
        overrides: Run config keys from the command line (kebab-case).
        run_dir: Where the server writes checkpoints and reports.
        reference: The reference FASTA of the server's held-out evaluation.
        pki_dir: The consortium PKI on the SuperLink's machine: each site may claim at most the
            patients it declared there.
    """
    config = {**overrides, "run-dir": str(run_dir.resolve()), "reference": str(reference.resolve())}
    if pki_dir is not None:
        from fedgenome.server.pki import open_pki

        config["pki"] = str(open_pki(pki_dir).root.resolve())
    validate(FederationConfig, config, source="--config")
    return config


def submit_and_follow(run_config: Mapping[str, Any], *, flwr_home: Path, timeout: float,
                      on_submit: Callable[[int], None] | None = None,
                      on_round: OnRound | None = None, detach: bool = False) -> int:
    """Submit the fedgenome app's run to the SuperLink of ``flwr_home``'s connection, follow it; its id.

    ``detach`` returns once the run is submitted. Interrupted while following (KeyboardInterrupt,
    which SIGTERM becomes in the CLI), it asks the SuperLink to stop the run, then re-raises.

    Raises:
        DeploymentError: The run did not complete.
    """
    home = flwr_home.resolve()
    run_id = submit_run(APP_DIR, CONNECTION, dict(run_config), flwr_home=home)
    try:
        if on_submit is not None:
            on_submit(run_id)
        if detach:
            return run_id
        status = follow_run(run_id, CONNECTION, flwr_home=home, timeout=timeout,
                            run_dir=Path(str(run_config["run-dir"])), on_round=on_round)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the run must not go on without anyone watching
        _stop(run_id, home)
        raise
    if status != "finished:completed":
        raise DeploymentError(f"run {run_id} ended as {status}; see the SuperLink's log")
    return run_id


def _stop(run_id: int, flwr_home: Path) -> None:
    """Ask the SuperLink to stop ``run_id``, saying so (or how to, when it cannot be reached)."""
    try:
        stop_run(run_id, CONNECTION, flwr_home=flwr_home)
    except DeploymentError as exc:
        log.error("interrupted, but run %d could not be stopped (%s): stop it with 'fedgenome runs stop "
                  "%d'", run_id, exc, run_id)
    else:
        log.warning("interrupted: the SuperLink was asked to stop run %d", run_id)

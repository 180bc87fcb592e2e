"""The consortium's Flower ServerApp: validate the run config, run the rounds, report."""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from configs.schema import FederationConfig, validate
from server.rounds import run_federation

log = logging.getLogger(__name__)
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run (or resume) the federated rounds described by the run config."""
    fed = validate(FederationConfig, dict(context.run_config), source="flwr run config")
    report = run_federation(grid, fed, context)
    log.info("run finished: %d rounds in %s", len(report.rounds), report.run_dir)

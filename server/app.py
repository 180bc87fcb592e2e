"""The consortium's Flower ServerApp: validate the run config, run the rounds, report."""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedgenome.configs.schema import FederationConfig
from fedgenome.configs.validation import validate
from fedgenome.server.grid import PromptGrid
from fedgenome.server.rounds import run_federation
from fedgenome.shared.flower_patches import shorten_object_pulls

log = logging.getLogger(__name__)
app = ServerApp()
PULL_FIRST, PULL_CAP = 0.02, 0.25  # a reply's objects pulled while still arriving (Flower: 1 s to 10 s)


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run (or resume) the federated rounds described by the run config."""
    shorten_object_pulls(initial=PULL_FIRST, cap=PULL_CAP)
    fed = validate(FederationConfig, dict(context.run_config), source="flwr run config")
    report = run_federation(PromptGrid(grid), fed, context)
    log.info("run finished: %d rounds in %s", len(report.rounds), report.run_dir)

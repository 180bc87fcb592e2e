"""Secure aggregation with Flower's SecAgg+: the ServerApp learns only the sites' weighted mean delta.

Flower 1.41 runs SecAgg+ on its legacy path only: ``SecAggPlusWorkflow`` drives four stages (set-up,
share keys, collect masked vectors, unmask) through a ``LegacyContext`` whose strategy configures
and aggregates "fit". The round loop calls :func:`secure_round` once per round: a one-round legacy
strategy hands the workflow the sites the loop sampled and the global weights, and gets back the
unmasked weighted mean of the sites' deltas together with each site's allow-listed metrics, which
travel in the clear beside the masked vector. No single site's delta ever reaches this process.

Legacy parameters carry no names: the model travels packed into one flat array (shared/wire.py),
its names and shapes beside it in the fit config. A site that refuses (budget spent) takes part
with weight 0, so the mean is over the sites that trained.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import cast

import numpy as np
from flwr.app import ConfigRecord, Context, RecordDict
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.typing import Scalar
from flwr.compat.common import recorddict_compat as compat
from flwr.server import ServerConfig
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.serverapp import Grid

from fedgenome.configs.schema import FederationConfig
from fedgenome.shared import wire

log = logging.getLogger(__name__)


@dataclass
class SecureRound:
    """What one SecAgg+ round revealed: the mean delta of the trained sites and their metrics."""

    mean_delta: wire.Arrays | None
    """Weighted mean of the trained sites' deltas (float32); None if none trained or it halted."""
    metrics: dict[str, dict[str, Scalar]] = field(default_factory=dict)
    """Site name -> the allow-listed metrics it sent."""
    weights: dict[str, int] = field(default_factory=dict)
    """Site name -> the example count its masked update was weighted by (as it declared it)."""
    nodes: dict[str, int] = field(default_factory=dict)
    """Site name -> the node id whose reply named it."""
    failed: list[int] = field(default_factory=list)
    """The sampled nodes that did not see the round through."""


class _OneRound(Strategy):
    """A legacy strategy for exactly one SecAgg+ round over nodes chosen by the round loop."""

    def __init__(self, proxies: list[ClientProxy], config: dict[str, Scalar]) -> None:
        self.proxies = proxies
        self.config = config
        self.results: list[tuple[ClientProxy, FitRes]] = []

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return None

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        return [(proxy, FitIns(parameters, dict(self.config))) for proxy in self.proxies]

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list[tuple[ClientProxy, FitRes] | BaseException]
                      ) -> tuple[Parameters | None, dict[str, Scalar]]:
        self.results = list(results)
        return (results[0][1].parameters if results else None), {}

    def configure_evaluate(self, server_round: int, parameters: Parameters,
                           client_manager: ClientManager) -> list[tuple[ClientProxy, EvaluateIns]]:
        return []

    def aggregate_evaluate(self, server_round: int, results: list[tuple[ClientProxy, EvaluateRes]],
                           failures: list[tuple[ClientProxy, EvaluateRes] | BaseException]
                           ) -> tuple[float | None, dict[str, Scalar]]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters
                 ) -> tuple[float, dict[str, Scalar]] | None:
        return None


def workflow_for(fed: FederationConfig, sampled: int) -> SecAggPlusWorkflow:
    """Flower's SecAgg+ workflow with the run's shares, threshold and quantisation settings."""
    # Flower takes an integer share count only above 2 and below the sample; with fewer sites
    # than shares, every sampled site shares its secrets with all the others (1.0: all of them).
    shares: int | float = fed.secagg_shares if fed.secagg_shares < sampled else 1.0
    threshold = min(fed.secagg_threshold, fed.secagg_shares, sampled)
    return SecAggPlusWorkflow(num_shares=shares, reconstruction_threshold=threshold,
                              max_weight=fed.max_examples, clipping_range=fed.secagg_clip_range,
                              timeout=fed.round_timeout)


def secure_round(grid: Grid, context: Context, fed: FederationConfig, *, rnd: int, nodes: list[int],
                 global_: wire.Arrays, config: Mapping[str, Scalar] | None = None) -> SecureRound:
    """Run one SecAgg+ round with ``nodes``; the sites' weighted mean delta and their metrics.

    ``config`` is what each site's fit instruction carries (default: the round and local steps),
    to which the model's layout is added (the arrays travel packed).
    """
    layout = wire.layout(global_)
    base = dict(config or {wire.GLOBAL_ROUND: rnd, wire.LOCAL_STEPS: fed.local_steps})
    strategy = _OneRound([GridClientProxy(n, grid, context.run_id) for n in nodes],
                         {**base, wire.LAYOUT: layout})
    legacy = LegacyContext(Context(run_id=context.run_id, node_id=context.node_id,
                                   node_config=context.node_config, state=RecordDict(),
                                   run_config=context.run_config),
                           config=ServerConfig(num_rounds=rnd), strategy=strategy)
    params = ndarrays_to_parameters([wire.pack(global_, np.float32)])  # one array: few requests
    legacy.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(params, True)
    legacy.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.CURRENT_ROUND: rnd})
    with np.errstate(divide="ignore", invalid="ignore"):  # all sites refused: total weight 0
        workflow_for(fed, len(nodes))(grid, legacy)
    out = SecureRound(mean_delta=None)
    for proxy, res in strategy.results:
        metrics = dict(res.metrics)
        name = str(metrics.pop(wire.SITE_RECORD, "?"))
        out.metrics[name], out.weights[name] = metrics, res.num_examples
        out.nodes[name] = int(proxy.node_id)
    out.failed = [n for n in nodes if n not in out.nodes.values()]
    trained = any(int(cast(int, m.get(wire.STATUS, 0))) == wire.TRAINED for m in out.metrics.values())
    if trained and strategy.results:
        (mean,) = parameters_to_ndarrays(strategy.results[0][1].parameters)
        out.mean_delta = {k: np.asarray(v, dtype=np.float32)
                          for k, v in wire.unpack(mean, layout).items()}
    return out

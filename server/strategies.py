"""The aggregation strategies a run may select, all from ``flwr.serverapp.strategy``.

A registry as in Opacus' accountants: a dict of factories plus :func:`create_strategy`, whose
error lists the valid names. Sampling and quorum are handled by the round loop, so every strategy
is built to accept whichever sites the loop hands it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.serverapp.strategy import FedAdam, FedAvg, FedMedian, FedProx, FedTrimmedAvg, Krum, Strategy

from fedgenome.configs.errors import ConfigError
from fedgenome.configs.schema import FederationConfig
from fedgenome.shared.atomic import atomic_path


def _common(fed: FederationConfig) -> dict[str, Any]:
    return {"fraction_train": fed.fraction_train, "fraction_evaluate": 0.0, "min_train_nodes": 1,
            "min_evaluate_nodes": 0, "min_available_nodes": 1}


STRATEGIES: dict[str, Callable[[FederationConfig], Strategy]] = {
    "fedavg": lambda fed: FedAvg(**_common(fed)),
    "fedprox": lambda fed: FedProx(**_common(fed), proximal_mu=fed.proximal_mu),
    "fedadam": lambda fed: FedAdam(**_common(fed), eta=fed.server_lr),
    "fedmedian": lambda fed: FedMedian(**_common(fed)),
    "fedtrimmedavg": lambda fed: FedTrimmedAvg(**_common(fed), beta=fed.trimmed_beta),
    "krum": lambda fed: Krum(**_common(fed), num_malicious_nodes=fed.krum_malicious),
}
_STATE_ATTRS = ("m_t", "v_t")  # FedAdam's moments: what a resumed run must get back


def create_strategy(fed: FederationConfig) -> Strategy:
    """The strategy named by ``fed.strategy``."""
    if fed.strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy '{fed.strategy}'; valid: {', '.join(sorted(STRATEGIES))}")
    return STRATEGIES[fed.strategy](fed)


def save_strategy_state(strategy: Strategy, path: Path) -> None:
    """Persist the strategy's server-side optimizer state (if it has any)."""
    arrays = {f"{attr}/{k}": v for attr in _STATE_ATTRS
              for k, v in (getattr(strategy, attr, None) or {}).items()}
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]


def load_strategy_state(strategy: Strategy, path: Path) -> None:
    """Restore what :func:`save_strategy_state` wrote."""
    if not path.exists():
        return
    with np.load(path) as data:
        for attr in _STATE_ATTRS:
            values = {k.split("/", 1)[1]: data[k] for k in data.files if k.startswith(f"{attr}/")}
            if values:
                setattr(strategy, attr, values)

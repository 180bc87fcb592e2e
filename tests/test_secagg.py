"""SecAgg+'s set-up, as Flower's own workflow sends it, for any number of sampled sites."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.serverapp import Grid
from pydantic import ValidationError

from fedgenome.configs.schema import FederationConfig
from fedgenome.server.secagg import secure_round


class SetupRecorder(Grid):
    """A grid whose nodes never answer; it keeps the messages the workflow sent."""

    def __init__(self) -> None:
        self.sent: list[Message] = []

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        self.sent += list(messages)
        return []

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"SecAgg+'s set-up called grid.{name}")

    set_run = run = create_message = get_node_ids = push_messages = pull_messages = None  # type: ignore[assignment]


pytestmark = pytest.mark.usefixtures("serverapp_task")


def setup_of(fed: FederationConfig, sites: int) -> tuple[int, int, int]:
    """(messages, shares, threshold) of the set-up stage for ``sites`` sampled sites."""
    grid = SetupRecorder()
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    out = secure_round(grid, context, fed, rnd=1, nodes=list(range(1, sites + 1)),
                       global_={"w": np.zeros(4, np.float32)})
    assert out.mean_delta is None  # nobody answered: the workflow halts, it does not raise
    configs = grid.sent[0].content.config_records[RECORD_KEY_CONFIGS]
    return len(grid.sent), int(configs[Key.SHARE_NUMBER]), int(configs[Key.THRESHOLD])


@pytest.mark.parametrize(("sites", "shares", "threshold"),
                         [(2, 2, 2), (3, 3, 2), (4, 3, 2), (7, 3, 2)])
def test_the_default_shares_work_from_two_sites_up(sites: int, shares: int, threshold: int) -> None:
    fed = FederationConfig(preset="tiny", aggregation="secagg+", min_nodes=2)
    assert setup_of(fed, sites) == (sites, shares, threshold)


def test_more_shares_than_sites_shares_with_every_site_and_keeps_the_threshold() -> None:
    fed = FederationConfig(preset="tiny", aggregation="secagg+", min_nodes=2,
                           secagg_shares=5, secagg_threshold=3)
    assert setup_of(fed, 4) == (4, 4, 3)
    assert setup_of(fed, 2) == (2, 2, 2)  # two sites: both shares are needed
    assert setup_of(fed, 9) == (9, 5, 3)


@pytest.mark.parametrize(("shares", "threshold", "key"),
                         [(2, 2, "secagg_shares"), (3, 3, "secagg-threshold=3"),
                          (5, 6, "secagg-threshold=6")])
def test_share_settings_flower_refuses_are_config_errors(shares: int, threshold: int,
                                                         key: str) -> None:
    with pytest.raises(ValidationError, match=key):
        FederationConfig(preset="tiny", aggregation="secagg+", min_nodes=2,
                         secagg_shares=shares, secagg_threshold=threshold)

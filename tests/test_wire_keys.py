"""The wire's names are a protocol: their spellings are pinned, and Flower's own agree with ours."""

from __future__ import annotations

import numpy as np
from flwr.common import Code, FitIns, FitRes, Status, ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat

from fedgenome.shared import wire


def test_the_keys_sites_and_servers_exchange_keep_their_spelling() -> None:
    # A renamed key breaks every node of an older release: change these only with a new protocol.
    assert (wire.ARRAYS, wire.METRICS, wire.CONFIG, wire.PACKED, wire.LAYOUT) == (
        "arrays", "metrics", "config", "packed", "layout")
    assert sorted(wire.ALLOWED_METRICS) == ["bits-per-base", "bits-per-base-std", "delta", "epsilon",
                                            "epsilon-budget",
                                            "num-examples", "status", "steps", "train-loss"]
    assert wire.RoundConfig(3, run_key="k", initial_sha256="s", markov_prior="m").to_config() == {
        "global-round": 3, "run-key": "k", "initial-sha256": "s", "markov-prior": "m"}
    assert wire.LOCAL_STEPS == "local-steps"
    assert wire.SITE_RECORD == "site" and sorted(wire.SITE_KEYS) == [
        "ledger-count", "ledger-head", "ledger-head-signature", "name"]
    assert (wire.NODE_SITE, wire.NODE_KEEP_UPDATES) == ("site", "keep-updates")


def test_the_legacy_record_names_are_the_ones_flower_writes() -> None:
    params = ndarrays_to_parameters([np.zeros(2, dtype=np.float32)])
    fitres = compat.fitres_to_recorddict(FitRes(Status(Code.OK, "OK"), params, 50, {"x": 1}), keep_input=True)
    assert set(fitres) == {wire.LEGACY_METRICS, wire.LEGACY_NUM_EXAMPLES, wire.LEGACY_STATUS,
                           wire.LEGACY_PARAMETERS}
    assert set(fitres[wire.LEGACY_NUM_EXAMPLES]) == {wire.LEGACY_NUM_EXAMPLES_KEY}
    fitins = compat.fitins_to_recorddict(FitIns(params, {}), keep_input=True)
    assert wire.LEGACY_FIT_PARAMETERS in fitins
    assert wire.SECAGG_RECORD == RECORD_KEY_CONFIGS

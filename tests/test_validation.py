"""Server-side update validation: names, shapes, dtypes, finiteness and the norm bound."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import cast

import numpy as np
import numpy.typing as npt
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedgenome.configs.errors import ConfigError
from fedgenome.configs.schema import FederationConfig, Preset
from fedgenome.configs.validation import validate
from fedgenome.server import rounds
from fedgenome.server.replies import collect
from fedgenome.server.rounds import Federation
from fedgenome.server.secagg import SecureRound
from fedgenome.server.validation import (
    AUTO_MARGIN,
    UpdateRejected,
    auto_update_norm,
    check_update,
    update_bound,
)
from fedgenome.shared import wire
from fedgenome.shared.fetch import DataPaths
from fedgenome.shared.model import GenomeLM
from tests.helpers import task_identity

Delta = dict[str, npt.NDArray[np.generic]]

GLOBAL: wire.Arrays = {
    "embed.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
    "head.bias": np.ones(4, dtype=np.float32),
}


def honest() -> Delta:
    """A well-formed float16 delta for GLOBAL, of L2 norm 5 (3-4-5 triangle)."""
    return {"embed.weight": np.array([[3, 0, 0], [0, 0, 0]], dtype=np.float16),
            "head.bias": np.array([0, 4, 0, 0], dtype=np.float16)}


def l2(delta: Delta) -> float:
    return float(np.linalg.norm(np.concatenate([v.astype(np.float64).ravel() for v in delta.values()])))


def fed_config(**extra: object) -> FederationConfig:
    return validate(FederationConfig, dict(extra), source="test")


# --- check_update ------------------------------------------------------------------------------


def test_a_delta_with_the_global_models_names_shapes_and_float16_passes_with_its_norm() -> None:
    check = check_update(honest(), GLOBAL, max_norm=10.0)
    assert check.norm == 5.0
    assert check.bound == 10.0


def test_a_real_models_encoded_update_passes_and_its_norm_is_numpys_l2_norm(tiny: Preset) -> None:
    torch.manual_seed(0)
    model = GenomeLM(tiny.model)
    global_ = {k: v.copy() for k, v in wire.state_to_arrays(model.state_dict()).items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 1e-3)
    delta = wire.encode_update(model.state_dict(), global_)
    check = check_update(delta, global_, max_norm=math.inf)
    assert check.norm == pytest.approx(l2(delta), rel=1e-12)
    assert check.norm == pytest.approx(1e-3 * math.sqrt(sum(v.size for v in global_.values())), rel=0.02)


def test_the_norm_is_summed_in_float64_so_large_float16_values_do_not_overflow() -> None:
    big = {k: np.full(v.shape, 60000, dtype=np.float16) for k, v in GLOBAL.items()}  # 60000**2 > fp16 max
    check = check_update(big, GLOBAL, max_norm=math.inf)
    assert check.norm == pytest.approx(60000 * math.sqrt(10))


def test_a_norm_exactly_at_the_bound_passes() -> None:
    assert check_update(honest(), GLOBAL, max_norm=5.0).norm == 5.0


def test_float32_is_accepted_when_asked_for_as_for_the_secure_mean() -> None:
    delta = {k: v.astype(np.float32) for k, v in honest().items()}
    assert check_update(delta, GLOBAL, max_norm=5.0, dtype=np.float32).norm == 5.0


def _missing(d: Delta) -> None:
    del d["head.bias"]


def _extra(d: Delta) -> None:
    d["backdoor.weight"] = np.zeros(2, dtype=np.float16)


def _renamed(d: Delta) -> None:
    d["head.biass"] = d.pop("head.bias")


def _shape(d: Delta) -> None:
    d["embed.weight"] = d["embed.weight"].reshape(3, 2)


def _float32(d: Delta) -> None:
    d["head.bias"] = d["head.bias"].astype(np.float32)


def _nan(d: Delta) -> None:
    d["head.bias"][2] = np.nan


def _pos_inf(d: Delta) -> None:
    d["embed.weight"][1, 1] = np.inf


def _neg_inf(d: Delta) -> None:
    d["head.bias"][0] = -np.inf


def _fp16_overflow(d: Delta) -> None:
    with np.errstate(over="ignore"):  # a site that encodes a delta above float16's 65504 sends inf
        d["head.bias"] = np.array([0, 70000, 0, 0], dtype=np.float32).astype(np.float16)


@pytest.mark.parametrize(("tamper", "message"), [
    (_missing, r"array names differ from the global model's \(missing \['head.bias'\], unexpected \[\]\)"),
    (_extra, r"\(missing \[\], unexpected \['backdoor.weight'\]\)"),
    (_renamed, r"missing \['head.bias'\], unexpected \['head.biass'\]"),
    (_shape, r"array 'embed.weight' has shape \(3, 2\), the global model's is \(2, 3\)"),
    (_float32, r"array 'head.bias' has dtype float32, expected float16"),
    (_nan, r"array 'head.bias' holds NaN or Inf"),
    (_pos_inf, r"array 'embed.weight' holds NaN or Inf"),
    (_neg_inf, r"array 'head.bias' holds NaN or Inf"),
    (_fp16_overflow, r"array 'head.bias' holds NaN or Inf"),
], ids=["missing", "extra", "renamed", "shape", "float32", "nan", "+inf", "-inf", "fp16-overflow"])
def test_a_malformed_delta_is_rejected_naming_the_array(tamper: Callable[[Delta], None],
                                                        message: str) -> None:
    delta = honest()
    tamper(delta)
    with pytest.raises(UpdateRejected, match=message):
        check_update(delta, GLOBAL, max_norm=math.inf)


def test_a_norm_above_the_bound_is_rejected_naming_the_norm_and_the_bound() -> None:
    with pytest.raises(UpdateRejected, match=r"update norm 5 is above the bound 4\.99 \(max-update-norm\)"):
        check_update(honest(), GLOBAL, max_norm=4.99)


def test_nan_is_rejected_even_without_a_norm_bound() -> None:
    delta = honest()
    _nan(delta)
    with pytest.raises(UpdateRejected, match="NaN or Inf"):
        check_update(delta, GLOBAL, max_norm=math.inf)  # NaN > inf is False: the finite check catches it


def test_an_update_rejected_is_a_fedgenome_error() -> None:
    from fedgenome.configs.errors import FedGenomeError

    assert issubclass(UpdateRejected, FedGenomeError)


# --- the bound ---------------------------------------------------------------------------------


def test_auto_update_norm_is_twice_lr_times_steps_times_sqrt_parameters() -> None:
    assert AUTO_MARGIN == 2.0
    assert auto_update_norm(lr=1e-3, local_steps=5, parameters=10_000) == pytest.approx(2 * 1e-3 * 5 * 100)


@pytest.mark.parametrize(("lr", "steps", "parameters", "factor"), [
    (2e-3, 5, 10_000, 2.0),  # linear in lr
    (1e-3, 10, 10_000, 2.0),  # linear in local steps
    (1e-3, 5, 40_000, 2.0),  # square root in parameters
    (1e-3, 5, 1_000_000, 10.0),
])
def test_auto_update_norm_scales_with_lr_steps_and_sqrt_of_parameters(
        lr: float, steps: int, parameters: int, factor: float) -> None:
    base = auto_update_norm(lr=1e-3, local_steps=5, parameters=10_000)
    assert auto_update_norm(lr=lr, local_steps=steps, parameters=parameters) == pytest.approx(factor * base)


def test_update_bound_uses_max_update_norm_when_it_is_set() -> None:
    assert update_bound(fed_config(**{"max-update-norm": 3.5}), GLOBAL) == 3.5


def test_update_bound_zero_means_automatic_from_the_runs_lr_steps_and_model_size() -> None:
    fed = fed_config(**{"lr": 2e-3, "local-steps": 4})
    assert fed.max_update_norm == 0.0  # the default
    assert update_bound(fed, GLOBAL) == pytest.approx(auto_update_norm(lr=2e-3, local_steps=4, parameters=10))


def test_update_bound_for_the_tiny_model_counts_every_weight(tiny: Preset) -> None:
    model = GenomeLM(tiny.model)
    weights = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    global_ = wire.state_to_arrays(model.state_dict())
    fed = fed_config(**{"lr": 1e-3, "local-steps": 3})
    assert update_bound(fed, global_) == pytest.approx(2 * 1e-3 * 3 * math.sqrt(weights))


def test_a_negative_max_update_norm_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="max-update-norm"):
        fed_config(**{"max-update-norm": -1.0})


# --- collect: a rejected update is logged and left out; the round goes on ----------------------


def instruction(node: int) -> Message:
    """A train message from the server to ``node``, as a strategy's configure_train makes it."""
    with task_identity():  # what the ServerApp process sets before its main
        return Message(RecordDict({wire.ARRAYS: ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})}),
                       dst_node_id=node, message_type="train")


def reply(node: int, site: str, delta: Delta | None, *, status: int = wire.TRAINED) -> Message:
    """A site's reply, packed as client/app.py's train handler packs it."""
    metrics: dict[str, float | int] = {wire.STATUS: status, wire.EPSILON: 1.5, wire.BUDGET: 8.0,
                                       wire.DELTA: 1e-5, wire.STEPS: 3, wire.NUM_EXAMPLES: 100,
                                       wire.TRAIN_LOSS: 1.4}
    content = RecordDict({wire.METRICS: MetricRecord(metrics),  # type: ignore[arg-type]
                          wire.SITE_RECORD: ConfigRecord({wire.SITE_NAME: site})})
    if delta is not None:
        content[wire.ARRAYS] = ArrayRecord({k: Array(v) for k, v in delta.items()})
    return Message(content=content, reply_to=instruction(node))


def test_collect_leaves_out_a_rejected_update_and_keeps_the_others(caplog: pytest.LogCaptureFixture) -> None:
    nan = honest()
    _nan(nan)
    replies = [reply(11, "good", honest()), reply(12, "nan", nan),
               reply(13, "big", {k: v * 10 for k, v in honest().items()}),
               reply(14, "tired", None, status=wire.REFUSED)]
    got = collect(replies, [11, 12, 13, 14, 15], {}, GLOBAL, max_norm=10.0)
    assert [m.metadata.src_node_id for m in got.trained] == [11]
    assert got.rejected == {"nan": "array 'head.bias' holds NaN or Inf",
                            "big": "update norm 50 is above the bound 10 (max-update-norm)"}
    assert got.refused == ["tired"]
    assert got.failed == ["node 15"]  # sampled, never answered
    assert got.norms == {"good": 5.0}
    assert got.losses == [1.4]  # only the accepted update's loss
    assert set(got.epsilon) == {"good", "nan", "big", "tired"}  # every site's epsilon is still reported
    assert "rejected the reply of site nan: array 'head.bias' holds NaN or Inf" in caplog.text
    assert "rejected the reply of site big: update norm 50" in caplog.text


def test_collect_hands_the_strategy_full_float32_weights_and_the_example_count() -> None:
    got = collect([reply(11, "good", honest())], [11], {}, GLOBAL, max_norm=10.0)
    content = got.trained[0].content
    weights = content.array_records[wire.ARRAYS]
    for name, want in GLOBAL.items():
        array = weights[name].numpy()
        assert array.dtype == np.float32
        np.testing.assert_array_equal(array, want + honest()[name].astype(np.float32))
    assert dict(content.metric_records[wire.METRICS]) == {wire.NUM_EXAMPLES: 100}
    assert set(content) == {wire.ARRAYS, wire.METRICS}  # the site's name does not reach the strategy


def test_collect_rejects_a_trained_reply_that_carries_no_arrays() -> None:
    got = collect([reply(11, "empty", None)], [11], {}, GLOBAL, max_norm=10.0)
    assert got.trained == []
    assert got.rejected["empty"].startswith("array names differ from the global model's (missing [")


def test_collect_rejects_a_trained_reply_without_its_loss_and_goes_on() -> None:
    bad = reply(12, "no-loss", honest())
    metrics = dict(bad.content.metric_records[wire.METRICS])
    del metrics[wire.TRAIN_LOSS]
    bad.content[wire.METRICS] = MetricRecord(metrics)
    got = collect([reply(11, "good", honest()), bad], [11, 12], {}, GLOBAL, max_norm=10.0)
    assert [m.metadata.src_node_id for m in got.trained] == [11]
    assert "malformed reply" in got.rejected["node 12"]


def test_a_node_cannot_take_another_sites_name() -> None:
    names = {11: "good"}
    got = collect([reply(11, "good", honest()), reply(12, "good", honest())], [11, 12], names,
                  GLOBAL, max_norm=10.0)
    assert [m.metadata.src_node_id for m in got.trained] == [11]
    assert "claims to be site 'good'" in got.rejected["node 12"]
    again = collect([reply(11, "other", honest())], [11], names, GLOBAL, max_norm=10.0)
    assert again.trained == [] and "claims to be site 'other'" in again.rejected["good"]


# --- SecAgg+: only the mean is seen, but each site's declared metrics and weight are checked -------

@pytest.mark.parametrize(("weight", "rejected"), [(150, False), (10**9, True), (87, True)],
                         ids=["bucketed", "takes-over-the-mean", "exact-count"])
@pytest.mark.data
def test_a_secure_mean_is_rejected_when_a_site_declares_an_impossible_weight(
        data_paths: DataPaths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, weight: int,
        rejected: bool) -> None:
    fed = fed_config(**{"run-dir": str(tmp_path / "run"), "reference": str(data_paths.reference),
                        "eval-windows": 2, "aggregation": "secagg+"})
    federation = Federation(fed)
    global_ = federation.arrays()
    mean = {k: np.full_like(v, 1e-4) for k, v in global_.items()}
    metrics = {wire.STATUS: wire.TRAINED, wire.EPSILON: 7.0, wire.TRAIN_LOSS: 1.4, wire.BUDGET: 8.0,
               wire.DELTA: 1e-5, wire.LEDGER_COUNT: 1, wire.LEDGER_HEAD: "0" * 64,
               wire.LEDGER_SIGNATURE: "unchecked without a registered key"}
    outcome = SecureRound(mean_delta=mean, metrics={"a": dict(metrics), "b": dict(metrics)},
                          weights={"a": 100, "b": weight}, nodes={"a": 1, "b": 2})
    monkeypatch.setattr(rounds, "secure_round", lambda *args, **kwargs: outcome)
    got = federation._secure(cast(Grid, None), cast(Context, None), 1, [1, 2], global_, bound=10.0,
                             identities={})
    after = federation.arrays()
    moved = any(not np.array_equal(after[k], global_[k]) for k in global_)
    assert moved is not rejected
    assert set(got.rejected) == ({"a", "b"} if rejected else set())
    if rejected:
        assert "site b: example count" in got.rejected["a"]

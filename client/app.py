"""The hospital's Flower ClientApp: unpack the message, run the site's round, pack the reply.

One app serves both aggregation modes. Plain: the server sends ``arrays`` and gets a float16 delta
back. SecAgg+ (Flower 1.41 runs it on its legacy records only): ``secaggplus_mod`` drives the
protocol and calls the same train handler with ``fitins.*`` records, which gets the same site round
and answers with ``fitres.*`` records; the mod then masks the delta before anything leaves. Every
reply passes the egress guard last (client/egress.py). A model that comes packed (one flat array
and its layout, see shared/wire.py) is answered packed, in the same layout.
"""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import (
    Code,
    FitRes,
    Parameters,
    Scalar,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.compat.common import recorddict_compat as compat

from fedgenome.client.egress import SECAGG_RECORD, SITE_RECORD, egress_guard
from fedgenome.client.site import SiteNode, SiteReply
from fedgenome.configs.schema import FederationConfig
from fedgenome.configs.validation import validate
from fedgenome.shared import wire

log = logging.getLogger(__name__)


def secure_aggregation(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower mod: hand SecAgg+ protocol messages to ``secaggplus_mod``, the rest straight on."""
    if SECAGG_RECORD in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


app = ClientApp(mods=[egress_guard, secure_aggregation])


def federation_config(context: Context) -> FederationConfig:
    """The run's settings, validated once at the edge."""
    return validate(FederationConfig, dict(context.run_config), source="flwr run config")


def global_arrays(msg: Message) -> wire.Arrays:
    """The global model the server sent, as float32 arrays (unpacked if it came packed)."""
    arrays = {k: v.numpy().astype("float32") for k, v in msg.content.array_records[wire.ARRAYS].items()}
    config = msg.content.config_records.get(wire.CONFIG, ConfigRecord())
    if set(arrays) == {wire.PACKED} and wire.LAYOUT in config:
        return wire.unpack(arrays[wire.PACKED], str(config[wire.LAYOUT]))  # type: ignore[return-value]
    return arrays


def reply_arrays(delta: dict[str, npt.NDArray[np.float16]], msg: Message) -> ArrayRecord:
    """The float16 delta as the instruction sent the model: packed into one array, or by name."""
    if set(msg.content.array_records[wire.ARRAYS]) == {wire.PACKED}:
        return ArrayRecord({wire.PACKED: Array(wire.pack(delta, wire.WIRE_DTYPE))})
    return ArrayRecord({k: Array(v) for k, v in delta.items()})


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One private round at this site (or a refusal when its budget is spent)."""
    site = SiteNode.from_node_config(dict(context.node_config))
    fed = federation_config(context)
    if wire.LEGACY_FIT_PARAMETERS in msg.content.array_records:  # SecAgg+ (legacy records)
        return _train_secure(msg, site, fed)
    orders = wire.RoundConfig.from_config(msg.content.config_records[wire.CONFIG])
    reply = site.train_round(global_arrays(msg), fed, global_round=orders.global_round,
                             run_key=orders.run_key, initial_sha256=orders.initial_sha256,
                             markov_prior=orders.markov_prior)
    content = RecordDict({wire.METRICS: MetricRecord(dict(reply.metrics)),  # type: ignore[arg-type]
                          SITE_RECORD: ConfigRecord({wire.SITE_NAME: reply.site, **head_fields(reply)})})
    if reply.delta is not None:
        content[wire.ARRAYS] = reply_arrays(reply.delta, msg)
    return Message(content=content, reply_to=msg)


def _train_secure(msg: Message, site: SiteNode, fed: FederationConfig) -> Message:
    """The same round for SecAgg+: arrays in state-dict order, the delta weighted by its examples."""
    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    global_, packed = _secure_global(fitins.parameters, fitins.config, site, fed)
    orders = wire.RoundConfig.from_config(fitins.config)
    reply = site.train_round(global_, fed, global_round=orders.global_round,
                             run_key=orders.run_key, initial_sha256=orders.initial_sha256,
                             markov_prior=orders.markov_prior)
    content = compat.fitres_to_recorddict(_fitres(reply, global_, fed, packed=packed), keep_input=True)
    return Message(content=content, reply_to=msg)


def _secure_global(parameters: Parameters, config: dict[str, Scalar], site: SiteNode,
                   fed: FederationConfig) -> tuple[wire.Arrays, bool]:
    """The global model of a SecAgg+ instruction, and whether it came packed (one flat array)."""
    values = parameters_to_ndarrays(parameters)
    if wire.LAYOUT in config and len(values) == 1:
        unpacked = wire.unpack(values[0], str(config[wire.LAYOUT]))
        return {k: np.asarray(v, dtype=np.float32) for k, v in unpacked.items()}, True
    names = site.parameter_names(fed)
    if len(values) != len(names):
        raise ValueError(f"the server sent {len(values)} arrays, the model has {len(names)}")
    return {k: np.asarray(v, dtype=np.float32) for k, v in zip(names, values, strict=True)}, False


def _fitres(reply: SiteReply, global_: wire.Arrays, fed: FederationConfig, *, packed: bool) -> FitRes:
    """The legacy fit result SecAgg+ masks: a refused site takes part with zeros and weight 0."""
    if reply.delta is None:
        arrays, weight = [np.zeros_like(v) for v in global_.values()], 0
    else:
        arrays = [reply.delta[k].astype(np.float32) for k in global_]
        weight = int(reply.metrics[wire.NUM_EXAMPLES])
        peak = max(float(np.abs(a).max()) for a in arrays) * weight / fed.max_examples
        if peak > fed.secagg_clip_range:
            log.warning("the weighted update reaches %.3g, beyond secagg-clip-range %.3g: SecAgg+ "
                        "clips it", peak, fed.secagg_clip_range)
    if packed:  # one flat vector, in the order the server sent
        arrays = [np.concatenate([a.ravel() for a in arrays])]
    metrics: dict[str, Scalar] = {**reply.metrics, SITE_RECORD: reply.site, **head_fields(reply)}
    return FitRes(Status(Code.OK, "OK"), ndarrays_to_parameters(arrays), weight, metrics)


def head_fields(reply: SiteReply) -> dict[str, int | str]:
    """The signed head of the site's ledger, for the server to check it never goes back."""
    head = reply.ledger_head
    if head is None:
        return {}
    return {wire.LEDGER_COUNT: head.count, wire.LEDGER_HEAD: head.last_sha256,
            wire.LEDGER_SIGNATURE: head.signature}


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """The global model's bits per base on this site's patients, released with DP (or refused)."""
    site = SiteNode.from_node_config(dict(context.node_config))
    orders = wire.RoundConfig.from_config(msg.content.config_records[wire.CONFIG])
    reply = site.private_evaluate(global_arrays(msg), federation_config(context),
                                  global_round=orders.global_round, run_key=orders.run_key,
                                  initial_sha256=orders.initial_sha256, markov_prior=orders.markov_prior,
                                  positions=orders.eval_positions)
    content = RecordDict({wire.METRICS: MetricRecord(dict(reply.metrics)),  # type: ignore[arg-type]
                          SITE_RECORD: ConfigRecord({wire.SITE_NAME: reply.site, **head_fields(reply)})})
    return Message(content=content, reply_to=msg)

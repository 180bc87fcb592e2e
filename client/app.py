"""The hospital's Flower ClientApp: unpack the message, run the site's round, pack the reply."""

from __future__ import annotations

import logging

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.site import SiteNode
from configs.schema import FederationConfig, validate
from shared import wire

log = logging.getLogger(__name__)
SITE = "site"  # reply ConfigRecord key holding the site's name (for the run report)

app = ClientApp()


def federation_config(context: Context) -> FederationConfig:
    """The run's settings, validated once at the edge."""
    return validate(FederationConfig, dict(context.run_config), source="flwr run config")


def global_arrays(msg: Message) -> wire.Arrays:
    """The global model the server sent, as float32 arrays."""
    record = msg.content.array_records[wire.ARRAYS]
    return {k: v.numpy().astype("float32") for k, v in record.items()}


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One private round at this site (or a refusal when its budget is spent)."""
    site = SiteNode.from_node_config(dict(context.node_config))
    config = msg.content.config_records[wire.CONFIG]
    reply = site.train_round(global_arrays(msg), federation_config(context),
                             global_round=int(str(config["global-round"])))
    content = RecordDict({wire.METRICS: MetricRecord(dict(reply.metrics)),  # type: ignore[arg-type]
                          SITE: ConfigRecord({"name": reply.site})})
    if reply.delta is not None:
        content[wire.ARRAYS] = ArrayRecord({k: Array(v) for k, v in reply.delta.items()})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Bits per base of the global model on this site's patients' held-out windows."""
    site = SiteNode.from_node_config(dict(context.node_config))
    bits, count = site.evaluate(global_arrays(msg), federation_config(context))
    metrics = MetricRecord({wire.EVAL_BITS: bits, wire.NUM_EXAMPLES: wire.bucket(count)})
    return Message(content=RecordDict({wire.METRICS: metrics,
                                       SITE: ConfigRecord({"name": site.manifest.name})}),
                   reply_to=msg)

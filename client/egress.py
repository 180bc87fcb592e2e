"""The site's egress guard: an explicit allow-list of what may leave the hospital, and a log of it.

Every reply the ClientApp produces passes :func:`egress_guard` last, after SecAgg+ has masked the
update, so what it checks is what the SuperNode sends. Allowed are: model arrays with the global
model's names and shapes in float16 (plain aggregation) or none at all (SecAgg+ clears them and
sends only masked integers); the metric keys of :data:`fedgenome.shared.wire.ALLOWED_METRICS`, with the
example count a multiple of :data:`fedgenome.shared.wire.BUCKET`; the site's name; and the SecAgg+ protocol's
own fields (public keys, encrypted shares, the masked vector). Anything else raises
:class:`EgressRefused` before the message is sent. Each message that leaves is recorded in the
site's ``state/egress.jsonl`` (time, run, round, record and key names, size, SHA-256) for the
hospital's security officer.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import cast

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.serde import recorddict_to_proto

from fedgenome.configs.errors import FedGenomeError
from fedgenome.shared import wire
from fedgenome.shared.clock import utc_now_text

log = logging.getLogger(__name__)
EGRESS_LOG = "egress.jsonl"
SITE_RECORD = wire.SITE_RECORD
SECAGG_RECORD = wire.SECAGG_RECORD
SECAGG_OUT_KEYS = frozenset({"pk1", "pk2", "dsts", "ctxts", "masked_params", "nids", "shares"})
"""What a site sends in the four SecAgg+ stages: public keys, encrypted shares, masked vector."""
LEGACY_METRICS = frozenset(wire.ALLOWED_METRICS | {wire.SITE_RECORD} | (wire.SITE_KEYS - {wire.SITE_NAME}))

# record name -> (record type, allowed keys or None for "the model's array names")
ALLOWED: dict[str, tuple[type, frozenset[str] | None]] = {
    wire.METRICS: (MetricRecord, wire.ALLOWED_METRICS),
    SITE_RECORD: (ConfigRecord, wire.SITE_KEYS),
    wire.ARRAYS: (ArrayRecord, None),
    SECAGG_RECORD: (ConfigRecord, SECAGG_OUT_KEYS),
    wire.LEGACY_METRICS: (ConfigRecord, LEGACY_METRICS),
    wire.LEGACY_NUM_EXAMPLES: (MetricRecord, frozenset({wire.LEGACY_NUM_EXAMPLES_KEY})),
    wire.LEGACY_STATUS: (ConfigRecord, frozenset({"code", "message"})),
    wire.LEGACY_PARAMETERS: (ArrayRecord, frozenset()),  # emptied by SecAgg+ before it leaves
}


class EgressRefused(FedGenomeError):
    """A reply holds something that is not on the site's egress allow-list."""


def check_content(content: RecordDict, model: dict[str, tuple[int, ...]] | None) -> None:
    """Raise :class:`EgressRefused` unless every record, key and array of ``content`` is allowed.

    Args:
        content: The reply about to leave.
        model: The global model's array shapes by name (from the instruction); None if it sent none.
    """
    for name, record in content.items():
        if name not in ALLOWED:
            raise EgressRefused(f"refusing to send record {name!r}: not on the egress allow-list")
        kind, keys = ALLOWED[name]
        if not isinstance(record, kind):
            raise EgressRefused(f"refusing to send record {name!r}: a {type(record).__name__}, "
                                f"expected a {kind.__name__}")
        if isinstance(record, ArrayRecord) and keys is None:
            _check_arrays(record, model)
        elif keys is not None and (extra := sorted(set(record) - keys)):
            raise EgressRefused(f"refusing to send keys {extra} of record {name!r}: not on the "
                                "egress allow-list")
    for name, key in ((wire.METRICS, wire.NUM_EXAMPLES),
                      (wire.LEGACY_NUM_EXAMPLES, wire.LEGACY_NUM_EXAMPLES_KEY)):
        counts = content.get(name)
        if isinstance(counts, MetricRecord) and key in counts:
            count = int(cast(int, counts[key]))
            if count % wire.BUCKET:
                raise EgressRefused(f"refusing to send an exact example count ({key}); it must "
                                    f"be rounded to a multiple of {wire.BUCKET}")


def _check_arrays(record: ArrayRecord, model: dict[str, tuple[int, ...]] | None) -> None:
    shapes = {k: tuple(v.shape) for k, v in record.items()}
    if model is None or shapes != model:
        raise EgressRefused("refusing to send arrays whose names or shapes differ from the "
                            "global model's")
    if any(np.dtype(v.dtype) != np.dtype(wire.WIRE_DTYPE) for v in record.values()):
        raise EgressRefused(f"refusing to send arrays that are not {np.dtype(wire.WIRE_DTYPE)}")


def _model_shapes(msg: Message) -> dict[str, tuple[int, ...]] | None:
    record = msg.content.array_records.get(wire.ARRAYS)
    return None if record is None else {k: tuple(v.shape) for k, v in record.items()}


def record_egress(state_dir: Path, msg: Message, reply: Message) -> None:
    """Append one line describing ``reply`` to ``state_dir/egress.jsonl``."""
    data = recorddict_to_proto(reply.content).SerializeToString()
    entry = {"time": utc_now_text(),
             "run": msg.metadata.run_id, "type": msg.metadata.message_type,
             "round": msg.metadata.group_id,
             "records": {name: sorted(record) if not isinstance(record, ArrayRecord)
                         else [f"{len(record)} arrays"] for name, record in reply.content.items()},
             "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / EGRESS_LOG, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry, sort_keys=True) + "\n")


def egress_guard(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower mod: let a reply leave only if it is on the allow-list, and log it."""
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    check_content(reply.content, _model_shapes(msg))
    site = context.node_config.get(wire.NODE_SITE)
    if isinstance(site, str):
        record_egress(Path(site) / "state", msg, reply)
    return reply

"""The site's egress guard: only allow-listed records, keys, arrays and bucketed counts may leave."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict

from fedgenome.client.egress import EGRESS_LOG, EgressRefused, check_content, egress_guard
from fedgenome.shared import wire
from tests.helpers import task_identity

MODEL = {"embed.weight": (10, 4), "head.bias": (10,)}


def delta(dtype: type[np.generic] = np.float16, **shapes: tuple[int, ...]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.zeros(v, dtype=dtype)) for k, v in (shapes or {
        "embed.weight": (10, 4), "head.bias": (10,)}).items()})


def reply(**extra: object) -> RecordDict:
    content = RecordDict({wire.METRICS: MetricRecord({wire.STATUS: 1, wire.EPSILON: 1.5,
                                                      wire.NUM_EXAMPLES: 100}),
                          wire.SITE_RECORD: ConfigRecord({wire.SITE_NAME: "hospital-a"}),
                          wire.ARRAYS: delta()})
    for key, value in extra.items():
        content[key] = value  # type: ignore[assignment]
    return content


def test_a_plain_reply_with_the_model_delta_and_allowed_metrics_passes() -> None:
    check_content(reply(), MODEL)


def test_secagg_protocol_records_pass() -> None:
    content = RecordDict({wire.SECAGG_RECORD: ConfigRecord({"masked_params": [b"\x00"]}),
                          wire.LEGACY_METRICS: ConfigRecord({wire.EPSILON: 1.0, wire.SITE_RECORD: "a"}),
                          wire.LEGACY_NUM_EXAMPLES: MetricRecord({wire.LEGACY_NUM_EXAMPLES_KEY: 150}),
                          wire.LEGACY_STATUS: ConfigRecord({"code": 0, "message": "OK"}),
                          wire.LEGACY_PARAMETERS: ArrayRecord()})
    check_content(content, None)


@pytest.mark.parametrize(("content", "model", "says"), [
    (reply(patients=ConfigRecord({"ids": "NA12878"})), MODEL, "record 'patients'"),
    (RecordDict({wire.METRICS: MetricRecord({"sequence-length": 1})}), MODEL, "sequence-length"),
    (RecordDict({wire.SITE_RECORD: ConfigRecord({wire.SITE_NAME: "a", "vcf": "/data/x.vcf"})}), MODEL, "vcf"),
    (RecordDict({wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: 87})}), MODEL, "multiple of 50"),
    (RecordDict({wire.ARRAYS: delta(np.float32)}), MODEL, "not float16"),
    (RecordDict({wire.ARRAYS: delta(extra=(24,))}), MODEL, "names or shapes"),
    (RecordDict({wire.ARRAYS: delta()}), None, "names or shapes"),
    (RecordDict({wire.LEGACY_PARAMETERS: delta()}), None, "keys"),
    (RecordDict({wire.METRICS: ConfigRecord({wire.EPSILON: 1.0})}), MODEL, "expected a MetricRecord"),
], ids=["unknown-record", "unknown-metric", "unknown-site-key", "exact-count", "float32",
        "extra-array", "arrays-not-asked-for", "unmasked-secagg-parameters", "wrong-record-type"])
def test_anything_else_is_refused_before_it_is_sent(content: RecordDict,
                                                   model: dict[str, tuple[int, ...]] | None,
                                                   says: str) -> None:
    with pytest.raises(EgressRefused, match=says):
        check_content(content, model)


@pytest.fixture()
def in_a_run() -> Iterator[None]:
    """Messages can be made only inside a Flower task; pretend to be one (a SuperNode's)."""
    with task_identity(node_id=1):
        yield


def _instruction() -> Message:
    arrays = ArrayRecord({k: Array(np.zeros(v, dtype=np.float32)) for k, v in MODEL.items()})
    return Message(RecordDict({wire.ARRAYS: arrays}), dst_node_id=7, message_type=MessageType.TRAIN)


def _context(site: Path) -> Context:
    return Context(run_id=1, node_id=7, node_config={wire.NODE_SITE: str(site)}, state=RecordDict(),
                   run_config={})


@pytest.mark.usefixtures("in_a_run")
def test_the_guard_logs_what_left_and_stops_what_may_not(tmp_path: Path) -> None:
    msg = _instruction()
    out = egress_guard(msg, _context(tmp_path), lambda m, c: Message(reply(), reply_to=m))
    assert wire.ARRAYS in out.content
    (line,) = (tmp_path / "state" / EGRESS_LOG).read_text().splitlines()
    entry = json.loads(line)
    assert entry["records"] == {wire.ARRAYS: ["2 arrays"], wire.METRICS: sorted(reply()[wire.METRICS]),
                                wire.SITE_RECORD: [wire.SITE_NAME]}
    assert entry["bytes"] > 0 and len(entry["sha256"]) == 64
    leaky = reply(debug=ConfigRecord({"window": "ACGT" * 10}))
    with pytest.raises(EgressRefused):
        egress_guard(msg, _context(tmp_path), lambda m, c: Message(leaky, reply_to=m))
    assert len((tmp_path / "state" / EGRESS_LOG).read_text().splitlines()) == 1  # nothing logged

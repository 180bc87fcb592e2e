"""The sites' private evaluations of the global model: asked every ``site-eval-every`` rounds.

Each online site is sent the global weights in an ``evaluate`` message; it answers with its noisy
bits per base (released by :mod:`fedgenome.privacy.evaluation`, spent from its budget) or a
refusal. A reply is named by the node's registered or bound site (:func:`node_label`), never by
the name it claims, and is kept only if its metrics are the allow-listed ones with a finite value
in ``[0, site-eval-clip]``. Its ledger head is not recorded (the next training reply's head, checked
and signed, continues past the evaluation's entry).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedgenome.configs.schema import FederationConfig
from fedgenome.server.identity import NodeIdentity
from fedgenome.server.replies import node_label
from fedgenome.shared import wire

log = logging.getLogger(__name__)


@dataclass
class SiteEvaluations:
    """What one round of site evaluations returned."""

    bits: dict[str, float] = field(default_factory=dict)  # site -> its noisy bits per base
    std: dict[str, float] = field(default_factory=dict)  # site -> the noise's std on its bits
    refused: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    epsilon: dict[str, float] = field(default_factory=dict)  # site -> cumulative epsilon after it


def due(fed: FederationConfig, rnd: int) -> bool:
    """Whether round ``rnd`` ends with the sites' private evaluations."""
    return fed.site_eval_every > 0 and rnd % fed.site_eval_every == 0


def evaluate_at_sites(grid: Grid, nodes: Iterable[int], content: RecordDict, fed: FederationConfig, *,
                      names: Mapping[int, str], identities: Mapping[int, NodeIdentity]) -> SiteEvaluations:
    """Send ``content`` (the global weights and the round config) to ``nodes``; read the replies."""
    messages = [Message(content=content, dst_node_id=n, message_type=MessageType.EVALUATE) for n in nodes]
    out = SiteEvaluations()
    answered = set()
    for reply in grid.send_and_receive(messages, timeout=fed.round_timeout):
        node = reply.metadata.src_node_id
        site = node_label(node, names, identities)
        answered.add(node)
        if reply.has_error():
            log.warning("site %s: its evaluation failed (%s)", site, reply.error.reason)
            out.failed.append(site)
            continue
        _read(reply.content, site, fed, out)
    out.failed += [node_label(n, names, identities) for n in nodes if n not in answered]
    return out


def _read(content: RecordDict, site: str, fed: FederationConfig, out: SiteEvaluations) -> None:
    """One reply into ``out``: its bits or refusal and epsilon; a malformed one as failed."""
    try:
        metrics = content.metric_records[wire.METRICS]
        status, eps = int(cast(int, metrics[wire.STATUS])), float(cast(float, metrics[wire.EPSILON]))
        bits = metrics.get(wire.EVAL_BITS)
    except (KeyError, TypeError, ValueError) as exc:
        log.warning("site %s: malformed evaluation reply (%r)", site, exc)
        out.failed.append(site)
        return
    unknown = set(metrics) - wire.ALLOWED_METRICS
    good_bits = isinstance(bits, float) and math.isfinite(bits) and 0.0 <= bits <= fed.site_eval_clip
    if unknown or not math.isfinite(eps) or (status == wire.TRAINED and not good_bits):
        log.warning("site %s: evaluation reply rejected (metrics %s)", site, sorted(metrics))
        out.failed.append(site)
        return
    out.epsilon[site] = eps
    if status == wire.TRAINED:
        out.bits[site] = cast(float, bits)
        std = metrics.get(wire.EVAL_BITS_STD)
        if isinstance(std, float) and math.isfinite(std) and std >= 0.0:
            out.std[site] = std
    else:
        out.refused.append(site)


def evaluation_content(global_: wire.Arrays, config: Mapping[str, int | str]) -> RecordDict:
    """The evaluate message's content: the weights packed as a train message carries them, the config."""
    arrays = ArrayRecord({wire.PACKED: Array(wire.pack(global_, np.float32))})
    return RecordDict({wire.ARRAYS: arrays, wire.CONFIG: ConfigRecord(
        {**config, wire.LAYOUT: wire.layout(global_)})})

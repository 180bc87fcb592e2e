"""A round's replies, read and validated before anything of them is used.

Each reply is checked in order: the site it names (:mod:`fedgenome.server.identity`), its metrics (present,
typed, only allow-listed keys, a bucketed example count within the run's bound and the site's
declared patients, :mod:`fedgenome.server.site_policy`), its epsilon
(:mod:`fedgenome.server.epsilon_check`), its
signed ledger head (:mod:`fedgenome.server.ledger_heads`) and its delta
(:func:`fedgenome.server.validation.check_update`). A rejected reply is logged and left out; the round goes
on with the others.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

from fedgenome.privacy.ledger.head import HeadDigest
from fedgenome.server.epsilon_check import EpsilonCheck, PrivacyClaim
from fedgenome.server.identity import Claim, NodeIdentity, check_claim
from fedgenome.server.ledger_heads import HeadCheck
from fedgenome.server.validation import UpdateRejected, check_update
from fedgenome.shared import wire

log = logging.getLogger(__name__)


@dataclass
class Collected:
    """A round's replies, sorted."""

    trained: list[Message] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)  # site -> why its update was rejected
    epsilon: dict[str, float] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)
    norms: dict[str, float] = field(default_factory=dict)  # site -> L2 norm of its update
    claims: list[Claim] = field(default_factory=list)  # replies that named a site not their own
    heads: dict[str, dict[str, int | str]] = field(default_factory=dict)  # site -> its ledger head

    def record_head(self, site: str, head: HeadDigest | None) -> None:
        """Keep the (checked) ledger head of a site's reply for the run report."""
        if head is not None:
            self.heads[site] = {"count": head.count, "sha256": head.last_sha256}


@dataclass(frozen=True)
class _Reply:
    """The fields of a site's train reply, read and type-checked."""

    name: str
    status: int
    epsilon: float
    examples: int
    loss: float | None
    budget: float = math.nan
    delta: float = math.nan
    head: HeadDigest | None = None  # the signed head of the site's ledger

    def privacy(self) -> PrivacyClaim:
        """The figures :class:`fedgenome.server.epsilon_check.EpsilonCheck` checks."""
        return PrivacyClaim(trained=self.status == wire.TRAINED, epsilon=self.epsilon,
                            budget=self.budget, delta=self.delta, examples=self.examples)


def read_reply(content: RecordDict) -> _Reply:
    """Read a train reply's site name and metrics; UpdateRejected if any is missing or malformed."""
    try:
        site = content.config_records[wire.SITE_RECORD]
        name = site[wire.SITE_NAME]
        metrics = content.metric_records[wire.METRICS]
        status, epsilon = int(cast(int, metrics[wire.STATUS])), float(cast(float, metrics[wire.EPSILON]))
        budget, delta = float(cast(float, metrics[wire.BUDGET])), float(cast(float, metrics[wire.DELTA]))
        examples = metrics.get(wire.NUM_EXAMPLES, 0)
        loss = float(cast(float, metrics[wire.TRAIN_LOSS])) if status == wire.TRAINED else None
    except (KeyError, TypeError, ValueError) as exc:
        raise UpdateRejected(f"malformed reply: {exc!r} missing or of the wrong type") from None
    if unknown := sorted(set(metrics) - wire.ALLOWED_METRICS):
        raise UpdateRejected(f"malformed reply: metric keys {unknown} are not allowed "
                             f"(allowed: {sorted(wire.ALLOWED_METRICS)})")
    if unknown := sorted(set(site) - wire.SITE_KEYS):
        raise UpdateRejected(f"malformed reply: site record keys {unknown} are not allowed")
    if not isinstance(name, str) or not name:
        raise UpdateRejected("malformed reply: no site name")
    if status not in (wire.TRAINED, wire.REFUSED) or not math.isfinite(epsilon):
        raise UpdateRejected(f"malformed reply: status {status}, epsilon {epsilon}")
    return _Reply(name, status, epsilon, examples if isinstance(examples, int) else -1, loss,
                  budget, delta, _head(name, site))


def _head(name: str, site: Mapping[str, object]) -> HeadDigest | None:
    """The ledger head in a reply's site record; None if it has none."""
    if wire.LEDGER_COUNT not in site:
        return None
    try:
        return HeadDigest.from_json({"site": name, "count": site[wire.LEDGER_COUNT],
                                     "last_sha256": site.get(wire.LEDGER_HEAD),
                                     "signature": site.get(wire.LEDGER_SIGNATURE)})
    except ValueError as exc:
        raise UpdateRejected(f"malformed reply: {exc}") from None


def check_examples(reply: _Reply, *, max_examples: float, declared: Mapping[str, int] | None = None,
                   site: str = "") -> None:
    """The example count FedAvg weights by: a multiple of the bucket, within [bucket, bound].

    The bound is the run's ``max_examples``, and for a site in ``declared`` (the PKI registry's
    patient counts, :mod:`fedgenome.server.site_policy`) the bucketed count it declared, if lower.
    """
    if not (wire.BUCKET <= reply.examples <= max_examples and reply.examples % wire.BUCKET == 0):
        raise UpdateRejected(f"example count {reply.examples} is not a multiple of {wire.BUCKET} "
                             f"in [{wire.BUCKET}, {max_examples:g}] (max-examples)")
    if declared and site in declared and reply.examples > declared[site]:
        raise UpdateRejected(f"example count {reply.examples} is above the {declared[site]} patients "
                             f"site {site} declared in the consortium's PKI registry")


@dataclass(frozen=True)
class ReplyChecks:
    """What a site's reply is checked against besides its name and its delta."""

    max_examples: float = math.inf
    declared: Mapping[str, int] | None = None  # site -> the patients it declared (bucketed)
    epsilons: EpsilonCheck | None = None
    heads: HeadCheck | None = None
    registry: Mapping[str, str] | None = None  # site -> its key's fingerprint in the PKI registry

    def check(self, site: str, reply: _Reply, identity: NodeIdentity | None) -> None:
        """The example count (when it trained), the epsilon and the ledger head; UpdateRejected."""
        if reply.status == wire.TRAINED:
            check_examples(reply, max_examples=self.max_examples, declared=self.declared, site=site)
        if self.epsilons is not None:
            self.epsilons.check(site, reply.privacy())
        if self.heads is not None:
            self.heads.check(site, reply.head,
                             public_key=identity.public_key if identity is not None else None)


def reply_delta(arrays: ArrayRecord, global_: wire.Arrays) -> dict[str, npt.NDArray[np.generic]]:
    """A reply's delta by array name; a packed one is unpacked in the global model's layout."""
    delta = {k: v.numpy() for k, v in arrays.items()}
    if set(delta) != {wire.PACKED}:
        return delta
    try:
        return wire.unpack(delta[wire.PACKED], wire.layout(global_))
    except ValueError as exc:
        raise UpdateRejected(str(exc)) from None


def collect(replies: list[Message], sampled: list[int], names: dict[int, str],
            global_: wire.Arrays, *, max_norm: float, max_examples: float = math.inf,
            declared: Mapping[str, int] | None = None,
            identities: Mapping[int, NodeIdentity] | None = None,
            epsilons: EpsilonCheck | None = None, heads: HeadCheck | None = None,
            registry: Mapping[str, str] | None = None) -> Collected:
    """Sort replies into trained / refused / rejected / failed; decode valid deltas to full weights.

    Every reply is validated before anything of it is used: its site name (the name the node's
    key was registered under, :func:`fedgenome.server.identity.check_claim`; a rejected claim is never
    recorded), its metrics (present, typed, the example count bucketed and at most
    ``max_examples``) and its delta (:func:`check_update`). A rejected reply is logged and left
    out, and the round goes on with the others.
    """
    out = Collected()
    identities = identities or {}
    checks = ReplyChecks(max_examples, declared, epsilons, heads, registry)
    answered: set[int] = set()
    for msg in replies:
        node = msg.metadata.src_node_id
        if msg.has_error():  # made by the node, or by the SuperLink for it (from the SuperLink's id)
            log.warning("round reply with an error from node %d: %s", node, msg.error.reason)
            if node in sampled:
                answered.add(node)
                out.failed.append(node_label(node, names, identities))
            continue  # a sampled node without a usable reply is counted failed below, once
        answered.add(node)
        label = node_label(node, names, identities)
        try:
            reply = read_reply(msg.content)
            claim = check_claim(node, reply.name, identities=identities, bound=names,
                                taken=set(out.epsilon) | set(out.rejected), registry=registry)
            if claim.site is None:
                out.claims.append(claim)
                raise UpdateRejected(str(claim.problem))
            names[node] = label = claim.site
            checks.check(label, reply, identities.get(node))
            out.record_head(label, reply.head)
            out.epsilon[label] = reply.epsilon
            if reply.status == wire.REFUSED:
                out.refused.append(label)
                continue
            delta = reply_delta(msg.content.array_records.get(wire.ARRAYS, ArrayRecord()), global_)
            out.norms[label] = check_update(delta, global_, max_norm=max_norm).norm
        except UpdateRejected as exc:
            log.warning("rejected the reply of site %s: %s", label, exc)
            out.rejected[label] = str(exc)
            continue
        full = wire.decode_update(delta, global_)
        out.losses.append(cast(float, reply.loss))
        msg.content = RecordDict({
            wire.ARRAYS: ArrayRecord({k: Array(v) for k, v in full.items()}),
            wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: reply.examples})})
        out.trained.append(msg)
    out.failed += [node_label(n, names, identities) for n in sampled if n not in answered]
    return out


def node_label(node: int, names: Mapping[int, str], identities: Mapping[int, NodeIdentity]) -> str:
    """How the report names a node: its registered site, the site it is bound to, or its id."""
    ident = identities.get(node)
    return (ident.name if ident is not None and ident.name else None) or names.get(node, f"node {node}")

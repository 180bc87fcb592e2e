"""Which site a node speaks for: the name its key was registered under, never the name it sends.

With SuperNode authentication, Flower authenticates each node by its key and keeps, per node, the
public key and the name the operator registered it under (``fedgenome server register-site NAME``
runs ``flwr supernode register KEY --name NAME``; the PKI registry holds the same key as
``sites/NAME.pub``). :func:`node_identities` reads them from the grid once per round. A reply's
site name must be its node's registered name; any other claim is rejected and never recorded, so
an impostor's update or epsilon can never land under another hospital's name, whatever the order
of replies.

Without authentication (plaintext test federations) a node is bound to the first name it gives,
and a name bound to one node cannot be taken by another.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.serverapp import Grid

from fedgenome.privacy.keys import fingerprint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeIdentity:
    """What the SuperLink knows of a node: its registered site name and its key's fingerprint."""

    node_id: int
    name: str | None  # None: registered without a name, or no authentication
    fingerprint: str | None  # SHA-256 of the key's OpenSSH public bytes; None: no authentication
    public_key: bytes | None = None  # the PEM key Flower authenticated it with

    def describe(self) -> str:
        """'node N (key ab12..., registered as X)' for logs and the run report."""
        key = f"key {self.fingerprint[:16]}" if self.fingerprint else "no key"
        name = f"registered as {self.name!r}" if self.name else "registered without a site name"
        return f"node {self.node_id} ({key}, {name})"


@dataclass(frozen=True)
class Claim:
    """A reply's site name checked against its node: the name to record it under, or why not."""

    node_id: int
    claimed: str
    site: str | None  # the name the reply counts under; None: rejected
    problem: str | None = None
    fingerprint: str | None = None


def _fingerprint(public_key: bytes) -> str | None:
    """:func:`fedgenome.privacy.keys.fingerprint` of the PEM key Flower stores, if it is an EC key."""
    if not public_key:
        return None
    try:
        key = serialization.load_pem_public_key(public_key)
    except ValueError:
        key = None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return hashlib.sha256(public_key).hexdigest()  # not one of ours: still a stable fingerprint
    return fingerprint(key)


def node_identities(grid: Grid) -> dict[int, NodeIdentity]:
    """The registered identities of the nodes the grid knows; empty where it cannot say."""
    try:
        nodes = list(grid.get_nodes())
    except (AttributeError, NotImplementedError):  # a grid without node details
        return {}
    out = {}
    for n in nodes:
        key = bytes(getattr(n, "public_key", b"")) or None
        out[int(n.node_id)] = NodeIdentity(int(n.node_id), str(getattr(n, "name", "")) or None,
                                           _fingerprint(key or b""), key)
    return out


def check_claim(node: int, claimed: str, *, identities: Mapping[int, NodeIdentity],
                bound: Mapping[int, str], taken: set[str],
                registry: Mapping[str, str] | None = None) -> Claim:
    """Whether ``node`` may speak for site ``claimed`` this round.

    Args:
        node: The node id Flower authenticated the reply with.
        claimed: The site name the reply carries.
        identities: The nodes' registered identities (:func:`node_identities`).
        bound: Node id -> the site name it was bound to earlier in the run.
        taken: Site names already counted this round.
        registry: Site name -> fingerprint of its key in the consortium's PKI registry, when the
            run names it: the SuperLink's registration must agree with it.
    """
    ident = identities.get(node)
    fingerprint = ident.fingerprint if ident else None
    if ident is not None and ident.fingerprint is not None:  # an authenticated node
        if ident.name is None:
            return Claim(node, claimed, None, f"{ident.describe()} may not speak for any site: "
                         f"register its key with 'fedgenome server register-site {claimed}'",
                         fingerprint)
        if claimed != ident.name:
            return Claim(node, claimed, None, f"{ident.describe()} claims to be site {claimed!r}",
                         fingerprint)
        if registry is not None and registry.get(claimed) != ident.fingerprint:
            where = "is not in" if claimed not in registry else "has another key in"
            return Claim(node, claimed, None, f"{ident.describe()}: site {claimed!r} {where} the "
                         "consortium's PKI registry", fingerprint)
    elif node in bound and bound[node] != claimed:
        return Claim(node, claimed, None, f"node {node}, site {bound[node]!r} until now, claims to "
                     f"be site {claimed!r}")
    elif node not in bound and claimed in bound.values():
        return Claim(node, claimed, None, f"node {node} claims to be site {claimed!r}, which is "
                     "another node", fingerprint)
    if claimed in taken:
        return Claim(node, claimed, None, f"node {node}: site {claimed!r} already answered this "
                     "round", fingerprint)
    return Claim(node, claimed, claimed, None, fingerprint)

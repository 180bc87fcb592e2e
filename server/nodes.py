"""Which SuperLink node each registered site is: the record ``server register-site`` keeps.

Flower names a registered SuperNode by a node id only (``flwr supernode ls`` shows no site
names), so the operator's PKI directory keeps ``sites/nodes.json``: for each site, the node id its
key was registered as and at which SuperLink. ``server list-sites`` joins it with what the
SuperLink reports, and ``server unregister-site NAME`` finds the node id to revoke there.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from fedgenome.configs.errors import ConfigError, InputFileError
from fedgenome.shared.atomic import write_text
from fedgenome.shared.clock import utc_now_text
from fedgenome.shared.run_layout import PkiRegistry


@dataclass(frozen=True)
class NodeRecord:
    """A site's registration with a SuperLink."""

    node_id: int
    superlink: str
    registered: str
    """When (ISO 8601, UTC)."""


def recorded_nodes(registry: PkiRegistry) -> dict[str, NodeRecord]:
    """The sites' recorded registrations, by site name (none before the first ``register-site``).

    Raises:
        InputFileError: The record is not what this module writes.
    """
    path = registry.nodes
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {name: NodeRecord(**fields) for name, fields in data.items()}
    except (ValueError, TypeError, AttributeError) as exc:
        raise InputFileError(f"{path}: not a node record ({exc}); restore it from a backup, or delete "
                             "it and register the sites again") from None


def record_node(registry: PkiRegistry, name: str, *, node_id: int, superlink: str) -> NodeRecord:
    """Record that site ``name`` was registered at ``superlink`` as ``node_id`` (atomically)."""
    nodes = recorded_nodes(registry)
    nodes[name] = NodeRecord(node_id, superlink, utc_now_text())
    _write(registry.nodes, nodes)
    return nodes[name]


def node_of(registry: PkiRegistry, name: str) -> NodeRecord:
    """Site ``name``'s recorded registration.

    Raises:
        ConfigError: None is recorded.
    """
    nodes = recorded_nodes(registry)
    if name not in nodes:
        known = ", ".join(sorted(nodes)) or "none"
        raise ConfigError(f"site {name}: no SuperLink registration recorded in {registry.nodes} "
                          f"(recorded: {known}); pass --node-id from 'fedgenome server list-sites'")
    return nodes[name]


def forget_node(registry: PkiRegistry, name: str) -> None:
    """Drop site ``name``'s record, if there is one."""
    nodes = recorded_nodes(registry)
    if nodes.pop(name, None) is not None:
        _write(registry.nodes, nodes)


def _write(path: Path, nodes: dict[str, NodeRecord]) -> None:
    write_text(path, json.dumps({n: asdict(r) for n, r in sorted(nodes.items())}, indent=2) + "\n")

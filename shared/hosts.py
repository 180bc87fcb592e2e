"""Default addresses and ports: the one place that says where things listen unless told otherwise.

Everything local (the demo, the tests, a SuperNode's Runtime API) binds to loopback only; a
SuperLink certificate names :data:`LOCAL_NAMES` unless the operator gives the hosts clients use.
"""

from __future__ import annotations

LOOPBACK = "127.0.0.1"
"""Where local services listen: the demo's SuperLink, a SuperNode's Runtime API."""
LOCAL_NAMES: tuple[str, ...] = ("localhost", LOOPBACK)
"""The names a certificate for a SuperLink on this machine carries by default (its SANs)."""
ALL_INTERFACES: tuple[str, ...] = ("0.0.0.0", "::")
"""Listen addresses that mean every interface (no single name a certificate must carry)."""
SUPERLINK_PORT = 9092
"""The SuperLink's default port (its Fleet, Control and Runtime APIs)."""
RUNTIME_PORT = 9094
"""A SuperNode's default local Runtime API port, where its ClientApp worker connects."""


def split_address(address: str) -> tuple[str, int]:
    """``(host, port)`` of ``HOST:PORT`` (an IPv6 host in brackets: ``[::1]:9092``).

    >>> split_address("superlink.example.org:9092")
    ('superlink.example.org', 9092)
    >>> split_address("[::1]:9092")
    ('::1', 9092)

    Raises:
        ConfigError: Not HOST:PORT with a port from 1 to 65535.
    """
    from fedgenome.configs.errors import ConfigError

    host, sep, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"address {address!r}: expected HOST:PORT with a port from 1 to 65535")
    return host, int(port)

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

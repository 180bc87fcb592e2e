"""A hospital's SuperNode: Flower's ``flower-supernode`` pointed at the site directory."""

from __future__ import annotations

from pathlib import Path

from shared.errors import ConfigError
from shared.processes import flower_tool


def supernode_command(*, site: Path, superlink: str, clientappio_port: int,
                      root_cert: Path | None, insecure: bool = False,
                      auth_key: Path | None = None) -> list[str]:
    """``flower-supernode`` for ``site``; TLS unless ``insecure`` was asked for explicitly."""
    command = [flower_tool("flower-supernode"), "--superlink", superlink,
               "--host", "127.0.0.1", "--port", str(clientappio_port),
               "--node-config", f"site='{site.resolve()}'", "--max-retries", "10",
               "--max-wait-time", "120"]
    if insecure:
        command.append("--insecure")
    elif root_cert is None:
        raise ConfigError("TLS is on by default: give --root-certificates (the consortium CA), or "
                          "--insecure explicitly for a plaintext test deployment")
    else:
        command += ["--root-certificates", str(root_cert)]
    if auth_key is not None:
        command += ["--auth-supernode-private-key", str(auth_key)]
    return command

"""A hospital's SuperNode: Flower's ``flower-supernode`` pointed at the site directory."""

from __future__ import annotations

from pathlib import Path

from shared.errors import ConfigError
from shared.processes import flower_tool


def supernode_command(*, site: Path, superlink: str, clientappio_port: int,
                      root_cert: Path | None, insecure: bool = False,
                      auth_key: Path | None = None, keep_updates: bool = False) -> list[str]:
    """``flower-supernode`` for ``site``; TLS unless ``insecure`` was asked for explicitly.

    ``auth_key`` is the site's private key for SuperNode authentication (its public half must be
    registered with the SuperLink); ``keep_updates`` keeps a copy of every update sent.
    """
    node_config = f"site='{site.resolve()}'" + (" keep-updates=true" if keep_updates else "")
    command = [flower_tool("flower-supernode"), "--superlink", superlink,
               "--host", "127.0.0.1", "--port", str(clientappio_port),
               "--node-config", node_config, "--max-retries", "10",
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

"""``node.toml``: a hospital node's start line in one file (``fedgenome client start --config``).

Keys are the options of ``client start`` in kebab-case; relative paths are relative to the file's
directory; an option given on the command line wins over the file. Example::

    site = "sites/hospital-ceu"
    superlink = "aggregator.consortium.example:9092"
    root-certificates = "pki/ca.crt"
    trust = []               # extra app-bundle digests, after review ('fedgenome client trust')
    # max-retries = 20       # absent: reconnect to a lost SuperLink without limit
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fedgenome.configs.errors import ConfigError
from fedgenome.configs.validation import read_toml, validate

PATH_KEYS = ("site", "root-certificates", "key", "flwr-home")
"""The fields that hold paths, resolved against the file's directory."""


class NodeConfig(BaseModel):
    """What ``fedgenome client start`` needs to start a site's node."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False,
                              populate_by_name=True, alias_generator=lambda name: name.replace("_", "-"))

    site: Path = Field(strict=False, description="the hospital's site directory")
    superlink: str = Field(min_length=1, description="the SuperLink's address HOST:PORT")
    root_certificates: Path | None = Field(None, strict=False, description="the consortium CA "
                                           "certificate (required unless insecure)")
    insecure: bool = Field(False, description="plaintext, no TLS (tests only)")
    key: Path | None = Field(None, strict=False, description="SuperNode authentication key "
                             "(default: the site's keys/NAME)")
    port: int | None = Field(None, gt=0, lt=65536, description="the local Runtime API port")
    flwr_home: Path | None = Field(None, strict=False, description="the SuperNode's Flower home")
    trust: tuple[str, ...] = Field((), strict=False, description="extra app-bundle digests to run")
    max_retries: int | None = Field(None, ge=0, description="reconnection tries to a lost "
                                    "SuperLink (absent: no limit)")
    max_wait_time: float | None = Field(None, gt=0.0, description="seconds of reconnecting at most "
                                        "(absent: no limit)")


def load_node_config(path: Path | None, overrides: dict[str, Any]) -> NodeConfig:
    """The node config from ``path`` (if any) with ``overrides`` (the given CLI options) on top.

    ``overrides`` uses field names; ``None`` (or empty) values are options not given: the file's stay.

    Raises:
        ConfigError: The file cannot be read, is not TOML, or a key or value is wrong (one line
            naming the key, the value and the fix; a missing ``site``/``superlink`` names the option).
    """
    data: dict[str, Any] = {}
    if path is not None:
        data = read_toml(path)
        base = path.resolve().parent
        for key in PATH_KEYS:
            if isinstance(data.get(key), str):
                data[key] = (base / Path(data[key]).expanduser()).resolve()
    data |= {k.replace("_", "-"): v for k, v in overrides.items() if v is not None and v != ()}
    source = str(path) if path is not None else "client start"
    for key in ("site", "superlink"):
        if key not in data:
            raise ConfigError(f"{source}: no {key}: pass --{key}, or set {key} = ... in a node "
                              "config file (--config node.toml)")
    return validate(NodeConfig, data, source=source)

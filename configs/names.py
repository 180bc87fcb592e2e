"""What a site may be called: the one rule for ``site.toml``'s ``name``, the PKI registry and the CLI.

A site's name becomes file names (its key ``keys/<name>``, ``<pki>/sites/<name>.pub``) and travels
in every reply, so it is letters, digits, ``.``, ``_`` and ``-``, starting with a letter or digit:
never a path, never empty, never hidden.
"""

from __future__ import annotations

import re

from fedgenome.configs.errors import ConfigError

SITE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
"""The regular expression a site name matches in full (pydantic's ``pattern`` of ``name``)."""
SITE_NAME_RULE = "letters, digits, '.', '_' and '-', starting with a letter or digit"
"""The rule in words, for error messages and help texts."""
_SITE_NAME = re.compile(SITE_NAME_PATTERN)


def is_site_name(name: str) -> bool:
    """Whether ``name`` is a valid site name.

    >>> is_site_name("hospital-ceu"), is_site_name("../etc"), is_site_name(".hidden"), is_site_name("")
    (True, False, False, False)
    """
    return _SITE_NAME.fullmatch(name) is not None


def check_site_name(name: str) -> str:
    """``name`` if it is a valid site name; else :class:`ConfigError` saying the rule.

    Raises:
        ConfigError: ``name`` breaks :data:`SITE_NAME_RULE`.
    """
    if not is_site_name(name):
        raise ConfigError(f"site name {name!r} is invalid: use {SITE_NAME_RULE} (the name in the "
                          "site's site.toml)")
    return name

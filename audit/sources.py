"""Where an audit finds its inputs: the ledgers, each site's public key, and budgets from outside.

The public key of a site comes, in order of preference, from:

* ``--key PUB`` (one ledger only);
* the consortium PKI's registry, ``<pki>/sites/<site>.pub``
  (:class:`fedgenome.shared.run_layout.PkiRegistry`, as :mod:`fedgenome.server.pki` writes it),
  read as files so that an auditor needs nothing but the public part of the PKI, as published in
  ``runs/<name>/pki``. The registry holds each site's *current* key, which also verifies a
  ledger that rotated keys (:mod:`fedgenome.privacy.ledger.verify`);
* a ``.pub`` beside the ledger: ``<site>.pub`` next to a copied ledger (``runs/<name>/ledgers``) or
  ``keys/<site>.pub`` of a site directory. The site itself wrote that file, so the output says so.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from fedgenome.audit.results import Budget, KeyLookup, SiteAudit
from fedgenome.audit.verify import AuditResult, audit_ledger
from fedgenome.configs.errors import ConfigError, FedGenomeError
from fedgenome.configs.schema import load_site_manifest
from fedgenome.privacy.keys import load_public_key
from fedgenome.privacy.site_state import LEDGER_NAME
from fedgenome.shared.run_layout import PkiRegistry, RunLayout, key_beside_copy

log = logging.getLogger(__name__)


def ledger_site(path: Path) -> str:
    """The site a ledger claims (entry 0's ``site``; verification then binds it to the key).

    Falls back to the file name (``<site>.jsonl``, or the site directory of ``<site>/state/ledger.jsonl``)
    when the first line does not parse.
    """
    try:
        with open(path, "rb") as fh:
            site = json.loads(fh.readline().decode("ascii")).get("site")
        if isinstance(site, str) and site:
            return site
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        pass
    return path.parent.parent.name if path.stem == "ledger" else path.stem


def find_key(site: str, ledger: Path, *, pki: Path | None = None, key_file: Path | None = None) -> KeyLookup:
    """The public key to verify ``site``'s ledger with (see the module docstring for the order).

    Returns:
        The key and its source, or a lookup with ``key=None`` and the problem.
    """
    if key_file is not None:
        return _load(key_file, f"--key {key_file}")
    if pki is not None:
        registered = PkiRegistry(pki).site_public(site)
        if not registered.is_file():
            return KeyLookup(None, f"PKI {pki}", f"site {site} is not registered in the PKI "
                             f"({registered} is missing): its ledger cannot be attributed to it")
        return _load(registered, f"PKI registry {registered}")
    beside = [key_beside_copy(ledger, site), ledger.parent.parent / "keys" / f"{site}.pub"]
    found = next((p for p in beside if p.is_file()), None)
    if found is None:
        return KeyLookup(None, "none", f"no public key: pass --pki DIR or --key PUB (looked for "
                         f"{' and '.join(str(p) for p in beside)})")
    return _load(found, f"beside the ledger, not from the PKI: {found}")


def _load(path: Path, source: str) -> KeyLookup:
    """The key in ``path``, or the reason it cannot be loaded."""
    try:
        return KeyLookup(load_public_key(path), source)
    except FedGenomeError as exc:
        return KeyLookup(None, source, str(exc))


def site_budgets(site_dirs: Sequence[Path]) -> dict[str, Budget]:
    """The ``[privacy] epsilon_budget`` of each site directory's ``site.toml``, by site name (unsigned).

    Raises:
        ConfigError: A directory has no valid ``site.toml``.
    """
    budgets = {}
    for site_dir in site_dirs:
        manifest = load_site_manifest(site_dir)
        budgets[manifest.name] = Budget(manifest.privacy.epsilon_budget,
                                        f"{site_dir / 'site.toml'} (unsigned)")
    return budgets


def audit_ledgers(ledgers: Sequence[Path], *, pki: Path | None = None, key_file: Path | None = None,
                  budgets: Mapping[str, Budget] | None = None) -> AuditResult:
    """Audit each ledger with its site's key (see :func:`find_key`) and budget.

    Args:
        ledgers: Ledger files (``<site>/state/ledger.jsonl`` or copies such as ``<site>.jsonl``).
        pki: The consortium PKI (its public part is enough): keys from its registry.
        key_file: One public key for the one ledger given.
        budgets: Budgets from outside the ledgers by site name, used where no entry records one.

    Raises:
        ConfigError: No ledger, ``key_file`` with several ledgers, or ``pki`` without a registry.
    """
    if not ledgers:
        raise ConfigError("no ledger to audit: pass LEDGER files (<site>/state/ledger.jsonl or copies)")
    if key_file is not None and len(ledgers) > 1:
        raise ConfigError(f"--key verifies one ledger, but {len(ledgers)} were given: use --pki DIR")
    if pki is not None and not PkiRegistry(pki).sites.is_dir():
        raise ConfigError(f"--pki {pki}: no sites/ registry there; pass the consortium PKI directory "
                          "(made by 'fedgenome pki init', or runs/<name>/pki)")
    audits: list[SiteAudit] = []
    for ledger in ledgers:
        site = ledger_site(ledger)
        key = find_key(site, ledger, pki=pki, key_file=key_file)
        audits.append(audit_ledger(ledger, site=site, key=key, fallback_budget=(budgets or {}).get(site)))
        log.debug("audited %s (%s): %s", ledger, site, "ok" if audits[-1].ok else "FAILED")
    return AuditResult(tuple(audits))


def run_ledgers(run_dir: Path) -> list[Path]:
    """The ledgers of a run directory: ``ledgers/*.jsonl`` (the demo's copies), else the sites' state.

    Raises:
        ConfigError: Neither is there.
    """
    files = RunLayout(run_dir)
    copies = sorted(files.ledgers.glob("*.jsonl"))
    if copies:
        return copies
    own = sorted(files.sites.glob(f"*/state/{LEDGER_NAME}"))
    if own:
        return own
    raise ConfigError(f"{run_dir}: no ledgers (neither ledgers/*.jsonl nor sites/*/state/ledger.jsonl); "
                      "pass the directory 'fedgenome demo' wrote (runs/<name>)")


def run_site_budgets(run_dir: Path) -> dict[str, Budget]:
    """Budgets of a run directory's sites from ``sites/*/site.toml`` (unsigned); none if absent."""
    dirs = sorted(p.parent for p in RunLayout(run_dir).sites.glob("*/site.toml"))
    try:
        return site_budgets(dirs)
    except ConfigError as exc:
        log.warning("ignoring the sites' budgets: %s", exc)
        return {}

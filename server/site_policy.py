"""What each registered site may claim: the patient count it declared when it joined.

FedAvg weights a site's update by its example count, and SecAgg+ scales by it; a site could claim
any count up to the run's ``max-examples`` and outweigh honest sites. The consortium records each
site's declared cohort size beside its key in the PKI registry (``sites/<name>.toml``, written by
``fedgenome pki add-site NAME --patients N``); a run that names the registry (run config ``pki``,
``fedgenome run --pki``) refuses any reply claiming more than the bucketed declaration, and any
node whose key is not the one the registry holds for the site it speaks for.
"""

from __future__ import annotations

from pathlib import Path

import tomli_w

from fedgenome.configs.errors import ConfigError
from fedgenome.configs.validation import read_toml
from fedgenome.privacy.keys import fingerprint, load_public_key
from fedgenome.shared import wire
from fedgenome.shared.atomic import write_text
from fedgenome.shared.run_layout import PkiRegistry


def policy_path(pki: Path, name: str) -> Path:
    """``<pki>/sites/<name>.toml``: beside the site's registered key ``<name>.pub``."""
    return PkiRegistry(pki).site_policy(name)


def declare_patients(pki: Path, name: str, patients: int) -> Path:
    """Record that site ``name`` declared ``patients`` patients; the policy file."""
    if not PkiRegistry(pki).site_public(name).is_file():
        raise ConfigError(f"site {name} is not registered in {pki}: add it with 'fedgenome pki "
                          f"add-site {name} --pki {pki}'")
    if isinstance(patients, bool) or not 1 <= patients <= 100_000_000:
        raise ConfigError(f"--patients {patients}: give the site's patient count (1 to 10^8)")
    path = policy_path(pki, name)
    write_text(path, tomli_w.dumps({"patients": int(patients)}))
    return path


def registered_keys(pki: Path) -> dict[str, str]:
    """Site name -> the fingerprint of its key in the registry (``sites/<name>.pub``)."""
    return {path.stem: fingerprint(load_public_key(path)) for path in PkiRegistry(pki).registered()}


def declared_examples(pki: Path) -> dict[str, int]:
    """Site name -> the largest example count it may claim: its declared patients, bucketed."""
    sites = PkiRegistry(pki).sites
    if not sites.is_dir():
        raise ConfigError(f"run config 'pki' = {str(pki)!r}: no PKI registry there (no sites/); "
                          "give the consortium PKI directory made by 'fedgenome pki init'")
    out: dict[str, int] = {}
    for path in sorted(sites.glob("*.toml")):
        patients = read_toml(path).get("patients")
        if isinstance(patients, bool) or not isinstance(patients, int) or patients < 1:
            raise ConfigError(f"{path}: 'patients' = {patients!r} is not a patient count; rewrite it "
                              f"with 'fedgenome pki add-site {path.stem} --patients N'")
        out[path.stem] = wire.bucket(patients)
    return out

"""A run directory's layout, defined once: where the writers put a run's files and the readers find them.

::

    <run>/report.json, report.csv       the run report, rewritten after every round (server)
    <run>/state.json                    the last completed round and its checkpoint (resume)
    <run>/strategy-state.npz            the server optimizer's state (resume)
    <run>/checkpoints/round-NNNN/       the global model after each round
    <run>/final/                        the demo's copy of the last checkpoint
    <run>/summary.json                  the demo's summary (``sites``: {site: {epsilon, budget}})
    <run>/sites/<site>/                 the demo's hospital sites (site.toml, keys/, state/)
    <run>/ledgers/<site>.jsonl          the demo's copy of each site's ledger, with its
        <site>.jsonl.head, <site>.pub   head file and the public key the site wrote
    <run>/pki/                          the PKI's public part: ca.crt, server.pem, the site registry
    <run>/federation/                   the local federation (its full PKI in pki/, its logs)
    <run>/canary-commitment.json        the canary audit's commitment to its draw (before training)
    <run>/canary-audit.json             the empirical canary audit's result
    <run>/auditor/                      the canary audit's sealed draw, by default (the auditor's)

A PKI directory (the consortium's, or the public copy in ``<run>/pki``) registers each site's key
as ``sites/<site>.pub`` (:class:`PkiRegistry`): what an auditor needs of it. The field names of
``report.json`` that readers rely on are below (:data:`ROUND_FIELDS` and the top-level keys); the
server's :class:`fedgenome.server.report.RoundRecord` has exactly those fields. Standard library
only, so that writers (server, client, the CLI) and readers (:mod:`fedgenome.audit`) share it.

>>> run = RunLayout(Path("runs/demo"))
>>> run.checkpoint(3).as_posix(), run.ledger_copy("hospital-tsi").as_posix()
('runs/demo/checkpoints/round-0003', 'runs/demo/ledgers/hospital-tsi.jsonl')
>>> run.pki.site_public("hospital-tsi").as_posix()
'runs/demo/pki/sites/hospital-tsi.pub'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPORT, REPORT_CSV, STATE, STRATEGY_STATE = "report.json", "report.csv", "state.json", "strategy-state.npz"
SUMMARY, CANARY_AUDIT, CANARY_COMMITMENT = "summary.json", "canary-audit.json", "canary-commitment.json"

# report.json, top level
CONFIG, RUN_KEY, ROUNDS = "config", "run_key", "rounds"
INITIAL_CHECKPOINT, INITIAL_BITS = "initial_checkpoint", "initial_bits_per_base"
"""``initial_checkpoint`` is ``{"path", "sha256"}`` (:data:`CHECKPOINT_PATH`, :data:`CHECKPOINT_SHA256`),
or null for a run that started from random weights."""
CHECKPOINT_PATH, CHECKPOINT_SHA256 = "path", "sha256"
# report.json, each of its rounds
ROUND, EPSILON, HELDOUT_BITS, REJECTED = "round", "epsilon", "heldout_bits_per_base", "rejected"
SITE_BITS, SITE_BITS_STD = "site_bits", "site_bits_std"
ROUND_FIELDS = (ROUND, "train_loss", HELDOUT_BITS, "trained", "refused", "failed", "dropped", REJECTED,
                EPSILON, "seconds", SITE_BITS, SITE_BITS_STD)
"""The fields of a round that readers use (``epsilon``: {site: cumulative ε}; ``site_bits``: {site:
bits per base of its private evaluation}, in rounds with one; ``site_bits_std``: {site: the DP
noise's standard deviation on them}), in report order."""
# summary.json
SUMMARY_SITES, SUMMARY_EPSILON, SUMMARY_BUDGET = "sites", "epsilon", "budget"


@dataclass(frozen=True)
class PkiRegistry:
    """The site key registry of a PKI directory: ``<pki>/sites/<site>.pub`` (and ``<site>.toml``)."""

    root: Path

    @property
    def sites(self) -> Path:
        """The registry: ``<pki>/sites``."""
        return self.root / "sites"

    def site_public(self, site: str) -> Path:
        """A site's registered public key: ``<pki>/sites/<site>.pub``."""
        return self.sites / f"{site}.pub"

    def site_policy(self, site: str) -> Path:
        """What a site declared when it joined: ``<pki>/sites/<site>.toml``, beside its key."""
        return self.sites / f"{site}.toml"

    @property
    def retired(self) -> Path:
        """Keys rotated out of the registry: ``<pki>/sites/retired``."""
        return self.sites / "retired"

    @property
    def nodes(self) -> Path:
        """Which SuperLink node id each site's key was registered as: ``<pki>/sites/nodes.json``."""
        return self.sites / "nodes.json"

    def registered(self) -> list[Path]:
        """The registered public keys, sorted; none when there is no registry."""
        return sorted(self.sites.glob("*.pub")) if self.sites.is_dir() else []


@dataclass(frozen=True)
class RunLayout:
    """The files of one run directory (see the module docstring)."""

    root: Path

    @property
    def report(self) -> Path:
        """The run report, ``report.json``."""
        return self.root / REPORT

    @property
    def report_csv(self) -> Path:
        """The run report as CSV, ``report.csv``."""
        return self.root / REPORT_CSV

    @property
    def state(self) -> Path:
        """The resumable state, ``state.json``."""
        return self.root / STATE

    @property
    def strategy_state(self) -> Path:
        """The server optimizer's state, ``strategy-state.npz``."""
        return self.root / STRATEGY_STATE

    def checkpoint(self, rnd: int) -> Path:
        """The global model after round ``rnd``: ``checkpoints/round-NNNN``."""
        return self.root / "checkpoints" / f"round-{rnd:04d}"

    @property
    def final(self) -> Path:
        """The demo's copy of the last checkpoint, ``final/``."""
        return self.root / "final"

    @property
    def summary(self) -> Path:
        """The demo's summary, ``summary.json``."""
        return self.root / SUMMARY

    @property
    def sites(self) -> Path:
        """The demo's site directories, ``sites/``."""
        return self.root / "sites"

    @property
    def ledgers(self) -> Path:
        """The demo's copies of the sites' ledgers, ``ledgers/``."""
        return self.root / "ledgers"

    def ledger_copy(self, site: str) -> Path:
        """The copy of a site's ledger: ``ledgers/<site>.jsonl`` (its head file beside it)."""
        return self.ledgers / f"{site}.jsonl"

    def ledger_copy_key(self, site: str) -> Path:
        """The public key the site wrote, copied beside its ledger: ``ledgers/<site>.pub``."""
        return key_beside_copy(self.ledger_copy(site), site)

    @property
    def pki(self) -> PkiRegistry:
        """The public part of the run's PKI, ``pki/``."""
        return PkiRegistry(self.root / "pki")

    @property
    def federation(self) -> Path:
        """The local federation's working directory, ``federation/``."""
        return self.root / "federation"

    @property
    def federation_pki(self) -> PkiRegistry:
        """The local federation's full PKI, ``federation/pki``."""
        return PkiRegistry(self.federation / "pki")

    @property
    def canary_audit(self) -> Path:
        """The empirical canary audit's result, ``canary-audit.json``."""
        return self.root / CANARY_AUDIT

    @property
    def canary_commitment(self) -> Path:
        """The canary audit's commitment to its sealed draw, ``canary-commitment.json``."""
        return self.root / CANARY_COMMITMENT

    @property
    def auditor(self) -> Path:
        """Where the canary audit seals its draw unless told otherwise, ``auditor/``."""
        return self.root / "auditor"


def key_beside_copy(ledger: Path, site: str) -> Path:
    """The public key copied beside a ledger copy: ``<dir>/<site>.pub`` for ``<dir>/<site>.jsonl``."""
    return ledger.with_name(f"{site}.pub")

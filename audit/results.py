"""The results of a ledger audit (:mod:`fedgenome.audit.verify`): frozen records and their JSON form."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

_NO_SPEND = ("rotated", "reset")
"""Entries that record no round: a key rotation and a reset."""


@dataclass(frozen=True)
class AuditProblem:
    """One failure: the site, the entry (or the head file, the key...) and what is wrong."""

    site: str
    where: str
    """``"entry 3"``, ``"line 4"`` (a line that did not parse), ``"head file"``, ``"ledger"``,
    ``"public key"``, ``"round 2"`` (a cross-check with the run report)."""
    what: str
    seq: int | None = None
    """The entry's seq, when the problem is an entry's."""

    def line(self) -> str:
        """The problem as one line: ``site X, entry N: what is wrong``."""
        return f"site {self.site}, {self.where}: {self.what}"


@dataclass(frozen=True)
class Budget:
    """A site's ε budget and where it was learnt (the ledger, signed; ``site.toml``; unknown)."""

    value: float | None
    source: str


@dataclass(frozen=True)
class KeyLookup:
    """The public key a ledger is verified with, where it came from, or why none was found."""

    key: ec.EllipticCurvePublicKey | None
    source: str
    """E.g. ``"PKI registry pki/sites/a.pub"`` or ``"beside the ledger (not the PKI): a.pub"``."""
    problem: str | None = None


@dataclass(frozen=True)
class EntryAudit:
    """One ledger entry: its recorded cumulative ε and the two recomputations."""

    seq: int
    round: int
    status: str
    delta: float
    accountant: str
    recorded: float
    opacus: float | None
    """Opacus' accountant of the entry's kind over the history so far; None if it failed."""
    dp_accounting: float | None
    """dp-accounting's PLD over the same history; None if it failed."""
    budget: float | None
    """The ``epsilon_budget`` the entry records (signed); None in older entries."""
    initial_checkpoint_sha256: str | None = None
    """The run's initial checkpoint the entry records (signed); None when it started at random."""
    schema: int = 1
    """The ledger schema the entry was written in."""
    software: dict[str, str] | None = None
    """The versions of fedgenome, Opacus and dp-accounting that wrote it (signed); None in schema 1."""

    def to_json(self) -> dict[str, Any]:
        """The row as JSON."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class SiteAudit:
    """The audit of one site's ledger."""

    site: str
    ledger: Path
    key_fingerprint: str | None
    key_source: str
    entries: tuple[EntryAudit, ...]
    """Empty when the ledger did not verify (its numbers are not the site's)."""
    budget: Budget
    problems: tuple[AuditProblem, ...]
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when nothing failed."""
        return not self.problems

    @property
    def verified(self) -> bool:
        """True when signatures, chain and head verified (the entries are the site's)."""
        return bool(self.entries)

    def count(self, status: str) -> int:
        """The number of entries with ``status`` (trained, refused, rotated)."""
        return sum(e.status == status for e in self.entries)

    @property
    def delta(self) -> float | None:
        """The δ of the last entry that is not a rotation (the δ of the final (ε, δ))."""
        return next((e.delta for e in reversed(self.entries) if e.status not in _NO_SPEND), None)

    def last(self, field: str) -> float | None:
        """The last entry's ``recorded``, ``opacus`` or ``dp_accounting`` ε; None without entries."""
        return getattr(self.entries[-1], field) if self.entries else None

    def initial_checkpoints(self) -> list[str]:
        """The initial checkpoint hashes the entries record, in order of first appearance."""
        return list(dict.fromkeys(e.initial_checkpoint_sha256 for e in self.entries
                                  if e.initial_checkpoint_sha256 is not None))

    def epsilon_by_round(self) -> dict[int, float]:
        """The recorded cumulative ε after the last entry of each round."""
        return {e.round: e.recorded for e in self.entries if e.status not in _NO_SPEND}

    def to_json(self) -> dict[str, Any]:
        """The audit as JSON: the summary, the problems as lines, every entry."""
        return {
            "site": self.site, "ledger": str(self.ledger), "ok": self.ok, "verified": self.verified,
            "key_fingerprint": self.key_fingerprint, "key_source": self.key_source,
            "entries": len(self.entries), "rounds_trained": self.count("trained"),
            "evaluations": self.count("evaluated"),
            "refusals": self.count("refused"), "rotations": self.count("rotated"),
            "resets": self.count("reset"), "delta": self.delta,
            "epsilon_recorded": self.last("recorded"), "epsilon_opacus": self.last("opacus"),
            "epsilon_dp_accounting": self.last("dp_accounting"),
            "budget": self.budget.value, "budget_source": self.budget.source,
            "problems": [p.line() for p in self.problems], "notes": list(self.notes),
            "entry_audits": [e.to_json() for e in self.entries],
        }

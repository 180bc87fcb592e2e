"""Auditing a site's privacy ledger without trusting the site or the operator.

:func:`audit_ledger` checks one ledger three ways and collects every failure as an
:class:`AuditProblem` naming the site, the entry and what is wrong:

1. **Integrity.** Every signature (with the public key the caller found for the site, normally the
   consortium PKI's registered key), the hash chain, key rotations and the signed head
   (:func:`fedgenome.privacy.ledger.verify.verify_key_chain`). A ledger that fails here is not recomputed:
   its numbers cannot be attributed to the site.
2. **The recorded ε, recomputed by two independent accountants.** After *every* entry the
   cumulative ε is recomputed from the mechanisms (noise multiplier, sample rate, steps) of all
   trained entries up to and including it, at that entry's δ, exactly as the site computed it
   before training (:func:`fedgenome.privacy.trainer.run_private_round`):

   a. with **Opacus'** accountant of the kind the entry names (``rdp`` or ``prv``, the only ones a
      site can be configured with). The recorded ε must equal it:
      ``|recorded - opacus| <= OPACUS_RTOL * opacus + OPACUS_ATOL``, in either direction, since any
      difference is an edit or a bug.
   b. with Google's **dp-accounting** PLD accountant (pessimistic estimate,
      :class:`fedgenome.privacy.accounting.PLDAccountant`), a separate implementation of a tighter analysis.
      It may be lower than the recorded ε (RDP is looser than PLD), but it must not exceed it:
      ``pld <= recorded * (1 + DP_ACCOUNTING_RTOL) + DP_ACCOUNTING_ATOL``. A recorded ε below the
      PLD value under-reports what was spent, whatever the site's accountant said.
3. **The budget.** Entries written by current sites carry the site's ``epsilon_budget``, signed; an
   entry's cumulative ε must not exceed the budget recorded *in that entry* (a budget later lowered
   below what was already spent fails too: the site has then spent more than its budget). When no
   entry records a budget, one from elsewhere (``site.toml``, unsigned and labelled so) is checked
   against the final ε; without either the budget is reported as unknown and not checked.
4. **Rounds served once.** Two trained entries for the same (run key, round) are a round trained
   twice (a resumed server asked again and the site spent again): a problem naming the round and
   both entries. Entries without a run key (older ledgers) are compared by round alone.

A ledger whose entry 0 is a ``reset`` (``fedgenome privacy reset``) verifies, but the audit always
notes it, with its reason and what is known of the old ledger: the ε spent before is not in it.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedgenome.audit.results import AuditProblem, Budget, EntryAudit, KeyLookup, SiteAudit
from fedgenome.configs.errors import ConfigError, FedGenomeError, LedgerError
from fedgenome.privacy.accounting import AccountingError, epsilon
from fedgenome.privacy.keys import fingerprint
from fedgenome.privacy.ledger.entry import SCHEMA, LedgerEntry, duplicate_rounds, head_path
from fedgenome.privacy.ledger.verify import LedgerEntryError, verify_key_chain
from fedgenome.privacy.mechanism import Mechanism

log = logging.getLogger(__name__)

OPACUS_RTOL = 1e-3
"""Relative tolerance between the recorded ε and Opacus' recomputation (different Opacus versions)."""
OPACUS_ATOL = 1e-6
"""Absolute tolerance of the same comparison (ε near 0)."""
DP_ACCOUNTING_RTOL = 1e-2
"""How far (relative) dp-accounting's PLD ε may exceed the recorded ε (PRV's and PLD's grids)."""
DP_ACCOUNTING_ATOL = 1e-2
"""How far (absolute) dp-accounting's PLD ε may exceed the recorded ε."""
RECOMPUTED_ACCOUNTANTS = ("prv", "rdp")
"""The accountants an entry may name: the Opacus ones a site can be configured with."""
CROSS_CHECK_ACCOUNTANT = "pld"
"""The dp-accounting accountant every recorded ε is checked against."""

_Cache = dict[tuple[int, float, str], float]


class AuditFailed(FedGenomeError):
    """An audit found problems (listed one per line before this error): exit status 4.

    Distinct from input and usage errors (2) and an exhausted budget (3): the inputs were fine and
    the audit ran; what it audited did not verify.
    """

    exit_code = 4


@dataclass(frozen=True)
class AuditResult:
    """The audit of several ledgers, plus problems that belong to no single ledger."""

    sites: tuple[SiteAudit, ...]
    extra_problems: tuple[AuditProblem, ...] = ()

    @property
    def problems(self) -> tuple[AuditProblem, ...]:
        """Every problem, site by site."""
        return tuple(p for s in self.sites for p in s.problems) + self.extra_problems

    @property
    def ok(self) -> bool:
        """True when every ledger verified and nothing else failed."""
        return bool(self.sites) and not self.problems

    def to_json(self) -> dict[str, Any]:
        """The result as JSON (what ``audit verify --json`` writes)."""
        return {
            "ok": self.ok, "sites": [s.to_json() for s in self.sites],
            "problems": [p.line() for p in self.problems],
            "tolerances": {"opacus_rtol": OPACUS_RTOL, "opacus_atol": OPACUS_ATOL,
                           "dp_accounting_rtol": DP_ACCOUNTING_RTOL,
                           "dp_accounting_atol": DP_ACCOUNTING_ATOL},
        }


@dataclass(frozen=True)
class _Recomputed:
    """The two recomputations of one entry's ε, or why one failed."""

    opacus: float | None
    dp_accounting: float | None
    failure: str | None = None


def audit_ledger(
    path: Path, *, site: str, key: KeyLookup, fallback_budget: Budget | None = None
) -> SiteAudit:
    """Verify one site's ledger, recompute its ε after every entry, and check its budget.

    Args:
        path: The ledger (``<site>/state/ledger.jsonl`` or a copy, with its ``.head`` beside it).
        site: The site the ledger must belong to (every entry's ``site`` must equal it).
        key: The site's public key and where it came from; a lookup that failed is a problem.
        fallback_budget: A budget from outside the ledger (``site.toml``), used when no entry
            records one; a signed budget in the ledger always wins.

    Returns:
        The audit; ``ok`` only when nothing failed.
    """
    fp = fingerprint(key.key) if key.key is not None else None
    base = SiteAudit(site=site, ledger=path, key_fingerprint=fp, key_source=key.source, entries=(),
                     budget=fallback_budget or Budget(None, "unknown"), problems=())
    if key.key is None:
        return _with(base, [AuditProblem(site, "public key", key.problem or "no public key")])
    if not path.is_file():
        return _with(base, [AuditProblem(site, "ledger", f"{path} does not exist")])
    try:
        chain = verify_key_chain(path, public_key=key.key, site=site)
    except LedgerError as exc:
        return _with(base, [_integrity_problem(site, path, exc)])
    if not chain.entries:
        return _with(base, [AuditProblem(site, "ledger", f"{path} has no entries")])
    rows, problems = recompute(site, chain.entries)
    budget, budget_problems, notes = _check_budget(site, chain.entries, fallback_budget)
    problems += budget_problems + duplicate_problems(site, chain.entries)
    return SiteAudit(site=site, ledger=path, key_fingerprint=fp, key_source=key.source,
                     entries=tuple(rows), budget=budget, problems=tuple(problems),
                     notes=tuple(reset_notes(chain.entries) + notes + schema_notes(chain.entries)))


def schema_notes(entries: Sequence[LedgerEntry]) -> list[str]:
    """A note on entries of a newer schema than this fedgenome reads: what it did not interpret."""
    newer = [e for e in entries if e.extra]
    if not newer:
        return []
    names = sorted({name for e in newer for name in e.extra})
    return [f"{len(newer)} entries, from entry {newer[0].seq} on, are of schema {newer[0].schema}, newer "
            f"than this fedgenome reads ({SCHEMA}): their fields {', '.join(names)} are signed and "
            "verified, not interpreted; upgrade fedgenome to check them"]


def duplicate_problems(site: str, entries: Sequence[LedgerEntry]) -> list[AuditProblem]:
    """One problem per (run key, round) trained more than once, naming the round and both entries."""
    problems = []
    for first, again in duplicate_rounds(entries):
        run = f"run {first.run_key}" if first.run_key else "no run key recorded"
        what = (f"round {again.round} ({run}) was trained twice: entries {first.seq} and {again.seq} "
                f"(epsilon {first.epsilon:.6g} then {again.epsilon:.6g}); the second spent again")
        problems.append(AuditProblem(site, f"entry {again.seq}", what, seq=again.seq))
    return problems


def reset_notes(entries: Sequence[LedgerEntry]) -> list[str]:
    """What an auditor must know of a ledger that was started over (its entry 0 is a reset)."""
    if not entries or entries[0].status != "reset":
        return []
    first = entries[0]
    old = ("lost" if first.previous_count is None
           else f"{first.previous_count} entries, last {first.previous_last_sha256}")
    return [f"entry 0 is a reset (a new ledger started on record at {first.time}; old ledger: {old}); "
            f"reason: {first.reason}; the epsilon spent before it is not in this ledger"]


def _with(audit: SiteAudit, problems: list[AuditProblem]) -> SiteAudit:
    """``audit`` with ``problems`` added."""
    return dataclasses.replace(audit, problems=audit.problems + tuple(problems))


def _integrity_problem(site: str, path: Path, exc: LedgerError) -> AuditProblem:
    """The problem a failed verification reports: the entry when known, else the head or the ledger."""
    if isinstance(exc, LedgerEntryError):
        where = f"entry {exc.seq}" if exc.seq is not None else f"line {exc.line}"
        return AuditProblem(site, where, f"{exc.problem} ({path} line {exc.line})", seq=exc.seq)
    if str(exc).startswith(str(head_path(path))):
        return AuditProblem(site, "head file", str(exc))
    return AuditProblem(site, "ledger", str(exc))


def recompute(site: str, entries: Sequence[LedgerEntry]) -> tuple[list[EntryAudit], list[AuditProblem]]:
    """Recompute the cumulative ε after every entry with Opacus and dp-accounting; compare.

    Args:
        site: The site's name (for the problems).
        entries: The verified entries, oldest first.

    Returns:
        One :class:`EntryAudit` per entry, and the problems found (see the module docstring for
        exactly what is compared).
    """
    history: list[Mechanism] = []
    cache: _Cache = {}
    rows: list[EntryAudit] = []
    problems: list[AuditProblem] = []
    for entry in entries:
        if entry.mechanism is not None:
            history.append(entry.mechanism)
        if entry.status in ("rotated", "reset"):  # spend nothing: order/value checks saw to their ε
            before = rows[-1] if rows else None
            rows.append(_row(entry, _Recomputed(before.opacus if before else 0.0,
                                                before.dp_accounting if before else 0.0)))
            continue
        found = _recompute_entry(entry, history, cache)
        rows.append(_row(entry, found))
        problems += [AuditProblem(site, f"entry {entry.seq}", what, seq=entry.seq)
                     for what in _epsilon_problems(entry, found, len(history))]
    return rows, problems


def _row(entry: LedgerEntry, found: _Recomputed) -> EntryAudit:
    """The audit row of one entry."""
    return EntryAudit(seq=entry.seq, round=entry.round, status=entry.status, delta=entry.delta,
                      accountant=entry.accountant, recorded=entry.epsilon, opacus=found.opacus,
                      dp_accounting=found.dp_accounting, budget=entry.epsilon_budget,
                      initial_checkpoint_sha256=entry.initial_checkpoint_sha256,
                      schema=entry.schema or 1, software=entry.software)


def _recompute_entry(entry: LedgerEntry, history: list[Mechanism], cache: _Cache) -> _Recomputed:
    """Both recomputations for ``entry``'s history and δ (cached: refusals repeat the previous one)."""
    if entry.accountant not in RECOMPUTED_ACCOUNTANTS:
        return _Recomputed(None, None, f"accountant {entry.accountant!r} is not one a site runs "
                           f"({', '.join(RECOMPUTED_ACCOUNTANTS)}): its ε cannot be recomputed")
    values: list[float | None] = []
    failure = None
    for name in (entry.accountant, CROSS_CHECK_ACCOUNTANT):
        slot = (len(history), entry.delta, name)
        if slot not in cache:
            try:
                cache[slot] = epsilon(history=history, delta=entry.delta, accountant=name)
            except (AccountingError, ConfigError) as exc:
                failure = failure or f"the {name} accountant failed: {exc}"
        values.append(cache.get(slot))
    return _Recomputed(values[0], values[1], failure)


def _epsilon_problems(entry: LedgerEntry, found: _Recomputed, mechanisms: int) -> list[str]:
    """What is wrong with ``entry``'s recorded ε against the recomputations (see the module docstring)."""
    if found.failure is not None:
        return [found.failure]
    assert found.opacus is not None and found.dp_accounting is not None  # set when failure is None
    what = f"the {mechanisms} spending (trained or evaluated) entries so far at δ={entry.delta:g}"
    problems = []
    if not math.isclose(entry.epsilon, found.opacus, rel_tol=OPACUS_RTOL, abs_tol=OPACUS_ATOL):
        problems.append(f"recorded epsilon {entry.epsilon:.6g} differs from Opacus' {entry.accountant} "
                        f"accountant, {found.opacus:.6g}, for {what}")
    if found.dp_accounting > entry.epsilon * (1.0 + DP_ACCOUNTING_RTOL) + DP_ACCOUNTING_ATOL:
        problems.append(f"recorded epsilon {entry.epsilon:.6g} is below dp-accounting's "
                        f"{CROSS_CHECK_ACCOUNTANT} epsilon {found.dp_accounting:.6g} for {what}: "
                        "the spend is under-reported")
    return problems


def _check_budget(
    site: str, entries: Sequence[LedgerEntry], fallback: Budget | None
) -> tuple[Budget, list[AuditProblem], list[str]]:
    """The budget in force (signed if any entry records one), its problems, and notes."""
    signed = [e for e in entries if e.epsilon_budget is not None]
    problems = [_over_signed_budget(site, e) for e in signed if e.epsilon > (e.epsilon_budget or 0.0)]
    notes: list[str] = []
    for before, after in itertools.pairwise(signed):
        if before.epsilon_budget != after.epsilon_budget:
            assert before.epsilon_budget is not None and after.epsilon_budget is not None
            how = "raised" if after.epsilon_budget > before.epsilon_budget else "lowered"
            notes.append(f"the budget was {how} from {before.epsilon_budget:g} to {after.epsilon_budget:g} "
                         f"at entry {after.seq} (round {after.round}, {after.time})")
    if signed:
        last = signed[-1]
        assert last.epsilon_budget is not None
        if fallback is not None and fallback.value is not None and fallback.value != last.epsilon_budget:
            notes.append(f"{fallback.source} says {fallback.value:g}; the ledger's signed budget "
                         f"{last.epsilon_budget:g} is used")
        return Budget(last.epsilon_budget, f"ledger (signed, entry {last.seq})"), problems, notes
    if fallback is None or fallback.value is None:
        return Budget(None, "unknown"), problems, ["no entry records a budget (written before the field "
                                                   "existed): pass --site DIR to check against site.toml"]
    last_entry = entries[-1]
    if last_entry.epsilon > fallback.value:
        problems.append(AuditProblem(site, f"entry {last_entry.seq}", f"cumulative epsilon "
                                     f"{last_entry.epsilon:.6g} exceeds the budget {fallback.value:g} from "
                                     f"{fallback.source}", seq=last_entry.seq))
    return fallback, problems, notes


def _over_signed_budget(site: str, entry: LedgerEntry) -> AuditProblem:
    """The problem of an entry whose cumulative ε exceeds the budget it records."""
    why = ("this round took it past the budget" if entry.status == "trained"
           else "this evaluation took it past the budget" if entry.status == "evaluated"
           else "the budget was lowered below what was already spent")
    return AuditProblem(site, f"entry {entry.seq}", f"cumulative epsilon {entry.epsilon:.6g} exceeds the "
                        f"epsilon_budget {entry.epsilon_budget:g} it records ({why})", seq=entry.seq)

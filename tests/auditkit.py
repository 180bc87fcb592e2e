"""Ledgers written as a site writes them: shared by the audit tests."""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from fedgenome.privacy.accounting import epsilon
from fedgenome.privacy.ledger.core import Ledger
from fedgenome.privacy.mechanism import Mechanism

SIGMA, Q, DELTA = 1.5, 0.04, 1e-5


def digest(n: int) -> str:
    """A stand-in for the hash of round ``n``'s update."""
    return hashlib.sha256(b"update %d" % n).hexdigest()


def write_ledger(path: Path, key: ec.EllipticCurvePrivateKey, *, site: str = "siteA", steps: int = 750,
                 rounds: int = 3, accountant: str = "rdp", budget: float | None = 8.0,
                 refuse_after: bool = True, scale: float = 1.0) -> Ledger:
    """A ledger as a site writes it: ε computed before each round from the recorded mechanisms.

    ``scale`` multiplies the recorded ε (a site that lies, signing with its own key).
    """
    ledger = Ledger(path, site=site, private_key=key)
    history: list[Mechanism] = []
    common = {"sample_rate": Q, "noise_multiplier": SIGMA, "max_grad_norm": 1.0, "delta": DELTA,
              "accountant": accountant, "epsilon_budget": budget}
    for rnd in range(1, rounds + 1):
        history.append(Mechanism(SIGMA, Q, steps))
        eps = epsilon(history=history, delta=DELTA, accountant=accountant) * scale
        ledger.append(round=rnd, status="trained", local_steps=steps, epsilon=eps,
                      update_sha256=digest(rnd), **common)  # type: ignore[arg-type]
    if refuse_after:
        ledger.append(round=rounds + 1, status="refused", local_steps=0, epsilon=ledger.epsilon,
                      update_sha256=None, **common)  # type: ignore[arg-type]
    return ledger

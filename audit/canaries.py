"""Canaries for an empirical privacy audit: draw, seal, commit, plant, and audit a model on them.

The auditor draws m random A/C/G/T canaries of one training window each and includes each one
independently with probability 1/2 (:func:`draw_canaries`). The whole draw (canaries, inclusion
bits, seed, salt) is sealed in a file only the auditor reads (:func:`seal`, mode 0600); others get
only its salted SHA-256 commitment (:attr:`CanaryDraw.commitment`), before training, so the auditor
can show later that the draw was fixed in advance (:func:`open_sealed`). The included canaries are
planted at one site as extra patients (:func:`plant`: ``state/canaries.npz``, ``repeats`` units
each); that site never learns which canaries were left out. After training, :func:`audit_model`
scores every canary and never-planted reference sequences by loss; :mod:`fedgenome.audit.empirical`
turns the membership guesses into a lower bound on epsilon at the site's delta (Steinke, Nasr &
Jagielski) and the ranks into exposures (Carlini et al.), beside the site's theoretical epsilon
from its signed ledger (:func:`site_epsilon`). The whole federated run that does this is
:mod:`fedgenome.audit.canary_run` (``fedgenome audit canaries``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from fedgenome.audit.empirical import BETA, exposures, one_run_audit
from fedgenome.configs.errors import ConfigError, InputFileError
from fedgenome.configs.schema import load_site_manifest
from fedgenome.privacy.ledger.verify import verify_ledger
from fedgenome.privacy.site_state import ledger_path, site_public_key
from fedgenome.shared.datasets import write_planted
from fedgenome.shared.tokenizer import A, T, decode, encode
from fedgenome.shared.train import IGNORE, autocast, split_batch

log = logging.getLogger(__name__)
FORMAT = "fedgenome-canaries/1"
SEALED_NAME = "canary-draw.json"
"""The sealed draw's file name in the auditor's directory."""


@dataclass(frozen=True)
class CanaryDraw:
    """The auditor's secret: every canary, which were included, and what makes it reproducible."""

    tokens: npt.NDArray[np.uint8]  # (m, window + 1), A/C/G/T ids
    included: npt.NDArray[np.bool_]  # (m,)
    repeats: int
    seed: int
    salt: str  # hex; keeps the commitment from being checked against guessed draws

    @property
    def commitment(self) -> str:
        """SHA-256 over the salt and the canonical draw: published before training."""
        body = {"format": FORMAT, "seed": self.seed, "repeats": self.repeats,
                "included": "".join("1" if s else "0" for s in self.included),
                "canaries": [decode(row) for row in self.tokens]}
        text = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(bytes.fromhex(self.salt) + text.encode()).hexdigest()


def draw_canaries(*, m: int, span: int, repeats: int = 1, seed: int | None = None) -> CanaryDraw:
    """Draw m uniform A/C/G/T sequences of ``span`` tokens, each included with probability 1/2."""
    if m < 2 or repeats < 1:
        raise ConfigError(f"--canaries {m} / --repeats {repeats}: need at least 2 canaries and 1 repeat")
    seed = secrets.randbits(63) if seed is None else seed
    rng = np.random.default_rng([seed, 0])
    tokens = rng.integers(A, T + 1, size=(m, span), dtype=np.uint8)
    included = rng.random(m) < 0.5
    return CanaryDraw(tokens, included, repeats, seed, secrets.token_hex(32))


def reference_sequences(*, count: int, span: int, seed: int) -> npt.NDArray[np.uint8]:
    """``count`` sequences drawn like the canaries from another stream; never planted anywhere."""
    return np.random.default_rng([seed, 1]).integers(A, T + 1, size=(count, span), dtype=np.uint8)


def seal(draw: CanaryDraw, path: Path) -> None:
    """Write the draw to ``path`` (mode 0600, in a 0700 directory); refuses to overwrite."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    body = {"format": FORMAT, "seed": draw.seed, "repeats": draw.repeats, "salt": draw.salt,
            "commitment": draw.commitment, "included": [bool(s) for s in draw.included],
            "canaries": [decode(row) for row in draw.tokens]}
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"{path}: a sealed canary draw is already there; choose another "
                          "--auditor-dir") from None
    with os.fdopen(fd, "w") as fh:
        json.dump(body, fh)
        fh.flush()
        os.fsync(fh.fileno())


def open_sealed(path: Path, *, commitment: str | None = None) -> CanaryDraw:
    """Read a sealed draw and check it against its commitment (and ``commitment``, when given)."""
    try:
        body = json.loads(path.read_text())
        draw = CanaryDraw(np.stack([encode(s) for s in body["canaries"]]),
                          np.array(body["included"], dtype=bool), int(body["repeats"]),
                          int(body["seed"]), str(body["salt"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputFileError(f"{path}: not a readable sealed canary draw ({exc})") from None
    for expected in {body.get("commitment"), commitment} - {None}:
        if draw.commitment != expected:
            raise InputFileError(f"{path}: the draw does not match its commitment {expected}; it "
                                 "was changed after training began")
    return draw


@torch.no_grad()
def sequence_losses(model: nn.Module, tokens: npt.NDArray[np.uint8], *, device: torch.device,
                    batch_size: int = 64,
                    on_batch: Callable[[int], None] | None = None) -> npt.NDArray[np.float64]:
    """Mean next-base loss (nats per base) of ``model`` on each sequence (n, window + 1)."""
    model.eval()
    out = []
    for chunk in torch.split(torch.from_numpy(tokens.astype(np.int64)), batch_size):
        x, y = split_batch(chunk.to(device))
        with autocast(device):
            logits = model(x)  # (B, W, V)
        nll = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), y,
                                                ignore_index=IGNORE, reduction="none")  # (B, W)
        out.append((nll.sum(1) / (y != IGNORE).sum(1).clamp(min=1)).double().cpu().numpy())
        if on_batch is not None:
            on_batch(len(chunk))
    return np.concatenate(out)


@dataclass(frozen=True)
class CanaryResult:
    """One canary in the report (no sequence: those stay in the sealed draw)."""

    id: int
    included: bool
    loss: float
    exposure: float


@dataclass(frozen=True)
class CanaryAudit:
    """The audit of a model on a draw: what a run's ``canary-audit.json`` holds."""

    m: int
    repeats: int
    included: int
    guesses: int
    correct: int
    k_plus: int
    k_minus: int
    beta: float
    delta: float
    empirical_epsilon: float
    theoretical_epsilon: float | None
    references: int
    reference_loss_median: float
    exposure_included_mean: float
    exposure_excluded_mean: float
    commitment: str
    canaries: tuple[CanaryResult, ...]

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready values."""
        return asdict(self)


def audit_model(model: nn.Module, draw: CanaryDraw, *, delta: float, theoretical_epsilon: float | None,
                references: int = 2000, beta: float = BETA, device: torch.device | None = None,
                on_batch: Callable[[int], None] | None = None) -> CanaryAudit:
    """Score every canary and ``references`` fresh sequences with ``model`` and audit the guesses."""
    device = device or torch.device("cpu")
    model.to(device)
    losses = sequence_losses(model, draw.tokens, device=device, on_batch=on_batch)
    refs = sequence_losses(model, reference_sequences(count=references, span=draw.tokens.shape[1],
                                                       seed=draw.seed), device=device, on_batch=on_batch)
    included = [bool(s) for s in draw.included]
    audit = one_run_audit(scores=[-v for v in losses], included=included, delta=delta, beta=beta)
    exp = [e.exposure for e in exposures(losses.tolist(), refs.tolist())]

    def mean(values: list[float]) -> float:
        return float(np.mean(values)) if values else float("nan")

    return CanaryAudit(
        m=len(losses), repeats=draw.repeats, included=audit.included, guesses=audit.guesses,
        correct=audit.correct, k_plus=audit.k_plus, k_minus=audit.k_minus, beta=beta, delta=delta,
        empirical_epsilon=audit.epsilon, theoretical_epsilon=theoretical_epsilon,
        references=references, reference_loss_median=float(np.median(refs)),
        exposure_included_mean=mean([e for e, s in zip(exp, included, strict=True) if s]),
        exposure_excluded_mean=mean([e for e, s in zip(exp, included, strict=True) if not s]),
        commitment=draw.commitment,
        canaries=tuple(CanaryResult(i, s, float(v), e)
                       for i, (s, v, e) in enumerate(zip(included, losses, exp, strict=True))))


def plant(site_dir: Path, draw: CanaryDraw) -> int:
    """Plant the included canaries at the site (``repeats`` units each); the units planted."""
    chosen = draw.tokens[draw.included]
    write_planted(site_dir, chosen, repeats=draw.repeats, commitment=draw.commitment)
    return len(chosen) * draw.repeats


def site_epsilon(site_dir: Path) -> tuple[float, float]:
    """The site's cumulative epsilon from its verified, signed ledger, and its delta."""
    manifest = load_site_manifest(site_dir)
    entries = verify_ledger(ledger_path(site_dir / "state"),
                            public_key=site_public_key(site_dir, manifest.name), site=manifest.name)
    return (entries[-1].epsilon if entries else 0.0), manifest.privacy.delta

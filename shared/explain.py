"""In-silico saturation mutagenesis: how the model's log-likelihood of a sequence changes with each base.

For every position of a window and each of the three other bases, the window is scored again with
that one base changed; ``delta[i, b]`` is ``ll(window with base b at i) - ll(window)`` in nats
(0 at the reference base, NaN where the window holds an ``N``). A position's importance is the mean
``|delta|`` over its three substitutions.

A causal model's predictions before i do not change when base i does, so the window is read once
(the model remembers every block's keys, values and convolution inputs) and each substitution is
scored by continuing it from i: the substituted base's own prediction plus the next ``horizon``
bases' (``DEFAULT_HORIZON``; ``None`` rescores to the window's end, which equals scoring every
mutated window whole). A 1 kb window is then 3,000 continuations of 64 positions, not 3,000
windows of 1,000: about half a minute on 2 CPU cores, against minutes. What lies past the horizon is
left out: README, *Explanations*, gives the time and the error measured on chr20.

For a variant, :func:`haplotype_shift` adds the per-position change of the predicted next-base
probabilities between the REF and the ALT haplotype: where in the window the model's expectation
moves when it reads the ALT allele.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedgenome.shared.model import GenomeLM
from fedgenome.shared.tokenizer import BASES, NUCLEOTIDES, Ids, N
from fedgenome.shared.train import IGNORE, base_targets, eval_autocast

MAX_WINDOW = 4096
"""The longest window explained at once."""
DEFAULT_HORIZON = 64
"""Bases after a substitution whose predictions are rescored (README: the error this leaves)."""


@dataclass(frozen=True)
class Mutagenesis:
    """The saturation mutagenesis of one window (0-based ``start`` on ``contig``)."""

    contig: str
    start: int
    tokens: Ids  # (L,) the window's token ids
    ll: float  # the unmutated window's log-likelihood, nats
    delta: np.ndarray  # (L, 4) ll change for A, C, G, T at each position; 0 at the reference base

    @property
    def importance(self) -> np.ndarray:
        """(L,) mean |delta| over the three substitutions of each position (NaN at N)."""
        return np.abs(self.delta).sum(axis=1) / 3.0

    @property
    def sequence(self) -> str:
        """The window as letters."""
        return "".join(BASES[t - NUCLEOTIDES[0]] for t in self.tokens)


def substitutions(tokens: Ids) -> list[tuple[int, int]]:
    """Every single-base substitution (position, index of the new base in A, C, G, T) of ``tokens``."""
    return [(i, b) for i, t in enumerate(tokens) if t in NUCLEOTIDES for b in range(4) if NUCLEOTIDES[b] != t]


def mutants(tokens: Ids) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Every single-base substitution of ``tokens``: the mutated windows (M, L) and their (i, base)."""
    where = substitutions(tokens)
    windows = np.repeat(tokens[None, :].astype(np.int64), len(where), axis=0)
    for row, (i, b) in enumerate(where):
        windows[row, i] = NUCLEOTIDES[b]
    return windows, where


@torch.no_grad()
def saturation_mutagenesis(model: GenomeLM, tokens: Ids, *, contig: str, start: int,
                           device: torch.device, horizon: int | None = DEFAULT_HORIZON,
                           batch_tokens: int = 4096) -> Mutagenesis:
    """Score ``tokens`` and each of its single-base substitutions with ``model`` (see the module).

    The window is read once (:meth:`GenomeLM.remember`); a substitution at i then rescores only the
    predictions of bases i + 1 .. i + ``horizon`` (``None``: to the window's end, exact), each
    continuing the remembered window from i, ``batch_tokens`` positions per forward pass.
    """
    model.eval()
    L = len(tokens)
    seq = torch.from_numpy(tokens.astype(np.int64)).to(device)  # (L,)
    with eval_autocast(device):
        logp = F.log_softmax(model(seq[None])[0].float(), dim=-1).cpu()  # (L, V): row t predicts t + 1
        memory = model.remember(seq)
    ref_terms = _terms(logp[None, :-1], seq[None, 1:].cpu())[0]  # (L - 1,) log p of bases 1 .. L - 1
    delta = np.zeros((L, 4))
    delta[[i for i, t in enumerate(tokens) if t not in NUCLEOTIDES]] = np.nan
    where = substitutions(tokens)
    for i, b in where:  # the substituted base's own prediction, from the unchanged bases before it
        if i > 0:
            delta[i, b] = float(logp[i - 1, NUCLEOTIDES[b]] - ref_terms[i - 1])
    span = L - 1 if horizon is None else min(horizon, L - 1)
    later = [(i, b) for i, b in where if i < L - 1]
    per_pass = max(1, batch_tokens // max(span, 1))
    for first in range(0, len(later) if span > 0 else 0, per_pass):
        chunk = later[first:first + per_pass]  # in order of i: the first reaches furthest
        width = min(span, L - 1 - chunk[0][0])  # no row rescores past the window's end
        rows, targets, starts = _continuations(tokens, chunk, width)  # (B, width) each, (B,)
        with eval_autocast(device):
            logits = model.continue_from(memory, rows.to(device), starts.to(device))  # (B, width, V)
        lp = F.log_softmax(logits.float(), dim=-1).cpu()
        padded_ref = F.pad(ref_terms, (0, width))  # base j's reference term at j - 1
        old = torch.stack([padded_ref[i:i + width] for i, _ in chunk])  # (B, width)
        gain = (_terms(lp, targets) - old).sum(dim=1)  # (B,); both 0 at N and past the window
        for (i, b), g in zip(chunk, gain.tolist(), strict=True):
            delta[i, b] += g
    return Mutagenesis(contig=contig, start=start, tokens=tokens, ll=float(ref_terms.sum()), delta=delta)


def _continuations(tokens: Ids, chunk: list[tuple[int, int]], span: int
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows (B, span): each substitution (i, b) and the bases after it; their targets; and each i."""
    padded = np.concatenate([tokens.astype(np.int64), np.full(span + 1, N)])
    rows = np.stack([padded[i:i + span] for i, _ in chunk])
    rows[:, 0] = [NUCLEOTIDES[b] for _, b in chunk]
    targets = torch.from_numpy(np.stack([padded[i + 1:i + 1 + span] for i, _ in chunk]))
    return torch.from_numpy(rows), targets, torch.tensor([i for i, _ in chunk])


def _terms(logp: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Log p of each target (B, T) under logp (B, T, V); 0 where the target is not a base."""
    clean = base_targets(targets)
    picked = logp.gather(-1, clean.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked * (clean != IGNORE)


@torch.no_grad()
def next_base_probabilities(model: nn.Module, tokens: Ids, *, device: torch.device) -> np.ndarray:
    """(L, 4) the model's p(A, C, G, T) at each position given the bases before it (row 0: NaN)."""
    model.eval()
    x = torch.from_numpy(tokens[None, :-1].astype(np.int64)).to(device)
    with eval_autocast(device):
        logits = model(x)
    probs = F.softmax(logits.float()[0][:, list(NUCLEOTIDES)], dim=-1).cpu().numpy()  # (L-1, 4)
    return np.vstack([np.full((1, 4), np.nan), probs])


def haplotype_shift(model: nn.Module, ref: Ids, alt: Ids, *, device: torch.device) -> np.ndarray:
    """(L, 4) p_alt - p_ref of the next base at each position of the REF and ALT haplotypes."""
    return (next_base_probabilities(model, alt, device=device)
            - next_base_probabilities(model, ref, device=device))

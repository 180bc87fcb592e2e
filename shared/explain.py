"""In-silico saturation mutagenesis: how the model's log-likelihood of a sequence changes with each base.

For every position of a window and each of the three other bases, the window is scored again with
that one base changed; ``delta[i, b]`` is ``ll(window with base b at i) - ll(window)`` in nats
(0 at the reference base, NaN where the window holds an ``N``). A position's importance is the mean
``|delta|`` over its three substitutions. The mutated windows are scored in batches, so a 1 kb
window is ``3,000`` sequences of 1 kb.

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

from fedgenome.shared.scoring import sequence_log_likelihood
from fedgenome.shared.tokenizer import BASES, NUCLEOTIDES, Ids
from fedgenome.shared.train import autocast

MAX_WINDOW = 4096
"""The longest window explained at once (3 x 4,096 sequences of 4,096 bases)."""


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


def mutants(tokens: Ids) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Every single-base substitution of ``tokens``: the mutated windows (M, L) and their (i, base)."""
    where = [(i, b) for i, t in enumerate(tokens) if t in NUCLEOTIDES
             for b in range(4) if NUCLEOTIDES[b] != t]
    windows = np.repeat(tokens[None, :].astype(np.int64), len(where), axis=0)
    for row, (i, b) in enumerate(where):
        windows[row, i] = NUCLEOTIDES[b]
    return windows, where


@torch.no_grad()
def saturation_mutagenesis(model: nn.Module, tokens: Ids, *, contig: str, start: int,
                           device: torch.device, batch_size: int = 64) -> Mutagenesis:
    """Score ``tokens`` and each of its single-base substitutions with ``model`` (see the module)."""
    model.eval()
    ref = torch.from_numpy(tokens[None, :].astype(np.int64))
    ll = float(sequence_log_likelihood(model, ref, device=device)[0])
    windows, where = mutants(tokens)
    scores = torch.cat([sequence_log_likelihood(model, torch.from_numpy(chunk), device=device)
                        for chunk in np.array_split(windows, max(1, -(-len(windows) // batch_size)))]
                       ) if where else torch.empty(0)
    delta = np.zeros((len(tokens), 4))
    delta[[i for i, t in enumerate(tokens) if t not in NUCLEOTIDES]] = np.nan
    for (i, b), score in zip(where, scores.tolist(), strict=True):
        delta[i, b] = score - ll
    return Mutagenesis(contig=contig, start=start, tokens=tokens, ll=ll, delta=delta)


@torch.no_grad()
def next_base_probabilities(model: nn.Module, tokens: Ids, *, device: torch.device) -> np.ndarray:
    """(L, 4) the model's p(A, C, G, T) at each position given the bases before it (row 0: NaN)."""
    model.eval()
    x = torch.from_numpy(tokens[None, :-1].astype(np.int64)).to(device)
    with autocast(device):
        logits = model(x)
    probs = F.softmax(logits.float()[0][:, list(NUCLEOTIDES)], dim=-1).cpu().numpy()  # (L-1, 4)
    return np.vstack([np.full((1, 4), np.nan), probs])


def haplotype_shift(model: nn.Module, ref: Ids, alt: Ids, *, device: torch.device) -> np.ndarray:
    """(L, 4) p_alt - p_ref of the next base at each position of the REF and ALT haplotypes."""
    return (next_base_probabilities(model, alt, device=device)
            - next_base_probabilities(model, ref, device=device))

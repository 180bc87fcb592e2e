"""Order-k Markov (k-mer) baseline: the next base from the k before it, with add-one smoothing.

Counts are kept for every order 0..k; a position is scored with the longest clean context it has
(shorter near a window's start or after an ``N``), so the baseline scores exactly the positions the
model does.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import torch

from shared.tokenizer import A, T

Counts = npt.NDArray[np.float64]


def _codes(windows: torch.Tensor) -> npt.NDArray[np.int64]:
    """Tokens (B, L) -> base codes 0..3 for A, C, G, T and -1 for everything else."""
    ids = windows.detach().cpu().numpy().astype(np.int64)
    return np.where((ids >= A) & (ids <= T), ids - A, -1)


def _contexts(codes: npt.NDArray[np.int64], order: int) -> tuple[npt.NDArray[np.int64], ...]:
    """For targets t = 1..L-1: the order-j context index of each (B, L-1), or -1 if not clean."""
    B, L = codes.shape
    target = codes[:, 1:]  # (B, L-1)
    out = []
    ctx = np.zeros((B, L - 1), dtype=np.int64)
    ok = target >= 0
    out.append(np.where(ok, ctx, -1))
    for j in range(1, order + 1):
        prev = np.full((B, L - 1), -1, dtype=np.int64)
        prev[:, j - 1 :] = codes[:, : L - j]  # base j positions before each target
        ok &= prev >= 0
        ctx = ctx * 4 + np.maximum(prev, 0)
        out.append(np.where(ok, ctx, -1))
    return tuple(out)


class MarkovBaseline:
    """k-mer counts fitted on training windows; scores held-out windows in bits per base."""

    def __init__(self, order: int) -> None:
        self.order = order
        self.counts: list[Counts] = [np.zeros((4**j, 4)) for j in range(order + 1)]

    def update(self, windows: torch.Tensor) -> None:
        """Add the transitions of training windows (B, L) to the counts."""
        codes = _codes(windows)
        target = codes[:, 1:]
        for j, ctx in enumerate(_contexts(codes, self.order)):
            ok = ctx >= 0
            np.add.at(self.counts[j], (ctx[ok], target[ok]), 1.0)

    def log2_probs(self, windows: torch.Tensor) -> tuple[npt.NDArray[np.float64], int]:
        """Sum of log2 p(target) over scored positions, and how many positions were scored."""
        codes = _codes(windows)
        target = codes[:, 1:]
        best = np.full(target.shape, -1, dtype=np.int64)
        level = np.full(target.shape, -1, dtype=np.int64)
        for j, ctx in enumerate(_contexts(codes, self.order)):
            use = ctx >= 0
            best[use], level[use] = ctx[use], j
        scored = level >= 0
        logp = np.zeros(target.shape)
        for j in range(self.order + 1):
            sel = scored & (level == j)
            rows = self.counts[j][best[sel]]  # (n, 4)
            p = (rows[np.arange(len(rows)), target[sel]] + 1.0) / (rows.sum(1) + 4.0)
            logp[sel] = np.log2(p)
        return logp, int(scored.sum())

    def bits_per_base(self, windows: torch.Tensor) -> float:
        """Mean negative log2 probability of the next base over a set of windows."""
        logp, n = self.log2_probs(windows)
        return float(-logp.sum() / n) if n else math.nan

    def state(self) -> dict[str, torch.Tensor]:
        """Tensors to save with a checkpoint."""
        return {f"order{j}": torch.from_numpy(c) for j, c in enumerate(self.counts)}

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor]) -> MarkovBaseline:
        """Rebuild from :meth:`state`."""
        order = len(tensors) - 1
        baseline = cls(order)
        baseline.counts = [tensors[f"order{j}"].double().numpy() for j in range(order + 1)]
        return baseline

"""Markov (k-mer) baseline: the next base from the k before it, its order k picked on validation.

:class:`MarkovBaseline` holds counts of every order 0..k (:mod:`fedgenome.shared.kmers`) and a smoothing
(:mod:`fedgenome.shared.smoothing`). It scores exactly the positions the model scores: the A/C/G/T targets of
windows (B, L) from column 1 on, each with the longest clean context it has (shorter at a window's
start or after an ``N``). :func:`fit_best_k` counts orders 0..K on a training sequence, picks the
order (1..K), and with ``smoothing="auto"`` the smoothing too, with the lowest bits per base on a
validation sequence held apart from it, then recounts on training plus validation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from fedgenome.configs.errors import ConfigError, InputFileError
from fedgenome.shared.kmers import (
    MAX_ORDER,
    Table,
    Targets,
    add_exact,
    base_codes,
    chunked_targets,
    count_dtype,
    count_kmers,
    empty_tables,
    fill_lower,
    targets,
)
from fedgenome.shared.smoothing import (
    AUTO,
    CANDIDATES,
    Smoother,
    check_smoothing,
    create_smoother,
    log2_probs,
)
from fedgenome.shared.tokenizer import Ids

SCORE_CHUNK = 1 << 18
"""Targets scored at a time (bounds the (orders, targets) probability matrix)."""


def _codes(windows: torch.Tensor | npt.NDArray[np.integer]) -> npt.NDArray[np.int8]:
    """Token windows (B, L) -> base codes 0..3 for A, C, G, T and -1 for everything else."""
    ids = windows.detach().cpu().numpy() if isinstance(windows, torch.Tensor) else np.asarray(windows)
    return base_codes(ids.reshape(-1, ids.shape[-1]))


def _order_sums(logp: npt.NDArray[np.float64], tg: Targets) -> npt.NDArray[np.float64]:
    """Sum of -log2 p over targets if the model stopped at order k, for k = 0..order."""
    cols = np.arange(len(tg))
    return np.array([-logp[np.minimum(tg.length, k), cols].sum() for k in range(logp.shape[0])])


class MarkovBaseline:
    """Counts of every order 0..``order`` with a smoothing; scores windows in bits per base.

    Args:
        order: The highest order k (0..:data:`fedgenome.shared.kmers.MAX_ORDER`).
        smoothing: A smoothing name (:mod:`fedgenome.shared.smoothing`); ``add-one`` as before the
            best-k pick.
        counts: Tables 0..k (:func:`fedgenome.shared.kmers.count_kmers`); empty ones to
            :meth:`update` if None.

    >>> from fedgenome.shared.tokenizer import encode
    >>> periodic = torch.from_numpy(encode("ACGGT" * 40).astype("int64"))[None]
    >>> markov = MarkovBaseline(3, smoothing="witten-bell")
    >>> markov.update(periodic)
    >>> markov.bits_per_base(periodic) < 0.2
    True
    """

    def __init__(self, order: int, *, smoothing: str = "add-one",
                 counts: Sequence[Table] | None = None) -> None:
        if not 0 <= order <= MAX_ORDER:
            raise ConfigError(f"Markov order {order} is outside 0..{MAX_ORDER}; pick one in that range")
        self.order = order
        self.smoothing = check_smoothing(smoothing)
        self.counts: list[Table] = list(counts) if counts is not None else empty_tables(order)
        if len(self.counts) != order + 1:
            raise ConfigError(f"a Markov baseline of order {order} needs count tables 0..{order}, got "
                              f"{len(self.counts)}; pass the counts of that order")
        self._smoother: Smoother | None = None

    @property
    def smoother(self) -> Smoother:
        """The smoothing of the current counts (built on first use)."""
        if self._smoother is None:
            self._smoother = create_smoother(self.smoothing, self.counts)
        return self._smoother

    def update(self, windows: torch.Tensor) -> None:
        """Add the transitions of training windows (B, L) to the counts (targets from column 1 on)."""
        fresh = empty_tables(self.order, self.counts[0].dtype.type)
        add_exact(fresh, targets(_codes(windows), self.order, first=1))
        fill_lower(fresh)
        for mine, new in zip(self.counts, fresh, strict=True):
            mine += new
        self._smoother = None

    def _log2_at_orders(self, tg: Targets) -> npt.NDArray[np.float64]:
        """(order + 1, n) log2 p of each target at each order, in chunks of :data:`SCORE_CHUNK`."""
        parts = []
        for lo in range(0, len(tg), SCORE_CHUNK):
            sl = slice(lo, lo + SCORE_CHUNK)
            part = Targets(tg.context[sl], tg.base[sl], tg.length[sl], tg.mask, tg.order)
            parts.append(log2_probs([self.smoother], part)[0])
        return np.concatenate(parts, axis=1) if parts else np.zeros((self.order + 1, 0))

    def log2_probs(self, windows: torch.Tensor) -> tuple[npt.NDArray[np.float64], int]:
        """log2 p(target) of windows (B, L) as (B, L - 1) (0 where not scored), and the count scored."""
        tg = targets(_codes(windows), self.order, first=1)
        logp = np.zeros(tg.mask.shape)
        logp[tg.mask] = self._log2_at_orders(tg)[tg.length, np.arange(len(tg))]
        return logp, len(tg)

    def bits_per_base(self, windows: torch.Tensor) -> float:
        """Mean negative log2 probability of the next base over a set of windows (B, L)."""
        logp, n = self.log2_probs(windows)
        return float(-logp.sum() / n) if n else math.nan

    def bits_by_order(self, windows: torch.Tensor) -> tuple[float, ...]:
        """Bits per base of windows (B, L) had the baseline stopped at order k, for k = 0..order."""
        tg = targets(_codes(windows), self.order, first=1)
        if not len(tg):
            return (math.nan,) * (self.order + 1)
        return tuple(float(s) / len(tg) for s in _order_sums(self._log2_at_orders(tg), tg))

    def truncated(self, order: int) -> MarkovBaseline:
        """The same counts and smoothing, up to ``order`` only."""
        return MarkovBaseline(order, smoothing=self.smoothing, counts=self.counts[: order + 1])

    def state(self) -> dict[str, torch.Tensor]:
        """Tensors to save with a checkpoint (int64 counts per order)."""
        return {f"order{j}": torch.from_numpy(c.astype(np.int64)) for j, c in enumerate(self.counts)}

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], *, smoothing: str = "add-one") -> MarkovBaseline:
        """Rebuild from :meth:`state` (also reads the float64 counts older checkpoints saved)."""
        order = len(tensors) - 1
        counts = [tensors[f"order{j}"].numpy() for j in range(order + 1)]
        dtype = count_dtype(int(counts[0].sum()))
        return cls(order, smoothing=smoothing, counts=[c.round().astype(dtype) for c in counts])


def sequence_bits(smoothers: Sequence[Smoother], seqs: Sequence[Ids]) -> tuple[list[tuple[float, ...]], int]:
    """Bits per base at each order 0..K of long sequences (each scored from its second base), per smoother.

    The smoothers share one set of count tables; each order's counts are looked up once for all.
    """
    order = smoothers[0].order
    sums, n = np.zeros((len(smoothers), order + 1)), 0
    for seq in seqs:
        for tg in chunked_targets(base_codes(seq), order, first=1, chunk=SCORE_CHUNK):
            for i, logp in enumerate(log2_probs(smoothers, tg)):
                sums[i] += _order_sums(logp, tg)
            n += len(tg)
    return [tuple(float(v) / max(n, 1) for v in row) for row in sums], n


@dataclass(frozen=True)
class BestK:
    """A best-k Markov baseline: the order (and smoothing) that scored best on a validation slice.

    Attributes:
        model: Counted on the training plus the validation sequences, orders 0..``order``.
        order: The order picked, 1..``max_order``.
        smoothing: The smoothing picked (or the one asked for).
        validation_bits: Smoothing -> bits per base on the validation sequences at orders
            0..``max_order`` (index = order), from counts of the training sequences only.
        validation_targets: Bases scored on the validation sequences (forward strand).
        training_bases: Bases of the training sequences (one strand).
        max_order: The highest order tried.
        both_strands: Whether reverse complements were counted too.
    """

    model: MarkovBaseline
    order: int
    smoothing: str
    validation_bits: dict[str, tuple[float, ...]]
    validation_targets: int
    training_bases: int
    max_order: int
    both_strands: bool

    def bits_per_base(self, windows: torch.Tensor) -> float:
        """Bits per base of the picked model on windows (B, L)."""
        return self.model.bits_per_base(windows)


def pick(validation_bits: dict[str, tuple[float, ...]]) -> tuple[str, int]:
    """(smoothing, order >= 1) with the lowest validation bits; ties go to the lower order."""
    pairs = [(bits[k], k, name) for name, bits in validation_bits.items() for k in range(1, len(bits))]
    _, order, name = min(pairs)
    return name, order


def fit_best_k(train: Sequence[Ids], validation: Sequence[Ids], *, max_order: int = MAX_ORDER,
               smoothing: str = AUTO, both_strands: bool = True) -> BestK:
    """Count orders 0..``max_order`` on ``train``, pick the order on ``validation``, recount on both.

    Args:
        train: Token sequences to count (contigs or intervals; contexts never cross two of them).
        validation: Token sequences held apart from ``train``, scored on the forward strand from
            each one's second base, to pick the order (1..``max_order``) and smoothing.
        max_order: Highest order tried (at most :data:`fedgenome.shared.kmers.MAX_ORDER`).
        smoothing: A smoothing name (:mod:`fedgenome.shared.smoothing`), or ``"auto"`` to pick it too, among
            :data:`fedgenome.shared.smoothing.CANDIDATES`.
        both_strands: Count reverse complements as well (DNA has no preferred strand).

    Returns:
        The picked baseline, counted on ``train`` plus ``validation``.

    Raises:
        InputFileError: The validation sequences hold no base to score.
        ConfigError: ``max_order`` or ``smoothing`` is not one there is.

    >>> from fedgenome.shared.tokenizer import encode
    >>> fit = fit_best_k([encode("ACGT" * 500)], [encode("ACGT" * 50)], max_order=3)
    >>> 1 <= fit.order <= 3 and fit.validation_bits[fit.smoothing][fit.order] < 0.01
    True
    """
    if not 1 <= max_order <= MAX_ORDER:
        raise ConfigError(f"max_order {max_order}: the best-k pick needs orders 1..{MAX_ORDER}")
    names = list(CANDIDATES) if smoothing == AUTO else [check_smoothing(smoothing)]
    counts = count_kmers(train, max_order, both_strands=both_strands)
    scores, n = sequence_bits([create_smoother(name, counts) for name in names], validation)
    if n == 0:
        raise InputFileError("the validation slice holds no A/C/G/T base to score; give a longer "
                             "training sequence or fewer N")
    bits = dict(zip(names, scores, strict=True))
    name, order = pick(bits)
    extra = count_kmers(validation, order, both_strands=both_strands)
    dtype = count_dtype(int(counts[0].sum()) + int(extra[0].sum()))
    final = [c.astype(dtype) + e for c, e in zip(counts[: order + 1], extra, strict=True)]
    return BestK(MarkovBaseline(order, smoothing=name, counts=final), order, name, bits, n,
                 sum(len(s) for s in train), max_order, both_strands)

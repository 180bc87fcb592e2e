"""The model's Markov prior: the best-k baseline of the public reference as a frozen table of logits.

:class:`fedgenome.shared.model.GenomeLM` adds, at every position, the log-probabilities that the best-k
Markov baseline (:mod:`fedgenome.shared.reference_markov`) gives the next base, and its network learns what
k-mers cannot see. The table is public (counted on the reference minus its held-out regions, never
on patients' genomes), frozen (it is neither trained, noised nor sent: every party builds the same
table from the same public reference) and exactly the baseline: the untrained-network model (head at
zero) scores what the baseline scores.

The table holds, for every context of every length 0..K, the baseline's four log-probabilities
(natural log) when that length is the longest clean context there: row ``offset(j) + ctx`` with
``offset(j) = (4**j - 1) / 3`` and ``ctx`` packed as in :mod:`fedgenome.shared.kmers` (the nearest base most
significant). Built once from the cached counts with the baseline's own smoothing, order by order,
and cached beside them as one memory-mapped ``.npy`` (float32; 358 MiB at K = 12), so every process
on a machine shares one copy. :func:`prior_fingerprint` names a table: the reference's SHA-256, the
excluded regions and the pick, which a site checks against the server's before it trains.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from fedgenome.configs.errors import ConfigError, IncompatibleModelError
from fedgenome.configs.schema import ModelConfig, Region
from fedgenome.shared.atomic import atomic_path
from fedgenome.shared.kmers import MAX_ORDER, Targets
from fedgenome.shared.model import GenomeLM
from fedgenome.shared.reference_markov import ReferenceBaseline, reference_baseline
from fedgenome.shared.smoothing import Lookup
from fedgenome.shared.tokenizer import A
from fedgenome.shared.tokenizer import T as T_ID

log = logging.getLogger(__name__)
CHUNK = 1 << 20  # contexts per smoothing pass while building


def offset(j: int) -> int:
    """First row of the length-j contexts: the rows of all shorter contexts."""
    return (4**j - 1) // 3


@dataclass(frozen=True)
class MarkovPrior:
    """A frozen table (rows, 4) of the baseline's next-base log-probabilities, and its name."""

    table: torch.Tensor  # float32 (offset(order + 1), 4), read-only memory map
    order: int
    smoothing: str
    fingerprint: str

    def contexts(self, idx: torch.Tensor) -> torch.Tensor:
        """Table row of every position of idx (..., T): its longest clean context, up to K bases.

        The context of position t is the run of A/C/G/T tokens ending at t (it predicts t + 1),
        packed with token t as the most significant base-4 digit.
        """
        K, T = self.order, idx.shape[-1]
        clean = (idx >= A) & (idx <= T_ID)
        codes = torch.where(clean, idx - A, 0).long()
        pos = torch.arange(T, device=idx.device)
        last_unclean = torch.where(clean, -1, pos).cummax(dim=-1).values
        length = (pos - last_unclean).clamp(max=K)  # (..., T)
        full = torch.zeros_like(codes)
        for i in range(K):  # base t - i is digit K - 1 - i
            full = full + torch.nn.functional.pad(codes, (i, 0))[..., :T] * (4 ** (K - 1 - i))
        return ((4**length - 1) // 3 + (full >> (2 * (K - length)))).contiguous()

    def log_probs(self, idx: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (..., T, 4) of A, C, G, T after every position of idx (..., T)."""
        rows = self.contexts(idx).cpu()
        return self.table[rows].to(idx.device)


def prior_fingerprint(baseline: ReferenceBaseline) -> str:
    """The name of the table a baseline gives: its reference's SHA-256, exclusions, order, smoothing."""
    spec = {"reference_sha256": baseline.reference_sha256, "order": baseline.fit.order,
            "excluded": sorted((r.contig, r.start, r.end) for r in baseline.excluded),
            "smoothing": baseline.fit.smoothing}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]


def dense_log_probs(baseline: ReferenceBaseline) -> npt.NDArray[np.float32]:
    """The baseline's log-probabilities for every context of every length, rows as in the module doc."""
    model = baseline.model
    smoother, order = model.smoother, baseline.fit.order
    out = np.empty((offset(order + 1), 4), dtype=np.float32)
    lower_prev = np.full((1, 4), 0.25)  # what order 0 interpolates with: the uniform
    for j in range(order + 1):
        lower_j = np.empty((4**j, 4))
        for lo in range(0, 4**j, CHUNK):
            ctx = np.arange(lo, min(lo + CHUNK, 4**j), dtype=np.int32)
            tg = Targets(np.repeat(ctx, 4), np.tile(np.arange(4, dtype=np.int32), len(ctx)),
                         np.full(4 * len(ctx), j, np.int32), np.ones(0, bool), j)
            look = Lookup.of(model.counts[j], tg, j)
            below = lower_prev[tg.context >> 2 if j else np.zeros_like(tg.context), tg.base]
            top, lower = smoother.step(j, look, tg, below)
            out[offset(j) + lo : offset(j) + lo + len(ctx)] = np.log(top).reshape(-1, 4)
            lower_j[lo : lo + len(ctx)] = lower.reshape(-1, 4)
        lower_prev = lower_j
    return out


def markov_prior(reference: Path, *, exclude: Sequence[Region], cache: Path | None = None,
                 max_order: int = MAX_ORDER, expect: str | None = None) -> MarkovPrior:
    """The prior of ``reference`` minus ``exclude``: the cached best-k baseline's table (built once).

    ``max_order`` bounds the orders the baseline tries (smaller in tests; models use the default).
    With ``expect``, a prior of another fingerprint is refused before its table is built.
    """
    baseline = reference_baseline(reference, exclude=exclude, cache=cache, max_order=max_order)
    if expect is not None and prior_fingerprint(baseline) != expect:
        raise IncompatibleModelError(
            f"{reference} minus {_regions(exclude)} gives Markov prior {prior_fingerprint(baseline)}, "
            f"but the weights were trained with prior {expect}: use the same reference FASTA and "
            "held-out regions as the run (or checkpoint) the weights come from")
    path = baseline.cache_path / f"prior-order{baseline.fit.order}.npy"
    if not path.is_file():
        log.info("building the model's Markov prior from the baseline (once; cached in %s)", path)
        table = dense_log_probs(baseline)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.save(fh, table)
    table = np.load(path, mmap_mode="c")  # copy-on-write: pages shared by every process
    return MarkovPrior(torch.from_numpy(table), baseline.fit.order, baseline.fit.smoothing,
                       prior_fingerprint(baseline))


def build_model(config: ModelConfig, *, reference: Path | None, exclude: Sequence[Region],
                fingerprint: str | None = None) -> GenomeLM:
    """A new model of ``config``, with its Markov prior attached when the config asks for one.

    A new model with a prior starts silent (:meth:`GenomeLM.silence`): exactly the baseline.

    Args:
        config: The model's shape.
        reference: The public reference the prior is counted on (needed with ``markov_prior``).
        exclude: The held-out regions the prior must not count (the run's held-out region).
        fingerprint: The prior the weights were trained with (a checkpoint's, the server's): a
            different one is refused, since the network's weights only fit their own prior.

    Raises:
        ConfigError: The model needs a prior and no reference is given.
        IncompatibleModelError: The prior built here is not the one named by ``fingerprint``.
    """
    model = GenomeLM(config)
    if not config.markov_prior:
        return model
    if reference is None:
        raise ConfigError("the model adds a Markov prior counted on the public reference, and no "
                          "reference is known here: pass the reference FASTA")
    model.attach_prior(markov_prior(reference, exclude=exclude, expect=fingerprint))
    model.silence()
    return model


def _regions(regions: Sequence[Region]) -> str:
    return ", ".join(f"{r.contig}:{r.start}-{r.end}" for r in regions) or "no region"

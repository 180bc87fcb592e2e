"""The best-k Markov baseline of a public reference minus its held-out regions, built once, cached.

It costs no privacy: it is counted on the public reference FASTA only, never on patients' genomes,
so it can stand beside a DP model (in ``fedgenome train --dp``, the federated run report, the demo,
the audit report) without spending any site's budget.

The sequence counted is every contig of the reference minus the excluded regions (the held-out
region; any list of :class:`~fedgenome.configs.schema.Region`), both strands, contexts broken by ``N`` and by
the cuts. Its last :data:`VALIDATION_BASES` (at most a fifth of it) are held apart: orders 0..K are
counted on the rest, the order (and with ``"auto"`` the smoothing) is picked on that slice, and the
picked model is then recounted on everything allowed (the slice is public training sequence, not
held-out data, so nothing is wasted). The result is cached in ``<data cache>/markov/baseline-<key>/``
(``meta.json`` and one uncompressed ``.npy`` per order, memory-mapped when read, so a cache hit
costs milliseconds), keyed by the reference's SHA-256 and size, the excluded regions, K, the
smoothing and the validation size.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedgenome.configs.errors import InputFileError
from fedgenome.configs.schema import Region
from fedgenome.shared.atomic import atomic_dir
from fedgenome.shared.datasets import Interval, allowed_intervals
from fedgenome.shared.fetch import default_cache, sha256_file
from fedgenome.shared.genomes import Reference
from fedgenome.shared.kmers import MAX_ORDER, Table
from fedgenome.shared.markov import BestK, MarkovBaseline, fit_best_k
from fedgenome.shared.markov_fields import PRIVACY_NOTE, BaselineScore
from fedgenome.shared.smoothing import AUTO, CANDIDATES

log = logging.getLogger(__name__)

FORMAT = "fedgenome-markov-baseline/1"
META = "meta.json"  # beside order0.npy .. orderK.npy in the cache directory
VALIDATION_BASES = 2_000_000
"""Bases held apart (at the end of the allowed sequence) to pick the order on."""


@dataclass(frozen=True)
class ReferenceBaseline:
    """A best-k baseline counted on a reference FASTA minus excluded regions.

    Attributes:
        fit: The order pick and the model (counted on everything allowed).
        reference: The FASTA it was counted on.
        reference_sha256: That file's SHA-256.
        excluded: Regions never counted (the held-out region).
        validation: The held-apart slice the order was picked on (part of the allowed sequence).
        cache_path: The cache directory holding it.
        from_cache: Whether this call read it from the cache.
        build_seconds: Seconds the build took (when it was built, not when it was read).
    """

    fit: BestK
    reference: Path
    reference_sha256: str
    excluded: tuple[Region, ...]
    validation: tuple[Region, ...]
    cache_path: Path
    from_cache: bool
    build_seconds: float

    @property
    def model(self) -> MarkovBaseline:
        """The picked model."""
        return self.fit.model

    def score(self, windows: torch.Tensor) -> BaselineScore:
        """Bits per base on evaluation windows (N, W + 1), on the positions the model scores."""
        return BaselineScore(self.model.bits_per_base(windows), self.fit.order, self.fit.smoothing)


def split_validation(intervals: Sequence[Interval], bases: int) -> tuple[list[Interval], list[Interval]]:
    """(the rest, the last ``bases`` of the intervals), walking back from the last interval."""
    rest, left = list(intervals), bases
    held: list[Interval] = []
    while left > 0 and rest:
        last = rest.pop()
        take = min(left, last.end - last.start)
        held.insert(0, Interval(last.contig, last.end - take, last.end))
        if take < last.end - last.start:
            rest.append(Interval(last.contig, last.start, last.end - take))
        left -= take
    return rest, held


def cache_key(sha256: str, size: int, exclude: Sequence[Region], *, max_order: int, smoothing: str,
              validation_bases: int) -> str:
    """The cache key of a build: everything that changes the result."""
    spec = {"format": FORMAT, "sha256": sha256, "size": size, "max_order": max_order,
            "exclude": sorted((r.contig, r.start, r.end) for r in exclude), "smoothing": smoothing,
            "candidates": list(CANDIDATES) if smoothing == AUTO else None,
            "validation_bases": validation_bases}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]


def reference_baseline(fasta: Path, *, exclude: Sequence[Region], cache: Path | None = None,
                       max_order: int = MAX_ORDER, smoothing: str = AUTO,
                       validation_bases: int = VALIDATION_BASES) -> ReferenceBaseline:
    """The best-k baseline of ``fasta`` minus ``exclude``: from the cache, else built and cached.

    Args:
        fasta: An indexed reference FASTA (plain or BGZF with ``.fai``), public sequence only.
        exclude: Regions never counted, e.g. the held-out region.
        cache: The data cache directory (default :func:`fedgenome.shared.fetch.default_cache`); the baseline
            goes in its ``markov/`` folder.
        max_order: Highest order tried, K.
        smoothing: A smoothing name, or ``"auto"`` to pick it on the validation slice too.
        validation_bases: Bases held apart to pick the order on (at most a fifth of the sequence).

    Returns:
        The baseline; it costs no privacy (:data:`PRIVACY_NOTE`).

    Raises:
        InputFileError: The reference cannot be read, or nothing is left once ``exclude`` is cut.
    """
    try:
        size = fasta.stat().st_size
    except OSError:
        raise InputFileError(f"{fasta}: reference FASTA not found; run 'fedgenome data fetch' or pass "
                             "the reference the model was trained with") from None
    sha = sha256_file(fasta)
    key = cache_key(sha, size, exclude, max_order=max_order, smoothing=smoothing,
                    validation_bases=validation_bases)
    path = (cache if cache is not None else default_cache()) / "markov" / f"baseline-{key}"
    cached = _read(path, key)
    if cached is not None:
        fit, validation, seconds = cached
        return ReferenceBaseline(fit, fasta, sha, tuple(exclude), validation, path, True, seconds)
    log.info("counting the best-k Markov baseline of %s (once; about 30 s and 2 GB of memory, then cached "
             "in %s)", fasta.name, path.parent)
    start = time.perf_counter()
    ref = Reference(fasta)
    allowed = allowed_intervals(ref.contigs, exclude)
    total = sum(i.end - i.start for i in allowed)
    if total < 10 * max(max_order, 1):
        raise InputFileError(f"{fasta}: {total} bases left once the excluded regions are cut; "
                             "exclude less to count a Markov baseline")
    train, held = split_validation(allowed, min(validation_bases, total // 5))
    fit = fit_best_k([ref.tokens(i.contig)[i.start : i.end] for i in train],
                     [ref.tokens(i.contig)[i.start : i.end] for i in held],
                     max_order=max_order, smoothing=smoothing)
    seconds = time.perf_counter() - start
    validation = tuple(Region(contig=i.contig, start=i.start, end=i.end) for i in held)
    built = ReferenceBaseline(fit, fasta, sha, tuple(exclude), validation, path, False, seconds)
    _write(path, key, built)
    log.info("Markov baseline of %s counted in %.1f s: order %d, %s (%s); cached in %s", fasta.name,
             seconds, fit.order, fit.smoothing, PRIVACY_NOTE, path)
    return built


def _write(path: Path, key: str, built: ReferenceBaseline) -> None:
    """Save the counts (one ``.npy`` per order, memory-mapped when read) and the fit's metadata."""
    fit = built.fit
    meta = {"format": FORMAT, "key": key, "reference": str(built.reference),
            "reference_sha256": built.reference_sha256,
            "excluded": [r.model_dump() for r in built.excluded],
            "validation": [r.model_dump() for r in built.validation], "order": fit.order,
            "smoothing": fit.smoothing, "validation_bits": fit.validation_bits,
            "validation_targets": fit.validation_targets, "training_bases": fit.training_bases,
            "max_order": fit.max_order, "both_strands": fit.both_strands,
            "build_seconds": built.build_seconds, "privacy": PRIVACY_NOTE}
    with atomic_dir(path) as tmp:
        for j, counts in enumerate(fit.model.counts):
            np.save(tmp / f"order{j}.npy", counts)
        (tmp / META).write_text(json.dumps(meta, indent=1) + "\n")


def _read(path: Path, key: str) -> tuple[BestK, tuple[Region, ...], float] | None:
    """The cached build's fields, or None (missing, another key, or unreadable: it is rebuilt)."""
    if not (path / META).is_file():
        return None
    try:
        meta = json.loads((path / META).read_text())
        if meta.get("format") != FORMAT or meta.get("key") != key:
            return None
        counts: list[Table] = [np.load(path / f"order{j}.npy", mmap_mode="r")
                               for j in range(meta["order"] + 1)]
        if any(c.shape != (4**j, 4) for j, c in enumerate(counts)):
            raise ValueError("a count table has the wrong shape")
        bits = {name: tuple(values) for name, values in meta["validation_bits"].items()}
        fit = BestK(MarkovBaseline(meta["order"], smoothing=meta["smoothing"], counts=counts),
                    meta["order"], meta["smoothing"], bits, meta["validation_targets"],
                    meta["training_bases"], meta["max_order"], meta["both_strands"])
        validation = tuple(Region(**r) for r in meta["validation"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s: unreadable cached Markov baseline (%s); counting it again", path, exc)
        return None
    return fit, validation, float(meta["build_seconds"])

"""Public sequence for pretraining: FASTA files minus excluded regions, and a validation slice.

Public sequence costs no privacy: the site's reference genome minus every held-out region, or any
other public FASTA. Training windows never touch an excluded region (the held-out evaluation
region) nor the validation slice (which is held apart from the training sequence to watch and tune
training without looking at the held-out region).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedgenome.configs.contigs import contig_key
from fedgenome.configs.errors import ConfigError
from fedgenome.configs.schema import Region
from fedgenome.shared.datasets import (
    Interval,
    WindowSampler,
    allowed_intervals,
    n_fraction,
    read_fasta_records,
)
from fedgenome.shared.tokenizer import PAD, Ids, reverse_complement_ids

log = logging.getLogger(__name__)
VALIDATION_BASES = 2_000_000  # the validation slice: the end of the longest training stretch
MAX_DRAWS = 100


@dataclass(frozen=True)
class SourceFile:
    """One FASTA the corpus was read from."""

    path: str
    sha256: str
    records: int
    bases: int


@dataclass(frozen=True)
class Corpus:
    """Token sequences by record name, and the stretches of them that training may use."""

    sources: tuple[SourceFile, ...]
    seqs: dict[str, Ids]
    train: tuple[Interval, ...]
    validation: tuple[Region, ...]
    excluded: tuple[Region, ...]

    @property
    def train_bases(self) -> int:
        """Bases in the training stretches."""
        return sum(i.end - i.start for i in self.train)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def read_corpus(paths: Sequence[Path], *, exclude: Sequence[Region],
                validation: Sequence[Region] | None = None) -> Corpus:
    """Read FASTA files; training stretches are everything but ``exclude`` and the validation slice.

    Without ``validation``, the slice is the last 2 Mb (at most a tenth) of the longest stretch left.
    """
    seqs: dict[str, Ids] = {}
    sources = []
    for path in paths:
        records = read_fasta_records(path)
        clash = sorted(set(records) & set(seqs))
        if clash:
            raise ConfigError(f"{path}: record '{clash[0]}' is also in another FASTA given; pass each "
                              "sequence once (record names must be unique across files)")
        seqs.update(records)
        sources.append(SourceFile(str(path), file_sha256(path), len(records),
                                  sum(len(r) for r in records.values())))
    for region in exclude:
        if not any(contig_key(region.contig) == contig_key(name) for name in seqs):
            log.warning("excluded region %s:%d-%d names no record of the FASTA files", region.contig,
                        region.start, region.end)
    lengths = {name: len(s) for name, s in seqs.items()}
    stretches = allowed_intervals(lengths, exclude)
    if not stretches:
        raise ConfigError("the excluded regions cover every sequence given: nothing is left to train on")
    if validation is None:
        longest = max(stretches, key=lambda i: i.end - i.start)
        size = min(VALIDATION_BASES, (longest.end - longest.start) // 10)
        validation = [Region(contig=longest.contig, start=longest.end - size, end=longest.end)]
    train = allowed_intervals(lengths, [*exclude, *validation])
    return Corpus(tuple(sources), seqs, tuple(train), tuple(validation), tuple(exclude))


class WindowStream:
    """Random training windows (B, W+1) of a corpus, both strands, redrawn when mostly N."""

    def __init__(self, corpus: Corpus, *, window: int, max_n_fraction: float, seed: int) -> None:
        self.corpus = corpus
        self.span = window + 1
        self.max_n = max_n_fraction
        self.sampler = WindowSampler(list(corpus.train), self.span)
        self.rng = np.random.default_rng(seed)

    def window(self) -> Ids:
        """One window, reverse-complemented half of the time."""
        for _ in range(MAX_DRAWS):
            contig, start, end = self.sampler.draw(self.rng)
            tokens = self.corpus.seqs[contig][start:end]
            if n_fraction(tokens) <= self.max_n:
                break
        else:
            raise ConfigError(f"no training window with at most {self.max_n:.0%} N in {MAX_DRAWS} draws; "
                              "raise data.max_n_fraction or give sequence with fewer N")
        return reverse_complement_ids(tokens) if self.rng.random() < 0.5 else tokens

    def batch(self, size: int) -> torch.Tensor:
        """``size`` windows, padded to W+1 tokens."""
        out = np.full((size, self.span), PAD, dtype=np.int64)
        for row in out:
            tokens = self.window()
            row[: len(tokens)] = tokens
        return torch.from_numpy(out)

    def state(self) -> dict[str, object]:
        """The random generator's state (JSON-safe), to resume the same stream."""
        return dict(self.rng.bit_generator.state)

    def restore(self, state: dict[str, object]) -> None:
        """Continue the stream from :meth:`state`."""
        self.rng.bit_generator.state = state

"""Datasets in which one item is one privacy unit: a patient (VCF site) or a record (FASTA site).

Each item is ``windows_per_patient`` (k) random windows of ``window + 1`` tokens (inputs plus the
next-base targets) drawn from that unit alone, (k, window + 1), or one window (window + 1,) when
k = 1, so a per-sample gradient is a per-patient gradient. Each window has its own position and,
for a patient, its own haplotype. Windows never overlap the site's held-out regions, and windows
that are mostly ``N`` are drawn again.

A site being audited (``fedgenome audit canaries``) also holds planted canary units in
``state/canaries.npz``: each is one more privacy unit that always returns the same sequence. Sites
without that file are unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pysam
import torch
from torch.utils.data import Dataset

from fedgenome.configs.contigs import contig_key
from fedgenome.configs.errors import ConfigError, InputFileError
from fedgenome.configs.schema import DataConfig, Region, SiteManifest, load_site_manifest
from fedgenome.shared.atomic import atomic_path
from fedgenome.shared.genomes import Cohort, Reference, check_sequence, load_cohort
from fedgenome.shared.tokenizer import NUCLEOTIDES, PAD, Ids, encode, reverse_complement_ids

log = logging.getLogger(__name__)
MAX_DRAWS = 100  # windows drawn before giving up on a unit that is mostly N
PLANTED_FILE = "canaries.npz"  # in the site's state/ directory


@dataclass(frozen=True)
class Interval:
    """A stretch of one sequence that training windows may use (0-based, half-open)."""

    contig: str
    start: int
    end: int


def allowed_intervals(lengths: dict[str, int], holdout: Sequence[Region]) -> list[Interval]:
    """Each sequence in ``lengths`` minus the held-out regions on it."""
    out = []
    for contig, length in lengths.items():
        cuts = sorted((r.start, min(r.end, length)) for r in holdout
                      if contig_key(r.contig) == contig_key(contig))
        pos = 0
        for lo, hi in cuts:
            if lo > pos:
                out.append(Interval(contig, pos, lo))
            pos = max(pos, hi)
        if pos < length:
            out.append(Interval(contig, pos, length))
    return out


def n_fraction(window: Ids) -> float:
    """Fraction of a window that is not A, C, G or T."""
    return float(1.0 - np.isin(window, NUCLEOTIDES).mean())


class WindowSampler:
    """Draws window starts uniformly over the positions where a whole window fits."""

    def __init__(self, intervals: list[Interval], span: int) -> None:
        self.intervals = intervals
        self.span = span
        # An interval shorter than the span still gives one (padded) window.
        self.weights = np.array([max(i.end - i.start - span + 1, 1) for i in intervals], float)
        self.weights /= self.weights.sum()

    def draw(self, rng: np.random.Generator) -> tuple[str, int, int]:
        """A window's contig, start and end (the end is short only in a short interval)."""
        iv = self.intervals[rng.choice(len(self.intervals), p=self.weights)]
        start = iv.start + int(rng.integers(0, max(iv.end - iv.start - self.span + 1, 1)))
        return iv.contig, start, min(start + self.span, iv.end)


@dataclass(frozen=True)
class Draw:
    """One drawn window: where it came from and its tokens (before padding)."""

    unit: int
    contig: str
    start: int
    hap: int  # haplotype 0 or 1 (always 0 for a FASTA record)
    reverse: bool  # reverse-complemented
    tokens: Ids


@dataclass(frozen=True)
class PlantedUnits:
    """Canary units planted in a site's dataset for an audit: ``repeats`` units per sequence.

    Only the canaries the auditor's draw included are here; which were left out, the site never
    learns. ``commitment`` is the auditor's salted SHA-256 of the whole draw, fixed before training.
    """

    tokens: Ids  # (canaries, window + 1): each row one planted sequence
    repeats: int
    commitment: str

    def __len__(self) -> int:
        return int(self.tokens.shape[0]) * self.repeats

    def unit(self, index: int) -> Ids:
        """The sequence of planted unit ``index`` (units ``c * repeats`` .. are copies of canary c)."""
        return self.tokens[index // self.repeats]


def planted_path(site_dir: Path) -> Path:
    """Where a site keeps its planted canary units."""
    return site_dir / "state" / PLANTED_FILE


def write_planted(site_dir: Path, tokens: Ids, *, repeats: int, commitment: str) -> Path:
    """Plant canary units (rows of ``tokens``, each ``repeats`` times) in the site's state."""
    if tokens.ndim != 2 or repeats < 1:
        raise ValueError(f"planted tokens must be (canaries, span) with repeats >= 1, got "
                         f"{tokens.shape} x {repeats}")
    path = planted_path(site_dir)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, tokens=tokens.astype(np.uint8), repeats=np.int64(repeats),
                 commitment=np.str_(commitment))
    return path


def read_planted(site_dir: Path, *, span: int) -> PlantedUnits | None:
    """The site's planted canary units, or None when it has none (the normal case)."""
    path = planted_path(site_dir)
    if not path.exists():
        return None
    try:
        with np.load(path) as npz:
            tokens, repeats, commitment = npz["tokens"], int(npz["repeats"]), str(npz["commitment"])
    except (OSError, ValueError, KeyError) as exc:
        raise InputFileError(f"{path}: unreadable planted canaries ({exc}); remove the file, or "
                             "plant again with 'fedgenome audit canaries'") from None
    if tokens.ndim != 2 or tokens.shape[1] != span or repeats < 1:
        raise InputFileError(f"{path}: planted canaries of shape {tokens.shape} x {repeats} do not "
                             f"fit windows of {span} tokens; plant them with the run's preset")
    return PlantedUnits(tokens.astype(np.uint8), repeats, commitment)


class _UnitWindows(Dataset[torch.Tensor]):
    """Shared logic: draw, reject mostly-N windows, augment, pad; planted units after the real ones."""

    def __init__(self, data: DataConfig, seed: int) -> None:
        self.data = data
        self.span = data.window + 1
        self.rng = np.random.default_rng(seed)
        self.planted: PlantedUnits | None = None

    def units(self) -> int:
        """Number of real units (patients or records), planted canaries not counted."""
        raise NotImplementedError

    def __len__(self) -> int:
        return self.units() + (len(self.planted) if self.planted is not None else 0)

    def _window(self, unit: int) -> tuple[str, int, int, Ids]:
        raise NotImplementedError

    def sample(self, unit: int) -> Draw:
        """Draw a window of ``unit`` (a patient or a record) with at most max_n_fraction N."""
        for _ in range(MAX_DRAWS):
            contig, start, hap, window = self._window(unit)
            if n_fraction(window) <= self.data.max_n_fraction:
                break
        else:
            raise InputFileError(f"unit {unit}: no window with at most "
                                 f"{self.data.max_n_fraction:.0%} N in {MAX_DRAWS} draws; "
                                 "raise data.max_n_fraction or remove this unit")
        reverse = bool(self.data.rc_augment and self.rng.random() < 0.5)
        if reverse:
            window = reverse_complement_ids(window)
        return Draw(unit, contig, start, hap, reverse, window)

    def __getitem__(self, unit: int) -> torch.Tensor:
        k = self.data.windows_per_patient
        real = self.units()
        padded = np.full((k, self.span), PAD, dtype=np.int64)
        for row in padded:
            if self.planted is not None and unit >= real:
                tokens = self.planted.unit(unit - real)  # a canary: always the same sequence
            else:
                tokens = self.sample(unit).tokens
            row[: len(tokens)] = tokens
        item = torch.from_numpy(padded)  # (k, window + 1)
        return item[0] if k == 1 else item


class PatientWindows(_UnitWindows):
    """One item per patient: a window of one of the patient's two haplotypes."""

    def __init__(self, cohort: Cohort, reference: Reference, *, intervals: list[Interval],
                 data: DataConfig, seed: int) -> None:
        super().__init__(data, seed)
        self.cohort, self.reference = cohort, reference
        self.sampler = WindowSampler(intervals, self.span)

    def units(self) -> int:
        """Number of patients."""
        return len(self.cohort.samples)

    def _window(self, unit: int) -> tuple[str, int, int, Ids]:
        contig, start, end = self.sampler.draw(self.rng)
        ref = self.reference.tokens(contig)[start:end]
        hap = int(self.rng.integers(0, 2))
        return contig, start, hap, self.cohort.apply(ref, patient=unit, hap=hap, contig=contig,
                                                     start=start)


class RecordWindows(_UnitWindows):
    """One item per FASTA record (an assembly, a sample): a window of that record."""

    def __init__(self, records: dict[str, Ids], *, holdout: Sequence[Region], data: DataConfig,
                 seed: int) -> None:
        super().__init__(data, seed)
        self.records = records
        self.names = list(records)
        lengths = {name: len(seq) for name, seq in records.items()}
        self.samplers = [WindowSampler(allowed_intervals({n: lengths[n]}, holdout), self.span)
                         for n in self.names]
        for name, sampler in zip(self.names, self.samplers, strict=True):
            if not sampler.intervals:
                check_training_left({name: lengths[name]}, holdout, where="the site's FASTA")

    def units(self) -> int:
        """Number of FASTA records."""
        return len(self.names)

    def _window(self, unit: int) -> tuple[str, int, int, Ids]:
        name, start, end = self.samplers[unit].draw(self.rng)
        return name, start, 0, self.records[name][start:end]


def read_fasta_records(path: Path) -> dict[str, Ids]:
    """Read every record of a (plain or gzipped) FASTA, refusing empty records and non-IUPAC text."""
    if not path.is_file():
        raise InputFileError(f"{path}: FASTA file not found; check the path")
    records: dict[str, Ids] = {}
    try:
        with pysam.FastxFile(str(path)) as fh:
            for rec in fh:
                seq = (rec.sequence or "").encode("ascii", errors="replace")
                if not seq:
                    raise InputFileError(f"{path}: record '{rec.name}' is empty; remove it or "
                                         "add its sequence")
                if str(rec.name) in records:
                    raise InputFileError(f"{path}: record name '{rec.name}' appears twice; "
                                         "give every record a unique name")
                check_sequence(seq, where=f"{path}: record '{rec.name}'")
                records[str(rec.name)] = encode(seq)
    except (OSError, ValueError) as exc:
        raise InputFileError(f"{path}: not a readable FASTA ({exc}); each record needs a "
                             "'>name' line followed by sequence lines") from None
    if not records:
        raise InputFileError(f"{path}: no FASTA records found; each record starts with '>name'")
    return records


@dataclass(frozen=True)
class SiteData:
    """A site's manifest and its per-unit training dataset."""

    manifest: SiteManifest
    dataset: PatientWindows | RecordWindows
    reference: Reference | None


@dataclass(frozen=True)
class SiteSource:
    """A site's inputs as read from disk, before any data setting or seed: what a cache may keep."""

    manifest: SiteManifest
    reference: Reference | None = None  # VCF sites: the reference and the patients' variants
    cohort: Cohort | None = None
    records: dict[str, Ids] | None = None  # FASTA sites: one sequence per unit

    def dataset(self, data: DataConfig, *, seed: int) -> PatientWindows | RecordWindows:
        """A fresh dataset over these inputs, drawing windows with its own generator (``seed``)."""
        if self.records is not None:
            return RecordWindows(self.records, holdout=self.manifest.holdout, data=data, seed=seed)
        assert self.reference is not None and self.cohort is not None
        lengths = {c: self.reference.length(c) for c in self.manifest.contigs}
        return PatientWindows(self.cohort, self.reference, data=data, seed=seed,
                              intervals=allowed_intervals(lengths, self.manifest.holdout))


def open_site(site_dir: Path, data: DataConfig, *, seed: int, cache_dir: Path | None = None,
              source: SiteSource | None = None) -> SiteData:
    """Load a site directory (``site.toml`` and the files it names) into a training dataset.

    ``source`` is the site's inputs if the caller already holds them (:func:`read_site_source`).
    Planted canary units (``state/canaries.npz``), when present, come after the real units; they
    are read every time.
    """
    source = source or read_site_source(site_dir, cache_dir=cache_dir)
    site = SiteData(source.manifest, source.dataset(data, seed=seed), source.reference)
    planted = read_planted(site_dir, span=data.window + 1)
    if planted is not None:
        site.dataset.planted = planted
        log.debug("site %s: %d planted audit units", site.manifest.name, len(planted))
    return site


def read_site_source(site_dir: Path, *, cache_dir: Path | None = None,
                     open_reference: Callable[[Path], Reference] = Reference) -> SiteSource:
    """Read a site's real units (patients or records), without planted canaries."""
    manifest = load_site_manifest(site_dir)
    if manifest.kind == "fasta":
        assert manifest.fasta is not None
        return SiteSource(manifest, records=read_fasta_records(manifest.fasta))
    assert manifest.reference is not None
    reference = open_reference(manifest.reference)
    lengths = {c: reference.length(c) for c in manifest.contigs}  # before any cache is written
    check_training_left(lengths, manifest.holdout, where=str(site_dir / "site.toml"))
    cohort = load_cohort(manifest, reference, cache_dir=cache_dir)
    log.info("site %s: %d patients, %s", manifest.name, len(cohort.samples),
             ", ".join(f"{c}: {len(v.pos)} SNVs" for c, v in cohort.contigs.items()))
    return SiteSource(manifest, reference=reference, cohort=cohort)


def check_training_left(lengths: dict[str, int], holdout: Sequence[Region], *, where: str) -> None:
    """Refuse a sequence that the held-out regions cover whole: nothing of it is left to train on."""
    for contig, length in lengths.items():
        if not allowed_intervals({contig: length}, holdout):
            covering = [f"{r.contig}:{r.start}-{r.end}" for r in holdout
                        if contig_key(r.contig) == contig_key(contig)]
            raise ConfigError(f"{where}: held-out region {', '.join(covering)} covers all of "
                              f"{contig} ({length:,} bases), so nothing of it is left to train on: "
                              f"shrink the holdout or drop {contig} from the training sequences")


def tile_windows(seqs: dict[str, Ids], regions: Sequence[Region] | None, *, window: int,
                 count: int, max_n_fraction: float) -> torch.Tensor:
    """Up to ``count`` evenly spaced, non-overlapping windows (count, window + 1) for evaluation.

    With ``regions`` the windows come from those regions of ``seqs``; without, from all of it.
    """
    span = window + 1
    spans = ([(r.contig, r.start, min(r.end, len(seqs[r.contig]))) for r in regions]
             if regions is not None else [(n, 0, len(s)) for n, s in seqs.items()])
    candidates = [seqs[c][s : s + span] for c, lo, hi in spans for s in range(lo, hi - span + 1, span)]
    candidates = [w for w in candidates if n_fraction(w) <= max_n_fraction]
    if not candidates:
        raise InputFileError(f"no evaluation window of {span} bases with at most "
                             f"{max_n_fraction:.0%} N; use a shorter data.window or longer sequences")
    picks = np.unique(np.linspace(0, len(candidates) - 1, num=min(count, len(candidates))).round())
    return torch.from_numpy(np.stack([candidates[int(i)] for i in picks]).astype(np.int64))

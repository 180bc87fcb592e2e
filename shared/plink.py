"""Reader for PLINK 1 binary genotypes (``.bed``/``.bim``/``.fam``), SNP-major only.

The ``.bed`` starts with the magic bytes ``6c 1b 01``; then, for each SNP of the ``.bim``, come
``ceil(n_samples / 4)`` bytes holding 2 bits per sample, lowest bits first. Codes: 0 = homozygous
A1, 1 = missing, 2 = heterozygous, 3 = homozygous A2 (A1 = column 5 of ``.bim``, A2 = column 6).
Decoding is vectorised with numpy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from fedgenome.configs.errors import InputFileError

log = logging.getLogger(__name__)

MAGIC = b"\x6c\x1b\x01"
HOM_A1, MISSING, HET, HOM_A2 = 0, 1, 2, 3
_SHIFTS = np.array([0, 2, 4, 6], dtype=np.uint8)
_A1_COUNT = np.array([2, -1, 1, 0], dtype=np.int8)  # code -> copies of A1 (-1 = missing)


@dataclass(frozen=True, eq=False)
class PlinkData:
    """Genotypes of ``n_samples`` people at ``n_snps`` SNPs, as raw PLINK codes.

    Attributes:
        samples: Sample (individual) ids, column 2 of ``.fam``, in ``.bed`` order.
        chrom: Chromosome of each SNP (str array).
        snp_id: SNP id of each SNP (str array).
        pos: 1-based position of each SNP (int64 array).
        a1: Allele 1 (column 5 of ``.bim``; str array).
        a2: Allele 2 (column 6 of ``.bim``; str array).
        codes: Raw codes 0..3, shape ``(n_snps, n_samples)``, int8 (see module docstring).
    """

    samples: tuple[str, ...]
    chrom: npt.NDArray[np.str_]
    snp_id: npt.NDArray[np.str_]
    pos: npt.NDArray[np.int64]
    a1: npt.NDArray[np.str_]
    a2: npt.NDArray[np.str_]
    codes: npt.NDArray[np.int8]

    @property
    def n_snps(self) -> int:
        """Number of SNPs (rows of ``codes``)."""
        return int(self.codes.shape[0])

    @property
    def n_samples(self) -> int:
        """Number of samples (columns of ``codes``)."""
        return int(self.codes.shape[1])

    def a1_counts(self) -> npt.NDArray[np.int8]:
        """Copies of A1 per SNP and sample: 2, 1 or 0, and -1 where missing."""
        return _A1_COUNT[self.codes]

    def a2_counts(self) -> npt.NDArray[np.int8]:
        """Copies of A2 per SNP and sample: 0, 1 or 2, and -1 where missing."""
        counts = self.a1_counts()
        return np.where(counts < 0, counts, 2 - counts).astype(np.int8)

    def select_samples(self, indices: npt.ArrayLike) -> PlinkData:
        """A copy keeping only the samples at ``indices`` (in that order)."""
        idx = np.asarray(indices, dtype=np.int64)
        return PlinkData(
            samples=tuple(self.samples[i] for i in idx),
            chrom=self.chrom, snp_id=self.snp_id, pos=self.pos, a1=self.a1, a2=self.a2,
            codes=np.ascontiguousarray(self.codes[:, idx]),
        )


def _read_columns(path: Path, n_cols: int) -> list[list[str]]:
    """Whitespace-split rows of a text table, each with at least ``n_cols`` columns."""
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        raise InputFileError(f"{path}: file not found; check the PLINK prefix") from None
    except OSError as exc:
        raise InputFileError(f"{path}: cannot read ({exc.strerror}); check permissions") from None
    rows = [line.split() for line in text.splitlines() if line.strip()]
    for lineno, row in enumerate(rows, start=1):
        if len(row) < n_cols:
            raise InputFileError(
                f"{path}: row {lineno} has {len(row)} columns, expected {n_cols}; "
                f"is this a PLINK {path.suffix} file?"
            )
    return rows


def read_fam(path: Path) -> tuple[str, ...]:
    """Sample ids (column 2) of a ``.fam`` file."""
    return tuple(row[1] for row in _read_columns(path, 6))


def _read_bim(path: Path) -> tuple[npt.NDArray[np.str_], ...]:
    """Columns chrom, id, pos (as str), a1, a2 of a ``.bim`` file."""
    rows = _read_columns(path, 6)
    if not rows:
        raise InputFileError(f"{path}: no SNPs; check the PLINK prefix")
    cols = np.array([[r[0], r[1], r[3], r[4], r[5]] for r in rows], dtype=np.str_)
    return tuple(cols[:, i] for i in range(5))


def bim_positions(path: Path, chrom: str) -> npt.NDArray[np.int64]:
    """The 1-based positions (column 4) of a ``.bim``'s SNPs on ``chrom``, in file order."""
    chroms, _, raw, _, _ = _read_bim(path)
    return _parse_positions(path, raw)[chroms == chrom]  # rows named as in the file


def _parse_positions(path: Path, raw: npt.NDArray[np.str_]) -> npt.NDArray[np.int64]:
    """Column 4 of a ``.bim`` as int64, with a one-line error naming the first bad row."""
    try:
        return raw.astype(np.int64)
    except ValueError:
        bad = next((i for i, v in enumerate(raw) if not v.lstrip("-").isdigit()), 0)
        raise InputFileError(
            f"{path}: row {bad + 1} has position {str(raw[bad])!r}, expected an integer"
        ) from None


def _read_bed_rows(
    path: Path, n_snps: int, n_samples: int, rows: npt.NDArray[np.int64]
) -> npt.NDArray[np.uint8]:
    """The packed bytes of the SNPs at ``rows``, shape ``(len(rows), ceil(n_samples / 4))``."""
    per_snp = (n_samples + 3) // 4
    expected = len(MAGIC) + n_snps * per_snp
    try:
        with open(path, "rb") as fh:
            magic = fh.read(len(MAGIC))
        size = path.stat().st_size
    except FileNotFoundError:
        raise InputFileError(f"{path}: file not found; check the PLINK prefix") from None
    except OSError as exc:
        raise InputFileError(f"{path}: cannot read ({exc.strerror}); check permissions") from None
    if magic != MAGIC:
        raise InputFileError(
            f"{path}: bad magic bytes {magic.hex(' ')!r}, expected '6c 1b 01' (SNP-major PLINK "
            f".bed); convert it with 'plink --make-bed'"
        )
    if size != expected:
        what = "truncated" if size < expected else "longer than expected"
        raise InputFileError(
            f"{path}: {what} ({size} bytes, expected {expected} for {n_snps} SNPs x "
            f"{n_samples} samples from the .bim/.fam); check the three files belong together"
        )
    packed = np.memmap(path, dtype=np.uint8, mode="r", offset=len(MAGIC),
                       shape=(n_snps, per_snp))
    return np.asarray(packed[rows])


def decode_codes(packed: npt.NDArray[np.uint8], n_samples: int) -> npt.NDArray[np.int8]:
    """Unpack 2-bit codes, lowest bits first: ``(n, ceil(n_samples/4))`` -> ``(n, n_samples)``."""
    codes = (packed[:, :, None] >> _SHIFTS) & 3
    return np.ascontiguousarray(codes.reshape(packed.shape[0], -1)[:, :n_samples]).astype(np.int8)


def read_plink(prefix: Path, *, chrom: str | None = None) -> PlinkData:
    """Read ``prefix.bed/.bim/.fam``, optionally keeping only the SNPs on ``chrom``.

    Args:
        prefix: Path without extension, e.g. ``cache/genotypes/EUR_subset``.
        chrom: Keep only SNPs whose ``.bim`` chromosome equals this (e.g. ``"20"``).

    Returns:
        The samples, SNP annotations and raw codes.

    Raises:
        InputFileError: A file is missing, the magic bytes are wrong, the ``.bed`` size does not
            match the ``.bim``/``.fam`` row counts, a row is malformed, or ``chrom`` has no SNPs.
    """
    bed, bim, fam = (prefix.with_name(prefix.name + ext) for ext in (".bed", ".bim", ".fam"))
    samples = read_fam(fam)
    if not samples:
        raise InputFileError(f"{fam}: no samples; check the PLINK prefix")
    chroms, ids, raw_pos, a1, a2 = _read_bim(bim)
    n_snps = len(chroms)
    rows = np.arange(n_snps, dtype=np.int64) if chrom is None else np.flatnonzero(chroms == chrom)
    if rows.size == 0:
        present = ", ".join(dict.fromkeys(chroms.tolist()))
        raise InputFileError(f"{bim}: no SNPs on chromosome {chrom!r}; present: {present}")
    packed = _read_bed_rows(bed, n_snps, len(samples), rows)
    data = PlinkData(
        samples=samples, chrom=chroms[rows], snp_id=ids[rows],
        pos=_parse_positions(bim, raw_pos[rows]), a1=a1[rows], a2=a2[rows],
        codes=decode_codes(packed, len(samples)),
    )
    log.debug("read %d SNPs x %d samples from %s", data.n_snps, data.n_samples, prefix)
    return data

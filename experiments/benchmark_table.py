"""The table of ``fedgenome benchmark variants``: what to score, its measured value, its label.

A TSV (``.tsv``, ``.txt``, ``.tab``) or CSV (``.csv``) file, optionally gzipped, with a header row.
The sequence column holds, in every row, either a DNA sequence (A, C, G, T, N; a measured
sequence, scored whole or in place of a region of a flank FASTA) or an SNV ``CONTIG:POS:REF:ALT``
(POS 1-based, scored as ALT minus REF in the flank FASTA, the reference). The value column is a
number; the label column, optional, is 0/1 or true/false. Rows without a value (empty, ``NA``,
``nan``) are skipped and counted; any other bad cell is refused with its row and column.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from fedgenome.configs.errors import ConfigError, InputFileError
from fedgenome.experiments.explain import Variant

log = logging.getLogger(__name__)
MISSING = {"", "na", "nan", "n/a", "none", "null", "."}
LABELS = {"1": True, "0": False, "true": True, "false": False}
_DNA = re.compile(r"[ACGTN]+")
_SNV = re.compile(r"[^:\s]+:[\d,]+:[ACGT]:[ACGT]")


@dataclass(frozen=True)
class BenchmarkTable:
    """The rows kept, in file order."""

    path: Path
    kind: str  # "sequence" or "variant"
    value_column: str
    items: tuple[str, ...]  # the sequence column (upper case)
    values: npt.NDArray[np.float64]
    labels: npt.NDArray[np.bool_] | None
    rows: tuple[int, ...]  # 1-based data-row number of each item (header excluded)
    skipped: int  # rows without a value

    def variants(self) -> list[Variant]:
        """The items as SNVs (``kind == "variant"``)."""
        return [Variant.parse(item) for item in self.items]


def _open_text(path: Path) -> io.TextIOBase:
    if not path.is_file():
        raise InputFileError(f"{path}: table not found; check the path")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    try:
        return io.StringIO(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise InputFileError(f"{path}: not a UTF-8 text table; save it as TSV or CSV") from None


def _column(header: list[str], name: str, option: str, path: Path) -> int:
    if name not in header:
        raise ConfigError(f"{option} {name!r}: no such column in {path} (columns: "
                          f"{', '.join(header)}); name one of them")
    return header.index(name)


def read_table(path: Path, *, sequence_column: str, value_column: str,
               label_column: str | None = None) -> BenchmarkTable:
    """Read and check the benchmark table (see the module docstring)."""
    name = path.name.lower().removesuffix(".gz")
    delimiter = "," if name.endswith(".csv") else "\t"
    reader = csv.reader(_open_text(path), delimiter=delimiter)
    header = [cell.strip() for cell in next(reader, [])]
    if not header:
        raise InputFileError(f"{path}: the table is empty; it needs a header row and data rows")
    seq_i = _column(header, sequence_column, "--sequence-column", path)
    val_i = _column(header, value_column, "--value-column", path)
    lab_i = _column(header, label_column, "--label-column", path) if label_column else None
    items, values, labels, rows, skipped = [], [], [], [], 0
    for number, cells in enumerate(reader, start=1):
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) < len(header):
            raise InputFileError(f"{path}: data row {number} has {len(cells)} cells, the header "
                                 f"{len(header)}; fix the row")
        value = cells[val_i].strip()
        if value.lower() in MISSING:
            skipped += 1
            continue
        items.append(_item(cells[seq_i], number, sequence_column, path))
        values.append(_number(value, number, value_column, path))
        if lab_i is not None:
            labels.append(_label(cells[lab_i], number, label_column or "", path))
        rows.append(number)
    return _checked(path, value_column, items, values, labels if lab_i is not None else None, rows,
                    skipped)


def _item(cell: str, row: int, column: str, path: Path) -> str:
    text = cell.strip().upper()
    if _DNA.fullmatch(text) or _SNV.fullmatch(text):
        return text
    raise InputFileError(f"{path}: row {row}, column {column!r}: {cell.strip()[:40]!r} is neither a "
                         "DNA sequence (A, C, G, T, N) nor an SNV CONTIG:POS:REF:ALT")


def _number(cell: str, row: int, column: str, path: Path) -> float:
    try:
        value = float(cell)
    except ValueError:
        raise InputFileError(f"{path}: row {row}, column {column!r}: {cell!r} is not a number; "
                             "leave it empty or NA to skip the row") from None
    if not math.isfinite(value):
        raise InputFileError(f"{path}: row {row}, column {column!r}: {cell!r} is not finite")
    return value


def _label(cell: str, row: int, column: str, path: Path) -> bool:
    label = LABELS.get(cell.strip().lower())
    if label is None:
        raise InputFileError(f"{path}: row {row}, column {column!r}: {cell.strip()!r} is not a "
                             "binary label; use 0/1 or true/false")
    return label


def _checked(path: Path, value_column: str, items: list[str], values: list[float], labels: list[bool] | None,
             rows: list[int], skipped: int) -> BenchmarkTable:
    if len(items) < 3:
        raise InputFileError(f"{path}: {len(items)} row(s) with a value; a rank correlation needs "
                             "at least 3")
    kinds = {"variant" if _SNV.fullmatch(item) else "sequence" for item in items}
    if len(kinds) > 1:
        raise InputFileError(f"{path}: the sequence column mixes DNA sequences and SNVs; keep one "
                             "kind per table")
    if skipped:
        log.info("%s: %d row(s) without a value skipped", path, skipped)
    return BenchmarkTable(path, kinds.pop(), value_column, tuple(items), np.asarray(values, dtype=np.float64),
                          None if labels is None else np.asarray(labels, dtype=np.bool_),
                          tuple(rows), skipped)

"""Single-nucleotide tokenizer: a fixed vocabulary of specials, then A, C, G, T, N.

IUPAC ambiguity codes (R, Y, S, W, K, M, B, D, H, V) become ``N``; lower case (soft-masked repeats)
is read as upper case. Ids are stable: checkpoints depend on them.

>>> decode(encode("ACGTN"))
'ACGTN'
>>> reverse_complement("AACGN")
'NCGTT'
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

PAD, BOS, EOS, MASK, UNK = 0, 1, 2, 3, 4
A, C, G, T, N = 5, 6, 7, 8, 9
SPECIALS = ("<pad>", "<bos>", "<eos>", "<mask>", "<unk>")
BASES = "ACGTN"
VOCAB: tuple[str, ...] = SPECIALS + tuple(BASES)
NUCLEOTIDES = (A, C, G, T)  # the four tokens a model predicts and bits per base are measured on
IUPAC = frozenset("ACGTNRYSWKMBDHVU")  # U (RNA) is read as T

Ids = npt.NDArray[np.uint8]

_ENCODE = np.full(256, UNK, dtype=np.uint8)
for _code in "RYSWKMBDHVN":
    _ENCODE[ord(_code)] = _ENCODE[ord(_code.lower())] = N
for _base, _id in zip("ACGT", (A, C, G, T), strict=True):
    _ENCODE[ord(_base)] = _ENCODE[ord(_base.lower())] = _id
_ENCODE[ord("U")] = _ENCODE[ord("u")] = T

_DECODE = np.frombuffer(b"?????ACGTN".ljust(256, b"?"), dtype=np.uint8)

COMPLEMENT = np.arange(256, dtype=np.uint8)  # id -> id of the complementary base; specials fixed
COMPLEMENT[[A, C, G, T, N]] = [T, G, C, A, N]


def encode(seq: str | bytes) -> Ids:
    """Map a nucleotide string to token ids (uint8); characters outside IUPAC become ``UNK``."""
    raw = seq.encode("ascii", errors="replace") if isinstance(seq, str) else seq
    return _ENCODE[np.frombuffer(raw, dtype=np.uint8)]


def decode(ids: npt.ArrayLike) -> str:
    """Map token ids back to a string; specials decode as ``?``."""
    arr = np.asarray(ids, dtype=np.int64)
    return _DECODE[np.clip(arr, 0, 255)].tobytes().decode("ascii")


def reverse_complement_ids(ids: Ids) -> Ids:
    """Reverse complement of a token-id array (specials keep their id)."""
    return COMPLEMENT[ids[::-1]]


def reverse_complement(seq: str) -> str:
    """Reverse complement of a nucleotide string."""
    return decode(reverse_complement_ids(encode(seq)))


def invalid_characters(seq: str | bytes) -> set[str]:
    """Characters of ``seq`` that are not IUPAC nucleotide codes (case-insensitive)."""
    raw = seq.encode("ascii", errors="replace") if isinstance(seq, str) else seq
    present = {chr(b) for b in set(raw)}
    return {c for c in present if c.upper() not in IUPAC}

"""k-mer counts of every order 0..K at once, over whole sequences: both strands, contexts broken by N.

Notation: a target is a base (code 0..3 for A, C, G, T) and its order-j context is the j clean bases
before it in the same sequence (a window, a contig, an interval). A context is packed base 4 with
the *nearest* base as the most significant digit, so the order-(j-1) context of an order-j one is
``ctx >> 2`` and the order-(j+1) contexts extending it (one base further back) are ``ctx * 4 + b``.
Table j has shape ``(4**j, 4)``: ``table[ctx, target]`` is how often ``target`` followed ``ctx``.

Counting is one ``np.bincount`` per chunk of a contig at the top order K; a position whose clean
context is shorter than j (after an ``N`` or at a sequence start) counts only at its own length, and
the lower tables are then the marginals of the one above plus those few positions. Table j then
counts every clean (j+1)-mer of the sequence, so the reverse strand's counts are the forward
table read at reverse-complemented (j+1)-mers: a flip and an axis permutation of the same array
(:func:`add_reverse_strand`), with no second pass over the sequence.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedgenome.configs.errors import ConfigError
from fedgenome.shared.tokenizer import A, T

MAX_ORDER = 12
"""The highest order counted: table 12 holds 4**13 counts (256 MiB as uint32)."""
CHUNK = 1 << 24
"""Targets per counting pass over a long sequence (bounds the working memory to about 1 GiB)."""

Table = npt.NDArray[np.unsignedinteger]
Codes = npt.NDArray[np.int8]
Index = npt.NDArray[np.int32]  # packed contexts (4**12 < 2**31) and keys ``ctx * 4 + target``


def base_codes(tokens: npt.ArrayLike) -> Codes:
    """Token ids -> 0..3 for A, C, G, T and -1 for anything else (N, IUPAC, padding, specials)."""
    ids = np.asarray(tokens).astype(np.int16)
    return np.where((ids >= A) & (ids <= T), ids - A, -1).astype(np.int8)


@dataclass(frozen=True)
class Targets:
    """Scored positions of some rows of base codes: each target with its longest clean context.

    Attributes:
        context: Packed order-``order`` context of each target (digits beyond ``length`` are 0).
        base: The target base, 0..3.
        length: Clean bases before the target in its row, capped at ``order``.
        mask: (B, L - first) True where a column is a target (a clean base), in row order.
        order: The order the contexts were packed at.
    """

    context: Index
    base: Index
    length: Index
    mask: npt.NDArray[np.bool_]
    order: int

    def context_at(self, j: int) -> Index:
        """The order-``j`` context index of every target (meaningful where ``length >= j``)."""
        return self.context >> (2 * (self.order - j))

    def __len__(self) -> int:
        return int(self.base.shape[0])


def _shifted(x: Index, s: int) -> Index:
    """``x`` moved ``s`` columns right within each row, zeros coming in at the row start."""
    if s == 0:
        return x
    out = np.empty_like(x)
    out[:, :s] = 0
    out[:, s:] = x[:, :-s]
    return out


def _packed(digits: Index, order: int) -> Index:
    """The ``order`` bases ending at each column, packed with the last one most significant.

    Built by doubling (1, 2, 4, 8 bases, then joined by the binary digits of ``order``), so a long
    sequence is passed over about 2 log2(order) times instead of ``order`` times.
    """
    spans, width = {1: digits}, 1
    while width * 2 <= order:
        spans[width * 2] = (spans[width] << (2 * width)) | _shifted(spans[width], width)
        width *= 2
    out, done = np.zeros_like(digits), 0
    for part in sorted(spans, reverse=True):
        if order - done >= part:
            out = (out << (2 * part)) | _shifted(spans[part], done)
            done += part
    return out


def targets(codes: Codes, order: int, *, first: int) -> Targets:
    """The targets of rows of base codes (B, L) from column ``first`` on; contexts stay in their row.

    Columns before ``first`` only serve as context (a window's first base, or the overlap of a chunk).
    """
    rows, width = codes.shape
    clean = codes >= 0
    columns = np.arange(width, dtype=np.int32)
    last_bad = np.maximum.accumulate(np.where(clean, np.int32(-1), columns), axis=1)  # (B, L)
    prev_bad = np.concatenate([np.full((rows, 1), -1, np.int32), last_bad[:, :-1]], axis=1)
    length = np.minimum(columns - 1 - prev_bad, np.int32(order))[:, first:]  # (B, L - first)
    digits = np.maximum(codes, 0).astype(np.int32)
    context = _shifted(_packed(digits, order), 1)[:, first:] if order else np.zeros_like(length)
    mask = clean[:, first:]
    base = codes[:, first:].astype(np.int32)
    if mask.all():
        return Targets(context.reshape(-1), base.reshape(-1), length.reshape(-1), mask, order)
    return Targets(context[mask], base[mask], length[mask], mask, order)


def chunked_targets(codes: Codes, order: int, *, first: int = 0, chunk: int = CHUNK) -> Iterator[Targets]:
    """Targets of one long sequence of base codes, ``chunk`` columns at a time (each with its context)."""
    for start in range(first, len(codes), chunk):
        lo = max(start - order, 0)
        yield targets(codes[None, lo : start + chunk], order, first=start - lo)


def empty_tables(order: int, dtype: type[np.unsignedinteger] = np.uint32) -> list[Table]:
    """Zero count tables for orders 0..``order``."""
    return [np.zeros((4**j, 4), dtype=dtype) for j in range(order + 1)]


def _add(flat: Table, keys: Index) -> None:
    """Add one count per key to a flattened table: bincount for many keys, unique for a few."""
    if len(keys) * 8 >= flat.size:
        np.add(flat, np.bincount(keys, minlength=flat.size), out=flat, casting="unsafe")
    elif len(keys):
        uniq, counts = np.unique(keys, return_counts=True)
        flat[uniq] += counts.astype(flat.dtype)  # the keys are unique: no lost updates


def add_exact(tables: list[Table], tg: Targets) -> None:
    """Count each target once, at its own context length (see :func:`fill_lower`)."""
    top = len(tables) - 1
    if top != tg.order:
        raise ValueError(f"targets packed at order {tg.order} cannot fill tables 0..{top}")
    short = np.flatnonzero(tg.length < top)
    if len(short) == 0:
        _add(tables[top].reshape(-1), (tg.context << 2) | tg.base)
        return
    full = np.flatnonzero(tg.length >= top)
    _add(tables[top].reshape(-1), (tg.context[full] << 2) | tg.base[full])
    context, base, length = tg.context[short], tg.base[short], tg.length[short]
    for j in range(top):
        sel = length == j
        _add(tables[j].reshape(-1), ((context[sel] >> (2 * (tg.order - j))) << 2) | base[sel])


def fill_lower(tables: list[Table]) -> None:
    """Turn exact-length counts into counts at every order: add each table's marginal to the one below."""
    for j in range(len(tables) - 2, -1, -1):
        tables[j] += tables[j + 1].reshape(4**j, 4, 4).sum(axis=1, dtype=tables[j].dtype)


def _reverse_strand(table: Table, j: int) -> Table:
    """Table j as the reverse strand sees it: entry s holds the count of the (j+1)-mer rc(s).

    As a (4,) * (j + 1) array, axis 0 is the nearest context base, axis j - 1 the farthest and
    axis j the target. Complementing every base (c -> 3 - c) reverses the flat array; reversing the
    (j+1)-mer swaps the target with the farthest base and reverses the order of the others.
    """
    flipped = table.reshape(-1)[::-1].reshape((4,) * (j + 1))
    return flipped if j == 0 else flipped.transpose([j - 2 - a for a in range(j - 1)] + [j, j - 1])


def add_reverse_strand(tables: list[Table]) -> None:
    """Add the reverse complement's counts to full forward-strand tables (after :func:`fill_lower`)."""
    for j, table in enumerate(tables):
        view = table.reshape((4,) * (j + 1))
        np.add(view, _reverse_strand(table, j), out=view)  # numpy buffers the overlapping operand


def count_dtype(positions: int) -> type[np.unsignedinteger]:
    """uint32 when every count fits in it, else uint64."""
    return np.uint32 if positions < 2**32 else np.uint64


def count_kmers(seqs: Iterable[npt.NDArray[np.uint8]], order: int, *,
                both_strands: bool = True) -> list[Table]:
    """Count every order 0..``order`` over whole token sequences (contigs, intervals).

    Every A/C/G/T base is a target; its contexts are the clean bases before it in its sequence, so
    an ``N`` (or any non-base) breaks them. With ``both_strands`` each sequence's reverse complement
    is counted too, so a sequence and its reverse complement give the same counts.

    Args:
        seqs: Token-id arrays (:mod:`fedgenome.shared.tokenizer` ids).
        order: Highest order K (at most :data:`MAX_ORDER`).
        both_strands: Count the reverse complement as well.

    Returns:
        Tables 0..K, ``table[j][ctx, target]`` (see the module docstring for the packing).

    >>> from fedgenome.shared.tokenizer import encode
    >>> [int(t.sum()) for t in count_kmers([encode("ACGNAC")], 2, both_strands=False)]
    [5, 3, 1]
    """
    seqs = list(seqs)
    if not 0 <= order <= MAX_ORDER:
        raise ConfigError(f"k-mer order {order} is outside 0..{MAX_ORDER}; pick one in that range")
    total = sum(len(s) for s in seqs) * (2 if both_strands else 1)
    tables = empty_tables(order, count_dtype(total))
    for seq in seqs:
        for tg in chunked_targets(base_codes(seq), order):
            add_exact(tables, tg)
    fill_lower(tables)
    if both_strands:
        add_reverse_strand(tables)
    return tables

"""Tokenizer: fixed ids, round trip, reverse complement, IUPAC handling."""

from __future__ import annotations

import numpy as np
import pytest

from fedgenome.shared import tokenizer as tk
from fedgenome.shared.datasets import read_fasta_records
from fedgenome.shared.fetch import DataPaths


def test_fixed_vocabulary() -> None:
    assert tk.VOCAB == ("<pad>", "<bos>", "<eos>", "<mask>", "<unk>", "A", "C", "G", "T", "N")
    assert [tk.A, tk.C, tk.G, tk.T, tk.N] == [5, 6, 7, 8, 9]


@pytest.mark.parametrize("seq", ["ACGT", "NNNACGTTTGCA", "A", "GATTACA" * 50])
def test_round_trip(seq: str) -> None:
    assert tk.decode(tk.encode(seq)) == seq


@pytest.mark.parametrize("seq", ["ACGT", "AACCGGTTN", "GATTACA", "ncgta"])
def test_reverse_complement_is_an_involution(seq: str) -> None:
    ids = tk.encode(seq)
    assert np.array_equal(tk.reverse_complement_ids(tk.reverse_complement_ids(ids)), ids)


def test_reverse_complement_values() -> None:
    assert tk.reverse_complement("AACGTN") == "NACGTT"
    assert tk.reverse_complement("GATTACA") == "TGTAATC"


def test_lower_case_and_ambiguity_codes() -> None:
    assert tk.decode(tk.encode("acgt")) == "ACGT"
    assert tk.decode(tk.encode("RYKMSWBDHVN")) == "N" * 11
    assert tk.encode("x")[0] == tk.UNK
    assert tk.invalid_characters("ACGT-x*") == {"-", "x", "*"}
    assert tk.invalid_characters("acgtnRYU") == set()


@pytest.mark.data
def test_round_trip_on_real_mitochondrial_genome(data_paths: DataPaths) -> None:
    (seq,) = read_fasta_records(data_paths.mt_fasta).values()
    assert len(seq) == 16569
    assert tk.encode(tk.decode(seq)).tolist() == seq.tolist()
    assert np.array_equal(tk.reverse_complement_ids(tk.reverse_complement_ids(seq)), seq)

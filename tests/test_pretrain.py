"""Public pretraining: k-mer contexts and counts, the prior, excluded regions, resume, the CLI."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from configs.schema import Preset, Region
from shared.checkpoint import load_checkpoint
from shared.corpus import WindowStream, count_kmers, read_corpus
from shared.fetch import DataPaths
from shared.model import GenomeLM, kmer_contexts, kmer_prior_from_counts, kmer_table_size
from shared.pretrain import PretrainSettings, pretrain
from shared.tokenizer import A, N, decode, encode, reverse_complement_ids
from tests.test_cli import assert_one_line_error, run_cli


def longest_context(seq: str, t: int, order: int) -> str:
    """The bases ending at t that the k-mer prior conditions on, by a direct scan."""
    ctx = ""
    while len(ctx) < order and t - len(ctx) >= 0 and seq[t - len(ctx)] in "ACGT":
        ctx = seq[t - len(ctx)] + ctx
    return ctx


def row_of(ctx: str) -> int:
    """Row of a context: the shorter tables first, the most recent base the lowest digit."""
    code = sum("ACGT".index(b) * 4**i for i, b in enumerate(reversed(ctx)))
    return kmer_table_size(len(ctx) - 1) + code


@pytest.mark.parametrize("order", [1, 3, 5])
def test_kmer_contexts_match_a_direct_scan(order: int) -> None:
    rng = np.random.default_rng(order)
    seq = "".join(rng.choice(list("ACGTACGTACGTN"), size=300))
    rows = kmer_contexts(torch.from_numpy(encode(seq).astype(np.int64)), order)
    assert rows.tolist() == [row_of(longest_context(seq, t, order)) for t in range(len(seq))]
    # every context of every length has its own row, and the table is exactly that large
    all_rows = {row_of("".join(c)) for j in range(order + 1) for c in itertools.product("ACGT", repeat=j)}
    assert all_rows == set(range(kmer_table_size(order)))


def write_fasta(path: Path, records: dict[str, str]) -> Path:
    path.write_text("".join(f">{name}\n{seq}\n" for name, seq in records.items()))
    return path


def test_counts_cover_both_strands(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    seq = "".join(rng.choice(list("ACGGT"), size=5000))
    rc = decode(reverse_complement_ids(encode(seq)))
    forward = read_corpus([write_fasta(tmp_path / "f.fa", {"s": seq})], exclude=[],
                          validation=[Region(contig="s", start=0, end=1)])
    backward = read_corpus([write_fasta(tmp_path / "r.fa", {"s": rc})], exclude=[],
                           validation=[Region(contig="s", start=len(seq) - 1, end=len(seq))])
    a, b = count_kmers(forward, 4), count_kmers(backward, 4)
    assert torch.equal(a, b)
    assert a.sum() == 2 * (len(seq) - 2)  # every transition of both strands of the 4998-base stretch
    order0 = a[0]
    assert order0[0] == order0[3] and order0[1] == order0[2]  # A pairs with T, C with G


def test_prior_interpolates_towards_shorter_contexts() -> None:
    counts = torch.zeros(kmer_table_size(2), 4)
    counts[0] = torch.tensor([70.0, 10.0, 10.0, 10.0])
    counts[row_of("A")] = torch.tensor([0.0, 0.0, 90.0, 10.0])
    probs = kmer_prior_from_counts(counts, order=2, strength=8.0).exp()
    assert torch.allclose(probs.sum(dim=1), torch.ones(len(probs)), atol=1e-5)
    assert torch.allclose(probs[row_of("CA")], probs[row_of("A")])  # unseen: falls back to "A"
    assert torch.allclose(probs[row_of("C")], probs[0])  # unseen: falls back to order 0
    assert probs[row_of("A")][2] > 0.8 and probs[0][0] > 0.6


def test_a_model_with_a_prior_starts_as_that_markov_chain(tiny: Preset) -> None:
    order = tiny.model.kmer_order
    counts = torch.rand(kmer_table_size(order), 4) * 50
    prior = kmer_prior_from_counts(counts, order=order)
    model = GenomeLM(tiny.model)
    model.set_kmer_prior(prior)
    idx = torch.randint(A, N + 1, (2, 40))
    logp = model(idx).log_softmax(-1)[..., A : A + 4]
    assert torch.allclose(logp, prior[kmer_contexts(idx, order)], atol=1e-3)


def test_training_windows_never_touch_excluded_or_validation_sequence(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    seq = "".join(rng.choice(list("ACGT"), size=60_000))
    corpus = read_corpus([write_fasta(tmp_path / "g.fa", {"g": seq})],
                         exclude=[Region(contig="g", start=20_000, end=30_000)],
                         validation=[Region(contig="g", start=50_000, end=55_000)])
    stream = WindowStream(corpus, window=63, max_n_fraction=0.5, seed=0)
    spans = ((20_000, 30_000), (50_000, 55_000))
    kept_out = {seq[i : i + 20] for lo, hi in spans for i in range(lo, hi - 20)}
    seen = set()
    for window in stream.batch(3000):
        text = decode(window.numpy())
        for strand in (text, decode(reverse_complement_ids(encode(text)))):
            seen |= {strand[i : i + 20] for i in range(0, len(strand) - 20)}
    assert len(seen) > 50_000  # the stream covered the training stretches well
    assert not seen & kept_out


def tiny_settings(tiny: Preset, out: Path, steps: int) -> PretrainSettings:
    preset = tiny.model_copy(update={"train": tiny.train.model_copy(
        update={"steps": steps, "warmup_steps": 2, "batch_size": 4, "device": "cpu"})})
    return PretrainSettings(preset_name="tiny", preset=preset, out=out, command="test",
                            checkpoint_every=4)


def test_an_interrupted_pretraining_resumes_to_the_same_weights(tiny: Preset, data_paths: DataPaths,
                                                                tmp_path: Path) -> None:
    corpus = read_corpus([data_paths.ce_fasta], exclude=[Region(contig="CHROMOSOME_I", start=0,
                                                                end=50_000)])
    whole = pretrain(corpus, tiny_settings(tiny, tmp_path / "whole", 10))

    def crash(step: int, loss: float) -> None:
        if step == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(corpus, tiny_settings(tiny, tmp_path / "again", 10), on_step=crash)
    assert load_checkpoint(tmp_path / "again").meta["pretrain"]["steps"] == 4
    again = pretrain(corpus, tiny_settings(tiny, tmp_path / "again", 10))
    a = load_checkpoint(whole.checkpoint).model.state_dict()
    b = load_checkpoint(again.checkpoint).model.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    start = GenomeLM(tiny.model).state_dict()
    assert any(not torch.allclose(a[k], start[k]) for k in a if k.startswith("blocks"))
    assert whole.scores.model.keys() == again.scores.model.keys()


def test_pretrain_command_writes_a_reproducible_model_card(data_paths: DataPaths, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ckpt"
    args = ["pretrain", str(data_paths.ce_fasta), "--exclude", "CHROMOSOME_I:0-50000", "--preset",
            "tiny", "--steps", "4", "--batch-size", "2", "--out", str(out), "--device", "cpu"]
    code, stdout, _ = run_cli(args, capsys)
    assert code == 0 and "held-out CHROMOSOME_I:0-50000" in stdout
    card = (out / "MODEL_CARD.md").read_text()
    assert hashlib.sha256(data_paths.ce_fasta.read_bytes()).hexdigest() in card
    assert "--exclude CHROMOSOME_I:0-50000" in card and "Seed 0" in card
    ckpt = load_checkpoint(out)
    assert ckpt.meta["holdout"] == [{"contig": "CHROMOSOME_I", "start": 0, "end": 50_000}]
    code, _, err = run_cli([*args[:3], "CHROMOSOME_I:0-60000", *args[4:]], capsys)
    assert_one_line_error(code, err, str(out), "other data or settings")

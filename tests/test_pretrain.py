"""Public pretraining and the Markov prior: contexts, the baseline exactly, exclusions, resume, the CLI."""

from __future__ import annotations

import hashlib
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fedgenome.configs.errors import ConfigError, IncompatibleModelError
from fedgenome.configs.schema import Preset, Region
from fedgenome.shared.checkpoint import load_checkpoint
from fedgenome.shared.corpus import WindowStream, read_corpus
from fedgenome.shared.datasets import read_fasta_records, tile_windows
from fedgenome.shared.fetch import DataPaths
from fedgenome.shared.markov_prior import MarkovPrior, build_model, offset
from fedgenome.shared.model import GenomeLM
from fedgenome.shared.pretrain import PretrainSettings, pretrain
from fedgenome.shared.reference_markov import reference_baseline
from fedgenome.shared.tokenizer import A, N, decode, encode, reverse_complement_ids
from fedgenome.shared.train import split_batch
from tests.conftest import CE_HOLDOUT
from tests.test_cli import assert_one_line_error, run_cli


def longest_context(seq: str, t: int, order: int) -> str:
    """The bases ending at t that the prior conditions on, by a direct scan."""
    ctx = ""
    while len(ctx) < order and t - len(ctx) >= 0 and seq[t - len(ctx)] in "ACGT":
        ctx = seq[t - len(ctx)] + ctx
    return ctx


def row_of(ctx: str) -> int:
    """Row of a context: the shorter ones first, the nearest base (the last) most significant."""
    code = sum("ACGT".index(b) * 4**i for i, b in enumerate(ctx))
    return offset(len(ctx)) + code


def write_fasta(path: Path, records: dict[str, str]) -> Path:
    path.write_text("".join(f">{name}\n{seq}\n" for name, seq in records.items()))
    return path


@pytest.mark.data
def test_prior_contexts_match_a_direct_scan(small_prior: MarkovPrior) -> None:
    rng = np.random.default_rng(0)
    seq = "".join(rng.choice(list("ACGTACGTACGTN"), size=300))
    rows = small_prior.contexts(torch.from_numpy(encode(seq).astype(np.int64)))
    k = small_prior.order
    assert rows.tolist() == [row_of(longest_context(seq, t, k)) for t in range(len(seq))]
    every = {row_of("".join(c)) for j in range(k + 1) for c in itertools.product("ACGT", repeat=j)}
    assert every == set(range(len(small_prior.table)))


@pytest.mark.data
def test_the_prior_is_exactly_the_best_k_baseline(small_prior: MarkovPrior, data_paths: DataPaths,
                                                  tmp_path_factory: pytest.TempPathFactory) -> None:
    baseline = reference_baseline(data_paths.ce_fasta, exclude=[CE_HOLDOUT], max_order=5,
                                  cache=tmp_path_factory.getbasetemp() / "cache0")
    seqs = read_fasta_records(data_paths.ce_fasta)
    windows = tile_windows(seqs, [CE_HOLDOUT], window=128, count=16, max_n_fraction=0.5)
    x, y = split_batch(windows)
    logp = small_prior.log_probs(x)
    assert torch.allclose(logp.exp().sum(-1), torch.ones(logp.shape[:-1]), atol=1e-5)
    ok = (y >= A) & (y <= A + 3)
    picked = logp.gather(-1, (y.clamp(A, A + 3) - A).unsqueeze(-1)).squeeze(-1)
    bits = float(-picked[ok].sum() / ok.sum() / math.log(2))
    assert bits == pytest.approx(baseline.model.bits_per_base(windows), abs=1e-5)


@pytest.mark.data
def test_a_silent_model_is_its_prior_and_the_prior_is_not_a_weight(tiny: Preset,
                                                                   small_prior: MarkovPrior) -> None:
    config = tiny.model.model_copy(update={"markov_prior": True})
    model = GenomeLM(config)
    with pytest.raises(IncompatibleModelError, match="none is attached"):
        model(torch.randint(A, N + 1, (1, 8)))
    model.attach_prior(small_prior)
    model.silence()
    idx = torch.randint(A, N + 1, (2, 40))
    logp = model(idx).log_softmax(-1)[..., A : A + 4]
    assert torch.allclose(logp, small_prior.log_probs(idx), atol=1e-4)
    assert not any(t.numel() == small_prior.table.numel() for t in model.state_dict().values())


@pytest.mark.data
def test_weights_are_refused_with_another_prior(tiny: Preset, data_paths: DataPaths,
                                                tmp_path: Path) -> None:
    config = tiny.model.model_copy(update={"markov_prior": True})
    with pytest.raises(IncompatibleModelError, match="trained with prior 0123"):
        build_model(config, reference=data_paths.reference, exclude=[], fingerprint="0123")
    with pytest.raises(ConfigError, match="no reference"):
        build_model(config, reference=None, exclude=[])


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


@pytest.mark.data
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


@pytest.mark.data
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

"""Training pieces: schedule, Markov baseline, checkpoints, held-out evaluation, variant scores."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch

from fedgenome.configs.errors import IncompatibleModelError, InputFileError
from fedgenome.configs.schema import Preset, Region, TrainConfig
from fedgenome.shared.checkpoint import load_checkpoint, save_checkpoint
from fedgenome.shared.datasets import tile_windows
from fedgenome.shared.genomes import Reference
from fedgenome.shared.markov import MarkovBaseline
from fedgenome.shared.markov_fields import BaselineScore
from fedgenome.shared.markov_prior import build_model
from fedgenome.shared.model import GenomeLM
from fedgenome.shared.reference_markov import reference_baseline
from fedgenome.shared.scoring import score_variants
from fedgenome.shared.tokenizer import encode
from fedgenome.shared.train import evaluate, lr_at


def test_warmup_then_cosine_to_the_floor() -> None:
    cfg = TrainConfig(steps=100, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [lr_at(s, cfg) for s in range(101)]
    assert lrs[0] == pytest.approx(1e-4)
    assert lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))
    assert lrs[100] == pytest.approx(1e-4)


def test_markov_baseline_learns_structure_and_is_near_two_bits_on_noise() -> None:
    periodic = torch.from_numpy(encode("ACGGT" * 400).astype("int64"))[None]
    markov = MarkovBaseline(3)
    markov.update(periodic)
    assert markov.bits_per_base(periodic) < 0.1
    noise = torch.randint(5, 9, (8, 4000))
    uniform = MarkovBaseline(3)
    uniform.update(noise)
    assert abs(uniform.bits_per_base(noise) - 2.0) < 0.05


def test_markov_state_round_trips() -> None:
    windows = torch.randint(5, 10, (4, 300))
    markov = MarkovBaseline(4)
    markov.update(windows)
    again = MarkovBaseline.from_state(markov.state())
    assert again.order == 4
    assert again.bits_per_base(windows) == markov.bits_per_base(windows)


def test_checkpoint_round_trip_gives_identical_outputs(tiny: Preset, tmp_path: Path) -> None:
    model = GenomeLM(tiny.model).eval()
    save_checkpoint(tmp_path / "ck", model, meta={"note": "x"})
    loaded = load_checkpoint(tmp_path / "ck")
    x = torch.randint(5, 10, (2, 64))
    assert torch.equal(model(x), loaded.model.eval()(x))
    assert loaded.meta == {"note": "x"}
    assert not list(tmp_path.glob(".ck.*"))  # no temporary directory left behind


def test_checkpoint_of_another_shape_is_refused(tiny: Preset, tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "ck", GenomeLM(tiny.model), meta={})
    config = json.loads((tmp_path / "ck" / "config.json").read_text())
    config["model"]["d_model"] = 32
    (tmp_path / "ck" / "config.json").write_text(json.dumps(config))
    with pytest.raises(IncompatibleModelError, match=r"has shape .* the model expects"):
        load_checkpoint(tmp_path / "ck")


def test_damaged_checkpoint_is_refused(tiny: Preset, tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "ck", GenomeLM(tiny.model), meta={})
    (tmp_path / "ck" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(InputFileError, match="unreadable safetensors"):
        load_checkpoint(tmp_path / "ck")


@pytest.mark.data
def test_trained_baseline_beats_the_untrained_model(tiny_checkpoint: Path, tiny: Preset) -> None:
    meta = load_checkpoint(tiny_checkpoint).meta
    assert meta["sites"] == ["hospital-ceu", "hospital-gbr-fin", "hospital-tsi"]
    assert meta["holdout"] == [{"contig": "20", "start": 58_025_520, "end": 63_025_520}]
    assert 1.8 < meta["heldout_bits_per_base"] < 2.0  # below log2(4) = 2 after a few steps
    markov = BaselineScore.from_json(meta)  # the public reference's best-k baseline, same windows
    holdout = [Region(**r) for r in meta["holdout"]]
    windows = tile_windows({"20": Reference(Path(meta["reference"])).tokens("20")}, holdout,
                           window=tiny.data.window, count=tiny.data.eval_windows,
                           max_n_fraction=tiny.data.max_n_fraction)
    baseline = reference_baseline(Path(meta["reference"]), exclude=holdout)
    assert markov == baseline.score(windows) and 1 <= markov.order <= 12
    # The untrained model, built as the run builds its start (the same prior, fresh weights), on the
    # same held-out windows: the trained checkpoint scores fewer bits per base.
    cpu = torch.device("cpu")
    trained = evaluate(load_checkpoint(tiny_checkpoint).model, windows, device=cpu).bits_per_base
    assert trained == pytest.approx(meta["heldout_bits_per_base"], abs=1e-3)
    torch.manual_seed(1)
    untrained = build_model(tiny.model, reference=Path(meta["reference"]), exclude=holdout)
    assert trained < evaluate(untrained, windows, device=cpu).bits_per_base


@pytest.mark.data
def test_variant_scores_are_alt_minus_ref(tiny_checkpoint: Path, sites_dir: Path) -> None:
    ckpt = load_checkpoint(tiny_checkpoint)
    ref = Reference(Path(ckpt.meta["reference"]))
    vcf = sites_dir / "unseen-ibs" / "patients.vcf.gz"
    scores = []
    for score in score_variants(ckpt.model, ref, vcf, window=64, device=torch.device("cpu")):
        scores.append(score)
        if len(scores) == 10:
            break
    assert len(scores) == 10
    for s in scores:
        assert s.ref == "ACGT"[int(ref.tokens("20")[s.pos - 1]) - 5]
        assert s.ref != s.alt and math.isfinite(s.delta)
        assert s.delta == pytest.approx(s.ll_alt - s.ll_ref)
    assert any(s.delta != 0 for s in scores)


@pytest.mark.data
def test_the_explained_terms_of_a_variant_score_sum_to_its_delta(tiny_checkpoint: Path,
                                                                sites_dir: Path) -> None:
    ckpt = load_checkpoint(tiny_checkpoint)
    ref = Reference(Path(ckpt.meta["reference"]))
    vcf = sites_dir / "unseen-ibs" / "patients.vcf.gz"
    window = 64
    scores = list(itertools.islice(score_variants(ckpt.model, ref, vcf, window=window,
                                                  device=torch.device("cpu"), top=window), 5))
    assert len(scores) == 5
    for s in scores:
        assert s.top is not None and len(s.top) == window - 1  # every predicted position, once
        terms = dict(s.top)
        assert sum(terms.values()) == pytest.approx(s.delta, abs=1e-3)
        assert all(term == 0.0 for pos, term in terms.items() if pos < s.pos)  # causal
        assert terms[s.pos] != 0.0  # the variant's own base is predicted differently
        sizes = [abs(term) for _, term in s.top]
        assert sizes == sorted(sizes, reverse=True)
        assert s.row().split("\t")[-1].startswith(f"{s.top[0][0]}:")
    plain = next(score_variants(ckpt.model, ref, vcf, window=window, device=torch.device("cpu")))
    assert plain.top is None and plain.delta == pytest.approx(scores[0].delta)

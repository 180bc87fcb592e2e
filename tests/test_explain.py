"""``fedgenome explain``: saturation mutagenesis of a real chr20 window with a trained tiny model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedgenome.configs.errors import ConfigError
from fedgenome.experiments.explain import Variant, explain
from fedgenome.shared.checkpoint import load_checkpoint
from fedgenome.shared.explain import DEFAULT_HORIZON, mutants, next_base_probabilities, saturation_mutagenesis
from fedgenome.shared.fetch import DataPaths
from fedgenome.shared.genomes import Reference
from fedgenome.shared.scoring import sequence_log_likelihood
from fedgenome.shared.tokenizer import NUCLEOTIDES, decode
from tests.helpers import assert_one_line_error, run_cli

pytestmark = pytest.mark.data
CPU = torch.device("cpu")
START, LENGTH = 60_000_000, 48


@pytest.fixture(scope="module")
def window(data_paths: DataPaths) -> np.ndarray:
    tokens = Reference(data_paths.reference).tokens("20")[START:START + LENGTH].copy()
    assert set(tokens) <= set(NUCLEOTIDES)  # a window without N
    return tokens


def test_every_substitution_changes_the_score_it_would_alone(tiny_checkpoint: Path,
                                                             window: np.ndarray) -> None:
    model = load_checkpoint(tiny_checkpoint).model
    got = saturation_mutagenesis(model, window, contig="20", start=START, device=CPU, horizon=None,
                                 batch_tokens=7 * LENGTH)
    assert got.delta.shape == (LENGTH, 4) and got.importance.shape == (LENGTH,)
    reference_column = [NUCLEOTIDES.index(t) for t in window]
    assert np.all(got.delta[np.arange(LENGTH), reference_column] == 0.0)
    assert np.count_nonzero(got.delta) == 3 * LENGTH  # every real substitution moves the score
    windows, where = mutants(window)
    rng = np.random.default_rng(0)
    for row in rng.choice(len(where), size=12, replace=False):  # each scored alone, unbatched
        alone = float(sequence_log_likelihood(model, torch.from_numpy(windows[row:row + 1]), device=CPU)[0])
        i, b = where[row]
        assert got.delta[i, b] == pytest.approx(alone - got.ll, abs=1e-4)
    assert got.sequence == decode(window)


def test_a_horizon_rescores_the_bases_up_to_it_and_no_further(tiny_checkpoint: Path,
                                                              window: np.ndarray) -> None:
    """With horizon h, a substitution at i is scored as the window cut after base i + h would be."""
    model = load_checkpoint(tiny_checkpoint).model
    h = 5
    got = saturation_mutagenesis(model, window, contig="20", start=START, device=CPU, horizon=h)
    exact = saturation_mutagenesis(model, window, contig="20", start=START, device=CPU, horizon=None)
    windows, where = mutants(window)
    for row in np.random.default_rng(1).choice(len(where), size=12, replace=False):
        i, b = where[row]
        cut = slice(0, i + h + 1)
        pair = torch.from_numpy(np.stack([windows[row, cut], window[cut].astype(np.int64)]))
        mutated, reference = sequence_log_likelihood(model, pair, device=CPU).tolist()
        assert got.delta[i, b] == pytest.approx(mutated - reference, abs=1e-4)
    assert got.ll == pytest.approx(exact.ll)
    tail = [(i, b) for i, b in where if i >= LENGTH - 1 - h]  # nothing lies past the horizon there
    assert all(got.delta[i, b] == pytest.approx(exact.delta[i, b], abs=1e-4) for i, b in tail)
    assert not np.allclose(got.delta, exact.delta, atol=1e-3)  # earlier ones leave a part out


def test_a_base_never_read_before_the_last_moves_only_its_own_prediction(tiny_checkpoint: Path,
                                                                       window: np.ndarray) -> None:
    model = load_checkpoint(tiny_checkpoint).model
    got = saturation_mutagenesis(model, window, contig="20", start=START, device=CPU)
    probs = next_base_probabilities(model, window, device=CPU)
    last = LENGTH - 1  # causal: changing the last base changes only log p(last base | prefix)
    expected = np.log(probs[last]) - np.log(probs[last, NUCLEOTIDES.index(window[last])])
    assert got.delta[last] == pytest.approx(expected, abs=1e-4)


def test_explain_a_variant_writes_its_files(tiny_checkpoint: Path, window: np.ndarray,
                                            tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pos = START + 20 + 1  # 1-based
    ref = decode(window[20:21])
    alt = next(b for b in "ACGT" if b != ref)
    code, out, err = run_cli(["explain", str(tiny_checkpoint), "--variant", f"20:{pos}:{ref}:{alt}",
                              "--window", "32", "--out", str(tmp_path / "ex"), "--device", "cpu"], capsys)
    assert code == 0, err
    rows = (tmp_path / "ex" / "mutagenesis.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["contig", "pos", "ref", "delta_A", "delta_C", "delta_G", "delta_T",
                                   "importance"] and len(rows) == 33
    shift = [r.split("\t") for r in (tmp_path / "ex" / "shift.tsv").read_text().splitlines()[1:]]
    at = next(k for k, r in enumerate(shift) if r[1] == str(pos))
    assert all(abs(float(v)) < 1e-6 for r in shift[1:at + 1] for v in r[3:])  # causal: nothing before
    assert any(abs(float(v)) > 1e-4 for v in shift[at + 1][3:])  # the base after ALT is predicted anew
    assert (tmp_path / "ex" / "mutagenesis.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "most important positions" in out
    code, out, _ = run_cli(["explain", "--help"], capsys)
    assert code == 0 and f"(default: {DEFAULT_HORIZON})" in " ".join(out.split())


def test_a_wrong_ref_or_a_bad_variant_is_one_line(tiny_checkpoint: Path, window: np.ndarray,
                                                  tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wrong = next(b for b in "ACGT" if b != decode(window[0:1]))
    code, _, err = run_cli(["explain", str(tiny_checkpoint), "--variant", f"20:{START + 1}:{wrong}:"
                            f"{decode(window[0:1])}", "--window", "16", "--out", str(tmp_path / "x"),
                            "--no-plot"], capsys)
    assert_one_line_error(code, err, f"REF {wrong} at 20:{START + 1} disagrees")
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError, match="only SNVs"):
        Variant.parse("20:100:AT:G")
    with pytest.raises(ConfigError, match="one of --region"):
        explain(tiny_checkpoint, out=tmp_path / "y")

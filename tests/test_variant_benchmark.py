"""``fedgenome benchmark variants``: rank statistics, the table's checks, a planted signal found."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from fedgenome.experiments.benchmark_table import read_table
from fedgenome.shared.checkpoint import load_checkpoint
from fedgenome.shared.fetch import DataPaths
from fedgenome.shared.genomes import Reference
from fedgenome.shared.rank_stats import auroc, bootstrap, spearman
from fedgenome.shared.scoring import sequence_log_likelihood, snv_windows
from fedgenome.shared.tokenizer import decode
from tests.helpers import assert_one_line_error, run_cli

START, LENGTH = 60_000_000, 120  # a window of the held-out region, read from the real reference


def test_spearman_is_scipys_with_ties() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 6, 50).astype(float), rng.normal(size=50)
    y[:10] = y[10:20]  # ties in both
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    assert np.isnan(spearman(np.ones(5), np.arange(5.0)))


def test_auroc_counts_ordered_pairs_and_half_the_ties() -> None:
    labels = np.array([False, False, True, True])
    assert auroc(np.array([1.0, 2.0, 3.0, 4.0]), labels) == 1.0
    assert auroc(np.array([4.0, 3.0, 2.0, 1.0]), labels) == 0.0
    assert auroc(np.zeros(4), labels) == 0.5
    assert np.isnan(auroc(np.arange(3.0), np.zeros(3, dtype=bool)))


def test_bootstrap_interval_holds_a_strong_signal_and_covers_zero_without_one() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=200)
    strong = bootstrap(spearman, x, x + 0.5 * rng.normal(size=200), resamples=300)
    none = bootstrap(spearman, x, rng.normal(size=200), resamples=300)
    assert strong.low <= strong.value <= strong.high and strong.low > 0.6
    assert none.low < 0 < none.high and none.n == 200


def write(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.mark.parametrize(("rows", "flags", "needles"), [
    (["ACGT\t1"], ["--value-column", "effect"], ("--value-column 'effect'", "columns: seq, y")),
    (["ACGT\tbig", "AC\t1", "AG\t2"], [], ("row 1", "'big' is not a number")),
    (["ACGT\t1", "20:5:A:G\t2", "AC\t3"], [], ("mixes DNA sequences and SNVs",)),
    (["ACXT\t1"], [], ("row 1", "neither a DNA sequence")),
    (["ACGT\t1\tmaybe", "AC\t2\t0", "AG\t3\t1"], ["--label-column", "hit"], ("'maybe' is not a binary",)),
    (["ACGT\tNA", "AC\t2", "AG\t"], [], ("1 row(s) with a value",)),
])
def test_a_bad_table_is_one_line_naming_row_and_column(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       rows: list[str], flags: list[str],
                                                       needles: tuple[str, ...]) -> None:
    header = "seq\ty\thit" if any(r.count("\t") == 2 for r in rows) else "seq\ty"
    table = write(tmp_path / "t.tsv", header, rows)
    args = ["benchmark", "variants", str(table), "-m", str(tmp_path), "--sequence-column", "seq",
            "--value-column", "y", *flags]
    code, _, err = run_cli(args, capsys)
    assert_one_line_error(code, err, *needles)


def test_rows_without_a_value_are_skipped_and_counted(tmp_path: Path) -> None:
    table = write(tmp_path / "t.csv", "seq,y", ["ACGT,1", "acg,NA", "AC,", "AG,2.5", "AT,-1"])
    got = read_table(table, sequence_column="seq", value_column="y")
    assert got.items == ("ACGT", "AG", "AT") and got.rows == (1, 4, 5) and got.skipped == 2
    assert got.values.tolist() == [1.0, 2.5, -1.0] and got.kind == "sequence"


@pytest.fixture(scope="module")
def mutated(data_paths: DataPaths, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One real window mutated at 0-60% of its positions: value = the fraction left intact, and the
    same values shuffled. A DNA model must rank the less mutated sequences as more likely."""
    window = Reference(data_paths.reference).tokens("20")[START : START + LENGTH].copy()
    rng = np.random.default_rng(2)
    rows, values = [], []
    for i in range(40):
        fraction = 0.6 * i / 39
        seq = window.copy()
        hit = rng.choice(LENGTH, round(fraction * LENGTH), replace=False)
        seq[hit] = rng.integers(5, 9, len(hit))  # a random base (maybe the same one)
        rows.append(decode(seq))
        values.append(1 - fraction)
    root = tmp_path_factory.mktemp("planted")
    planted = write(root / "planted.tsv", "sequence\tintact\tlow",
                    [f"{s}\t{v:.4f}\t{int(v < 0.7)}" for s, v in zip(rows, values, strict=True)])
    shuffled = write(root / "shuffled.tsv", "sequence\tintact",
                     [f"{s}\t{v:.4f}" for s, v in zip(rows, rng.permutation(values), strict=True)])
    return planted, shuffled


@pytest.mark.data
def test_a_planted_signal_is_recovered_and_shuffled_values_give_none(
        tiny_checkpoint: Path, mutated: tuple[Path, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    planted, shuffled = mutated
    base = ["-m", str(tiny_checkpoint), "--sequence-column", "sequence", "--value-column", "intact",
            "--resamples", "300", "--json"]
    code, out, _ = run_cli(["benchmark", "variants", str(planted), *base, "--label-column", "low",
                            "--out", str(tmp_path / "p")], capsys)
    assert code == 0
    got = json.loads(out)["scorers"]
    for name in ("model", "markov"):
        assert got[name]["spearman"]["value"] > 0.6 and got[name]["spearman"]["low"] > 0.3, got
        assert got[name]["auroc"]["value"] < 0.25, got  # the heavily mutated score lower
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["benchmark.json", "benchmark.png",
                                                                   "scores.tsv"]
    code, out, _ = run_cli(["benchmark", "variants", str(shuffled), *base, "--out",
                            str(tmp_path / "s"), "--no-plot"], capsys)
    assert code == 0
    for name, result in json.loads(out)["scorers"].items():
        rho = result["spearman"]
        assert abs(rho["value"]) < 0.3 and rho["low"] < 0 < rho["high"], (name, rho)


@pytest.mark.data
def test_sequences_in_place_of_a_region_score_zero_for_the_reference_itself(
        tiny_checkpoint: Path, data_paths: DataPaths, mutated: tuple[Path, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    planted, _ = mutated
    code, _, _ = run_cli(["benchmark", "variants", str(planted), "-m", str(tiny_checkpoint),
                          "--sequence-column", "sequence", "--value-column", "intact",
                          "--flank-fasta", str(data_paths.reference),
                          "--flank-region", f"20:{START}-{START + LENGTH}", "--resamples", "100",
                          "--no-plot", "--out", str(tmp_path)], capsys)
    assert code == 0
    lines = (tmp_path / "scores.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["row", "item", "value", "model", "markov", "random"]
    first = lines[1].split("\t")  # row 1: nothing mutated, the region's own sequence
    assert first[2] == "1" and [float(v) for v in first[3:]] == [0.0, 0.0, 0.0]
    most = np.array([[float(v) for v in line.split("\t")[3:5]] for line in lines[-10:]])
    assert np.all(most.mean(axis=0) < 0), most  # model and baseline: the most mutated score lower


@pytest.mark.data
def test_variant_rows_score_alt_minus_ref_of_the_centred_window(
        tiny_checkpoint: Path, data_paths: DataPaths, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    labels = tmp_path / "labels.tsv"
    code, _, _ = run_cli(["data", "variant-labels", "--out", str(labels)], capsys)
    assert code == 0
    head = labels.read_text().splitlines()[:13]
    assert head[0].split("\t") == ["variant", "train_af", "train_alleles", "unseen_carriers", "common"]
    table = write(tmp_path / "few.tsv", head[0], head[1:])
    code, _, _ = run_cli(["benchmark", "variants", str(table), "-m", str(tiny_checkpoint),
                          "--sequence-column", "variant", "--value-column", "train_af",
                          "--label-column", "common", "--resamples", "100", "--no-plot",
                          "--out", str(tmp_path / "out")], capsys)
    assert code == 0
    ckpt = load_checkpoint(tiny_checkpoint)
    reference = Reference(data_paths.reference)
    for line in (tmp_path / "out" / "scores.tsv").read_text().splitlines()[1:4]:
        cells = line.split("\t")
        contig, pos, ref, alt = cells[1].split(":")
        _, ref_win, alt_win = snv_windows(reference, contig, int(pos), ref, alt,
                                          window=ckpt.meta["data"]["window"], source=table)
        ll = sequence_log_likelihood(ckpt.model, torch.from_numpy(np.stack([ref_win, alt_win])),
                                     device=torch.device("cpu"))
        assert float(cells[4]) == pytest.approx(float(ll[1] - ll[0]), abs=1e-4)

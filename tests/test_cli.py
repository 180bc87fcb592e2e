"""The command line: real commands end to end, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fedgenome.shared.fetch import DataPaths
from tests.helpers import assert_one_line_error, run_cli


def _bits(out: str, label: str) -> float:
    """The bits-per-base cell of the table row that starts with ``label``."""
    row = next(line for line in out.splitlines() if line.strip("│ ").startswith(label))
    return float(re.findall(r"\d\.\d{4}", row)[0])


def assert_baseline_beside_model(out: str) -> None:
    """The best-k baseline's row, its no-privacy-cost note, and the difference to the model's row."""
    flat = " ".join(out.split())
    order = re.search(r"Markov baseline: order (\d+) and (\S+) smoothing picked on a validation slice", flat)
    assert order and 1 <= int(order.group(1)) <= 12, out
    assert "costs no privacy: counted on the public reference only" in flat
    model, markov = _bits(out, "model"), _bits(out, "best-k Markov")
    diff = re.search(r"model - baseline: ([+-]\d\.\d{4}) bits per base", flat)
    assert diff and float(diff.group(1)) == pytest.approx(model - markov, abs=2e-4), out


@pytest.mark.data
def test_eval_prints_model_and_markov_bits(tiny_checkpoint: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["eval", str(tiny_checkpoint), "--device", "cpu"], capsys)
    assert code == 0
    assert "20:58025520-63025520" in out
    assert_baseline_beside_model(out)


@pytest.mark.data
def test_eval_on_a_fasta(tiny_checkpoint: Path, data_paths: DataPaths,
                         capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["eval", str(tiny_checkpoint), "--fasta", str(data_paths.mt_fasta)], capsys)
    assert code == 0 and "MT-human.fa" in out
    assert_baseline_beside_model(out)


@pytest.mark.data
def test_eval_without_the_reference_still_scores_the_model(tiny_checkpoint: Path, data_paths: DataPaths,
                                                            tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    moved = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint, moved)
    config = json.loads((moved / "config.json").read_text())
    config["meta"]["reference"] = str(tmp_path / "gone.fa.gz")
    (moved / "config.json").write_text(json.dumps(config))
    code, out, _ = run_cli(["eval", str(moved), "--fasta", str(data_paths.mt_fasta)], capsys)
    flat = " ".join(out.split())
    assert code == 0 and "MT-human.fa" in out and "best-k Markov" not in out
    assert f"no Markov baseline: the checkpoint's reference {tmp_path / 'gone.fa.gz'} is not here" in flat


@pytest.mark.data
def test_score_writes_a_tsv(tiny_checkpoint: Path, sites_dir: Path, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    out_tsv = tmp_path / "scores.tsv"
    vcf = sites_dir / "unseen-ibs" / "patients.vcf.gz"
    code, _, _ = run_cli(["score", str(tiny_checkpoint), str(vcf), "--out", str(out_tsv),
                          "--window", "32", "--explain", "3"], capsys)
    assert code == 0
    lines = out_tsv.read_text().splitlines()
    assert lines[0].split("\t") == ["chrom", "pos", "id", "ref", "alt", "ll_ref", "ll_alt", "delta",
                                    "top_positions"]
    assert len(lines) > 1000
    assert all(len(line.split("\t")[-1].split(",")) == 3 for line in lines[1:])


@pytest.mark.data
@pytest.mark.parametrize(("fasta", "needles"), [(">x\nACGT?ACGT\n", ("record 'x'", "IUPAC")),
                                                (">x\n>y\nACGT\n", ("record 'x' is empty",))],
                         ids=["not-a-base", "empty-record"])
def test_a_bad_fasta_is_one_line_naming_the_file_and_record(tiny_checkpoint: Path, tmp_path: Path, fasta: str,
                                                            needles: tuple[str, ...],
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.fa"
    bad.write_text(fasta)
    code, _, err = run_cli(["eval", str(tiny_checkpoint), "--fasta", str(bad)], capsys)
    assert_one_line_error(code, err, str(bad), *needles)


@pytest.mark.data
def test_vcf_ref_mismatch_is_one_line_and_writes_nothing(
        tiny_checkpoint: Path, data_paths: DataPaths, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from fedgenome.shared.genomes import Reference
    seq = Reference(data_paths.reference).tokens("20")
    good = "ACGT"[int(seq[30_000_000]) - 5]
    wrong = next(b for b in "ACGT" if b != "ACGT"[int(seq[30_000_100]) - 5])
    vcf = tmp_path / "v.vcf"
    vcf.write_text("##fileformat=VCFv4.2\n##contig=<ID=20,length=63025520>\n"
                   "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
                   f"20\t30000001\tok\t{good}\t{'T' if good != 'T' else 'A'}\t.\t.\t.\n"
                   f"20\t30000101\tbad\t{wrong}\t{'C' if wrong != 'C' else 'G'}\t.\t.\t.\n")
    out_tsv = tmp_path / "scores.tsv"
    code, _, err = run_cli(["score", str(tiny_checkpoint), str(vcf), "--out", str(out_tsv)], capsys)
    assert_one_line_error(code, err, f"REF {wrong} at 20:30000101 disagrees")
    assert not out_tsv.exists()
    assert not list(tmp_path.glob(".scores.tsv*"))


@pytest.mark.data
def test_missing_files_are_one_line(tiny_checkpoint: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["eval", str(tmp_path / "nope")], capsys)
    assert_one_line_error(code, err, "not a checkpoint")
    code, _, err = run_cli(["score", str(tiny_checkpoint), str(tmp_path / "nope.vcf")], capsys)
    assert_one_line_error(code, err, "nope.vcf: VCF not found")
    code, _, err = run_cli(["eval", str(tiny_checkpoint), "--fasta", str(tmp_path)], capsys)
    assert_one_line_error(code, err, "FASTA file not found")


@pytest.mark.data
def test_unknown_config_key_and_out_of_range_value(sites_dir: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[train]\nlearning_rate = 0.1\n")
    code, _, err = run_cli(["train", str(sites_dir), "--preset", "tiny", "--config", str(config),
                            "--out", str(tmp_path / "ck")], capsys)
    assert_one_line_error(code, err, "unknown key 'train.learning_rate'")
    code, _, err = run_cli(["train", str(sites_dir), "--preset", "tiny", "--steps", "0",
                            "--out", str(tmp_path / "ck")], capsys)
    assert_one_line_error(code, err, "key 'train.steps' = 0", "greater than 0")
    assert not (tmp_path / "ck").exists()


def test_not_a_site_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["train", str(tmp_path / "missing"), "--preset", "tiny"], capsys)
    assert_one_line_error(code, err, "not a site directory")


def test_real_process_exit_code_and_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "fedgenome", "eval", str(tmp_path)],
                          capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"},
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"fedgenome: error: {tmp_path}: not a checkpoint (needs config.json and model.safetensors); "
        "pass a directory written by 'fedgenome train'"]


@pytest.mark.data
def test_plaintext_needs_an_explicit_insecure(sites_dir: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["client", "start", "--site", str(sites_dir / "hospital-ceu"),
                            "--superlink", "127.0.0.1:9092"], capsys)
    assert_one_line_error(code, err, "TLS is on by default")
    code, _, err = run_cli(["server", "start", "--state", str(tmp_path / "s")], capsys)
    assert_one_line_error(code, err, "TLS is on by default")
    code, _, err = run_cli(["run", "--superlink", "127.0.0.1:9092", "--run-dir", str(tmp_path / "r"),
                            "--reference", str(tmp_path / "ref.fa")], capsys)
    assert_one_line_error(code, err, "TLS is on by default")


def test_version_and_short_help_like_flowers_cli(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    for flag in ("--version", "-V"):
        code, out, _ = run_cli([flag], capsys)
        assert code == 0 and out.strip() == f"fedgenome {version('fedgenome')}"
    for args in (["-h"], ["pki", "-h"], ["audit", "verify", "-h"]):
        code, out, _ = run_cli(args, capsys)
        assert code == 0 and "Usage: fedgenome" in out and "--help" in out, args

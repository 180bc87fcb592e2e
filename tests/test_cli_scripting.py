"""The CLI as operators script it: --json on stdout, help that keeps every text, flags anywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedgenome.cli import hoist_global_flags
from fedgenome.privacy.accounting import epsilon
from fedgenome.privacy.mechanism import Mechanism
from fedgenome.server import pki
from fedgenome.shared.markov_fields import BITS_KEY
from tests.helpers import run_cli

FEDGENOME = Path(sys.executable).with_name("fedgenome")


def test_privacy_json_matches_the_accountant(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["privacy", "epsilon", "--noise-multiplier", "1.5", "--sample-rate", "0.04",
                            "--steps", "2250", "--delta", "1e-5", "--json"], capsys)
    got = json.loads(out)
    assert code == 0 and got["accountant"] == "rdp" and got["steps"] == 2250
    assert got["epsilon"] == epsilon(history=[Mechanism(1.5, 0.04, 2250)], delta=1e-5)
    code, out, _ = run_cli(["privacy", "plan", "--target-epsilon", "2", "--delta", "1e-5",
                            "--sample-rate", "0.01", "--steps", "1000", "--json"], capsys)
    plan = json.loads(out)
    assert code == 0 and plan["target_epsilon"] == 2.0
    assert plan["epsilon"] == epsilon(history=[Mechanism(plan["noise_multiplier"], 0.01, 1000)], delta=1e-5)
    assert plan["epsilon"] <= 2.0


def test_privacy_json_writes_an_unbounded_epsilon_as_null(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["privacy", "epsilon", "--noise-multiplier", "0", "--sample-rate", "0.1",
                            "--steps", "10", "--delta", "1e-5", "--json"], capsys)
    assert code == 0 and json.loads(out)["epsilon"] is None  # JSON has no Infinity


def test_pki_check_json_lists_certificates_and_sites(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "pki"
    pki.init_pki(out_dir, hosts=("localhost", "127.0.0.1"))
    pki.add_site(out_dir, "hospital-a")
    code, out, _ = run_cli(["pki", "check", "--pki", str(out_dir), "--host", "127.0.0.1", "--json"], capsys)
    got = json.loads(out)
    assert code == 0
    assert got["server"]["hosts"] == ["localhost", "127.0.0.1"] and 364 < got["server"]["days_left"] <= 365
    assert got["ca"]["issuer"] == got["ca"]["subject"] == got["server"]["issuer"]
    assert [s["name"] for s in got["sites"]] == ["hospital-a"] and got["retired"] == 0
    assert got["sites"][0]["fingerprint"] == pki.check_pki(out_dir).sites[0].fingerprint


@pytest.mark.data
def test_eval_json_agrees_with_the_table(tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["eval", str(tiny_checkpoint), "--device", "cpu", "--windows", "8", "--json"],
                           capsys)
    got = json.loads(out)
    assert code == 0 and got["windows"] == 8 and got["where"] == "20:58025520-63025520"
    baseline = got["baseline"][BITS_KEY]
    assert got["model_minus_baseline"] == pytest.approx(got["model_bits_per_base"] - baseline)
    code, table, _ = run_cli(["eval", str(tiny_checkpoint), "--device", "cpu", "--windows", "8"], capsys)
    assert f"{got['model_bits_per_base']:.4f}" in table and f"{baseline:.4f}" in table


def test_help_keeps_argument_texts_and_brackets(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["score", "--help"], capsys)
    flat = " ".join(out.split())
    assert code == 0 and "VCF of variants to score (SNVs)." in flat  # click 8.5 drops it
    code, out, _ = run_cli(["pretrain", "-h"], capsys)
    assert code == 0 and "([model], [data], [train] tables)" in " ".join(out.replace("│", " ").split())


@pytest.mark.parametrize(("args", "hoisted"), [
    (["client", "start", "-v"], ["-v", "client", "start"]),
    (["run", "--quiet", "-c", "x=1"], ["--quiet", "run", "-c", "x=1"]),
    (["runs", "ls", "--", "-v"], ["runs", "ls", "--", "-v"]),  # after --, an argument
])
def test_verbosity_flags_may_follow_the_subcommand(args: list[str], hoisted: list[str]) -> None:
    assert hoist_global_flags(args) == hoisted


def test_quiet_after_the_subcommand_silences_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "site.toml").write_text('name = "hospital-a"\nkind = "fasta"\nfasta = "x.fa"\n')
    code, out, err = run_cli(["client", "keygen", "--site", str(tmp_path), "-q"], capsys)
    assert code == 0 and "public key" in out and err == ""


def test_shell_completion_offers_subcommands_and_options() -> None:
    env = {**os.environ, "_FEDGENOME_COMPLETE": "complete_bash", "COMP_WORDS": "fedgenome client start --s",
           "COMP_CWORD": "3"}
    done = subprocess.run([str(FEDGENOME)], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert {"--site", "--superlink"} <= set(done.stdout.split())

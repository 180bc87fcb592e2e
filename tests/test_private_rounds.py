"""Private rounds at a real site: cumulative epsilon across rounds and restarts, refused budgets."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from pathlib import Path

import pysam
import pytest
import torch

from fedgenome.configs.errors import ConfigError
from fedgenome.configs.schema import DPConfig, Preset, SitePrivacy, load_preset, load_site_manifest
from fedgenome.privacy import accounting
from fedgenome.privacy.mechanism import Mechanism
from fedgenome.privacy.site_state import open_ledger
from fedgenome.privacy.trainer import RoundOutcome, run_private_round
from fedgenome.shared.checkpoint import state_sha256
from fedgenome.shared.datasets import open_site
from fedgenome.shared.model import GenomeLM

CPU = torch.device("cpu")
DP = DPConfig(noise_multiplier=1.0, max_grad_norm=1.0, patients_per_step=8)

ROUND_SCRIPT = """
import json, sys, torch
from pathlib import Path
from fedgenome.configs.schema import DPConfig, load_preset, load_site_manifest
from fedgenome.privacy.site_state import open_ledger
from fedgenome.privacy.trainer import run_private_round
from fedgenome.shared.datasets import open_site
from fedgenome.shared.model import GenomeLM
site, rnd = Path(sys.argv[1]), int(sys.argv[2])
tiny = load_preset("tiny")
manifest = load_site_manifest(site)
data = open_site(site, tiny.data, seed=rnd, cache_dir=site / "state")
out = run_private_round(model=GenomeLM(tiny.model), dataset=data.dataset,
    ledger=open_ledger(site, manifest.name), site=manifest.privacy,
    dp=DPConfig(noise_multiplier=1.0, max_grad_norm=1.0, patients_per_step=8), train=tiny.train,
    noise_multiplier=1.0, round=rnd, local_steps=2, device=torch.device("cpu"))
print(json.dumps({"status": out.status, "epsilon": out.epsilon}))
"""


@pytest.fixture()
def site(sites_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the CEU site (its own key and ledger), sharing the real VCF."""
    src = sites_dir / "hospital-ceu"
    dst = tmp_path / "hospital-ceu"
    dst.mkdir()
    text = (src / "site.toml").read_text().replace('vcf = "patients.vcf.gz"',
                                                   f'vcf = "{src / "patients.vcf.gz"}"')
    (dst / "site.toml").write_text(text)
    return dst


def one_round(site: Path, tiny: Preset, rnd: int, *, budget: float | None = None,
              model: GenomeLM | None = None) -> RoundOutcome:
    manifest = load_site_manifest(site)
    privacy = manifest.privacy if budget is None else SitePrivacy(epsilon_budget=budget,
                                                                  delta=manifest.privacy.delta)
    return run_private_round(model=model or GenomeLM(tiny.model),
                             dataset=open_site(site, tiny.data, seed=rnd, cache_dir=site / "state").dataset,
                             ledger=open_ledger(site, manifest.name), site=privacy, dp=DP,
                             train=tiny.train, noise_multiplier=1.0, round=rnd, local_steps=2,
                             device=CPU)


@pytest.mark.data
def test_epsilon_grows_every_round_and_survives_a_process_restart(site: Path, tiny: Preset) -> None:
    first = one_round(site, tiny, 1)
    second = one_round(site, tiny, 2)
    proc = subprocess.run([sys.executable, "-c", ROUND_SCRIPT, str(site), "3"],
                          capture_output=True, text=True, timeout=300, check=True)
    third = json.loads(proc.stdout.strip().splitlines()[-1])
    assert first.status == second.status == third["status"] == "trained"
    assert 0 < first.epsilon < second.epsilon < third["epsilon"]
    ledger = open_ledger(site, "hospital-ceu")
    assert [e.round for e in ledger.entries] == [1, 2, 3]
    assert [e.epsilon for e in ledger.entries] == [first.epsilon, second.epsilon, third["epsilon"]]
    assert sum(m.steps for m in ledger.mechanisms()) == 6
    assert first.entry.update_sha256 is not None and len(first.entry.update_sha256) == 64


@pytest.mark.data
def test_a_round_past_the_budget_is_refused_and_produces_no_update(site: Path, tiny: Preset) -> None:
    trained = one_round(site, tiny, 1, budget=50.0)
    model = GenomeLM(tiny.model)
    before = state_sha256(model.state_dict())
    refused = one_round(site, tiny, 2, budget=trained.epsilon * 1.0001, model=model)
    assert refused.status == "refused"
    assert refused.update_sha256 is None and refused.steps == 0
    assert refused.planned_epsilon > refused.budget
    assert state_sha256(model.state_dict()) == before  # nothing was trained
    entries = open_ledger(site, "hospital-ceu").entries
    assert [e.status for e in entries] == ["trained", "refused"]
    assert entries[-1].epsilon == trained.epsilon  # a refusal spends nothing


@pytest.mark.data
def test_delta_must_be_below_one_over_patients(site: Path, tiny: Preset) -> None:
    manifest = load_site_manifest(site)
    with pytest.raises(ConfigError, match=r"privacy.delta = 0.02 is not below 1 / 85 patients"):
        run_private_round(model=GenomeLM(tiny.model),
                          dataset=open_site(site, tiny.data, seed=0).dataset,
                          ledger=open_ledger(site, manifest.name),
                          site=SitePrivacy(epsilon_budget=8.0, delta=0.02), dp=DP, train=tiny.train,
                          noise_multiplier=1.0, round=1, local_steps=1, device=CPU)


@pytest.mark.data
def test_cli_train_dp_spends_and_then_refuses(site: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from fedgenome.cli import main
    args = ["train", str(site), "--dp", "--preset", "tiny", "--steps", "4", "--noise-multiplier", "0.7"]
    tiny, manifest = load_preset("tiny"), load_site_manifest(site)
    # What each run spends, from the accountant: 4 steps at sigma 0.7, sampling the preset's patients
    # per step out of the site's patients; the k-th run brings the total to k times that mechanism.
    assert manifest.vcf is not None
    with pysam.VariantFile(str(site / manifest.vcf)) as vcf:
        patients = len(vcf.header.samples)
    step = Mechanism(noise_multiplier=0.7, sample_rate=tiny.privacy.patients_per_step / patients, steps=4)
    total = [accounting.epsilon(history=[step] * k, delta=1e-5, accountant=tiny.privacy.accountant)
             for k in range(1, 12)]
    allowed = sum(eps <= manifest.privacy.epsilon_budget for eps in total)
    assert 1 < allowed < len(total)
    with pytest.raises(SystemExit) as first:
        main([*args, "--out", str(tmp_path / "a")])
    out = " ".join(capsys.readouterr().out.split())
    assert first.value.code == 0
    spent = re.search(r"privacy: epsilon (\d+\.\d+) of budget 8 at delta 1e-05", out)
    assert spent and float(spent.group(1)) == pytest.approx(total[0], abs=0.01), out
    assert "best-k Markov" in out and "costs no privacy: counted on the public reference" in out
    codes: list[object] = []
    while len(codes) < len(total) and 3 not in codes:
        with pytest.raises(SystemExit) as run:
            main([*args, "--out", str(tmp_path / f"b{len(codes)}")])
        codes.append(run.value.code)
    err = capsys.readouterr().err.strip().splitlines()
    assert codes == [0] * (allowed - 1) + [3]
    assert err[-1].startswith("fedgenome: error: budget exhausted: this run would bring epsilon to")
    assert not (tmp_path / f"b{len(codes) - 1}").exists()
    entries = open_ledger(site, "hospital-ceu").entries
    assert [e.status for e in entries] == ["trained"] * len(codes) + ["refused"]
    assert [e.epsilon for e in entries[:-1]] == pytest.approx(total[:allowed], abs=1e-6)
    assert entries[-1].epsilon <= 8.0
    assert all(a.epsilon < b.epsilon for a, b in itertools.pairwise(entries[:-1]))

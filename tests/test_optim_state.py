"""A site's AdamW moments persist across rounds and restarts, one file per run; foreign state is refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric import ec
from torch.utils.data import Dataset

from fedgenome.client.site import SiteNode
from fedgenome.configs.errors import ConfigError, IncompatibleModelError, InputFileError, LedgerError
from fedgenome.configs.schema import DPConfig, FederationConfig, Preset, SitePrivacy
from fedgenome.privacy.keys import generate_key
from fedgenome.privacy.ledger import Ledger
from fedgenome.privacy.optim_state import OptimizerStore
from fedgenome.privacy.trainer import run_private_round
from fedgenome.shared import wire
from fedgenome.shared.model import GenomeLM
from fedgenome.shared.tokenizer import A, T
from fedgenome.shared.train import make_optimizer
from tests.helpers import copy_site

RUN_A, RUN_B = "a" * 32, "0123456789abcdef" * 2
CPU = torch.device("cpu")

LOAD_SCRIPT = """
import sys, torch
from pathlib import Path
from fedgenome.client.site import SiteNode
from fedgenome.configs.schema import FederationConfig, load_preset
from fedgenome.shared.model import GenomeLM
from fedgenome.shared.train import make_optimizer
site, key, out = SiteNode(Path(sys.argv[1])), sys.argv[2], sys.argv[3]
fed = FederationConfig(preset="tiny")
model = GenomeLM(load_preset("tiny").model)
optimizer = make_optimizer(model, load_preset("tiny").train)
saved_round = site.optimizer_store(fed, key).load_into(optimizer, model)
torch.save({"round": saved_round, "state": optimizer.state_dict()["state"]}, out)
"""


def fed(**extra: Any) -> FederationConfig:
    return FederationConfig(preset="tiny", num_server_rounds=4, local_steps=2, noise_multiplier=1.0,
                            patients_per_step=8, **extra)


def global_weights(tiny: Preset) -> wire.Arrays:
    torch.manual_seed(0)
    return wire.state_to_arrays(GenomeLM(tiny.model).state_dict())


def capture_saves(monkeypatch: pytest.MonkeyPatch) -> list[dict[int, dict[str, Any]]]:
    """Every optimizer state a round saves, copied from memory at the moment it is saved."""
    saved: list[dict[int, dict[str, Any]]] = []
    real = OptimizerStore.save

    def save(self: OptimizerStore, optimizer: torch.optim.Optimizer, model: torch.nn.Module, *,
             round: int) -> None:
        saved.append({i: {k: v.clone() for k, v in s.items()}
                      for i, s in optimizer.state_dict()["state"].items()})
        real(self, optimizer, model, round=round)

    monkeypatch.setattr(OptimizerStore, "save", save)
    return saved


@pytest.mark.data
def test_the_moments_a_round_leaves_are_what_a_new_process_loads(
        sites_dir: Path, tiny: Preset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saved = capture_saves(monkeypatch)
    site = copy_site(sites_dir, tmp_path, "hospital-ceu")
    SiteNode(site).train_round(global_weights(tiny), fed(), global_round=1, run_key=RUN_A)
    [left] = saved
    out = tmp_path / "loaded.pt"
    subprocess.run([sys.executable, "-c", LOAD_SCRIPT, str(site), RUN_A, str(out)], check=True,
                   capture_output=True, timeout=300)
    loaded = torch.load(out, weights_only=True)
    assert loaded["round"] == 1
    assert sorted(loaded["state"]) == sorted(left)
    assert len(left) == len(list(GenomeLM(tiny.model).parameters()))
    for i, state in left.items():
        assert set(loaded["state"][i]) == {"step", "exp_avg", "exp_avg_sq"}
        for name, tensor in state.items():
            assert torch.equal(loaded["state"][i][name], tensor), (i, name)  # exactly
        assert float(state["step"]) == 2.0 and state["exp_avg_sq"].abs().sum() > 0
    fresh = make_optimizer(GenomeLM(tiny.model), tiny.train)
    assert fresh.state_dict()["state"] == {}  # what every round started from before


@pytest.mark.data
def test_state_is_kept_per_run_across_skipped_rounds_and_not_kept_when_reset(
        sites_dir: Path, tiny: Preset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saved = capture_saves(monkeypatch)
    site = SiteNode(copy_site(sites_dir, tmp_path, "hospital-ceu"))
    weights = global_weights(tiny)
    site.train_round(weights, fed(), global_round=1, run_key=RUN_A)
    path_a = site.optimizer_store(fed(), RUN_A).path  # type: ignore[union-attr]
    after_one = path_a.read_bytes()
    site.train_round(weights, fed(), global_round=2, run_key=RUN_B)  # another run: its own file
    assert path_a.read_bytes() == after_one
    assert [float(s[0]["step"]) for s in saved] == [2.0, 2.0]
    site.train_round(weights, fed(), global_round=4, run_key=RUN_A)  # run A again, after a gap
    assert float(saved[-1][0]["step"]) == 4.0  # continued from round 1's moments
    site.train_round(weights, fed(optimizer_state="reset"), global_round=5, run_key=RUN_A)
    assert len(saved) == 3  # reset: nothing saved, nothing loaded
    assert sorted(p.name for p in path_a.parent.iterdir()) == [f"{RUN_B}-adamw.pt", f"{RUN_A}-adamw.pt"]


def _stepped(model: torch.nn.Module, preset: Preset) -> torch.optim.Optimizer:
    optimizer = make_optimizer(model, preset.train)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    return optimizer


def test_state_of_another_model_is_refused(tiny: Preset, tmp_path: Path) -> None:
    store = OptimizerStore.for_run(tmp_path, run_key=RUN_A, optimizer="adamw")
    model = GenomeLM(tiny.model)
    store.save(_stepped(model, tiny), model, round=3)
    again = GenomeLM(tiny.model)
    assert store.load_into(make_optimizer(again, tiny.train), again) == 3
    other = GenomeLM(tiny.model.model_copy(update={"d_model": 32}))
    with pytest.raises(IncompatibleModelError, match=f"{store.path}: .*remove the file"):
        store.load_into(make_optimizer(other, tiny.train), other)


def test_damaged_state_and_bad_run_keys_are_refused(tiny: Preset, tmp_path: Path) -> None:
    store = OptimizerStore.for_run(tmp_path, run_key=RUN_A, optimizer="adamw")
    store.path.parent.mkdir(parents=True)
    store.path.write_bytes(b"not a torch file")
    model = GenomeLM(tiny.model)
    with pytest.raises(InputFileError, match="unreadable optimizer state"):
        store.load_into(make_optimizer(model, tiny.train), model)
    for key in ("../../keys/x" + "0" * 20, "A" * 32, "a" * 31):
        with pytest.raises(ConfigError, match="is not 32 lowercase hex digits"):
            OptimizerStore.for_run(tmp_path, run_key=key, optimizer="adamw")


class _RandomPatients(Dataset[torch.Tensor]):
    def __len__(self) -> int:
        return 40

    def __getitem__(self, unit: int) -> torch.Tensor:
        return torch.randint(A, T + 1, (129,), generator=torch.Generator().manual_seed(unit))


def test_no_state_is_saved_when_the_ledger_entry_fails(tiny: Preset, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    key: ec.EllipticCurvePrivateKey = generate_key()
    ledger = Ledger(tmp_path / "ledger.jsonl", site="siteA", private_key=key)

    def broken(*args: Any, **kwargs: Any) -> None:
        raise LedgerError("disk full")

    monkeypatch.setattr(ledger, "append", broken)
    store = OptimizerStore.for_run(tmp_path, run_key=RUN_A, optimizer="adamw")
    with pytest.raises(LedgerError, match="disk full"):
        run_private_round(model=GenomeLM(tiny.model), dataset=_RandomPatients(), ledger=ledger,
                          site=SitePrivacy(epsilon_budget=50.0, delta=1e-5),
                          dp=DPConfig(noise_multiplier=1.0, patients_per_step=8), train=tiny.train,
                          noise_multiplier=1.0, round=1, local_steps=2, device=CPU,
                          optimizer_store=store)
    assert not store.path.exists()  # its steps are in no ledger: no later round may build on them

"""The pretrained checkpoint the project ships (``models/small``), which the demo starts from."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedgenome.configs.schema import FederationConfig, Region, load_preset
from fedgenome.models import shipped_checkpoint
from fedgenome.shared.checkpoint import load_checkpoint, load_initial
from fedgenome.shared.datasets import tile_windows
from fedgenome.shared.fetch import DataPaths, sha256_file
from fedgenome.shared.genomes import Reference
from fedgenome.shared.reference_markov import reference_baseline
from fedgenome.shared.train import evaluate


@pytest.mark.data
def test_the_shipped_checkpoint_loads_as_the_demos_start_and_beats_its_baseline(
        data_paths: DataPaths) -> None:
    path = shipped_checkpoint("small")
    assert path is not None, "models/small/ is missing"
    holdout = Region.parse(FederationConfig.model_fields["holdout"].default)
    preset = load_preset("small")
    # What the server does with the demo's initial checkpoint: same model config, same prior.
    initial = load_initial(path, model=preset.model, reference=data_paths.reference, exclude=[holdout])
    meta = load_checkpoint(path, reference=data_paths.reference, exclude=[holdout]).meta
    assert meta["pretrain"]["sources"][0]["sha256"] == sha256_file(data_paths.reference)
    assert [Region(**r) for r in meta["holdout"]] == [holdout]
    card = (path / "MODEL_CARD.md").read_text()
    assert meta["pretrain"]["command"] in card
    assert f"--exclude {holdout.contig}:{holdout.start}-{holdout.end}" in meta["pretrain"]["command"]
    ref = Reference(data_paths.reference)
    windows = tile_windows({holdout.contig: ref.tokens(holdout.contig)}, [holdout],
                           window=preset.data.window, count=16, max_n_fraction=preset.data.max_n_fraction)
    model_bits = evaluate(initial.model, windows, device=torch.device("cpu")).bits_per_base
    baseline = reference_baseline(data_paths.reference, exclude=[holdout]).score(windows)
    assert model_bits < baseline.bits_per_base
    assert Path(path / "model.safetensors").stat().st_size < 25 * 2**20

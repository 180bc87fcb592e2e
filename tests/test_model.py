"""The genome LM: shapes, causality, initial loss, Opacus compatibility, overfitting real DNA."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from opacus.validators import ModuleValidator

from fedgenome.configs.schema import Preset
from fedgenome.shared.fetch import DataPaths
from fedgenome.shared.genomes import Reference
from fedgenome.shared.model import GenomeLM
from fedgenome.shared.tokenizer import PAD
from fedgenome.shared.train import lm_loss, split_batch


def real_windows(data_paths: DataPaths, n: int, length: int, start: int = 30_000_000) -> torch.Tensor:
    seq = Reference(data_paths.reference).tokens("20")
    rows = [seq[start + i * length : start + (i + 1) * length] for i in range(n)]
    return torch.from_numpy(np.stack(rows).astype(np.int64))


def test_output_shape(tiny: Preset) -> None:
    model = GenomeLM(tiny.model)
    logits = model(torch.randint(5, 10, (3, 57)))
    assert logits.shape == (3, 57, tiny.model.vocab_size)


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_causal_every_position_ignores_the_future(tiny: Preset, norm: str) -> None:
    model = GenomeLM(tiny.model.model_copy(update={"norm": norm})).eval()
    x = torch.randint(5, 9, (2, 40))
    y = x.clone()
    y[:, 25:] = torch.randint(5, 9, (2, 15))
    assert torch.allclose(model(x)[:, :25], model(y)[:, :25], atol=1e-6)
    assert not torch.allclose(model(x)[:, 25:], model(y)[:, 25:])


@pytest.mark.data
@pytest.mark.parametrize("prior", [False, True])
def test_continuing_a_remembered_sequence_equals_reading_it_whole(tiny: Preset, small_prior: object,
                                                                  prior: bool) -> None:
    """Rows that replace a remembered sequence from different positions on get the logits of
    the whole edited sequences, through attention and both convolutions (and the Markov prior,
    whose context reaches back into the remembered bases)."""
    torch.manual_seed(0)
    model = GenomeLM(tiny.model.model_copy(update={"markov_prior": prior, "dropout": 0.0})).eval()
    if prior:
        model.attach_prior(small_prior)  # type: ignore[arg-type]
    for p in model.parameters():  # a trained-like head, so the network's part is not zero
        p.data.normal_(0.0, 0.2)
    seq = torch.randint(5, 9, (50,))
    seq[17] = 9  # an N in the remembered bases
    memory = model.remember(seq)
    starts = torch.tensor([0, 1, 3, 17, 18, 30, 41])
    rows = torch.randint(5, 9, (len(starts), 9))
    got = model.continue_from(memory, rows, starts)  # (B, 9, V)
    for b, s in enumerate(starts.tolist()):
        whole = torch.cat((seq[:s], rows[b]))
        expected = model(whole[None])[0, s:]
        assert torch.allclose(got[b], expected, atol=1e-4), s
    assert not torch.allclose(got[0], got[1], atol=1e-3)


@pytest.mark.data
def test_initial_loss_is_near_ln4_on_real_dna(tiny: Preset, data_paths: DataPaths) -> None:
    model = GenomeLM(tiny.model)
    x, y = split_batch(real_windows(data_paths, 8, 129))
    loss = lm_loss(model(x), y).item()
    assert abs(loss - math.log(4)) < 0.05


def test_only_opacus_supported_layers(tiny: Preset) -> None:
    model = GenomeLM(tiny.model)
    assert ModuleValidator.validate(model, strict=False) == []
    assert not list(model.buffers())


def test_per_sample_gradients_match_a_loop(tiny: Preset) -> None:
    torch.manual_seed(0)
    model = GenomeLM(tiny.model)
    reference = GenomeLM(tiny.model)
    reference.load_state_dict(model.state_dict())
    x, y = split_batch(torch.randint(5, 9, (3, 33)))
    gsm = GradSampleModule(model, loss_reduction="sum")
    lm_loss(gsm(x), y, reduction="sum").backward()
    for i in range(3):
        reference.zero_grad()
        lm_loss(reference(x[i : i + 1]), y[i : i + 1], reduction="sum").backward()
        for p, q in zip(model.parameters(), reference.parameters(), strict=True):
            assert torch.allclose(p.grad_sample[i], q.grad, atol=1e-5)


def test_padding_and_n_targets_are_ignored(tiny: Preset) -> None:
    windows = torch.tensor([[5, 6, 9, 7, PAD, PAD]])
    _, y = split_batch(windows)
    assert y.tolist() == [[6, -100, 7, -100, -100]]


@pytest.mark.data
def test_tiny_model_overfits_a_short_real_sequence(tiny: Preset, data_paths: DataPaths) -> None:
    torch.manual_seed(0)
    model = GenomeLM(tiny.model)
    x, y = split_batch(real_windows(data_paths, 4, 129))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = lm_loss(model(x), y).item()
    for _ in range(150):
        loss = lm_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < first / 2

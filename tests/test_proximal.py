"""FedProx at the site: mu * (w - w_global) joins the private gradient after clipping and noise."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedgenome.client.site import SiteNode
from fedgenome.configs.schema import DPConfig, FederationConfig, Preset
from fedgenome.privacy.engine import make_private, private_step
from fedgenome.privacy.proximal import add_proximal_term
from fedgenome.shared import wire
from fedgenome.shared.model import GenomeLM
from fedgenome.shared.tokenizer import A, T
from tests.helpers import copy_site, ledger_entries
from tests.test_dp_engine import Windows

CPU = torch.device("cpu")




def one_step(tiny: Preset, start: GenomeLM, batch: torch.Tensor, *, mu: float,
             drift: list[torch.Tensor]) -> GenomeLM:
    """One noise-free private step (clip 0.05) from ``start`` + ``drift``, FedProx anchored at ``start``."""
    model = GenomeLM(tiny.model)
    model.load_state_dict(start.state_dict())
    settings = DPConfig(noise_multiplier=0.0, max_grad_norm=0.05, patients_per_step=len(batch))
    setup = make_private(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                         dataset=Windows(batch), settings=settings, noise_multiplier=0.0)
    if mu:
        add_proximal_term(setup.optimizer.original_optimizer, mu=mu)  # anchor: ``start``
    with torch.no_grad():
        for p, d in zip(model.parameters(), drift, strict=True):
            p.add_(d)  # the site has moved away from the global model
    private_step(setup, batch, device=CPU)
    return model


def per_sample_norms(model: GenomeLM) -> torch.Tensor:
    return torch.stack([p.grad_sample.flatten(1).norm(dim=1) for p in model.parameters()]).norm(dim=0)


def test_clipping_is_untouched_and_the_term_joins_the_noised_gradient(tiny: Preset) -> None:
    torch.manual_seed(0)
    start = GenomeLM(tiny.model)
    batch = torch.randint(A, T + 1, (4, 65))
    drift = [0.01 * torch.randn_like(p) for p in start.parameters()]
    mu = 0.5
    plain = one_step(tiny, start, batch, mu=0.0, drift=drift)
    prox = one_step(tiny, start, batch, mu=mu, drift=drift)
    norms = per_sample_norms(plain)
    assert (norms > 0.05).all()  # every patient's gradient was clipped...
    assert torch.equal(norms, per_sample_norms(prox))  # ...by the same factor, with or without mu
    for a, b, d in zip(plain.parameters(), prox.parameters(), drift, strict=True):
        assert torch.equal(a.summed_grad, b.summed_grad)  # the clipped sum the noise is added to
        assert a.grad is not None and b.grad is not None
        assert torch.allclose(b.grad - a.grad, mu * d, atol=1e-6)  # then + mu (w - w_global)


@pytest.mark.data
def test_a_fedprox_round_stays_closer_to_the_global_model_at_the_same_privacy_cost(
        sites_dir: Path, tiny: Preset, tmp_path: Path) -> None:
    torch.manual_seed(0)
    global_ = wire.state_to_arrays(GenomeLM(tiny.model).state_dict())
    norms, entries = {}, {}
    for strategy in ("fedavg", "fedprox"):
        site = copy_site(sites_dir, tmp_path / strategy, "hospital-ceu")
        fed = FederationConfig(preset="tiny", num_server_rounds=2, local_steps=4,
                               noise_multiplier=1.0, patients_per_step=8, strategy=strategy,
                               proximal_mu=100.0)
        torch.manual_seed(1)  # the same DP noise in both rounds
        reply = SiteNode(site).train_round(global_, fed, global_round=1)
        assert reply.delta is not None
        norms[strategy] = sum(float((v.astype("float64") ** 2).sum()) for v in reply.delta.values())
        [entries[strategy]] = ledger_entries(site)
    assert 0 < norms["fedprox"] < 0.8 * norms["fedavg"]
    same = ("noise_multiplier", "sample_rate", "local_steps", "max_grad_norm", "epsilon")
    assert [getattr(entries["fedprox"], k) for k in same] == [getattr(entries["fedavg"], k) for k in same]

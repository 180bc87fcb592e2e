"""Patient-level DP-SGD: compare-to-vanilla, clipped per-patient norms, noise, fast samplers."""

from __future__ import annotations

import pytest
import torch
from opacus import GradSampleModule
from torch.utils.data import Dataset

from fedgenome.configs.schema import DPConfig, Preset
from fedgenome.privacy.engine import make_private, per_sample_loss, private_step
from fedgenome.shared.model import CausalDepthwiseConv, GenomeLM
from fedgenome.shared.train import split_batch

CPU = torch.device("cpu")


class Windows(Dataset[torch.Tensor]):
    """Fixed windows, one per 'patient'."""

    def __init__(self, windows: torch.Tensor) -> None:
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.windows[i]


def flat_params(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def private_copy(model: GenomeLM, windows: torch.Tensor, *, mode: str, sigma: float, clip: float,
                 per_step: int) -> tuple[GenomeLM, object]:
    twin = GenomeLM(model.config)
    twin.load_state_dict(model.state_dict())
    if model.prior is not None:
        twin.attach_prior(model.prior)
    settings = DPConfig(noise_multiplier=sigma, max_grad_norm=clip, patients_per_step=per_step,
                        grad_sample_mode=mode)  # type: ignore[arg-type]
    setup = make_private(model=twin, optimizer=torch.optim.SGD(twin.parameters(), lr=1.0),
                         dataset=Windows(windows), settings=settings, noise_multiplier=sigma)
    return twin, setup


@pytest.mark.parametrize(("mode", "k"), [("hooks", 1), ("ghost", 1), ("hooks", 3)])
def test_compare_to_vanilla(tiny: Preset, mode: str, k: int) -> None:
    """Sigma 0 and a huge clip equal plain SGD on the mean over patients of each patient's loss."""
    torch.manual_seed(0)
    model = GenomeLM(tiny.model)
    batch = torch.randint(5, 9, (6, k, 65) if k > 1 else (6, 65))
    twin, setup = private_copy(model, batch, mode=mode, sigma=0.0, clip=1e6, per_step=6)
    private_step(setup, batch, device=CPU)  # type: ignore[arg-type]
    vanilla = GenomeLM(tiny.model)
    vanilla.load_state_dict(model.state_dict())
    optimizer = torch.optim.SGD(vanilla.parameters(), lr=1.0)
    x, y = split_batch(batch)
    per_sample_loss(vanilla(x), y).mean().backward()
    optimizer.step()
    assert torch.allclose(flat_params(twin), flat_params(vanilla), atol=1e-5)
    assert not torch.allclose(flat_params(twin), flat_params(model))


@pytest.mark.parametrize(("mode", "k"), [("hooks", 1), ("ghost", 1), ("hooks", 4), ("hooks", 16)])
def test_every_patients_clipped_gradient_has_norm_at_most_c(tiny: Preset, mode: str, k: int) -> None:
    """Whatever k, a patient's whole contribution (the mean over its k windows) is clipped once."""
    torch.manual_seed(1)
    model = GenomeLM(tiny.model)
    clip = 0.05
    for patient in range(4):
        window = torch.randint(5, 9, (1, k, 65) if k > 1 else (1, 65))
        twin, setup = private_copy(model, window, mode=mode, sigma=0.0, clip=clip, per_step=1)
        private_step(setup, window, device=CPU)  # type: ignore[arg-type]
        step = (flat_params(twin) - flat_params(model)).norm().item()
        assert step <= clip * (1 + 1e-4), (patient, step)
        assert step > 0.99 * clip  # the raw gradient is larger than C, so clipping was active


def test_noise_changes_the_update(tiny: Preset) -> None:
    model = GenomeLM(tiny.model)
    batch = torch.randint(5, 9, (4, 65))
    a, setup_a = private_copy(model, batch, mode="hooks", sigma=1.0, clip=1.0, per_step=4)
    b, setup_b = private_copy(model, batch, mode="hooks", sigma=1.0, clip=1.0, per_step=4)
    private_step(setup_a, batch, device=CPU)  # type: ignore[arg-type]
    private_step(setup_b, batch, device=CPU)  # type: ignore[arg-type]
    assert not torch.allclose(flat_params(a), flat_params(b))


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_empty_poisson_batch_still_steps_with_noise(tiny: Preset, mode: str) -> None:
    model = GenomeLM(tiny.model)
    batch = torch.randint(5, 9, (4, 65))
    twin, setup = private_copy(model, batch, mode=mode, sigma=1.0, clip=1.0, per_step=2)
    private_step(setup, batch[:0], device=CPU)  # type: ignore[arg-type]
    assert not torch.allclose(flat_params(twin), flat_params(model))
    assert torch.isfinite(flat_params(twin)).all()


def test_fast_depthwise_sampler_matches_a_loop() -> None:
    torch.manual_seed(0)
    conv = CausalDepthwiseConv(6, 5)
    u = torch.randn(3, 6, 20)
    gsm = GradSampleModule(conv, loss_reduction="sum")
    (gsm(u) ** 2).sum().backward()
    for i in range(3):
        ref = CausalDepthwiseConv(6, 5)
        ref.load_state_dict(conv.state_dict())
        (ref(u[i : i + 1]) ** 2).sum().backward()
        assert torch.allclose(conv.weight.grad_sample[i], ref.weight.grad, atol=1e-5)
        assert torch.allclose(conv.bias.grad_sample[i], ref.bias.grad, atol=1e-5)


def test_depthwise_sampler_in_bfloat16_gives_float32_gradients_near_the_exact_ones() -> None:
    """Under bf16 autocast the products are bf16 but the sums, norms and clip are float32."""
    torch.manual_seed(0)
    conv = CausalDepthwiseConv(6, 4)
    u = torch.randn(3, 2, 6, 50)  # a patient's two windows are summed over
    g = torch.randn(3, 2, 6, 50)
    from fedgenome.privacy.grad_samplers import causal_depthwise_grad_sample

    exact = causal_depthwise_grad_sample(conv, [u], g)
    low = causal_depthwise_grad_sample(conv, [u.bfloat16()], g.bfloat16())
    for param in (conv.weight, conv.bias):
        assert low[param].dtype == torch.float32 and low[param].shape == exact[param].shape
        assert torch.allclose(low[param], exact[param], rtol=0.02, atol=0.05)


def test_too_many_patients_per_step_is_refused(tiny: Preset) -> None:
    from fedgenome.configs.errors import ConfigError
    model = GenomeLM(tiny.model)
    with pytest.raises(ConfigError, match="patients_per_step = 8 exceeds the 3 patients"):
        make_private(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                     dataset=Windows(torch.randint(5, 9, (3, 65))), settings=tiny.privacy,
                     noise_multiplier=1.0)


@pytest.mark.parametrize("prior", [False, True])
@pytest.mark.data
def test_lean_backward_gives_opacus_stock_update(tiny: Preset, small_prior: object, prior: bool) -> None:
    """The lean path (no aggregate weight gradients, matrix-vector clipping) is Opacus' DP-SGD step,
    also with the frozen Markov prior attached (it is no weight)."""
    from opacus import PrivacyEngine

    torch.manual_seed(2)
    config = tiny.model.model_copy(update={"markov_prior": prior})
    model = GenomeLM(config)
    if prior:
        model.attach_prior(small_prior)  # type: ignore[arg-type]
    batch = torch.randint(5, 10, (5, 65))
    lean, setup = private_copy(model, batch, mode="hooks", sigma=0.7, clip=0.1, per_step=5)
    stock = GenomeLM(config)
    stock.load_state_dict(model.state_dict())
    stock.prior = model.prior
    module, optimizer, _ = PrivacyEngine(accountant="rdp").make_private(
        module=stock, optimizer=torch.optim.SGD(stock.parameters(), lr=1.0),
        data_loader=torch.utils.data.DataLoader(Windows(batch), batch_size=5), noise_multiplier=0.7,
        max_grad_norm=0.1, poisson_sampling=False)
    torch.manual_seed(3)
    private_step(setup, batch, device=CPU)  # type: ignore[arg-type]
    torch.manual_seed(3)
    x, y = split_batch(batch)
    per_sample_loss(module(x), y).mean().backward()
    optimizer.step()
    assert torch.allclose(flat_params(lean), flat_params(stock), atol=1e-6)
    assert not torch.allclose(flat_params(lean), flat_params(model))


def test_lean_backward_only_while_private(tiny: Preset) -> None:
    model = GenomeLM(tiny.model)
    batch = torch.randint(5, 9, (4, 65))
    twin, setup = private_copy(model, batch, mode="hooks", sigma=1.0, clip=1.0, per_step=4)
    x, y = split_batch(batch)
    per_sample_loss(setup.module(x), y).sum().backward()  # type: ignore[attr-defined]
    assert twin.head.weight.grad is None and twin.head.weight.grad_sample is not None
    setup.close()  # type: ignore[attr-defined]
    twin.zero_grad()
    per_sample_loss(twin(x), y).mean().backward()
    assert twin.head.weight.grad is not None and twin.head.weight.grad.abs().sum() > 0


def test_a_patients_k_windows_give_one_mean_gradient(tiny: Preset) -> None:
    """The per-sample gradient of a patient with k windows is the gradient of their mean loss."""
    torch.manual_seed(4)
    model = GenomeLM(tiny.model)
    batch = torch.randint(5, 9, (3, 4, 65))  # 3 patients x 4 windows
    gsm = GradSampleModule(GenomeLM(tiny.model), loss_reduction="sum")
    gsm._module.load_state_dict(model.state_dict())
    x, y = split_batch(batch)
    per_sample_loss(gsm(x), y).sum().backward()
    for i in range(3):
        model.zero_grad()
        per_sample_loss(model(x[i : i + 1]), y[i : i + 1]).sum().backward()
        for p, q in zip(gsm._module.parameters(), model.parameters(), strict=True):
            assert torch.allclose(p.grad_sample[i], q.grad, atol=1e-5)



def test_linear_layers_write_their_own_per_sample_gradients(tiny: Preset) -> None:
    """In the hooks mode Opacus keeps no activations of the Linear layers (their lean backward has
    its own copy, in the compute dtype) but still hooks the other layers."""
    model = GenomeLM(tiny.model)
    batch = torch.randint(5, 9, (4, 65))
    twin, setup = private_copy(model, batch, mode="hooks", sigma=1.0, clip=1.0, per_step=4)
    x, y = split_batch(batch)
    loss = per_sample_loss(setup.module(x), y).sum()  # type: ignore[attr-defined]
    linears = [m for m in twin.modules() if type(m) is torch.nn.Linear]
    assert linears and not any(hasattr(m, "activations") for m in linears)
    assert twin.norm_f.activations  # type: ignore[union-attr]
    loss.backward()
    assert all(m.weight.grad_sample.shape == (4, *m.weight.shape) for m in linears)
    assert all(m.weight.grad_sample.dtype == torch.float32 for m in linears)


class SharedLinear(torch.nn.Module):
    """A toy LM whose one Linear layer runs twice in a forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(16, 8)
        self.mix = torch.nn.Linear(8, 8)
        self.head = torch.nn.Linear(8, 16)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.mix(self.mix(self.embed(idx))))  # (B, T, V)


def test_a_linear_layer_run_twice_in_a_step_is_refused() -> None:
    """One per-sample gradient per layer and step: a second one is refused, never overwritten."""
    from fedgenome.configs.errors import IncompatibleModelError

    model = SharedLinear()
    settings = DPConfig(noise_multiplier=1.0, max_grad_norm=1.0, patients_per_step=3)
    setup = make_private(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                         dataset=Windows(torch.randint(5, 9, (3, 17))), settings=settings,
                         noise_multiplier=1.0)
    with pytest.raises(IncompatibleModelError, match="ran twice in one private step"):
        private_step(setup, torch.randint(5, 9, (3, 17)), device=CPU)


def test_lean_backward_under_bf16_autocast_gives_float32_gradients_near_float32_training(
        tiny: Preset) -> None:
    """Under bf16 autocast (CUDA, AMX CPUs) the products are bf16, the per-sample gradients that
    are clipped are float32 and within 2% of those of a float32 step."""
    torch.manual_seed(5)
    model = GenomeLM(tiny.model)
    batch = torch.randint(5, 9, (4, 2, 65))  # 4 patients x 2 windows
    x, y = split_batch(batch)
    grads = []
    for bf16 in (False, True):
        twin, setup = private_copy(model, batch, mode="hooks", sigma=1.0, clip=1.0, per_step=4)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = setup.module(x)  # type: ignore[attr-defined]
        per_sample_loss(logits, y).sum().backward()
        grads.append(torch.cat([p.grad_sample.reshape(4, -1) for p in twin.parameters()], dim=1))
    exact, low = grads
    assert low.dtype == torch.float32
    error = torch.linalg.vector_norm(low - exact, dim=1) / torch.linalg.vector_norm(exact, dim=1)
    assert error.max() < 0.02, error

"""Patient-level DP-SGD with Opacus: ``make_private`` and one private step.

Each dataset item is one patient (k windows (k, W+1) of their haplotypes, or one window (W+1,)),
and Opacus' Poisson sampler draws patients with rate q, so every per-sample gradient is a
per-patient gradient, of the patient's mean loss over their windows: it is clipped to norm C and
Gaussian noise of standard deviation sigma * C is added to their sum. The unit and its sampling do
not depend on k, so neither does the accounting (user-level DP-SGD as in Charles et al., "Fine-Tuning
Large Language Models with User-Level Differential Privacy", SaTML 2025).

In the default ``hooks`` mode the Linear layers write their own per-sample gradients and skip the
aggregate weight gradient that DP-SGD never reads, and Opacus hooks only the other layers
(``privacy/lean_backward.py``).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import torch
from opacus import PrivacyEngine
from opacus.data_loader import DPDataLoader
from opacus.optimizers import DPOptimizer
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader, Dataset

import fedgenome.privacy.grad_samplers  # noqa: F401  (registers the fast depthwise-conv sampler)
from fedgenome.configs.errors import ConfigError
from fedgenome.configs.schema import DPConfig
from fedgenome.privacy.dp_optimizer import LeanDPOptimizer
from fedgenome.privacy.lean_backward import LeanGradSampleModule, lean_linear_backward
from fedgenome.privacy.round_plan import sample_rate_of
from fedgenome.shared.train import IGNORE, autocast, split_batch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrivateSetup:
    """What ``make_private`` returns: always the same fields, whatever the mode."""

    module: nn.Module  # the model wrapped for per-sample gradients
    optimizer: DPOptimizer
    data_loader: DataLoader[Any]  # Poisson sampling over patients
    criterion: Callable[..., Any] | None  # the per-sample loss wrapper of ghost clipping, else None
    sample_rate: float
    noise_multiplier: float
    max_grad_norm: float
    grad_sample_mode: str
    loss_reduction: str  # how the per-patient losses are combined before backward: "sum" or "mean"
    _restore: ExitStack = field(default_factory=ExitStack, repr=False)

    def close(self) -> None:
        """Remove Opacus' hooks and per-sample attributes; the model keeps its trained weights."""
        self._restore.close()
        close = getattr(self.module, "_close", None)
        if close is not None:
            close()


def per_sample_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-base loss of each sample (B,), over all its own A/C/G/T targets.

    ``logits`` (B, ..., W, V) and ``targets`` (B, ..., W): a sample may hold several windows (a
    patient's k windows). Normalising per sample (not by the batch's token count) keeps each
    patient's gradient independent of the other patients in the batch.
    """
    B, V = logits.shape[0], logits.shape[-1]
    flat = targets.reshape(B, -1)  # (B, n)
    token = torch.nn.functional.cross_entropy(
        logits.float().reshape(B, -1, V).transpose(1, 2), flat, ignore_index=IGNORE,
        reduction="none")  # (B, n)
    valid = (flat != IGNORE).sum(dim=1).clamp(min=1)
    return token.sum(dim=1) / valid  # (B,)


def make_private(*, model: nn.Module, optimizer: torch.optim.Optimizer,
                 dataset: Dataset[torch.Tensor], settings: DPConfig, noise_multiplier: float) -> PrivateSetup:
    """Wrap ``model``, ``optimizer`` and a Poisson loader over ``dataset`` (one item per patient).

    Patients are drawn with rate exactly ``q = patients_per_step / patients``, the rate the ledger
    records (Opacus' own loader would use 1 / ceil(patients / patients_per_step)). The Poisson draw
    and the noise use the secure generator (``secure_mode``) or torch's global one, never a seed.
    """
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise ConfigError(f"the model has layers Opacus cannot train privately: {errors[0]}")
    n = len(dataset)  # type: ignore[arg-type]
    if settings.patients_per_step > n:
        raise ConfigError(f"privacy.patients_per_step = {settings.patients_per_step} exceeds the "
                          f"{n} patients of the site; lower it")
    engine = _engine(settings)
    q = sample_rate_of(patients_per_step=settings.patients_per_step, patients=n)
    if settings.grad_sample_mode == "hooks":
        module, dp_optimizer, dp_criterion = _lean_private(model, optimizer, engine, settings,
                                                           noise_multiplier=noise_multiplier)
    else:  # ghost: Opacus' own wrapping, which returns 4 objects here
        module, dp_optimizer, dp_criterion, _ = engine.make_private(
            module=model, optimizer=optimizer,
            data_loader=DataLoader(dataset, batch_size=settings.patients_per_step),
            criterion=nn.CrossEntropyLoss(ignore_index=IGNORE), noise_multiplier=noise_multiplier,
            max_grad_norm=settings.max_grad_norm, poisson_sampling=True, grad_sample_mode="ghost",
            loss_reduction="mean")
    dp_optimizer.expected_batch_size = settings.patients_per_step  # q * n
    hooks = settings.grad_sample_mode == "hooks"
    setup = PrivateSetup(module=module, optimizer=dp_optimizer,
                         data_loader=DPDataLoader(dataset, sample_rate=q, generator=engine.secure_rng),
                         criterion=dp_criterion, sample_rate=q, noise_multiplier=noise_multiplier,
                         max_grad_norm=settings.max_grad_norm,
                         grad_sample_mode=settings.grad_sample_mode,
                         loss_reduction="sum" if hooks else "mean")
    if hooks:
        setup._restore.enter_context(lean_linear_backward(model))
    return setup


def _lean_private(model: nn.Module, optimizer: torch.optim.Optimizer, engine: PrivacyEngine,
                  settings: DPConfig, *, noise_multiplier: float) -> tuple[nn.Module, DPOptimizer, None]:
    """The hooks mode: Opacus hooks on every layer but Linear, whose lean backward writes its own.

    Per-sample gradients are those of the summed per-patient losses, unscaled; the optimizer
    divides the noised sum by the expected batch, as Opacus' "mean" does.
    """
    module = LeanGradSampleModule(model, batch_first=True, loss_reduction="sum", strict=True)
    module.forbid_grad_accumulation()  # as Opacus' make_private does under Poisson sampling
    dp_optimizer = LeanDPOptimizer(
        optimizer, noise_multiplier=noise_multiplier, max_grad_norm=settings.max_grad_norm,
        expected_batch_size=settings.patients_per_step, loss_reduction="mean",
        generator=engine.secure_rng if engine.secure_mode else None, secure_mode=engine.secure_mode)
    return module, dp_optimizer, None


def _engine(settings: DPConfig) -> PrivacyEngine:
    if not settings.secure_mode:
        with warnings.catch_warnings():  # Opacus' own warning, said once here through logging
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            engine = PrivacyEngine(accountant=settings.accountant, secure_mode=False)
        log.warning("privacy.secure_mode = false: the noise uses torch's default generator; "
                    "turn it on (with torchcsprng) for production")
        return engine
    try:
        return PrivacyEngine(accountant=settings.accountant, secure_mode=True)
    except ImportError:
        raise ConfigError("privacy.secure_mode = true needs the torchcsprng package (a secure "
                          "random generator for the noise); install it, or set secure_mode = "
                          "false outside production") from None


def private_step(setup: PrivateSetup, windows: torch.Tensor, *, device: torch.device) -> float:
    """One DP-SGD step on a Poisson batch of patients' windows (B, W+1); returns the mean loss.

    An empty batch (possible under Poisson sampling) still takes a step: noise only.
    """
    setup.optimizer.zero_grad(set_to_none=True)
    if windows.shape[0] == 0:
        _noise_only_step(setup)
        return float("nan")
    x, y = split_batch(windows.to(device))
    with autocast(device):
        logits = setup.module(x)  # (B, W, V)
    if setup.criterion is not None:  # ghost clipping: two backward passes inside
        loss = setup.criterion(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1),
                               shape=logits.shape)
    else:
        per_patient = per_sample_loss(logits, y)  # (B,)
        loss = per_patient.sum() if setup.loss_reduction == "sum" else per_patient.mean()
    with warnings.catch_warnings():  # hooks on the first layer see an input that needs no grad
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        loss.backward()
    setup.optimizer.step()
    return float(loss.item()) / (len(windows) if setup.loss_reduction == "sum" else 1)


def _noise_only_step(setup: PrivateSetup) -> None:
    """A step with no sampled patient: zero clipped sum plus Gaussian noise, as the analysis says."""
    for p in setup.optimizer.params:
        if setup.grad_sample_mode == "ghost":
            p.grad = torch.zeros_like(p)  # ghost's optimizer takes the clipped sum from .grad
        else:
            p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
    setup.optimizer.step()

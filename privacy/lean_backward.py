"""A backward pass in which each Linear layer computes its own per-sample gradients, and no more.

In DP-SGD the optimizer replaces every ``p.grad`` with the noised sum of the clipped per-sample
gradients (Opacus' ``DPOptimizer.add_noise``), so the aggregate gradient that autograd computes for
each Linear weight is dead work: one matrix product per layer, as large as the per-sample gradients
themselves. Within :func:`lean_linear_backward` each ``nn.Linear`` of a model runs as
:class:`_PerSampleLinear`, whose backward returns the gradient of the layer's input only (which the
layers below need) and writes the per-sample gradients of its weight and bias, in float32, to
``p.grad_sample``, where Opacus' DP optimizer reads them; they are the same products as Opacus' own
Linear sampler (``privacy/grad_samplers.linear_grad_sample``), from the same input and output
gradient. :class:`LeanGradSampleModule` is Opacus' ``GradSampleModule`` with hooks on every other
layer (Embedding, norms, the depthwise convolutions) and none on the Linear layers, so their
activations are not kept twice, nor their per-sample gradients zero-filled and copied. Nothing else
changes: the clipped, noised update is the same (``tests/test_dp_engine.py`` compares it with
Opacus' stock path).

Under autocast the products run in the autocast dtype (bf16 on CUDA and on CPUs with AMX), as
``F.linear`` would, and the layer keeps its input in that dtype (half the memory of Opacus' float32
activations).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from opacus.grad_sample import GradSampleModule
from torch import nn

from fedgenome.configs.errors import IncompatibleModelError
from fedgenome.privacy.grad_samplers import linear_grad_sample


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


def _store(param: torch.Tensor, sample: torch.Tensor) -> None:
    if getattr(param, "grad_sample", None) is not None:
        raise IncompatibleModelError(
            "a Linear layer ran twice in one private step (a layer shared within the model, or "
            "two backward passes without zero_grad): DP-SGD here takes one per-sample gradient "
            "per layer and step; share no Linear layer, and step after every backward pass")
    param.grad_sample = sample  # type: ignore[attr-defined]


class _PerSampleLinear(torch.autograd.Function):
    """y = x W^T + b; backward returns dL/dx and writes the per-sample dL/dW, dL/db to grad_sample."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                layer: nn.Linear) -> torch.Tensor:
        dtype = _compute_dtype(x)
        w, a = weight.to(dtype), x.to(dtype)
        ctx.save_for_backward(w, a)
        ctx.input_dtype = x.dtype
        ctx.layer = layer
        with torch.autocast(device_type=x.device.type, enabled=False):
            return F.linear(a, w, None if bias is None else bias.to(dtype))

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        w, a = ctx.saved_tensors
        g = grad_out.to(w.dtype)  # (B, ..., out)
        for param, sample in linear_grad_sample(ctx.layer, [a], g).items():
            _store(param, sample)
        grad_x = (g @ w).to(ctx.input_dtype) if ctx.needs_input_grad[0] else None
        return grad_x, None, None, None


def _lean_forward(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return _PerSampleLinear.apply(x, layer.weight, layer.bias, layer)  # type: ignore[no-untyped-call, no-any-return]


@contextmanager
def lean_linear_backward(model: nn.Module) -> Iterator[None]:
    """Within the block, every ``nn.Linear`` of ``model`` writes its own per-sample gradients.

    Only for DP-SGD with :class:`LeanGradSampleModule`: ``p.grad`` of those weights stays None
    until the DP optimizer writes the noised sum there.
    """
    layers = [m for m in model.modules() if type(m) is nn.Linear]
    for layer in layers:
        layer.forward = _lean_forward.__get__(layer)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


class LeanGradSampleModule(GradSampleModule):  # type: ignore[misc]
    """Opacus' ``GradSampleModule`` without hooks on ``nn.Linear`` (see :func:`lean_linear_backward`)."""

    def iterate_submodules(self, module: nn.Module) -> Iterable[nn.Module]:
        """Every module Opacus would hook, except the Linear layers."""
        return (m for m in super().iterate_submodules(module) if type(m) is not nn.Linear)

"""A backward pass without the batch's aggregate weight gradients, which DP-SGD never reads.

In DP-SGD the optimizer replaces every ``p.grad`` with the noised sum of the clipped per-sample
gradients (Opacus' ``DPOptimizer.add_noise``), so the aggregate gradient that autograd computes for
each Linear weight is dead work: one matrix product per layer, as large as the per-sample gradients
themselves. :func:`lean_linear_backward` makes each ``nn.Linear`` of a model compute only the
gradient of its input (which the layers below need); its per-sample gradients still come from
Opacus' hooks, from the same activations and output gradients. Nothing else changes: the clipped,
noised update is the same (``tests/test_dp_engine.py`` compares it with Opacus' stock path).

Under autocast the product runs in the autocast dtype (bf16 on CUDA and on CPUs with AMX), as
``F.linear`` would.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


class _InputGradOnlyLinear(torch.autograd.Function):
    """y = x W^T + b, whose backward returns dL/dx only (no gradient for W or b)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
        dtype = _compute_dtype(x)
        w = weight.to(dtype)
        ctx.save_for_backward(w)
        ctx.input_dtype = x.dtype
        with torch.autocast(device_type=x.device.type, enabled=False):
            return F.linear(x.to(dtype), w, None if bias is None else bias.to(dtype))

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (w,) = ctx.saved_tensors
        return (grad_out.to(w.dtype) @ w).to(ctx.input_dtype), None, None


def _lean_forward(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return _InputGradOnlyLinear.apply(x, layer.weight, layer.bias)  # type: ignore[no-untyped-call, no-any-return]


@contextmanager
def lean_linear_backward(model: nn.Module) -> Iterator[None]:
    """Within the block, every ``nn.Linear`` of ``model`` skips its aggregate weight gradient.

    Only for DP-SGD with per-sample gradients from Opacus hooks: ``p.grad`` of those weights stays
    None until the DP optimizer writes the noised sum there.
    """
    layers = [m for m in model.modules() if type(m) is nn.Linear]
    for layer in layers:
        layer.forward = _lean_forward.__get__(layer)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward

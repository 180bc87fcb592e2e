"""Opacus' DP optimizer with a faster clip: one matrix-vector product per parameter.

Opacus' ``DPOptimizer.clip_and_accumulate`` weights each per-sample gradient by its clip factor
with ``torch.einsum("i,i...", factor, grad_sample)``, which on CPU runs as thousands of small
copies (about a fifth of a DP step of the ``small`` model). The same sum is ``factor @
grad_sample.reshape(B, -1)``: this class computes exactly what Opacus does (per-parameter norms,
their norm per sample, ``factor = min(1, C / (norm + 1e-6))``, the factor-weighted sum), with norms
accumulated in float32 whatever the per-sample gradients' dtype.
"""

from __future__ import annotations

import torch
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed


def clip_factors(grad_samples: list[torch.Tensor], max_grad_norm: float) -> torch.Tensor:
    """min(1, C / (||g_i|| + 1e-6)) for each sample i of the flat per-sample gradients (B,)."""
    norms = torch.stack([torch.linalg.vector_norm(g.reshape(len(g), -1), dim=1, dtype=torch.float32)
                         for g in grad_samples], dim=1)  # (B, parameters)
    return (max_grad_norm / (torch.linalg.vector_norm(norms, dim=1) + 1e-6)).clamp(max=1.0)


class LeanDPOptimizer(DPOptimizer):  # type: ignore[misc]
    """``DPOptimizer`` whose clipping and summing is a matrix-vector product per parameter."""

    def clip_and_accumulate(self) -> None:
        """Clip each per-sample gradient to ``max_grad_norm`` and sum them into ``p.summed_grad``."""
        samples = self.grad_samples
        if len(samples[0]) == 0:  # an empty Poisson batch: the sum is zero
            factors = torch.zeros((0,), device=samples[0].device)
        else:
            factors = clip_factors(samples, self.max_grad_norm)
        for p in self.params:
            _check_processed_flag(p.grad_sample)
            grad_sample = self._get_flat_grad_sample(p).to(p.dtype)
            flat = factors.to(grad_sample) @ grad_sample.reshape(len(grad_sample), p.numel())
            grad = flat.view_as(p)
            p.summed_grad = grad if p.summed_grad is None else p.summed_grad + grad
            _mark_as_processed(p.grad_sample)

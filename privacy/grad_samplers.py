"""Per-sample gradient samplers: float32 Linear gradients, and the causal depthwise convolutions.

* ``nn.Linear`` (replaces Opacus' own sampler, process-wide): the same product, but the result is
  always float32. Under bf16 autocast Opacus' sampler returns bf16 per-sample gradients, and the
  DP optimizer takes their norms in bf16 before clipping, so a clipped contribution could exceed
  the clipping norm C by the rounding error (about 0.4%). In float32 the clip holds as the
  accountant assumes.
* :class:`CausalDepthwiseConv`: Opacus' generic Conv1d sampler unfolds over every channel pair and
  then keeps the group diagonal, which costs O(C^2) for a depthwise convolution; without a sampler
  of its own the subclass would fall back to a functorch vmap. This sampler is exact (in the
  products' dtype, with float32 sums over a patient's windows) and O(C * T * K). Registration is
  keyed by the exact class.

Dimensions between the batch (dimension 0) and the features, such as a patient's several windows,
are summed over: the sample is the patient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from opacus.grad_sample import register_grad_sampler
from torch import nn

from fedgenome.shared.model import CausalDepthwiseConv


@register_grad_sampler(nn.Linear)  # type: ignore[misc, untyped-decorator]
def linear_grad_sample(layer: nn.Linear, activations: list[torch.Tensor],
                       backprops: torch.Tensor) -> dict[torch.Tensor, torch.Tensor]:
    """Per-sample gradients of weight (B, out, in) and bias (B, out), in float32."""
    B = backprops.shape[0]
    g = backprops.reshape(B, -1, backprops.shape[-1])  # (B, n, out)
    a = activations[0].reshape(B, -1, activations[0].shape[-1]).to(g.dtype)  # (B, n, in)
    grads: dict[torch.Tensor, torch.Tensor] = {}
    if layer.weight.requires_grad:
        grads[layer.weight] = torch.bmm(g.transpose(1, 2), a).float()
    if layer.bias is not None and layer.bias.requires_grad:
        grads[layer.bias] = g.sum(dim=1, dtype=torch.float32)
    return grads


@register_grad_sampler(CausalDepthwiseConv)  # type: ignore[misc, untyped-decorator]
def causal_depthwise_grad_sample(layer: CausalDepthwiseConv, activations: list[torch.Tensor],
                                 backprops: torch.Tensor) -> dict[torch.Tensor, torch.Tensor]:
    """Per-sample gradients of weight (B, C, 1, K) and bias (B, C), in float32.

    The layer computes out[b, c, t] = bias[c] + sum_k w[c, k] * u[b, c, t + k - (K - 1)] (zero for
    negative positions), so grad_w[b, c, k] = sum_t g[b, c, t] * u_padded[b, c, t + k]. Dimensions
    between the batch and the channels (a patient's several windows) are summed over: the sample is
    the patient.
    """
    B, C, T = backprops.shape[0], backprops.shape[-2], backprops.shape[-1]
    K = layer.kernel_size[0]
    g = backprops.reshape(B, -1, C, T)  # (B, n, C, T)
    grads: dict[torch.Tensor, torch.Tensor] = {}
    if layer.weight.requires_grad:
        # Each row (b, n, c) of u_padded cross-correlated with the same row of g, as one grouped
        # conv1d with a kernel of T: on CPU 4x faster than K multiply-and-sums, in either dtype
        rows = g.shape[0] * g.shape[1] * C
        u = F.pad(activations[0].reshape(B, -1, C, T).to(g.dtype), (K - 1, 0))  # (B, n, C, T+K-1)
        corr = F.conv1d(u.reshape(1, rows, T + K - 1), g.reshape(rows, 1, T), groups=rows)  # (1, rows, K)
        grads[layer.weight] = corr.reshape(B, -1, C, K).sum(dim=1, dtype=torch.float32).unsqueeze(2)
    if layer.bias is not None and layer.bias.requires_grad:
        grads[layer.bias] = g.sum(dim=(1, 3), dtype=torch.float32)  # (B, C)
    return grads

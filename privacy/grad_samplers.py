"""Fast per-sample gradients for the model's causal depthwise convolutions.

Opacus' generic Conv1d sampler unfolds over every channel pair and then keeps the group diagonal,
which costs O(C^2) for a depthwise convolution; without a sampler of its own the subclass would
fall back to a functorch vmap. This sampler is exact and O(C * T * K). Registration is global and
keyed by the exact class, so it is registered on :class:`CausalDepthwiseConv` only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from opacus.grad_sample import register_grad_sampler

from shared.model import CausalDepthwiseConv


@register_grad_sampler(CausalDepthwiseConv)  # type: ignore[misc, untyped-decorator]
def causal_depthwise_grad_sample(layer: CausalDepthwiseConv, activations: list[torch.Tensor],
                                 backprops: torch.Tensor) -> dict[torch.Tensor, torch.Tensor]:
    """Per-sample gradients of weight (B, C, 1, K) and bias (B, C).

    The layer computes out[b, c, t] = bias[c] + sum_k w[c, k] * u[b, c, t + k - (K - 1)] (zero for
    negative positions), so grad_w[b, c, k] = sum_t g[b, c, t] * u_padded[b, c, t + k].
    """
    u = activations[0]  # (B, C, T)
    K = layer.kernel_size[0]
    windows = F.pad(u, (K - 1, 0)).unfold(2, K, 1)  # (B, C, T, K)
    grads: dict[torch.Tensor, torch.Tensor] = {}
    if layer.weight.requires_grad:
        grads[layer.weight] = torch.einsum("bct,bctk->bck", backprops, windows).unsqueeze(2)
    if layer.bias is not None and layer.bias.requires_grad:
        grads[layer.bias] = backprops.sum(dim=2)  # (B, C)
    return grads

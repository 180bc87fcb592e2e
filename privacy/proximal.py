"""FedProx's proximal term at a site, added to the private gradient after Opacus' noise step.

FedProx (Li et al., 2020) trains each site on ``loss(w) + (mu / 2) * ||w - w_global||^2``. The
term's gradient, ``mu * (w - w_global)``, depends on the current weights and the global model
only, never on a patient's data. So it is added to the *privatized* gradient (the clipped per-patient
gradients' sum, plus noise, over the expected batch size) just before the inner optimizer's step,
not to the per-patient loss:

* inside the per-sample loss it would be part of every patient's gradient, so each patient's
  gradient norm, and hence its clipping, would change with ``w - w_global``; the clipped signal
  would shrink as the site drifts from the global model, and the term itself would be clipped;
* after the noise step it is post-processing: the mechanism (what is clipped, the noise, the
  sampling) is exactly the one the ledger records, whatever ``mu`` is.

The hook is registered on the optimizer that Opacus' ``DPOptimizer`` wraps: ``DPOptimizer.step``
clips, noises and scales the gradient, calls the accountant's hook, and then the inner optimizer's
``step``, whose pre-hooks run first. A step that Opacus skips (gradient accumulation) runs no hook.
"""

from __future__ import annotations

import torch
from torch.utils.hooks import RemovableHandle


def add_proximal_term(optimizer: torch.optim.Optimizer, *, mu: float) -> RemovableHandle:
    """From now on, every ``optimizer.step()`` first adds ``mu * (w - w0)`` to each gradient.

    ``w0`` is a copy of the parameters taken now (the global model the round starts from).
    Parameters without a gradient are left alone.

    Args:
        optimizer: The inner optimizer (``DPOptimizer.original_optimizer`` under DP).
        mu: FedProx's ``mu`` (> 0).

    Returns:
        The hook's handle; ``remove()`` it when the round is over.
    """
    anchors = [[p.detach().clone() for p in group["params"]] for group in optimizer.param_groups]

    def hook(opt: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        with torch.no_grad():
            for group, anchor in zip(opt.param_groups, anchors, strict=True):
                for p, p0 in zip(group["params"], anchor, strict=True):
                    if p.grad is not None:
                        p.grad.add_(p - p0, alpha=mu)

    return optimizer.register_step_pre_hook(hook)  # type: ignore[arg-type]

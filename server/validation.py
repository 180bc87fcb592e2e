"""Server-side checks of every site update before it may touch the global model.

An update is the float16 delta ``local - global`` a site sends. It is rejected (and the round goes
on with the other sites) when its names, shapes or dtypes differ from the global model's, when it
holds NaN or Inf, or when its L2 norm is above the run's bound. The bound is ``max-update-norm``
from the run config; 0 means the automatic bound :func:`auto_update_norm`, derived from what an
honest site's AdamW steps can move: at most about ``lr`` per weight per step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedgenome.configs.errors import FedGenomeError
from fedgenome.configs.schema import FederationConfig
from fedgenome.shared import wire

AUTO_MARGIN = 2.0
"""How far above the honest AdamW bound ``lr * steps * sqrt(parameters)`` the automatic bound sits."""


class UpdateRejected(FedGenomeError):
    """A site's update failed validation; the message says why."""


@dataclass(frozen=True)
class UpdateCheck:
    """A validated update: its L2 norm, and the bound it was held to."""

    norm: float
    bound: float


def auto_update_norm(*, lr: float, local_steps: int, parameters: int) -> float:
    """The automatic norm bound for a delta of ``local_steps`` AdamW steps at rate ``lr``.

    With bias correction, every Adam step moves a weight by at most about ``lr``, so an honest
    update's norm is at most ``lr * steps * sqrt(parameters)``; the bound leaves a margin of
    :data:`AUTO_MARGIN` for weight decay and float16 rounding.
    """
    return AUTO_MARGIN * lr * local_steps * math.sqrt(parameters)


def update_bound(fed: FederationConfig, global_: wire.Arrays) -> float:
    """The run's bound on a site update's L2 norm (``max-update-norm``, or the automatic one)."""
    if fed.max_update_norm > 0:
        return fed.max_update_norm
    size = sum(int(v.size) for v in global_.values())
    return auto_update_norm(lr=fed.lr, local_steps=fed.local_steps, parameters=size)


def check_update(delta: Mapping[str, npt.NDArray[np.generic]], global_: wire.Arrays, *,
                 max_norm: float, dtype: type[np.generic] = wire.WIRE_DTYPE) -> UpdateCheck:
    """Check a delta against the global model and the norm bound.

    Raises:
        UpdateRejected: Naming the first problem: missing or unexpected arrays, a shape or dtype
            that differs from the global model's, NaN/Inf values, or a norm above ``max_norm``.
    """
    missing, extra = sorted(set(global_) - set(delta)), sorted(set(delta) - set(global_))
    if missing or extra:
        raise UpdateRejected(f"array names differ from the global model's (missing {missing[:3]}, "
                             f"unexpected {extra[:3]})")
    total = 0.0
    for name, want in global_.items():
        got = delta[name]
        if got.shape != want.shape:
            raise UpdateRejected(f"array {name!r} has shape {got.shape}, the global model's "
                                 f"is {want.shape}")
        if got.dtype != np.dtype(dtype):
            raise UpdateRejected(f"array {name!r} has dtype {got.dtype}, expected {np.dtype(dtype)}")
        values = got.astype(np.float64)
        if not np.isfinite(values).all():
            raise UpdateRejected(f"array {name!r} holds NaN or Inf")
        total += float(np.square(values).sum())
    norm = math.sqrt(total)
    if norm > max_norm:
        raise UpdateRejected(f"update norm {norm:.4g} is above the bound {max_norm:.4g} "
                             "(max-update-norm)")
    return UpdateCheck(norm=norm, bound=max_norm)

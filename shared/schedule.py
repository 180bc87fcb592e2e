"""The learning-rate schedule: linear warm-up, then cosine decay to a floor, over a whole run.

One schedule serves every trainer. Centralized training (plain or private) runs it over
``train.steps``; a federated run over ``num-server-rounds x local-steps``, where a site's step
``s`` of global round ``r`` (1-based) is global step ``(r - 1) * local-steps + s``. Server round
numbers stay global across a resume, so a resumed run continues at the same global step and
learning rate as a run that never stopped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedgenome.configs.schema import FederationConfig, TrainConfig

FINETUNE_LR = 1e-4
"""Peak learning rate of runs that start from a pretrained checkpoint (a twentieth of the
``small`` preset's pretraining rate, so DP noise does not undo what pretraining learnt; the demo's
and ``bench/quality.py``'s default)."""


@dataclass(frozen=True)
class LRSchedule:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine decay to ``min_lr_ratio * lr``.

    The floor is reached at ``total_steps`` and held after it.

    >>> s = LRSchedule(lr=1e-3, total_steps=100, warmup_steps=10, min_lr_ratio=0.1)
    >>> s.at(0), s.at(9), round(s.at(100), 6)
    (0.0001, 0.001, 0.0001)
    """

    lr: float
    total_steps: int
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1

    def at(self, step: int) -> float:
        """The learning rate of (0-based) step ``step``."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1)
        cosine = 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return self.lr * (self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine)

    @classmethod
    def of_training(cls, cfg: TrainConfig) -> LRSchedule:
        """The schedule of a centralized run: ``cfg.steps`` steps."""
        return cls(lr=cfg.lr, total_steps=cfg.steps, warmup_steps=cfg.warmup_steps,
                   min_lr_ratio=cfg.min_lr_ratio)

    @classmethod
    def of_federation(cls, fed: FederationConfig) -> LRSchedule:
        """The schedule of a federated run: ``num-server-rounds x local-steps`` global steps."""
        return cls(lr=fed.lr, total_steps=fed.num_server_rounds * fed.local_steps,
                   warmup_steps=fed.warmup_steps, min_lr_ratio=fed.min_lr_ratio)


def first_step(global_round: int, local_steps: int) -> int:
    """The global step a site's first local step of ``global_round`` (1-based) takes."""
    return (global_round - 1) * local_steps

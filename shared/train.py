"""Plain PyTorch training and evaluation: next-base loss, LR schedule, held-out bits per base.

No Flower and no Opacus here: the private trainer (``privacy/``) and the federated client reuse
these pieces.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler

from fedgenome.configs.errors import ConfigError
from fedgenome.configs.schema import TrainConfig
from fedgenome.shared.schedule import LRSchedule
from fedgenome.shared.tokenizer import A, T

log = logging.getLogger(__name__)
IGNORE = -100  # target id that the loss skips (N, padding, specials)
LN2 = math.log(2.0)


def pick_device(name: str) -> torch.device:
    """'auto' -> CUDA when there is a GPU, else CPU; 'cuda' without a GPU is a config error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device = 'cuda' but no CUDA GPU is visible; use 'auto' or 'cpu'")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


CPU_BF16_ENV = "FEDGENOME_CPU_BF16"  # "0": train in float32 on CPU even where bf16 is fast


def cpu_bf16() -> bool:
    """Whether CPU training uses bf16: where the CPU multiplies it in hardware (AMX tiles).

    ``FEDGENOME_CPU_BF16=0`` turns it off (float32).
    """
    if os.environ.get(CPU_BF16_ENV, "1") == "0":
        return False
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def autocast(device: torch.device) -> torch.autocast:
    """Training precision: bf16 autocast on CUDA and on CPUs with AMX, else a disabled context.

    On this project's 2-core AMX machine bf16 made a plain step of the small model 1.4x faster.
    Weights, optimizer state, the loss and DP's per-sample gradients and clipping stay float32.
    """
    enabled = device.type == "cuda" or (device.type == "cpu" and cpu_bf16())
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def eval_autocast(device: torch.device) -> torch.autocast:
    """Evaluation precision: bf16 on CUDA only; held-out scores on CPU are computed in float32."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def split_batch(windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows (..., W+1) -> contiguous inputs (..., W) and targets (..., W); non-bases are ignored."""
    return windows[..., :-1].contiguous(), base_targets(windows[..., 1:])


def base_targets(tokens: torch.Tensor) -> torch.Tensor:
    """A copy of tokens as targets: A/C/G/T stay, every other token is IGNORE."""
    y = tokens.clone()
    y[(y < A) | (y > T)] = IGNORE
    return y


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of next-base logits (B, W, V) against targets (B, W), in nats."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=IGNORE, reduction=reduction)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``min_lr_ratio * lr`` at ``steps``."""
    return LRSchedule.of_training(cfg).at(step)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (not norms, biases, embeddings), or SGD + momentum.

    AdamW is torch's fused implementation when every parameter is on a CUDA device.

    The parameter groups are always [decayed, not decayed], in ``named_parameters`` order: saved
    optimizer state (``privacy/optim_state.py``) is matched to them by position. SGD takes no weight
    decay: torch's SGD couples it to the gradient (``lr * wd`` per step), which at SGD's learning
    rates would shrink the weights far faster than AdamW's decoupled decay.
    """
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": rest, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD([{**g, "weight_decay": 0.0} for g in groups], lr=cfg.lr,
                               momentum=cfg.momentum)
    fused = all(p.is_cuda for p in model.parameters())  # one kernel per step on a GPU
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), fused=fused or None)


@dataclass(frozen=True)
class EvalResult:
    """Held-out next-base prediction quality."""

    bits_per_base: float
    bases: int

    @property
    def loss(self) -> float:
        """Mean loss in nats per base."""
        return self.bits_per_base * LN2


@torch.no_grad()
def evaluate(model: nn.Module, windows: torch.Tensor, *, device: torch.device,
             batch_size: int = 8) -> EvalResult:
    """Bits per base of ``model`` on evaluation windows (N, W+1), scored on A/C/G/T targets."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for chunk in torch.split(windows, batch_size):
        x, y = split_batch(chunk.to(device))
        with eval_autocast(device):
            logits = model(x)
        total += float(lm_loss(logits, y, reduction="sum"))
        count += int((y != IGNORE).sum())
    model.train(was_training)
    return EvalResult(bits_per_base=total / max(count, 1) / LN2, bases=count)


def endless(dataset: Dataset[torch.Tensor], batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Batches of windows (B, W+1), reshuffling units every pass, forever."""
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, drop_last=False,
                        sampler=RandomSampler(dataset, generator=generator))  # type: ignore[arg-type]
    while True:
        yield from loader


@dataclass
class TrainResult:
    """What a training run did."""

    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    evals: list[tuple[int, EvalResult]] = field(default_factory=list)


StepCallback = Callable[[int, float], None]


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, windows: torch.Tensor, *,
               lr: float, grad_clip: float, device: torch.device) -> float:
    """One plain step of next-base training on windows (B, W+1) at learning rate ``lr``; the loss."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    x, y = split_batch(windows.to(device))
    with autocast(device):
        loss = lm_loss(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[no-untyped-call]
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return float(loss.item())


def train(model: nn.Module, batches: Iterator[torch.Tensor], cfg: TrainConfig, *,
          device: torch.device, eval_windows: torch.Tensor | None = None,
          on_step: StepCallback | None = None) -> TrainResult:
    """Train ``model`` for ``cfg.steps`` steps of AdamW on ``batches``."""
    model.to(device).train()
    optimizer = make_optimizer(model, cfg)
    schedule = LRSchedule.of_training(cfg)
    result = TrainResult(steps=0, seconds=0.0)
    start = time.perf_counter()
    for step in range(cfg.steps):
        windows = next(batches)
        result.losses.append(train_step(model, optimizer, windows, lr=schedule.at(step),
                                        grad_clip=cfg.grad_clip, device=device))
        result.steps = step + 1
        if on_step is not None:
            on_step(step + 1, result.losses[-1])
        if eval_windows is not None and cfg.eval_every and (step + 1) % cfg.eval_every == 0:
            result.evals.append((step + 1, evaluate(model, eval_windows, device=device)))
    result.seconds = time.perf_counter() - start
    return result

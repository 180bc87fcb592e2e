"""One private training round at a site: budget check, patient-level DP-SGD, ledger entry.

The order is what makes the guarantee hold across rounds and restarts:
1. the site's accountant is rebuilt from its signed ledger (epsilon never resets);
2. the epsilon this round would bring is computed *before* training; past the site's budget the
   round is refused, the refusal is recorded, and nothing is trained or returned;
3. after training, the caller may keep the update (``before_record``: what a retry re-sends), then
   the ledger entry (mechanism, cumulative epsilon, hash of the update, the run key and round it
   served) is written and fsynced before the update is handed back to the caller that sends it;
4. only then is the site's optimizer state saved (when it persists across rounds), so it never
   holds steps that the ledger does not.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fedgenome.configs.schema import DPConfig, SitePrivacy, TrainConfig
from fedgenome.privacy.accounting import epsilon
from fedgenome.privacy.engine import make_private, private_step
from fedgenome.privacy.ledger import Ledger, LedgerEntry
from fedgenome.privacy.mechanism import Mechanism
from fedgenome.privacy.optim_state import OptimizerStore
from fedgenome.privacy.proximal import add_proximal_term
from fedgenome.privacy.round_plan import check_site_settings, sample_rate_of
from fedgenome.shared.checkpoint import state_sha256
from fedgenome.shared.schedule import LRSchedule
from fedgenome.shared.train import make_optimizer

log = logging.getLogger(__name__)


def _mean_finite(values: tuple[float, ...]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


@dataclass(frozen=True)
class TrainedUpdate:
    """A trained round just before its ledger entry is written: what ``before_record`` receives."""

    round: int
    steps: int
    epsilon: float  # the cumulative epsilon the entry will record
    budget: float
    losses: tuple[float, ...]
    update_sha256: str

    @property
    def mean_loss(self) -> float:
        """Mean loss over the round's non-empty steps (NaN when none)."""
        return _mean_finite(self.losses)


@dataclass(frozen=True)
class RoundOutcome:
    """What a private round did; ``status`` is 'refused' when the budget would be exceeded."""

    status: Literal["trained", "refused"]
    round: int
    steps: int
    epsilon: float  # the site's cumulative epsilon after this round
    planned_epsilon: float  # what training this round brings (or would have brought) it to
    budget: float
    losses: tuple[float, ...]
    update_sha256: str | None
    entry: LedgerEntry

    @property
    def mean_loss(self) -> float:
        """Mean loss over the round's non-empty steps (NaN when none)."""
        return _mean_finite(self.losses)


def _endless(loader: DataLoader[Any]) -> Iterator[torch.Tensor]:
    while True:
        yield from loader


def run_private_round(*, model: nn.Module, dataset: Dataset[torch.Tensor], ledger: Ledger,
                      site: SitePrivacy, dp: DPConfig, train: TrainConfig, noise_multiplier: float,
                      round: int, local_steps: int, first_step: int = 0, device: torch.device,
                      on_step: Callable[[int, float], None] | None = None,
                      schedule: LRSchedule | None = None,
                      optimizer_store: OptimizerStore | None = None, proximal_mu: float = 0.0,
                      initial_checkpoint_sha256: str | None = None, run_key: str | None = None,
                      before_record: Callable[[TrainedUpdate], None] | None = None) -> RoundOutcome:
    """Train ``model`` for ``local_steps`` private steps, unless that would exceed the budget.

    Args:
        model: Trained in place (a federated round's global model).
        dataset: One item per patient, Poisson-sampled at rate ``patients_per_step / len``.
        ledger: The site's ledger: the accountant is rebuilt from it; the round is appended.
        site: The site's own budget and delta.
        dp: Clipping, batch and accountant settings.
        train: The optimizer settings (``make_optimizer``); the lr comes from ``schedule``.
        noise_multiplier: This round's sigma.
        round: The round the ledger records (global in a federated run).
        local_steps: Private steps to take.
        first_step: The global step of the first one (its place in ``schedule``).
        device: Where to train.
        on_step: Called with (local step, loss) after every step.
        schedule: The run's learning-rate schedule (default ``LRSchedule.of_training(train)``).
        optimizer_store: Keeps the optimizer's state between rounds (loaded before the first
            step, saved after the ledger entry); None: a fresh optimizer.
        proximal_mu: FedProx's mu, added after the noise step (:mod:`fedgenome.privacy.proximal`).
        initial_checkpoint_sha256: The run's initial checkpoint, signed into the ledger entry.
        run_key: The server's run key, signed into the entry with ``round``: the (run, round) served.
        before_record: Called after training and before the ledger entry is written, to keep the
            update that a retry of the same round re-sends (:mod:`fedgenome.client.outgoing`); if it raises,
            nothing is recorded.
    """
    patients = len(dataset)  # type: ignore[arg-type]
    check_site_settings(site, dp, patients)
    q = sample_rate_of(patients_per_step=dp.patients_per_step, patients=patients)
    mechanism = Mechanism(noise_multiplier=noise_multiplier, sample_rate=q, steps=local_steps)
    planned = epsilon(history=[*ledger.mechanisms(), mechanism], delta=site.delta,
                      accountant=dp.accountant)

    def record(status: Literal["trained", "refused"], steps: int, eps: float,
               digest: str | None) -> LedgerEntry:
        return ledger.append(round=round, status=status, local_steps=steps, sample_rate=q,
                             noise_multiplier=noise_multiplier, max_grad_norm=dp.max_grad_norm,
                             delta=site.delta, accountant=dp.accountant, epsilon=eps,
                             update_sha256=digest, epsilon_budget=site.epsilon_budget,
                             initial_checkpoint_sha256=initial_checkpoint_sha256, run_key=run_key)

    if planned > site.epsilon_budget:
        entry = record("refused", 0, ledger.epsilon, None)
        log.warning("round %d refused: it would bring epsilon to %.3f, past the budget %.3f",
                    round, planned, site.epsilon_budget)
        return RoundOutcome("refused", round, 0, ledger.epsilon, planned, site.epsilon_budget, (),
                            None, entry)
    model.to(device).train()
    optimizer = make_optimizer(model, train)
    if optimizer_store is not None and optimizer_store.load_into(optimizer, model) is not None:
        log.info("round %d continues the optimizer state of %s", round, optimizer_store.path)
    schedule = schedule or LRSchedule.of_training(train)
    losses = _private_steps(model=model, optimizer=optimizer, dataset=dataset, dp=dp,
                            noise_multiplier=noise_multiplier, device=device,
                            lrs=[schedule.at(first_step + s) for s in range(local_steps)],
                            proximal_mu=proximal_mu, on_step=on_step)
    digest = state_sha256(model.state_dict())
    if before_record is not None:
        before_record(TrainedUpdate(round, local_steps, planned, site.epsilon_budget, tuple(losses), digest))
    entry = record("trained", local_steps, planned, digest)
    if optimizer_store is not None:  # only now: the steps it holds are in the ledger
        optimizer_store.save(optimizer, model, round=round)
    return RoundOutcome("trained", round, local_steps, planned, planned, site.epsilon_budget,
                        tuple(losses), digest, entry)


def _private_steps(*, model: nn.Module, optimizer: torch.optim.Optimizer,
                   dataset: Dataset[torch.Tensor], dp: DPConfig, noise_multiplier: float,
                   device: torch.device, lrs: list[float], proximal_mu: float,
                   on_step: Callable[[int, float], None] | None) -> list[float]:
    """One private step per learning rate in ``lrs``; the losses."""
    setup = make_private(model=model, optimizer=optimizer, dataset=dataset, settings=dp,
                         noise_multiplier=noise_multiplier)
    proximal = (add_proximal_term(setup.optimizer.original_optimizer, mu=proximal_mu)
                if proximal_mu > 0 else None)
    losses: list[float] = []
    try:
        batches = _endless(setup.data_loader)
        for step, lr in enumerate(lrs):
            for group in setup.optimizer.param_groups:
                group["lr"] = lr
            losses.append(private_step(setup, next(batches), device=device))
            if on_step is not None:
                on_step(step + 1, losses[-1])
    finally:
        if proximal is not None:
            proximal.remove()
        setup.close()
    return losses

"""A hospital's side of a federated round: the one place that touches the site's paths and state.

No Flower here: ``client/app.py`` unpacks Flower's records, calls :meth:`SiteNode.train_round`,
and packs the :class:`SiteReply` it returns.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from fedgenome.client.cache import load_preset, noise_for, open_site  # kept between messages
from fedgenome.client.outgoing import Outgoing, keep_outgoing, load_outgoing
from fedgenome.configs.errors import ConfigError
from fedgenome.configs.schema import (
    DataConfig,
    FederationConfig,
    Preset,
    Region,
    SiteManifest,
    load_site_manifest,
)
from fedgenome.privacy.evaluation import run_private_evaluation
from fedgenome.privacy.ledger.core import Ledger, LedgerEntry
from fedgenome.privacy.ledger.entry import RUN_KEY
from fedgenome.privacy.ledger.head import HeadDigest
from fedgenome.privacy.optim_state import OptimizerStore
from fedgenome.privacy.round_plan import dp_settings, evaluation_reserve, plan_round, run_steps
from fedgenome.privacy.site_state import open_ledger, site_key_path
from fedgenome.privacy.trainer import TrainedUpdate, run_private_round
from fedgenome.shared import wire
from fedgenome.shared.atomic import atomic_path
from fedgenome.shared.checkpoint import load_weights, state_sha256
from fedgenome.shared.markov_prior import build_model
from fedgenome.shared.model import GenomeLM
from fedgenome.shared.patient_bits import patient_bits, patient_bits_at
from fedgenome.shared.preflight import check_writable
from fedgenome.shared.schedule import LRSchedule, first_step
from fedgenome.shared.train import pick_device
from fedgenome.shared.variant_panel import check_positions

log = logging.getLogger(__name__)
OUTBOX = "outbox"


@dataclass(frozen=True)
class SiteReply:
    """What a site sends back: a float16 delta (None when refused) and allow-listed metrics."""

    site: str
    delta: dict[str, npt.NDArray[np.float16]] | None
    metrics: dict[str, float | int]
    ledger_head: HeadDigest | None = None
    """The ledger's signed head after this round, for the server's continuity check (not sent yet)."""


class SiteNode:
    """A site directory, as named by the SuperNode's node config (``site='/abs/path'``)."""

    def __init__(self, site_dir: Path, *, keep_updates: bool = False) -> None:
        self.site_dir = site_dir
        self.manifest: SiteManifest = load_site_manifest(site_dir)
        self.keep_updates = keep_updates

    @classmethod
    def from_node_config(cls, node_config: dict[str, Any]) -> SiteNode:
        """The site named by node config key ``site`` (an absolute path).

        Node config ``keep-updates=true`` keeps a copy of every update sent in ``state/outbox/``.
        """
        site = node_config.get(wire.NODE_SITE)
        if not isinstance(site, str) or not Path(site).is_absolute():
            raise ConfigError(f"node config 'site' = {site!r}: start the SuperNode with "
                              "--node-config \"site='/absolute/path/to/site'\"")
        keep = node_config.get(wire.NODE_KEEP_UPDATES, False)
        if not isinstance(keep, bool):
            raise ConfigError(f"node config 'keep-updates' = {keep!r}: use true or false")
        return cls(Path(site), keep_updates=keep)

    @staticmethod
    def parameter_names(fed: FederationConfig) -> list[str]:
        """The global model's array names in state-dict order (how legacy records order them)."""
        with torch.device("meta"):
            return list(GenomeLM(load_preset(fed.preset).model).state_dict())

    def train_round(self, global_: wire.Arrays, fed: FederationConfig, *, global_round: int,
                    run_key: str | None = None, initial_sha256: str | None = None,
                    markov_prior: str | None = None) -> SiteReply:
        """Private local training from the global weights, unless the budget forbids it.

        Exactly once per (run, round): when the ledger already has a trained entry for
        (``run_key``, ``global_round``) (a resumed server asking again), nothing is trained or
        spent: the update kept in ``state/outgoing/`` is sent again, or, when it is gone, the round
        is refused (:mod:`fedgenome.client.outgoing` has the crash windows).

        Args:
            global_: The global model's weights.
            fed: The run's settings.
            global_round: The server's (global) round number: the ledger's round and the place
                of this round in the run's learning-rate schedule.
            run_key: The run's key from the server, signed into the ledger entry with the round;
                with ``optimizer-state = "persist"`` the site's optimizer state is kept under it.
            initial_sha256: The SHA-256 of the run's initial checkpoint, signed into the ledger
                entry; in round 1 it must be the hash of ``global_``.
            markov_prior: The fingerprint of the server's Markov prior; the site's own (from its
                reference minus the run's held-out region) must be the same.
        """
        if run_key is not None and not RUN_KEY.fullmatch(run_key):
            raise ConfigError(f"run key {run_key!r} from the server is not 32 lowercase hex digits")
        self.check_writable()  # before anything is opened, written or spent
        ledger = open_ledger(self.site_dir, self.manifest.name)
        if self.manifest.role == "unseen":  # a held-out cohort: evaluated where it lives, never trained on
            return self._refuse_unseen(ledger, fed, global_round=global_round, run_key=run_key,
                                       initial_sha256=initial_sha256)
        done = None if run_key is None else ledger.trained_entry(run_key=run_key, round=global_round)
        if done is not None and run_key is not None:
            return self._answer_again(ledger, done, run_key=run_key)
        preset = load_preset(fed.preset)
        train_cfg = preset.train.model_copy(update={
            "lr": fed.lr, "optimizer": fed.local_optimizer, "momentum": fed.local_momentum})
        data = open_site(self.site_dir, round_data(preset, fed), seed=fed.seed * 100_003 + global_round,
                         cache_dir=self.state_dir)
        model = self.model(preset, fed, markov_prior)
        load_weights(model, wire.arrays_to_state(global_),
                     source="the global model")
        _check_initial(model, initial_sha256, global_round=global_round)
        plan = plan_round(dp=dp_settings(preset, fed), site=self.manifest.privacy,
                          patients=len(data.dataset), total_steps=run_steps(fed), calibrate=noise_for,
                          reserved=evaluation_reserve(fed))
        examples, sent = wire.bucket(len(data.dataset)), list[SiteReply]()
        keep = self._keeper(model, global_, sent, examples=examples, run_key=run_key,
                            global_round=global_round)
        outcome = run_private_round(
            model=model, dataset=data.dataset, ledger=ledger, site=plan.site, dp=plan.settings,
            train=train_cfg, noise_multiplier=plan.noise_multiplier, round=global_round,
            local_steps=fed.local_steps,
            device=pick_device(preset.train.device), schedule=LRSchedule.of_federation(fed),
            first_step=first_step(global_round, fed.local_steps),
            optimizer_store=self.optimizer_store(fed, run_key),
            proximal_mu=fed.proximal_mu if fed.strategy == "fedprox" else 0.0,
            initial_checkpoint_sha256=initial_sha256, run_key=run_key, before_record=keep)
        if outcome.status != "trained":
            refused = _metrics(wire.REFUSED, outcome.epsilon, outcome.budget, 0, examples,
                               delta=self.manifest.privacy.delta)
            return SiteReply(self.manifest.name, None, refused, ledger.head_digest())
        if self.keep_updates and sent[0].delta is not None:
            self._keep(sent[0].delta, global_round=global_round, seq=outcome.entry.seq)
        return dataclasses.replace(sent[0], ledger_head=ledger.head_digest())  # egress checks what leaves

    def _keeper(self, model: GenomeLM, global_: wire.Arrays, sent: list[SiteReply], *, examples: int,
                run_key: str | None, global_round: int) -> Callable[[TrainedUpdate], None]:
        """What runs after training, before the ledger entry: build the reply, keep it (with a run key)."""

        def keep(update: TrainedUpdate) -> None:
            metrics = _metrics(wire.TRAINED, update.epsilon, update.budget, update.steps, examples,
                               delta=self.manifest.privacy.delta)
            reply = SiteReply(self.manifest.name, wire.encode_update(model.state_dict(), global_),
                              {**metrics, wire.TRAIN_LOSS: update.mean_loss})
            if run_key is not None:
                keep_outgoing(self.state_dir, Outgoing(run_key, global_round, update.update_sha256,
                                                       reply.metrics, reply.delta or {}))
            sent.append(reply)

        return keep

    def _refuse_unseen(self, ledger: Ledger, fed: FederationConfig, *, global_round: int,
                       run_key: str | None, initial_sha256: str | None) -> SiteReply:
        """An unseen cohort's answer to a train message: a refusal, recorded, spending nothing."""
        log.info("round %d: %s is an unseen cohort (role = \"unseen\"): it evaluates, never trains",
                 global_round, self.manifest.name)
        privacy, dp = self.manifest.privacy, dp_settings(load_preset(fed.preset), fed)
        if run_key is None or ledger.spent_entry("refused", run_key=run_key, round=global_round) is None:
            ledger.append(round=global_round, status="refused", local_steps=0, sample_rate=0.0,
                          noise_multiplier=0.0, max_grad_norm=dp.max_grad_norm, delta=privacy.delta,
                          accountant=dp.accountant, epsilon=ledger.epsilon, update_sha256=None,
                          epsilon_budget=privacy.epsilon_budget, initial_checkpoint_sha256=initial_sha256,
                          run_key=run_key)
        return self._refusal(ledger)

    def _refusal(self, ledger: Ledger, *, budget: float | None = None) -> SiteReply:
        """A refusal that spends nothing: the ledger's epsilon, the budget (default the site's), its head."""
        privacy = self.manifest.privacy
        return SiteReply(self.manifest.name, None, _metrics(
            wire.REFUSED, ledger.epsilon, privacy.epsilon_budget if budget is None else budget, 0, None,
            delta=privacy.delta), ledger.head_digest())

    @property
    def state_dir(self) -> Path:
        """The site's ``state/``: ledger, caches, optimizer state, the last update sent."""
        return self.site_dir / "state"

    def _answer_again(self, ledger: Ledger, done: LedgerEntry, *, run_key: str) -> SiteReply:
        """A round already trained: its kept update again (no new spend), or a refusal without it."""
        kept = load_outgoing(self.state_dir, run_key=run_key, round=done.round,
                             update_sha256=done.update_sha256 or "")
        if kept is not None:
            log.warning("round %d of run %s was already trained (ledger entry %d): sending the same "
                        "update again, spending nothing", done.round, run_key[:8], done.seq)
            return SiteReply(self.manifest.name, kept.delta, kept.metrics, ledger.head_digest())
        log.warning("round %d of run %s was already trained (ledger entry %d) but its update was not "
                    "kept: refusing the round rather than spending on it again", done.round, run_key[:8],
                    done.seq)
        return self._refusal(ledger, budget=done.epsilon_budget)

    def check_writable(self) -> None:
        """Before any training: the site can write its ledger, cache and (first time) its key."""
        fix = "make the site directory writable (chmod u+w) for the user running the SuperNode"
        check_writable(self.site_dir / "state", what="the site's ledger and cache", fix=fix)
        key = site_key_path(self.site_dir, self.manifest.name)
        if not key.exists():
            check_writable(key.parent, what="the site's signing key", fix=fix)

    def optimizer_store(self, fed: FederationConfig, run_key: str | None) -> OptimizerStore | None:
        """Where this run's optimizer state persists (None: a fresh optimizer every round)."""
        if fed.optimizer_state == "reset":
            return None
        if run_key is None:
            log.warning("the server sent no run key: this round starts a fresh optimizer "
                        "(optimizer-state = 'persist' needs a server that sends 'run-key')")
            return None
        return OptimizerStore.for_run(self.site_dir / "state", run_key=run_key,
                                      optimizer=fed.local_optimizer)

    def _keep(self, delta: dict[str, npt.NDArray[np.float16]], *, global_round: int, seq: int) -> None:
        """Keep the update about to be sent: ``state/outbox/round-RRRR-entry-SSSSS.npz``."""
        path = self.state_dir / OUTBOX / f"round-{global_round:04d}-entry-{seq:05d}.npz"
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **delta)  # type: ignore[arg-type]

    def model(self, preset: Preset, fed: FederationConfig, markov_prior: str | None) -> GenomeLM:
        """The run's model; a Markov prior from this site's reference minus the run's held-out region."""
        return build_model(preset.model, reference=self.manifest.reference,
                           exclude=[Region.parse(fed.holdout)], fingerprint=markov_prior)

    def private_evaluate(self, global_: wire.Arrays, fed: FederationConfig, *, global_round: int,
                         run_key: str | None = None, initial_sha256: str | None = None,
                         markov_prior: str | None = None,
                         positions: tuple[int, ...] | None = None) -> SiteReply:
        """Bits per base of the global model on this site's patients, released with DP and accounted.

        Each patient's bits on their own held-out haplotypes (``site-eval-windows`` windows, or with
        a panel their bases at the public ``positions`` the server sent) are clipped, summed and
        released through the Gaussian mechanism of :mod:`fedgenome.privacy.evaluation`, spent from
        the site's budget and written to its ledger before the reply leaves; past the budget the
        evaluation is refused like a training round.
        """
        if run_key is not None and not RUN_KEY.fullmatch(run_key):
            raise ConfigError(f"run key {run_key!r} from the server is not 32 lowercase hex digits")
        self.check_writable()
        preset = load_preset(fed.preset)
        bits = self._evaluation(global_, preset, fed, markov_prior=markov_prior, positions=positions)
        ledger = open_ledger(self.site_dir, self.manifest.name)
        privacy = self.manifest.privacy
        done = (None if run_key is None
                else ledger.spent_entry("evaluated", run_key=run_key, round=global_round))
        if done is not None:  # asked again (a resumed server): never spend twice on one release
            log.warning("round %d of run %s was already evaluated (ledger entry %d): refusing, spending "
                        "nothing", global_round, (run_key or "")[:8], done.seq)
            return self._refusal(ledger)
        out = run_private_evaluation(per_patient_bits=bits, ledger=ledger, site=privacy,
                                     accountant=dp_settings(preset, fed).accountant,
                                     noise_multiplier=fed.site_eval_noise, clip=fed.site_eval_clip,
                                     round=global_round, run_key=run_key,
                                     initial_checkpoint_sha256=initial_sha256)
        metrics = _metrics(wire.TRAINED if out.release is not None else wire.REFUSED, out.epsilon,
                           out.budget, 0, None, delta=privacy.delta)
        if out.release is not None:
            metrics[wire.EVAL_BITS] = out.release.bits_per_base
            metrics[wire.EVAL_BITS_STD] = out.release.noise_std(fed.site_eval_noise)
        return SiteReply(self.manifest.name, None, metrics, ledger.head_digest())


    def _evaluation(self, global_: wire.Arrays, preset: Preset, fed: FederationConfig, *,
                    markov_prior: str | None, positions: tuple[int, ...] | None
                    ) -> Callable[[], np.ndarray]:
        """What the release measures: each patient's bits of the global model, computed when called."""
        data = open_site(self.site_dir, preset.data, seed=fed.seed, cache_dir=self.state_dir)
        cohort = getattr(data.dataset, "cohort", None)
        if data.reference is None or cohort is None:
            raise ConfigError(f"{self.site_dir}: a private evaluation needs a VCF site (its patients' "
                              "haplotypes)")
        region = Region.parse(fed.holdout)
        if fed.site_eval_panel and positions is None:
            raise ConfigError("the server sent no evaluation positions although the run config names "
                              "a site-eval-panel: refusing")
        if positions is not None:
            if not fed.site_eval_panel:
                raise ConfigError("the server sent evaluation positions although the run config names "
                                  "no site-eval-panel: refusing")
            check_positions(positions, region, context=fed.site_eval_context)
        model = self.model(preset, fed, markov_prior)
        load_weights(model, wire.arrays_to_state(global_), source="the global model")
        reference, device = data.reference, pick_device(preset.train.device)

        def bits() -> np.ndarray:
            if positions is not None:
                return patient_bits_at(model, cohort, reference, region.contig, positions,
                                       context=fed.site_eval_context, device=device)
            return patient_bits(model, cohort, reference, region, window=preset.data.window,
                                per_patient=fed.site_eval_windows,
                                max_n_fraction=preset.data.max_n_fraction, device=device)

        return bits

def _metrics(status: int, epsilon: float, budget: float, steps: int,
             examples: int | None, *, delta: float) -> dict[str, float | int]:
    """A train reply's metrics (``examples``: the bucketed patient count; None leaves it out)."""
    metrics: dict[str, float | int] = {wire.STATUS: status, wire.EPSILON: epsilon, wire.BUDGET: budget,
                                       wire.STEPS: steps, wire.DELTA: delta}
    if examples is not None:
        metrics[wire.NUM_EXAMPLES] = examples
    return metrics


def round_data(preset: Preset, fed: FederationConfig) -> DataConfig:
    """The preset's data settings with the run's windows per patient."""
    return preset.data.model_copy(update={"windows_per_patient": fed.windows_per_patient})


def _check_initial(model: GenomeLM, initial_sha256: str | None, *, global_round: int) -> None:
    """Refuse to sign an initial checkpoint hash that is malformed, or in round 1 not the model's."""
    if initial_sha256 is None:
        return
    if not re.fullmatch(r"[0-9a-f]{64}", initial_sha256):
        raise ConfigError(f"initial-sha256 {initial_sha256!r} from the server is not 64 lowercase "
                          "hex digits")
    if global_round == 1 and state_sha256(model.state_dict()) != initial_sha256:
        raise ConfigError(f"the server announced initial checkpoint {initial_sha256[:16]}... but "
                          "round 1's global weights have another SHA-256; not training on them")

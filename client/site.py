"""A hospital's side of a federated round: the one place that touches the site's paths and state.

No Flower here: ``client/app.py`` unpacks Flower's records, calls :meth:`SiteNode.train_round`,
and packs the :class:`SiteReply` it returns.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from client.cache import load_preset, noise_for, open_site  # kept between messages
from configs.schema import DPConfig, FederationConfig, SiteManifest, load_site_manifest
from privacy.site_state import open_ledger
from privacy.trainer import run_private_round
from shared import wire
from shared.atomic import atomic_path
from shared.checkpoint import load_weights
from shared.datasets import n_fraction
from shared.errors import ConfigError
from shared.model import GenomeLM
from shared.train import evaluate, pick_device

log = logging.getLogger(__name__)
OUTBOX = "outbox"


@dataclass(frozen=True)
class SiteReply:
    """What a site sends back: a float16 delta (None when refused) and allow-listed metrics."""

    site: str
    delta: dict[str, npt.NDArray[np.float16]] | None
    metrics: dict[str, float | int]


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
        site = node_config.get("site")
        if not isinstance(site, str) or not Path(site).is_absolute():
            raise ConfigError(f"node config 'site' = {site!r}: start the SuperNode with "
                              "--node-config \"site='/absolute/path/to/site'\"")
        keep = node_config.get("keep-updates", False)
        if not isinstance(keep, bool):
            raise ConfigError(f"node config 'keep-updates' = {keep!r}: use true or false")
        return cls(Path(site), keep_updates=keep)

    @staticmethod
    def parameter_names(fed: FederationConfig) -> list[str]:
        """The global model's array names in state-dict order (how legacy records order them)."""
        with torch.device("meta"):
            return list(GenomeLM(load_preset(fed.preset).model).state_dict())

    def train_round(self, global_: wire.Arrays, fed: FederationConfig, *,
                    global_round: int) -> SiteReply:
        """Private local training from the global weights, unless the budget forbids it."""
        preset = load_preset(fed.preset)
        train_cfg = preset.train.model_copy(update={"lr": fed.lr, "warmup_steps": 0,
                                                    "steps": fed.local_steps})
        dp = DPConfig(noise_multiplier=fed.noise_multiplier or None,
                      target_epsilon=fed.target_epsilon, max_grad_norm=fed.max_grad_norm,
                      patients_per_step=fed.patients_per_step,
                      grad_sample_mode=preset.privacy.grad_sample_mode,
                      accountant=preset.privacy.accountant)
        device = pick_device(preset.train.device)
        data = open_site(self.site_dir, preset.data, seed=fed.seed * 100_003 + global_round,
                         cache_dir=self.site_dir / "state")
        model = GenomeLM(preset.model)
        load_weights(model, wire.arrays_to_state(global_),
                     source="the global model")
        q = dp.patients_per_step / len(data.dataset)
        sigma = noise_for(dp=dp, site=self.manifest.privacy, sample_rate=min(q, 1.0),
                          total_steps=fed.num_server_rounds * fed.local_steps)
        outcome = run_private_round(
            model=model, dataset=data.dataset, ledger=open_ledger(self.site_dir, self.manifest.name),
            site=self.manifest.privacy, dp=dp, train=train_cfg, noise_multiplier=sigma,
            round=global_round, local_steps=fed.local_steps, device=device,
            seed=fed.seed * 100_003 + global_round)
        metrics: dict[str, float | int] = {
            wire.STATUS: wire.TRAINED if outcome.status == "trained" else wire.REFUSED,
            wire.EPSILON: outcome.epsilon, wire.BUDGET: outcome.budget, wire.STEPS: outcome.steps,
            wire.NUM_EXAMPLES: wire.bucket(len(data.dataset))}
        delta = None
        if outcome.status == "trained":
            metrics[wire.TRAIN_LOSS] = outcome.mean_loss
            delta = wire.encode_update(model.state_dict(), global_)
            if self.keep_updates:
                self._keep(delta, global_round=global_round, seq=outcome.entry.seq)
        return SiteReply(self.manifest.name, delta, metrics)  # client/egress.py checks what leaves

    def _keep(self, delta: dict[str, npt.NDArray[np.float16]], *, global_round: int, seq: int) -> None:
        """Keep the update about to be sent: ``state/outbox/round-RRRR-entry-SSSSS.npz``."""
        path = self.site_dir / "state" / OUTBOX / f"round-{global_round:04d}-entry-{seq:05d}.npz"
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **delta)  # type: ignore[arg-type]

    def evaluate(self, global_: wire.Arrays, fed: FederationConfig) -> tuple[float, int]:
        """Bits per base of the global model on the site's own patients' held-out windows.

        Returns the bits per base and the number of patients' windows scored.
        """
        preset = load_preset(fed.preset)
        data = open_site(self.site_dir, preset.data, seed=fed.seed, cache_dir=self.site_dir / "state")
        dataset = data.dataset
        if data.reference is None or not data.manifest.holdout or not hasattr(dataset, "cohort"):
            raise ConfigError(f"{self.site_dir}: federated evaluation needs a VCF site with a "
                              "held-out region")
        region, span = data.manifest.holdout[0], preset.data.window + 1
        ref = data.reference.tokens(region.contig)
        rows: list[npt.NDArray[np.uint8]] = []
        for i, start in enumerate(np.linspace(region.start, region.end - span, fed.eval_windows * 2)):
            window = ref[int(start) : int(start) + span]
            if n_fraction(window) <= preset.data.max_n_fraction and len(rows) < fed.eval_windows:
                rows.append(dataset.cohort.apply(window, patient=i % len(dataset), hap=i % 2,
                                                 contig=region.contig, start=int(start)))
        model = GenomeLM(preset.model)
        load_weights(model, wire.arrays_to_state(global_),
                     source="the global model")
        windows = torch.from_numpy(np.stack(rows).astype(np.int64))
        result = evaluate(model, windows, device=pick_device(preset.train.device))
        return result.bits_per_base, len(rows)

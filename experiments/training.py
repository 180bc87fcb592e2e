"""Centralized training runs behind ``fedgenome train`` and the demo: plain, or patient-level DP."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import ConcatDataset

from fedgenome.configs.errors import ConfigError, PrivacyBudgetExhausted
from fedgenome.configs.schema import Preset, Region, SitePrivacy, load_site_manifest
from fedgenome.privacy.round_plan import plan_round
from fedgenome.privacy.site_state import open_ledger, site_key_path
from fedgenome.privacy.trainer import RoundOutcome, TrainedUpdate, run_private_round
from fedgenome.shared.atomic import atomic_dir
from fedgenome.shared.checkpoint import InitialCheckpoint, load_initial, save_checkpoint, write_checkpoint
from fedgenome.shared.clock import utc_now_text
from fedgenome.shared.datasets import RecordWindows, SiteData, open_site, tile_windows
from fedgenome.shared.markov_fields import PRIVACY_NOTE, BaselineScore
from fedgenome.shared.markov_prior import build_model
from fedgenome.shared.model import GenomeLM
from fedgenome.shared.preflight import check_writable
from fedgenome.shared.reference_markov import reference_baseline
from fedgenome.shared.train import EvalResult, endless, evaluate, pick_device, train

log = logging.getLogger(__name__)
ProgressFactory = Callable[[int], Any]  # total steps -> context manager yielding on_step(step, loss)


@dataclass(frozen=True)
class Workspace:
    """Opened sites, the held-out evaluation windows and the device of a run."""

    sites: list[SiteData]
    eval_windows: torch.Tensor
    device: torch.device
    meta: dict[str, Any]
    """What the checkpoint's metadata records of the run (preset, sites, reference, held-out regions)."""

    @property
    def reference(self) -> Path:
        """The first site's reference FASTA, the public sequence the Markov prior is counted on."""
        return Path(self.meta["reference"])

    @property
    def holdout(self) -> list[Region]:
        """The held-out regions: left out of the Markov counts, tiled into the evaluation windows."""
        return [Region(**r) for r in self.meta["holdout"]]


@dataclass(frozen=True)
class TrainingRun:
    """A trained model's held-out scores, where it was saved, and what it spent."""

    before: EvalResult
    """The start's held-out scores (random or initial weights)."""
    after: EvalResult
    """The trained model's, on the same windows."""
    checkpoint: Path
    markov: BaselineScore
    privacy: RoundOutcome | None = None
    """What a DP run spent (its ledger entry's epsilon and budget); None for a plain run."""


def prepare(sites: list[Path], preset: Preset, *, preset_name: str, device_name: str) -> Workspace:
    """Open every site and tile the first site's held-out regions into evaluation windows."""
    device = pick_device(device_name if device_name != "auto" else preset.train.device)
    torch.manual_seed(preset.train.seed)
    opened = [open_site(s, preset.data, seed=preset.train.seed + i, cache_dir=s / "state")
              for i, s in enumerate(sites)]
    warn_shared_units(opened)
    first = opened[0]
    if first.reference is None:
        raise ConfigError(f"{sites[0]}: held-out evaluation needs a reference; list a VCF site first")
    holdout = first.manifest.holdout
    windows = tile_windows({r.contig: first.reference.tokens(r.contig) for r in holdout}, holdout,
                           window=preset.data.window, count=preset.data.eval_windows,
                           max_n_fraction=preset.data.max_n_fraction)
    meta = {"preset": preset_name, "data": preset.data.model_dump(),
            "train": preset.train.model_dump(), "sites": [o.manifest.name for o in opened],
            "reference": str(first.reference.path), "holdout": [r.model_dump() for r in holdout]}
    log.info("%d patients in %d sites; device %s", sum(len(o.dataset) for o in opened),
             len(opened), device)
    return Workspace(opened, windows, device, meta)


def warn_shared_units(opened: list[SiteData]) -> None:
    """Warn when one unit id (a patient) is at several sites pooled together: it counts twice."""
    if len(opened) < 2:
        return
    seen: Counter[str] = Counter()
    for site in opened:
        ds = site.dataset
        seen.update(set(ds.names if isinstance(ds, RecordWindows) else ds.cohort.samples))
    shared = sorted(u for u, n in seen.items() if n > 1)
    if shared:
        log.warning("%d sample ids are at more than one of the pooled sites (%s%s): each such "
                    "person counts once per site, so under --dp their privacy loss is more than "
                    "the epsilon reported; keep each person at one site", len(shared),
                    ", ".join(shared[:5]), ", ..." if len(shared) > 5 else "")


def check_outputs(sites: list[Path], *, out: Path, ledger_dir: Path | None = None) -> None:
    """Before any training: every directory the run writes (caches, ledger, checkpoint) is writable."""
    for site in sites:
        check_writable(site / "state", what="the site's cache", fix="make the site directory "
                       "writable (chmod u+w) for the user who trains")
    if ledger_dir is not None:
        check_writable(ledger_dir, what="the privacy ledger", fix="make it writable, or pass "
                       "--privacy-state DIR")
    check_writable(out.parent, what=f"the checkpoint {out.name}", fix="choose another --out")


def new_model(ws: Workspace, preset: Preset) -> GenomeLM:
    """The preset's model on the run's device; its Markov prior (if any) from the run's reference."""
    return build_model(preset.model, reference=ws.reference, exclude=ws.holdout).to(ws.device)


def markov_score(ws: Workspace) -> BaselineScore:
    """The best-k Markov baseline on the run's evaluation windows (it costs no privacy).

    Counted on the public reference minus the held-out regions, never on the sites' patients, so it
    is the same for a plain and a DP run and spends nothing from any budget.
    """
    score = reference_baseline(ws.reference, exclude=ws.holdout).score(ws.eval_windows)
    log.info("%s: %.4f held-out bits per base (%s)", score.label, score.bits_per_base, PRIVACY_NOTE)
    return score


@contextmanager
def _no_progress(total: int) -> Iterator[None]:
    yield None


def initial_model(ws: Workspace, preset: Preset,
                  init: Path | None) -> tuple[GenomeLM, InitialCheckpoint | None]:
    """The model a run starts from: ``init``'s weights (its model must be the preset's), or new."""
    if init is None:
        return new_model(ws, preset), None
    initial = load_initial(init, model=preset.model)
    log.info("starting from %s (weights SHA-256 %s)", initial.path, initial.sha256)
    return initial.model.to(ws.device), initial


def run_baseline(sites: list[Path], preset: Preset, *, out: Path, preset_name: str,
                 device_name: str, progress: ProgressFactory = _no_progress,
                 init: Path | None = None) -> TrainingRun:
    """Train the non-private baseline on every site's patients, evaluate, save a checkpoint.

    ``init`` is a checkpoint directory to start from (default: a random model).
    """
    check_outputs(sites, out=out)
    ws = prepare(sites, preset, preset_name=preset_name, device_name=device_name)
    model, initial = initial_model(ws, preset, init)
    before = evaluate(model, ws.eval_windows, device=ws.device)
    markov = markov_score(ws)
    batches = endless(ConcatDataset([o.dataset for o in ws.sites]), preset.train.batch_size,
                      preset.train.seed)
    with progress(preset.train.steps) as on_step:
        result = train(model, batches, preset.train, device=ws.device, on_step=on_step)
    after = evaluate(model, ws.eval_windows, device=ws.device)
    meta = {**ws.meta, "initial_checkpoint": initial.record() if initial else None,
            "steps": result.steps, "seconds": round(result.seconds, 1),
            "heldout_bits_per_base": after.bits_per_base, **markov.to_json(),
            "created": utc_now_text()}
    save_checkpoint(out, model, meta=meta)
    return TrainingRun(before, after, out, markov)


def run_private(sites: list[Path], preset: Preset, *, out: Path, preset_name: str,
                device_name: str, state_dir: Path | None,
                progress: ProgressFactory = _no_progress, init: Path | None = None) -> TrainingRun:
    """Train with patient-level DP-SGD, spending from the site's (or the pool's) privacy ledger.

    One site: its own key, ledger and budget. Several sites pooled centrally: a ledger and key in
    ``state_dir``, with the strictest budget and delta of the sites. ``init`` is a checkpoint
    directory to start from; the SHA-256 of its weights is signed into the ledger entry. The
    checkpoint is written whole into a staging directory before the ledger records the epsilon,
    and moved to ``out`` after: a failed save records nothing.
    """
    if len(sites) > 1 and state_dir is None:
        raise ConfigError(f"pooling {len(sites)} sites centrally under DP needs a ledger of its "
                          "own: pass --privacy-state DIR")
    check_outputs(sites, out=out, ledger_dir=state_dir or sites[0] / "state")
    key = site_key_path(sites[0], load_site_manifest(sites[0]).name)
    if len(sites) == 1 and not key.exists():  # made on first use, before training
        check_writable(key.parent, what="the site's signing key", fix="make the site directory "
                       "writable (chmod u+w)")
    ws = prepare(sites, preset, preset_name=preset_name, device_name=device_name)
    if len(sites) == 1:
        manifest = ws.sites[0].manifest
        ledger, budget = open_ledger(sites[0], manifest.name, state_dir=state_dir), manifest.privacy
    else:
        assert state_dir is not None
        ledger = open_ledger(state_dir, "pooled", state_dir=state_dir)
        budget = SitePrivacy(epsilon_budget=min(o.manifest.privacy.epsilon_budget for o in ws.sites),
                             delta=min(o.manifest.privacy.delta for o in ws.sites))
    dataset: ConcatDataset[torch.Tensor] = ConcatDataset([o.dataset for o in ws.sites])
    plan = plan_round(dp=preset.privacy, site=budget, patients=len(dataset),
                      total_steps=preset.train.steps)
    model, initial = initial_model(ws, preset, init)
    before = evaluate(model, ws.eval_windows, device=ws.device)
    markov = markov_score(ws)
    scored: list[EvalResult] = []
    with atomic_dir(out) as staging, progress(preset.train.steps) as on_step:

        def stage(update: TrainedUpdate) -> None:  # the whole checkpoint, before the ledger records it
            eps = update.epsilon
            scored.append(evaluate(model, ws.eval_windows, device=ws.device))
            meta = {**ws.meta, "initial_checkpoint": initial.record() if initial else None,
                    "steps": preset.train.steps, "heldout_bits_per_base": scored[0].bits_per_base,
                    **markov.to_json(), "privacy": {
                        **preset.privacy.model_dump(), "noise_multiplier": plan.noise_multiplier,
                        "sample_rate": plan.sample_rate,
                        "delta": budget.delta, "epsilon": eps, "epsilon_budget": budget.epsilon_budget,
                        "ledger": str(ledger.path)},
                    "created": utc_now_text()}
            write_checkpoint(staging, model, meta=meta)

        outcome = run_private_round(
            model=model, dataset=dataset, ledger=ledger, site=plan.site, dp=plan.settings,
            train=preset.train, noise_multiplier=plan.noise_multiplier, round=(ledger.last_round or 0) + 1,
            local_steps=preset.train.steps, device=ws.device, on_step=on_step, before_record=stage,
            initial_checkpoint_sha256=initial.sha256 if initial else None)
        if outcome.status == "refused":  # leaving the block by an error discards the staging
            raise PrivacyBudgetExhausted(
                f"budget exhausted: this run would bring epsilon to {outcome.planned_epsilon:.3f}, "
                f"past the budget {outcome.budget:g} ({ledger.path} has spent "
                f"{outcome.epsilon:.3f}); nothing was trained (fewer steps, more noise, or a new "
                "budget)")
    return TrainingRun(before, scored[0], out, markov, privacy=outcome)

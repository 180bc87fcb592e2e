"""Quality benchmark: held-out bits per base of every way to train, at one compute budget per arm.

Arms (every neural arm from random initialisation and from the pretrained checkpoint):

* ``markov``    the best-k Markov baseline, counted on the public reference (no training, no privacy)
* ``central``   centralized, non-private: the three hospitals' patients pooled in one place
* ``fed``       federated (FedAvg), non-private local AdamW at each hospital
* ``fed-dp-8``  federated, patient-level DP-SGD at epsilon 8 per hospital (the real site path:
                ``fedgenome.inprocess``, ledgers, budgets, the server's round loop)
* ``fed-dp-2``  the same at epsilon 2

Every neural arm processes the same windows: ``rounds x local-steps`` steps of ``patients-per-step``
patients x k windows at each of the three hospitals (the centralized arm: as many steps of the
three hospitals' batches pooled; DP arms: that many in expectation, Poisson-sampled). Prints one
table (held-out bits per base on the held-out region, on ``--fasta`` if given, and at the cohort's
variant positions on the unseen IBS cohort's haplotypes: what the hospitals' data adds that the
public reference cannot), writes ``quality.png`` (bits per base against tokens seen) and
``quality.json`` into ``--out``. Usage:

    .venv/bin/python bench/quality.py [--preset small] [--init models/small] [--rounds 6]
        [--local-steps 5] [--seeds 0] [--fasta FILE] [--out runs/quality]
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import ConcatDataset

from configs.schema import FederationConfig, Preset, Region
from fedgenome.inprocess import run_in_process
from shared.checkpoint import load_checkpoint, load_weights
from shared.datasets import SiteData, open_site
from shared.genomes import load_cohort
from shared.markov_prior import build_model
from shared.model import GenomeLM
from shared.scoring import variant_site_bits
from shared.sites import copy_site
from shared.train import endless, evaluate, lr_at, make_optimizer, train_step

log = logging.getLogger("bench.quality")
HOSPITALS = ("hospital-gbr-fin", "hospital-tsi", "hospital-ceu")
UNSEEN = "unseen-ibs"
HOLDOUT = Region.parse("20:58025520-63025520")
CPU = torch.device("cpu")


@dataclass
class Arm:
    """One arm's run: its learning curve and final scores."""

    name: str
    init: str
    seed: int
    curve: list[tuple[int, float]] = field(default_factory=list)  # (tokens seen, held-out bits)
    heldout: float = float("nan")
    fasta: float | None = None
    variant_bits: float | None = None
    variant_alt_bits: float | None = None
    tokens: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class Setup:
    """What every arm shares."""

    preset_name: str
    preset: Preset
    reference: Path
    sites: Path  # the built hospital sites (copied per DP arm)
    heldout: torch.Tensor
    fasta: torch.Tensor | None
    rounds: int
    local_steps: int
    patients_per_step: int
    lr: float  # peak learning rate from random initialisation
    finetune_lr: float  # from the pretrained checkpoint

    @property
    def step_tokens(self) -> int:
        """Tokens one hospital processes per local step (in expectation under DP)."""
        data = self.preset.data
        return self.patients_per_step * data.windows_per_patient * data.window


def new_model(setup: Setup, init: Path | None, seed: int) -> GenomeLM:
    """The preset's model: random (seeded) or the checkpoint's weights, with the Markov prior."""
    torch.manual_seed(seed)
    model = build_model(setup.preset.model, reference=setup.reference, exclude=[HOLDOUT])
    if init is not None:
        load_weights(model, load_checkpoint(init).model.state_dict(), source=str(init))
    return model


def hospital(setup: Setup, name: str, seed: int) -> SiteData:
    """A hospital's patients as a dataset (k windows per patient)."""
    return open_site(setup.sites / name, setup.preset.data, seed=seed,
                     cache_dir=setup.sites / name / "state")


def finish(arm: Arm, model: GenomeLM, setup: Setup, started: float) -> Arm:
    """Final scores of an arm's model."""
    arm.heldout = evaluate(model, setup.heldout, device=CPU).bits_per_base
    if setup.fasta is not None:
        arm.fasta = evaluate(model, setup.fasta, device=CPU).bits_per_base
    unseen = open_site(setup.sites / UNSEEN, setup.preset.data, seed=0,
                       cache_dir=setup.sites / UNSEEN / "state")
    assert unseen.reference is not None
    cohort = load_cohort(unseen.manifest, unseen.reference, cache_dir=setup.sites / UNSEEN / "state")
    bits = variant_site_bits(model, cohort, unseen.reference, contig="20",
                             window=setup.preset.data.window, device=CPU, max_positions=300)
    arm.variant_bits, arm.variant_alt_bits = bits.bits_per_base, bits.alt_bits_per_base
    arm.seconds = time.perf_counter() - started
    return arm


def schedule(setup: Setup, init: Path | None) -> Any:
    """The run-wide schedule of the plain arms: the preset's, over rounds x local steps."""
    steps = setup.rounds * setup.local_steps
    lr = setup.lr if init is None else setup.finetune_lr
    return setup.preset.train.model_copy(update={"steps": steps, "lr": lr,
                                                 "warmup_steps": min(setup.preset.train.warmup_steps,
                                                                     steps // 5)})


def central(setup: Setup, init: Path | None, seed: int) -> Arm:
    """Centralized non-private training on the three hospitals' patients pooled."""
    started, arm = time.perf_counter(), Arm("central", "pretrained" if init else "random", seed)
    model = new_model(setup, init, seed)
    data = [hospital(setup, h, seed + i) for i, h in enumerate(HOSPITALS)]
    batches = endless(ConcatDataset([d.dataset for d in data]), setup.patients_per_step * len(HOSPITALS),
                      seed)
    cfg = schedule(setup, init)
    optimizer = make_optimizer(model, cfg)
    arm.curve.append((0, evaluate(model, setup.heldout, device=CPU).bits_per_base))
    for step in range(cfg.steps):
        train_step(model, optimizer, next(batches), lr=lr_at(step, cfg), grad_clip=cfg.grad_clip,
                   device=CPU)
        arm.tokens += setup.step_tokens * len(HOSPITALS)
        if (step + 1) % setup.local_steps == 0:
            arm.curve.append((arm.tokens, evaluate(model, setup.heldout, device=CPU).bits_per_base))
    return finish(arm, model, setup, started)


def federated_plain(setup: Setup, init: Path | None, seed: int) -> Arm:
    """FedAvg of non-private local AdamW steps (each hospital keeps its moments across rounds)."""
    started, arm = time.perf_counter(), Arm("fed", "pretrained" if init else "random", seed)
    model = new_model(setup, init, seed)
    cfg = schedule(setup, init)
    locals_ = []
    for i, h in enumerate(HOSPITALS):
        site = hospital(setup, h, seed + i)
        twin = new_model(setup, None, seed)
        locals_.append((len(site.dataset), endless(site.dataset, setup.patients_per_step, seed + i), twin,
                        make_optimizer(twin, cfg)))
    arm.curve.append((0, evaluate(model, setup.heldout, device=CPU).bits_per_base))
    for rnd in range(setup.rounds):
        states, weights = [], []
        for patients, batches, twin, optimizer in locals_:
            twin.load_state_dict(model.state_dict())
            for s in range(setup.local_steps):
                step = rnd * setup.local_steps + s
                train_step(twin, optimizer, next(batches), lr=lr_at(step, cfg), grad_clip=cfg.grad_clip,
                           device=CPU)
            states.append(twin.state_dict())
            weights.append(patients)
        total = sum(weights)
        model.load_state_dict({k: sum(w * st[k] for w, st in zip(weights, states, strict=True)) / total
                               for k in states[0]})
        arm.tokens += setup.step_tokens * setup.local_steps * len(HOSPITALS)
        arm.curve.append((arm.tokens, evaluate(model, setup.heldout, device=CPU).bits_per_base))
    return finish(arm, model, setup, started)


def federated_dp(setup: Setup, init: Path | None, seed: int, *, epsilon: float, work: Path) -> Arm:
    """The real private federation, in one process, at a target epsilon per hospital."""
    started = time.perf_counter()
    arm = Arm(f"fed-dp-{epsilon:g}", "pretrained" if init else "random", seed)
    root = work / f"{arm.name}-{arm.init}-{seed}"
    sites = [copy_site(setup.sites / h, root / "sites" / h) for h in HOSPITALS]
    initial = init
    if init is None:  # random initialisation: a seeded checkpoint, so every arm starts alike
        initial = root / "random-init"
        from shared.checkpoint import save_checkpoint
        save_checkpoint(initial, new_model(setup, None, seed),
                        meta={"reference": str(setup.reference), "holdout": [HOLDOUT.model_dump()]})
    plan = schedule(setup, init)
    fed = FederationConfig.model_validate({
        "preset": setup.preset_name, "num-server-rounds": setup.rounds, "local-steps": setup.local_steps,
        "target-epsilon": epsilon, "patients-per-step": setup.patients_per_step, "lr": plan.lr,
        "windows-per-patient": setup.preset.data.windows_per_patient,
        "warmup-steps": plan.warmup_steps, "min-nodes": len(sites),
        "run-dir": str(root / "run"), "reference": str(setup.reference), "holdout": str_region(HOLDOUT),
        "eval-windows": len(setup.heldout), "seed": seed, "initial-checkpoint": str(initial)})
    report = run_in_process(fed, sites)
    arm.curve.append((0, report.initial_bits_per_base or float("nan")))
    for r in report.rounds:
        arm.tokens += setup.step_tokens * setup.local_steps * len(r.trained)
        arm.curve.append((arm.tokens, r.heldout_bits_per_base))
    final = load_checkpoint(root / "run" / "checkpoints" / f"round-{setup.rounds:04d}").model
    return finish(arm, final, setup, started)


def str_region(region: Region) -> str:
    return f"{region.contig}:{region.start}-{region.end}"

"""Quality benchmark: held-out bits per base of every way to train, at one compute budget per arm.

Arms (every neural arm from random initialisation and from the pretrained checkpoint):

* ``markov``    the best-k Markov baseline, counted on the public reference (no training, no privacy)
* ``central``   centralized, non-private: the three hospitals' patients pooled in one place
* ``fed``       federated (FedAvg), non-private local AdamW at each hospital
* ``fed-dp-8``  federated, patient-level DP-SGD at epsilon 8 per hospital (the real site path:
                ``fedgenome.experiments.inprocess``, ledgers, budgets, the server's round loop)
* ``fed-dp-2``  the same at epsilon 2

Every neural arm processes the same windows: ``rounds x local-steps`` steps of ``patients-per-step``
patients x k windows at each of the three hospitals (the centralized arm: as many steps of the
three hospitals' batches pooled; DP arms: that many in expectation, Poisson-sampled). Prints one
table (held-out bits per base on the held-out region, on ``--fasta`` if given, and at the cohort's
variant positions on the unseen IBS cohort's haplotypes: what the hospitals' data adds that the
public reference cannot) and a per-population table (each site's and the unseen cohort's patients'
bits per base on their own held-out haplotypes, and worst minus best: what privacy costs each
group, smallest included), writes ``quality.png`` (bits per base against tokens seen) and
``quality.json`` into ``--out``. Usage:

    .venv/bin/python bench/quality.py [--preset small] [--init models/small] [--rounds 6]
        [--local-steps 5] [--seeds 0] [--fasta FILE] [--out runs/quality]
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import ConcatDataset

from fedgenome.configs.schema import FederationConfig, Preset, Region, load_preset
from fedgenome.experiments.inprocess import run_in_process
from fedgenome.shared.checkpoint import load_checkpoint, load_weights, save_checkpoint
from fedgenome.shared.datasets import SiteData, open_site, read_fasta_records, tile_windows
from fedgenome.shared.fetch import default_cache, fetch_data
from fedgenome.shared.genomes import Reference, load_cohort
from fedgenome.shared.markov_prior import build_model
from fedgenome.shared.model import GenomeLM
from fedgenome.shared.patient_bits import patient_bits
from fedgenome.shared.reference_markov import reference_baseline
from fedgenome.shared.schedule import FINETUNE_LR
from fedgenome.shared.scoring import variant_site_bits
from fedgenome.shared.sites import copy_site, ensure_sites
from fedgenome.shared.train import endless, evaluate, lr_at, make_optimizer, train_step

log = logging.getLogger("bench.quality")
HOSPITALS = ("hospital-gbr-fin", "hospital-tsi", "hospital-ceu")
UNSEEN = "unseen-ibs"
HOLDOUT = Region.parse("20:58025520-63025520")
CPU = torch.device("cpu")
POPULATION_WINDOWS = 2  # held-out windows per patient (one per haplotype) of the per-population table


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
    populations: dict[str, float] = field(default_factory=dict)  # site -> its patients' mean bits
    population_variants: dict[str, float] = field(default_factory=dict)  # site -> at its variant positions
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
        ckpt = load_checkpoint(init, reference=setup.reference, exclude=[HOLDOUT])
        load_weights(model, ckpt.model.state_dict(), source=str(init))
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
    score_variant_sites(arm, model, setup)
    score_populations(arm, model, setup)
    arm.seconds = time.perf_counter() - started
    return arm


def score_populations(arm: Arm, model: GenomeLM, setup: Setup) -> None:
    """Each site's (and the unseen cohort's) patients' mean bits per base on their own held-out
    haplotypes, measured exactly: the bench reads every site, as no deployment may."""
    for name in (*HOSPITALS, UNSEEN):
        state = setup.sites / name / "state"
        site = open_site(setup.sites / name, setup.preset.data, seed=0, cache_dir=state)
        assert site.reference is not None
        cohort = load_cohort(site.manifest, site.reference, cache_dir=state)
        bits = patient_bits(model, cohort, site.reference, HOLDOUT, window=setup.preset.data.window,
                            per_patient=POPULATION_WINDOWS, max_n_fraction=setup.preset.data.max_n_fraction,
                            device=CPU)
        arm.populations[name] = float(bits.mean())
        at_variants = variant_site_bits(model, cohort, site.reference, contig=HOLDOUT.contig,
                                        window=setup.preset.data.window, device=CPU, max_positions=300,
                                        within=(HOLDOUT.start, HOLDOUT.end))
        arm.population_variants[name] = at_variants.bits_per_base


def score_variant_sites(arm: Arm, model: GenomeLM, setup: Setup) -> None:
    """Bits of ``model`` at the unseen cohort's variant positions, on its own haplotypes."""
    unseen = open_site(setup.sites / UNSEEN, setup.preset.data, seed=0,
                       cache_dir=setup.sites / UNSEEN / "state")
    assert unseen.reference is not None
    cohort = load_cohort(unseen.manifest, unseen.reference, cache_dir=setup.sites / UNSEEN / "state")
    bits = variant_site_bits(model, cohort, unseen.reference, contig="20",
                             window=setup.preset.data.window, device=CPU, max_positions=300)
    arm.variant_bits, arm.variant_alt_bits = bits.bits_per_base, bits.alt_bits_per_base


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


def markov_arm(setup: Setup) -> Arm:
    """The best-k Markov baseline: counted on the public reference minus the held-out region.

    Its variant-position bits come from the silent model (network output zero), whose predictions
    are exactly the baseline's.
    """
    started, arm = time.perf_counter(), Arm("markov", "-", 0)
    baseline = reference_baseline(setup.reference, exclude=[HOLDOUT])
    arm.heldout = baseline.score(setup.heldout).bits_per_base
    arm.curve.append((0, arm.heldout))
    if setup.fasta is not None:
        arm.fasta = baseline.score(setup.fasta).bits_per_base
    silent = new_model(setup, None, 0)
    score_variant_sites(arm, silent, setup)
    score_populations(arm, silent, setup)
    arm.seconds = time.perf_counter() - started
    return arm


ARMS = ("central", "fed", "fed-dp-8", "fed-dp-2")


def run_arm(name: str, setup: Setup, init: Path | None, seed: int, work: Path) -> Arm:
    if name == "central":
        return central(setup, init, seed)
    if name == "fed":
        return federated_plain(setup, init, seed)
    return federated_dp(setup, init, seed, epsilon=float(name.removeprefix("fed-dp-")), work=work)


def table(arms: list[Arm], setup: Setup, fasta: Path | None) -> str:
    """One row per arm and start (mean over seeds), with the gap to the baseline and to central."""
    def mean(values: list[float | None]) -> float:
        kept = [v for v in values if v is not None]
        return statistics.mean(kept) if kept else float("nan")

    groups: dict[tuple[str, str], list[Arm]] = {}
    for arm in arms:
        groups.setdefault((arm.name, arm.init), []).append(arm)
    markov = mean([a.heldout for a in groups.get(("markov", "-"), [])])
    head = (f"{'arm':9} {'start':10} {'seeds':>5} {'held-out':>9} {'vs best-k':>9} {'vs central':>10} "
            f"{'fasta':>7} {'var. pos.':>9} {'var. alt':>8} {'tokens':>11} {'wall s':>7}")
    lines = [head, "-" * len(head)]
    for (name, init), rows in groups.items():
        bits = mean([a.heldout for a in rows])
        ref = groups.get(("central", init))
        rel = (f"{100 * (bits / mean([a.heldout for a in ref]) - 1):+9.2f}%" if ref and name != "markov"
               else f"{'-':>10}")
        lines.append(
            f"{name:9} {init:10} {len(rows):5d} {bits:9.4f} {bits - markov:+9.4f} {rel} "
            f"{mean([a.fasta for a in rows]):7.4f} {mean([a.variant_bits for a in rows]):9.4f} "
            f"{mean([a.variant_alt_bits for a in rows]):8.4f} {rows[0].tokens:11,d} "
            f"{mean([a.seconds for a in rows]):7.0f}")
    data = setup.preset.data
    lines.append(
        f"\npreset {setup.preset_name}; {setup.rounds} rounds x {setup.local_steps} local steps x "
        f"{setup.patients_per_step} patients x {data.windows_per_patient} windows of {data.window} at "
        f"each of {len(HOSPITALS)} hospitals; lr {setup.lr:g} from random, {setup.finetune_lr:g} from "
        f"the checkpoint. held-out: {len(setup.heldout)} windows of {HOLDOUT.contig}:{HOLDOUT.start}-"
        f"{HOLDOUT.end}; fasta: {fasta or '-'}; var. pos.: bits per base at the cohort's variant "
        f"positions on {UNSEEN}'s haplotypes (var. alt: where the haplotype carries the ALT allele). "
        f"vs best-k: minus the baseline's held-out bits (negative = better); vs central: relative to "
        f"the centralized arm from the same start.")
    return "\n".join([*lines, population_table(groups)])


def population_table(groups: dict[tuple[str, str], list[Arm]]) -> str:
    """Per arm and start: each population's mean bits per base (over seeds), and worst minus best,
    on held-out windows of its patients' haplotypes and at its variant positions in the region."""
    sites = [*HOSPITALS, UNSEEN]
    names = " ".join(f"{s.split('-', 1)[1]:>8}" for s in sites)
    head = f"{'arm':9} {'start':10} {names} {'worst-best':>10}"
    lines = []
    for title, field_name in (
            (f"per population: each site's patients' bits per base on {POPULATION_WINDOWS} held-out "
             "windows of their own haplotypes", "populations"),
            ("per population: bits per base at each site's variant positions in the held-out region, "
             "on its own haplotypes", "population_variants")):
        lines += ["", title, head, "-" * len(head)]
        for (name, init), rows in groups.items():
            per_arm: list[dict[str, float]] = [getattr(a, field_name) for a in rows]
            means = [statistics.mean(v[s] for v in per_arm) if all(s in v for v in per_arm)
                     else float("nan") for s in sites]
            lines.append(f"{name:9} {init:10} " + " ".join(f"{m:8.4f}" for m in means)
                         + f" {max(means) - min(means):10.4f}")
    return "\n".join(lines)


def plot(arms: list[Arm], path: Path) -> None:
    """Held-out bits per base against tokens seen, one line per arm, start and seed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for arm in arms:
        if arm.name == "markov":
            ax.axhline(arm.heldout, color="black", linestyle=":", label="best-k Markov")
            continue
        xs, ys = zip(*arm.curve, strict=True)
        ax.plot(xs, ys, marker=".", linestyle="-" if arm.init == "pretrained" else "--",
                label=f"{arm.name} ({arm.init}, seed {arm.seed})")
    ax.set_xlabel("tokens seen (all hospitals)")
    ax.set_ylabel("held-out bits per base")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def kept(path: Path) -> list[Arm]:
    """The arms of an earlier run's quality.json, the Markov arm first."""
    arms = [Arm(**{**row, "curve": [tuple(point) for point in row["curve"]]})
            for row in json.loads(path.read_text())]
    return sorted(arms, key=lambda arm: arm.name != "markov")


def build_setup(args: argparse.Namespace, out: Path) -> Setup:
    preset = load_preset(args.preset)
    if args.windows_per_patient is not None:
        preset = preset.model_copy(update={"data": preset.data.model_copy(
            update={"windows_per_patient": args.windows_per_patient})})
    paths = fetch_data(default_cache())
    sites = (out / "sites").resolve()  # site.toml of the copies names the VCF by absolute path
    ensure_sites(paths, sites)
    data = preset.data
    ref = Reference(paths.reference)
    heldout = tile_windows({HOLDOUT.contig: ref.tokens(HOLDOUT.contig)}, [HOLDOUT], window=data.window,
                           count=data.eval_windows, max_n_fraction=data.max_n_fraction)
    fasta = (tile_windows(read_fasta_records(args.fasta), None, window=data.window,
                          count=data.eval_windows, max_n_fraction=data.max_n_fraction)
             if args.fasta else None)
    return Setup(args.preset, preset, paths.reference.absolute(), sites, heldout, fasta, args.rounds,
                 args.local_steps, args.patients_per_step, args.lr or preset.train.lr, args.finetune_lr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--init", type=Path, default=Path("models/small"),
                        help="the pretrained checkpoint (default: the one the project ships)")
    parser.add_argument("--starts", nargs="+", default=["random", "pretrained"],
                        choices=["random", "pretrained"])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--local-steps", type=int, default=5)
    parser.add_argument("--patients-per-step", type=int, default=8)
    parser.add_argument("--windows-per-patient", type=int, default=None, help="k (default: the preset's)")
    parser.add_argument("--lr", type=float, default=None, help="peak lr from random (default: preset's)")
    parser.add_argument("--finetune-lr", type=float, default=FINETUNE_LR, help="peak lr from the checkpoint")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--fasta", type=Path, default=None, help="also score this FASTA's windows")
    parser.add_argument("--out", type=Path, default=Path("runs/quality"))
    parser.add_argument("--keep", type=Path, default=None,
                        help="an earlier run's quality.json (same settings): its arms are kept, not rerun")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    logging.getLogger("flwr").setLevel(logging.ERROR)
    if "pretrained" in args.starts and not (args.init / "model.safetensors").is_file():
        raise SystemExit(f"--init {args.init}: no checkpoint there; pass one, or --starts random")
    args.out.mkdir(parents=True, exist_ok=True)
    args.init = args.init.resolve()  # the DP arms' run config needs an absolute checkpoint path
    setup = build_setup(args, args.out)
    arms = kept(args.keep) if args.keep else [markov_arm(setup)]
    log.info("best-k Markov: %.4f held-out bits per base", arms[0].heldout)
    done = {(a.name, a.init, a.seed) for a in arms}
    with tempfile.TemporaryDirectory(prefix="quality-", dir=args.out) as tmp:
        for seed, start, name in itertools.product(args.seeds, args.starts, args.arms):
            if (name, start, seed) in done:
                continue
            init = args.init if start == "pretrained" else None
            arms.append(run_arm(name, setup, init, seed, Path(tmp).resolve()))
            a = arms[-1]
            log.info("%s from %s, seed %d: %.4f held-out bits per base, %s tokens, %.0f s",
                     name, start, seed, a.heldout, f"{a.tokens:,}", a.seconds)
            (args.out / "quality.json").write_text(json.dumps([asdict(x) for x in arms], indent=1))
    report = table(arms, setup, args.fasta)
    print(report)
    (args.out / "quality.txt").write_text(report + "\n")
    plot(arms, args.out / "quality.png")
    log.info("wrote %s, %s and %s", args.out / "quality.txt", args.out / "quality.json",
             args.out / "quality.png")


if __name__ == "__main__":
    main()

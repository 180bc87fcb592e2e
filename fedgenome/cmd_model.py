"""Commands that train, evaluate and use a model: ``pretrain``, ``train``, ``eval``, ``score``."""

from __future__ import annotations

import logging
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from fedgenome.cli_choices import GRAD_SAMPLE_MODES, PRESETS
from fedgenome.cli_options import Checkpoint_, Device_, Json_
from fedgenome.configs.errors import ConfigError
from fedgenome.configs.schema import (
    Preset,
    Region,
    load_preset,
    load_preset_file,
    load_site_manifest,
    preset_names,
)
from fedgenome.configs.validation import read_toml
from fedgenome.shared.atomic import atomic_path

if TYPE_CHECKING:

    from fedgenome.experiments.training import TrainingRun
    from fedgenome.shared.markov_fields import BaselineScore


log = logging.getLogger(__name__)
console = Console(stderr=True)

Preset_ = Annotated[str, typer.Option("--preset", help=f"Preset name ({', '.join(PRESETS.choices)}) "
                                      "or a TOML file of your own.")]
Config_ = Annotated[Path | None, typer.Option("--config", help="TOML file overriding the preset "
                                              "([model], [data], [train] tables).")]
Steps_ = Annotated[int | None, typer.Option("--steps", help="Training steps (overrides the preset).")]
Reference_ = Annotated[Path | None, typer.Option(help="Reference FASTA (default: the checkpoint's).")]


def progress() -> Progress:
    """The progress bar of long commands (on a terminal only: logs and CI get no bar lines)."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[status]}"), TimeRemainingColumn(), console=console,
                    disable=not console.is_terminal)


def find_sites(paths: list[Path]) -> list[Path]:
    """Site directories from the arguments: a site itself, or a folder of sites (hospitals only)."""
    sites: list[Path] = []
    for path in paths:
        if (path / "site.toml").is_file():
            sites.append(path)
        elif path.is_dir():
            sites += [d for d in sorted(path.iterdir()) if (d / "site.toml").is_file()
                      and load_site_manifest(d).role == "hospital"]
        else:
            raise ConfigError(f"{path}: not a site directory nor a folder of sites; build sites "
                              "with 'fedgenome data make-sites --out DIR'")
    if not sites:
        raise ConfigError(f"no hospital sites in {', '.join(map(str, paths))}; build them with "
                          "'fedgenome data make-sites --out DIR'")
    return sites


def build_preset(preset: str, config: Path | None, **overrides: Any) -> Preset:
    """The preset, then the config file, then the command-line options that were given."""
    merged: dict[str, Any] = read_toml(config) if config is not None else {}
    for key, value in overrides.items():
        if value is not None:
            section, name = key.split("__")
            merged.setdefault(section, {})[name] = value
    if preset not in preset_names() and (preset.endswith(".toml") or "/" in preset):
        return load_preset_file(Path(preset), merged)  # a file on the user's own command line
    return load_preset(preset, merged)


@contextmanager
def step_progress(total: int) -> Iterator[Callable[[int, float], None]]:
    """A progress bar over ``total`` training steps (a log line every 5% off a terminal)."""
    every = max(1, total // 20)
    start = time.monotonic()

    with progress() as bar:
        task = bar.add_task("training", total=total, status="")

        def on_step(step: int, loss: float) -> None:
            bar.update(task, completed=step, status=f"loss {loss:.3f}")
            if not console.is_terminal and (step % every == 0 or step == total):
                log.info("step %d/%d: loss %.4f (%.1f s)", step, total, loss, time.monotonic() - start)

        yield on_step


def _bits_table(title: str, rows: list[tuple[str, str, str]]) -> Table:
    table = Table(title=title)
    for column in ("model", "held-out bits per base", "bases"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    return table


def _baseline_lines(model_bits: float, markov: BaselineScore) -> str:
    """What the baseline is, that it costs no privacy, and how far the model is from it."""
    from fedgenome.shared.markov_fields import PRIVACY_NOTE

    return (f"Markov baseline: order {markov.order} and {markov.smoothing} smoothing picked on a "
            f"validation slice of the reference; {PRIVACY_NOTE}\nmodel - baseline: "
            f"{model_bits - markov.bits_per_base:+.4f} bits per base")


def _print_run(run: TrainingRun) -> None:
    rows = [("untrained model", f"{run.before.bits_per_base:.4f}", f"{run.before.bases:,}"),
            ("trained model", f"{run.after.bits_per_base:.4f}", f"{run.after.bases:,}"),
            (run.markov.label, f"{run.markov.bits_per_base:.4f}", f"{run.after.bases:,}")]
    console_out = Console()
    console_out.print(_bits_table("Held-out chr20 (last 5 Mb)", rows))
    console_out.print(_baseline_lines(run.after.bits_per_base, run.markov))
    if run.privacy is not None:
        e = run.privacy.entry
        console_out.print(f"privacy: epsilon {run.privacy.epsilon:.3f} of budget "
                          f"{run.privacy.budget:g} at delta {e.delta:g} (sigma {e.noise_multiplier:.3f}, "
                          f"q {e.sample_rate:.4f}, {e.local_steps} steps, {e.accountant}); ledger entry "
                          f"{e.seq} signed")
    console_out.print(f"checkpoint: {run.checkpoint}")


def train_command(
    sites: Annotated[list[Path], typer.Argument(help="Site directories, or folders of sites.")],
    out: Annotated[Path, typer.Option("--out", help="Checkpoint directory to write.")] = Path(
        "checkpoints/baseline"),
    preset: Preset_ = "small",
    config: Config_ = None,
    steps: Steps_ = None,
    window: Annotated[int | None, typer.Option(help="Bases per window (overrides).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Patients per step (overrides).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (overrides).")] = None,
    device: Device_ = "auto",
    dp: Annotated[bool, typer.Option("--dp", help="Patient-level DP-SGD, spending from the "
                                     "site's privacy ledger.")] = False,
    noise_multiplier: Annotated[float | None, typer.Option(help="DP: sigma (else calibrated "
                                                           "from --target-epsilon).")] = None,
    target_epsilon: Annotated[float | None, typer.Option(help="DP: epsilon the run should "
                                                         "reach.")] = None,
    max_grad_norm: Annotated[float | None, typer.Option(help="DP: per-patient clip C.")] = None,
    patients_per_step: Annotated[int | None, typer.Option(help="DP: expected patients per "
                                                          "Poisson batch.")] = None,
    grad_sample_mode: Annotated[str | None, typer.Option(help="DP: per-sample gradients by.",
                                                        click_type=GRAD_SAMPLE_MODES)] = None,
    privacy_state: Annotated[Path | None, typer.Option(help="DP: ledger and key directory "
                                                       "(default: the site's).")] = None,
    init: Annotated[Path | None, typer.Option("--init", help="Start from this checkpoint's "
                                              "weights (its model must be the preset's).")] = None,
) -> None:
    """Train the centralized baseline over one or more sites: plain, or with --dp."""
    from fedgenome.experiments.training import run_baseline, run_private

    cfg = build_preset(preset, config, train__steps=steps, data__window=window,
                       train__batch_size=batch_size, train__seed=seed,
                       privacy__noise_multiplier=noise_multiplier,
                       privacy__target_epsilon=target_epsilon, privacy__max_grad_norm=max_grad_norm,
                       privacy__patients_per_step=patients_per_step,
                       privacy__grad_sample_mode=grad_sample_mode)
    found = find_sites(sites)
    if dp:
        run = run_private(found, cfg, out=out, preset_name=preset, device_name=device,
                          state_dir=privacy_state, progress=step_progress, init=init)
    else:
        run = run_baseline(found, cfg, out=out, preset_name=preset, device_name=device,
                           progress=step_progress, init=init)
    _print_run(run)


def pretrain_command(
    ctx: typer.Context,
    fasta: Annotated[list[Path], typer.Argument(help="Public FASTA files (plain, gzip or BGZF).")],
    exclude: Annotated[list[str] | None, typer.Option("--exclude", help="CONTIG:START-END never to "
                                                      "train on (the held-out region); repeat.")] = None,
    validation: Annotated[list[str] | None, typer.Option(
        "--validation", help="CONTIG:START-END held apart to watch training (default: the last "
        "2 Mb of the longest training stretch); repeat.")] = None,
    out: Annotated[Path, typer.Option("--out", help="Checkpoint directory (resumed if it holds an "
                                      "unfinished run).")] = Path("checkpoints/pretrained"),
    preset: Preset_ = "small",
    config: Config_ = None,
    steps: Steps_ = None,
    batch_size: Annotated[int | None, typer.Option(help="Windows per step (overrides).")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (overrides).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (overrides).")] = None,
    eval_every: Annotated[int | None, typer.Option(help="Score the evaluation windows every N "
                                                   "steps (the learning curve).")] = None,
    checkpoint_every: Annotated[int, typer.Option(min=1, help="Steps between checkpoints.")] = 200,
    float16: Annotated[bool, typer.Option("--float16", help="Store the weights in float16 "
                                          "(half the size).")] = False,
    device: Device_ = "auto",
) -> None:
    """Pretrain the model centrally, without DP, on public sequence (costs no privacy)."""
    from fedgenome.shared.corpus import read_corpus
    from fedgenome.shared.pretrain import PretrainSettings, pretrain

    cfg = build_preset(preset, config, train__steps=steps, train__batch_size=batch_size, train__lr=lr,
                       train__seed=seed, train__eval_every=eval_every,
                       train__device=None if device == "auto" else device)
    excluded = [Region.parse(r) for r in exclude or []]
    if not excluded:
        log.warning("no --exclude given: nothing is held out of pretraining")
    corpus = read_corpus(fasta, exclude=excluded,
                         validation=[Region.parse(r) for r in validation] if validation else None)
    argv = (ctx.obj or {}).get("argv", sys.argv[1:])  # what main() was given
    command = "fedgenome " + " ".join(shlex.quote(a) for a in argv)
    settings = PretrainSettings(preset_name=preset, preset=cfg, out=out, command=command,
                                checkpoint_every=checkpoint_every, float16=float16)
    with step_progress(cfg.train.steps) as on_step:
        result = pretrain(corpus, settings, on_step=on_step)
    rows = [(name, f"{bits:.4f}", f"{result.scores.prior.get(name, float('nan')):.4f}")
            for name, bits in result.scores.model.items()]
    table = Table(title=f"{result.steps:,} steps, {result.tokens:,} tokens, {result.seconds / 60:.1f} min")
    for column in ("windows", "model bits per base", "k-mer prior at start"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    Console().print(f"checkpoint: {result.checkpoint} (model card: {result.checkpoint / 'MODEL_CARD.md'})")


def eval_command(
    checkpoint: Checkpoint_,
    fasta: Annotated[Path | None, typer.Option(help="Evaluate on every record of this FASTA "
                                               "instead of the held-out region.")] = None,
    reference: Reference_ = None,
    region: Annotated[str | None, typer.Option(help="CONTIG:START-END (default: the "
                                               "checkpoint's held-out regions).")] = None,
    windows: Annotated[int | None, typer.Option(help="Windows to evaluate.")] = None,
    device: Device_ = "auto",
    json_out: Json_ = False,
) -> None:
    """Print held-out bits per base of a checkpoint's model and of the best-k Markov baseline.

    The baseline is counted on the checkpoint's reference (or --reference) minus its held-out
    regions, whatever is evaluated: public sequence only, so it costs no privacy.
    """
    import json

    from fedgenome.experiments.checkpoint_eval import evaluate_checkpoint

    got = evaluate_checkpoint(checkpoint, fasta=fasta, reference=reference, region=region,
                              windows=windows, device=device)
    if json_out:
        typer.echo(json.dumps(got.to_json(), indent=2))
        return
    rows = [("model", f"{got.model_bits_per_base:.4f}", f"{got.bases:,}")]
    if got.baseline is not None:
        rows.append((got.baseline.label, f"{got.baseline.bits_per_base:.4f}", f"{got.bases:,}"))
    if got.legacy_markov is not None:  # a checkpoint from before the best-k baseline
        rows.append((got.legacy_markov[0], f"{got.legacy_markov[1]:.4f}", f"{got.bases:,}"))
    out = Console()
    out.print(_bits_table(f"{got.where} ({got.windows} windows of {got.window})", rows))
    if got.baseline is not None:
        out.print(_baseline_lines(got.model_bits_per_base, got.baseline))
    else:  # a path in it stays whole (no hard wrap) and literal (no markup)
        out.print(got.no_baseline, soft_wrap=True, markup=False, highlight=False)


def explain_command(
    checkpoint: Checkpoint_,
    region: Annotated[str | None, typer.Option(help="CONTIG:START-END to explain (0-based, end "
                                               "exclusive; at most 4,096 bases).")] = None,
    variant: Annotated[str | None, typer.Option(help="CONTIG:POS:REF:ALT (1-based POS): the "
                                                "window centred on this SNV, and how ALT moves "
                                                "the predictions.")] = None,
    out: Annotated[Path | None, typer.Option(help="Directory for mutagenesis.tsv/.png (and "
                                             "shift.tsv); default explain-CONTIG-START.")] = None,
    reference: Reference_ = None,
    window: Annotated[int | None, typer.Option(help="Bases around --variant (default: the "
                                               "checkpoint's window).")] = None,
    device: Device_ = "auto",
    horizon: Annotated[int | None, typer.Option(help="Bases after each substitution whose "
                                                "predictions are rescored (default: 64); 0: every "
                                                "one to the window's end (exact; slower).", min=0)
                       ] = None,
    no_plot: Annotated[bool, typer.Option("--no-plot", help="Write the TSV files only (no "
                                          "matplotlib needed).")] = False,
) -> None:
    """In-silico saturation mutagenesis: each base's effect on the model's log-likelihood.

    Every position of the window is changed to each of the three other bases and the window scored
    again, up to --horizon bases past the change; the TSV holds the changes (0 at the reference
    base) and a per-position importance.
    """
    import numpy as np

    from fedgenome.experiments.explain import explain

    where = (region or variant or "").replace(":", "-").split("-")
    target = out or Path(f"explain-{'-'.join(where[:2])}")
    with console.status("scoring every single-base substitution"):
        got = explain(checkpoint, out=target, region=region, variant=variant, reference=reference,
                      window=window, device=device, plot=not no_plot,
                      **({} if horizon is None else {"horizon": horizon or None}))
    m = got.mutagenesis
    top = np.argsort(-np.nan_to_num(m.importance))[:5]
    Console(highlight=False, soft_wrap=True).print(
        f"{m.contig}:{m.start}-{m.start + len(m.tokens)}: log-likelihood {m.ll:.2f} nats; most "
        "important positions (1-based): " + ", ".join(f"{m.start + i + 1} {m.sequence[i]} "
                                                      f"({m.importance[i]:.3f})" for i in top)
        + f"\nwrote {', '.join(str(f) for f in got.files)}", markup=False)


def score_command(
    checkpoint: Checkpoint_,
    vcf: Annotated[Path, typer.Argument(help="VCF of variants to score (SNVs).")],
    out: Annotated[Path | None, typer.Option(help="TSV to write (default: VCF name + "
                                             ".scores.tsv).")] = None,
    reference: Reference_ = None,
    window: Annotated[int | None, typer.Option(help="Window centred on each variant.")] = None,
    device: Device_ = "auto",
    explain: Annotated[int, typer.Option(help="Also name the N positions whose terms of the delta "
                                         "are largest (column top_positions, POS:TERM); 0: none.",
                                         min=0)] = 0,
) -> None:
    """Zero-shot variant scores (log-likelihood of ALT minus REF) to a TSV file."""
    from fedgenome.shared.checkpoint import load_checkpoint
    from fedgenome.shared.genomes import Reference
    from fedgenome.shared.scoring import COLUMNS, TOP_COLUMN, score_variants
    from fedgenome.shared.train import pick_device

    if not vcf.is_file():
        raise ConfigError(f"{vcf}: VCF not found; check the path")
    ckpt = load_checkpoint(checkpoint)
    ref = Reference(reference or Path(ckpt.meta["reference"]))
    target = out or vcf.with_name(vcf.name.removesuffix(".gz").removesuffix(".vcf") + ".scores.tsv")
    dev = pick_device(device)
    n = 0
    with atomic_path(target) as tmp, open(tmp, "w") as fh, progress() as bar:
        task = bar.add_task("scoring", total=None, status="")
        fh.write("\t".join((*COLUMNS, TOP_COLUMN) if explain else COLUMNS) + "\n")
        span = window or ckpt.meta["data"]["window"]
        for score in score_variants(ckpt.model.to(dev), ref, vcf, window=span, device=dev, top=explain):
            fh.write(score.row() + "\n")
            n += 1
            bar.update(task, completed=n)
    Console().print(f"{n} variants scored -> {target}")

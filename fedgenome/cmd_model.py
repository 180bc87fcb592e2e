"""Commands that train, evaluate and use a model: ``train``, ``eval``, ``score``, ``demo``."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from torch.utils.data import ConcatDataset

from configs.schema import Preset, Region, load_preset, load_site_manifest, read_toml
from shared.atomic import atomic_path
from shared.checkpoint import load_checkpoint, save_checkpoint
from shared.datasets import open_site, read_fasta_records, tile_windows
from shared.errors import ConfigError
from shared.genomes import Reference
from shared.markov import MarkovBaseline
from shared.model import GenomeLM
from shared.scoring import COLUMNS, score_variants
from shared.train import EvalResult, endless, evaluate, pick_device, train

log = logging.getLogger(__name__)
console = Console(stderr=True)

Preset_ = Annotated[str, typer.Option("--preset", help="Preset name (tiny, small, base, large) "
                                      "or a TOML file.")]
Config_ = Annotated[Path | None, typer.Option("--config", help="TOML file overriding the preset "
                                              "([model], [data], [train] tables).")]
Steps_ = Annotated[int | None, typer.Option("--steps", help="Training steps (overrides the preset).")]
Device_ = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]


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
    return load_preset(preset, merged)


@dataclass(frozen=True)
class BaselineRun:
    """A trained centralized baseline and its held-out scores."""

    before: EvalResult
    after: EvalResult
    markov_bits: float
    markov_order: int
    checkpoint: Path


def run_baseline(sites: list[Path], preset: Preset, *, out: Path, preset_name: str,
                 device_name: str) -> BaselineRun:
    """Train the non-private baseline on every site's patients, evaluate, save a checkpoint."""
    device = pick_device(device_name if device_name != "auto" else preset.train.device)
    torch.manual_seed(preset.train.seed)
    opened = [open_site(s, preset.data, seed=preset.train.seed + i, cache_dir=s / "state")
              for i, s in enumerate(sites)]
    first = opened[0]
    if first.reference is None:
        raise ConfigError(f"{sites[0]}: held-out evaluation needs a reference; list a VCF site first")
    holdout = first.manifest.holdout
    eval_windows = tile_windows({r.contig: first.reference.tokens(r.contig) for r in holdout},
                                holdout, window=preset.data.window, count=preset.data.eval_windows,
                                max_n_fraction=preset.data.max_n_fraction)
    model = GenomeLM(preset.model).to(device)
    log.info("model: %s parameters; %d patients in %d sites; device %s", f"{model.num_params():,}",
             sum(len(o.dataset) for o in opened), len(opened), device)
    before = evaluate(model, eval_windows, device=device)
    markov = MarkovBaseline(preset.train.markov_order)
    batches = endless(ConcatDataset([o.dataset for o in opened]), preset.train.batch_size,
                      preset.train.seed)
    with progress() as bar:
        task = bar.add_task("training", total=preset.train.steps, status="")
        result = train(model, batches, preset.train, device=device, eval_windows=eval_windows,
                       markov=markov, on_step=lambda step, loss: bar.update(
                           task, completed=step, status=f"loss {loss:.3f}"))
    after = evaluate(model, eval_windows, device=device)
    markov_bits = markov.bits_per_base(eval_windows)
    meta = {"preset": preset_name, "data": preset.data.model_dump(),
            "train": preset.train.model_dump(), "sites": [o.manifest.name for o in opened],
            "reference": str(first.reference.path), "holdout": [r.model_dump() for r in holdout],
            "steps": result.steps, "seconds": round(result.seconds, 1),
            "heldout_bits_per_base": after.bits_per_base, "markov_bits_per_base": markov_bits,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    save_checkpoint(out, model, meta=meta, markov=markov)
    return BaselineRun(before=before, after=after, markov_bits=markov_bits,
                       markov_order=markov.order, checkpoint=out)


def _bits_table(title: str, rows: list[tuple[str, str, str]]) -> Table:
    table = Table(title=title)
    for column in ("model", "held-out bits per base", "bases"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    return table


def _print_run(run: BaselineRun) -> None:
    Console().print(_bits_table("Held-out chr20 (last 5 Mb)", [
        ("untrained model", f"{run.before.bits_per_base:.4f}", f"{run.before.bases:,}"),
        ("trained model", f"{run.after.bits_per_base:.4f}", f"{run.after.bases:,}"),
        (f"Markov order-{run.markov_order} baseline", f"{run.markov_bits:.4f}", f"{run.after.bases:,}"),
    ]))
    Console().print(f"checkpoint: {run.checkpoint}")


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
) -> None:
    """Train the centralized, non-private baseline over one or more sites."""
    cfg = build_preset(preset, config, train__steps=steps, data__window=window,
                       train__batch_size=batch_size, train__seed=seed)
    _print_run(run_baseline(find_sites(sites), cfg, out=out, preset_name=preset,
                            device_name=device))


def _parse_region(text: str) -> Region:
    try:
        contig, span = text.rsplit(":", 1)
        start, end = (int(v.replace(",", "")) for v in span.split("-"))
    except ValueError:
        raise ConfigError(f"--region {text!r}: expected CONTIG:START-END, e.g. "
                          "20:58025520-63025520 (0-based, end exclusive)") from None
    return Region(contig=contig, start=start, end=end)


def eval_command(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint directory.")],
    fasta: Annotated[Path | None, typer.Option(help="Evaluate on every record of this FASTA "
                                               "instead of the held-out region.")] = None,
    reference: Annotated[Path | None, typer.Option(help="Reference FASTA (default: the "
                                                   "checkpoint's).")] = None,
    region: Annotated[str | None, typer.Option(help="CONTIG:START-END (default: the "
                                               "checkpoint's held-out regions).")] = None,
    windows: Annotated[int | None, typer.Option(help="Windows to evaluate.")] = None,
    device: Device_ = "auto",
) -> None:
    """Print held-out bits per base of a checkpoint's model and of its Markov baseline."""
    ckpt = load_checkpoint(checkpoint)
    meta = ckpt.meta
    window, count = meta["data"]["window"], windows or meta["data"]["eval_windows"]
    max_n = meta["data"]["max_n_fraction"]
    if fasta is not None:
        seqs, regions, where = read_fasta_records(fasta), None, str(fasta)
    else:
        ref = Reference(reference or Path(meta["reference"]))
        regions = [_parse_region(region)] if region else [Region(**r) for r in meta["holdout"]]
        seqs = {r.contig: ref.tokens(r.contig) for r in regions}
        where = ", ".join(f"{r.contig}:{r.start}-{r.end}" for r in regions)
    data = tile_windows(seqs, regions, window=window, count=count, max_n_fraction=max_n)
    dev = pick_device(device)
    result = evaluate(ckpt.model.to(dev), data, device=dev)
    rows = [("model", f"{result.bits_per_base:.4f}", f"{result.bases:,}")]
    if ckpt.markov is not None:
        rows.append((f"Markov order-{ckpt.markov.order} baseline",
                     f"{ckpt.markov.bits_per_base(data):.4f}", f"{result.bases:,}"))
    Console().print(_bits_table(f"{where} ({len(data)} windows of {window})", rows))


def score_command(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint directory.")],
    vcf: Annotated[Path, typer.Argument(help="VCF of variants to score (SNVs).")],
    out: Annotated[Path | None, typer.Option(help="TSV to write (default: VCF name + "
                                             ".scores.tsv).")] = None,
    reference: Annotated[Path | None, typer.Option(help="Reference FASTA (default: the "
                                                   "checkpoint's).")] = None,
    window: Annotated[int | None, typer.Option(help="Window centred on each variant.")] = None,
    device: Device_ = "auto",
) -> None:
    """Zero-shot variant scores (log-likelihood of ALT minus REF) to a TSV file."""
    if not vcf.is_file():
        raise ConfigError(f"{vcf}: VCF not found; check the path")
    ckpt = load_checkpoint(checkpoint)
    ref = Reference(reference or Path(ckpt.meta["reference"]))
    target = out or vcf.with_name(vcf.name.removesuffix(".gz").removesuffix(".vcf") + ".scores.tsv")
    dev = pick_device(device)
    n = 0
    with atomic_path(target) as tmp, open(tmp, "w") as fh, progress() as bar:
        task = bar.add_task("scoring", total=None, status="")
        fh.write("\t".join(COLUMNS) + "\n")
        for score in score_variants(ckpt.model.to(dev), ref, vcf,
                                    window=window or ckpt.meta["data"]["window"], device=dev):
            fh.write(score.row() + "\n")
            n += 1
            bar.update(task, completed=n)
    Console().print(f"{n} variants scored -> {target}")


def demo_command(
    workdir: Annotated[Path, typer.Option(help="Where sites and the checkpoint go.")] = Path(
        "runs/demo"),
    cache: Annotated[Path | None, typer.Option(help="Data cache (default: $FEDGENOME_CACHE or "
                                               "~/.cache/fedgenome).")] = None,
    preset: Preset_ = "small",
    steps: Steps_ = None,
    device: Device_ = "auto",
) -> None:
    """Fetch the real genomes, build the hospital sites, train the baseline, print bits per base."""
    from shared.fetch import default_cache, fetch_data
    from shared.sites import ensure_sites

    paths = fetch_data(cache or default_cache())
    sites_dir = workdir / "sites"
    ensure_sites(paths, sites_dir)
    cfg = build_preset(preset, None, train__steps=steps)
    _print_run(run_baseline(find_sites([sites_dir]), cfg, out=workdir / "baseline",
                            preset_name=preset, device_name=device))

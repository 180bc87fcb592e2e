"""``fedgenome eval``: a checkpoint's held-out bits per base beside the best-k Markov baseline.

The baseline is counted on the checkpoint's reference (or another one) minus its held-out regions,
whatever is evaluated: public sequence only, so it costs no privacy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedgenome.configs.schema import Region
from fedgenome.shared.checkpoint import load_checkpoint
from fedgenome.shared.datasets import read_fasta_records, tile_windows
from fedgenome.shared.genomes import Reference
from fedgenome.shared.markov_fields import BaselineScore
from fedgenome.shared.reference_markov import reference_baseline
from fedgenome.shared.train import evaluate, pick_device


@dataclass(frozen=True)
class CheckpointEval:
    """What :func:`evaluate_checkpoint` measured on one set of windows."""

    where: str  # the regions or the FASTA evaluated
    windows: int
    window: int  # bases per window
    bases: int  # A/C/G/T targets scored
    model_bits_per_base: float
    baseline: BaselineScore | None
    no_baseline: str | None  # why there is no baseline (its reference is not here)
    legacy_markov: tuple[str, float] | None  # (label, bits): a checkpoint's own pre-baseline Markov

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` object."""
        return {"where": self.where, "windows": self.windows, "window": self.window, "bases": self.bases,
                "model_bits_per_base": self.model_bits_per_base,
                "baseline": self.baseline.to_json() if self.baseline is not None else None,
                "model_minus_baseline": (self.model_bits_per_base - self.baseline.bits_per_base
                                         if self.baseline is not None else None),
                "no_baseline": self.no_baseline,
                "legacy_markov": (dict(zip(("label", "bits_per_base"), self.legacy_markov, strict=True))
                                  if self.legacy_markov is not None else None)}


def evaluate_checkpoint(checkpoint: Path, *, fasta: Path | None = None, reference: Path | None = None,
                        region: str | None = None, windows: int | None = None,
                        device: str = "auto") -> CheckpointEval:
    """Score ``checkpoint`` on its held-out regions (or ``region``, or every record of ``fasta``)."""
    ckpt = load_checkpoint(checkpoint)
    meta = ckpt.meta
    window, count = meta["data"]["window"], windows or meta["data"]["eval_windows"]
    if fasta is not None:
        seqs, regions, where = read_fasta_records(fasta), None, str(fasta)
    else:
        ref = Reference(reference or Path(meta["reference"]))
        regions = [Region.parse(region)] if region else [Region(**r) for r in meta["holdout"]]
        seqs = {r.contig: ref.tokens(r.contig) for r in regions}
        where = ", ".join(f"{r.contig}:{r.start}-{r.end}" for r in regions)
    data = tile_windows(seqs, regions, window=window, count=count,
                        max_n_fraction=meta["data"]["max_n_fraction"])
    dev = pick_device(device)
    result = evaluate(ckpt.model.to(dev), data, device=dev)
    baseline = _checkpoint_baseline(meta, reference, data)
    legacy = ((f"Markov order-{ckpt.markov.order} (windows seen in training)",
               ckpt.markov.bits_per_base(data)) if ckpt.markov is not None else None)
    return CheckpointEval(where=where, windows=len(data), window=window, bases=result.bases,
                          model_bits_per_base=result.bits_per_base,
                          baseline=baseline if isinstance(baseline, BaselineScore) else None,
                          no_baseline=baseline if isinstance(baseline, str) else None,
                          legacy_markov=legacy)


def _checkpoint_baseline(meta: dict[str, Any], reference: Path | None,
                         windows: torch.Tensor) -> BaselineScore | str:
    """The best-k baseline of the checkpoint's reference (or ``reference``) minus its held-out regions.

    Returns why there is none instead when that reference is not at hand (``--fasta`` needs none).
    """
    path = reference or (Path(meta["reference"]) if meta.get("reference") else None)
    if path is None or not path.is_file():
        return (f"no Markov baseline: the checkpoint's reference {path or '(none)'} is not here; "
                "pass --reference FASTA")
    holdout = [Region(**r) for r in meta.get("holdout", [])]
    return reference_baseline(path, exclude=holdout).score(windows)

"""``fedgenome benchmark variants``: do a model's zero-shot scores rank measured variant effects?

Every row of the table (``experiments/benchmark_table.py``) is scored by three scorers:

* ``model``: the checkpoint's model;
* ``markov``: the best-k Markov baseline of the checkpoint's public reference minus its held-out
  regions (the model's own prior where it has one);
* ``random``: a randomly initialised network of the same preset (seed 0; with the same prior).

An SNV's score is the log-likelihood of the window centred on it with ALT minus with REF (as
``fedgenome score``). A sequence's score is its log-likelihood; with a flank FASTA and region, it
stands in for the region, read after the left flank and followed by the right one, and its score
is the log-likelihood of its bases and of the right flank's minus the same for the region's own
sequence (0 for the reference itself). Spearman's rho with the values, and with a label column
the AUROC, each with a bootstrap 95% interval, are written with the scores, a JSON summary and a
plot into the output directory.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from fedgenome.configs.errors import ConfigError, InputFileError
from fedgenome.configs.schema import Region
from fedgenome.experiments.benchmark_table import BenchmarkTable
from fedgenome.shared.atomic import atomic_path
from fedgenome.shared.checkpoint import Checkpoint, load_checkpoint
from fedgenome.shared.fetch import sha256_file
from fedgenome.shared.genomes import Reference
from fedgenome.shared.markov_prior import MarkovPrior, markov_prior
from fedgenome.shared.model import GenomeLM
from fedgenome.shared.rank_stats import Estimate, auroc, bootstrap, spearman
from fedgenome.shared.scoring import position_log_likelihood, snv_windows
from fedgenome.shared.tokenizer import A, encode
from fedgenome.shared.tokenizer import T as T_ID
from fedgenome.shared.train import pick_device

log = logging.getLogger(__name__)
Scorer = Callable[[torch.Tensor], torch.Tensor]
"""Windows (N, L) of token ids -> log p of each base given those before it (N, L-1)."""
SCORERS = ("model", "markov", "random")
MAX_SEQUENCE = 16_384
BATCH = 16


@dataclass(frozen=True)
class ScorerResult:
    """One scorer's scores and statistics."""

    name: str
    scores: npt.NDArray[np.float64]
    spearman: Estimate
    auroc: Estimate | None


@dataclass(frozen=True)
class VariantBenchmark:
    """What :func:`benchmark_variants` measured and wrote."""

    table: BenchmarkTable
    table_sha256: str
    checkpoint: Path
    results: tuple[ScorerResult, ...]
    files: tuple[Path, ...]

    def to_json(self) -> dict[str, Any]:
        """The summary (``benchmark.json``, ``--json``)."""
        return {"table": str(self.table.path), "table_sha256": self.table_sha256,
                "checkpoint": str(self.checkpoint), "kind": self.table.kind,
                "rows": len(self.table.items), "skipped": self.table.skipped,
                "scorers": {r.name: {"spearman": r.spearman.to_json(),
                                     "auroc": r.auroc.to_json() if r.auroc else None}
                            for r in self.results},
                "files": [str(f) for f in self.files]}


def model_scorer(model: torch.nn.Module, device: torch.device) -> Scorer:
    """A network's scorer (evaluation mode, no gradients)."""
    model.eval()
    return lambda windows: position_log_likelihood(model, windows, device=device)


def prior_scorer(prior: MarkovPrior) -> Scorer:
    """The Markov baseline's scorer: its table's log p of each next A/C/G/T (0 at other tokens)."""
    def score(windows: torch.Tensor) -> torch.Tensor:
        x, y = windows[:, :-1], windows[:, 1:]
        logp = prior.log_probs(x)  # (N, L-1, 4)
        clean = (y >= A) & (y <= T_ID)
        picked = logp.gather(-1, torch.where(clean, y - A, 0).unsqueeze(-1)).squeeze(-1)
        return picked * clean
    return score


def _summed(scorer: Scorer, windows: list[np.ndarray], first: list[int]) -> np.ndarray:
    """Per window, the sum of its terms from term ``first[i]`` on, in batches of equal lengths."""
    out = np.empty(len(windows))
    by_length: dict[int, list[int]] = {}
    for i, w in enumerate(windows):
        by_length.setdefault(len(w), []).append(i)
    for group in by_length.values():
        for lo in range(0, len(group), BATCH):
            chunk = group[lo : lo + BATCH]
            terms = scorer(torch.from_numpy(np.stack([windows[i] for i in chunk])))
            for row, i in zip(terms, chunk, strict=True):
                out[i] = float(row[first[i] :].sum())
    return out


def _variant_scores(scorer: Scorer, table: BenchmarkTable, reference: Reference,
                    window: int) -> np.ndarray:
    windows = []
    for v in table.variants():
        _, ref_win, alt_win = snv_windows(reference, v.contig, v.pos, v.ref, v.alt, window=window,
                                          source=table.path)
        windows += [ref_win, alt_win]
    ll = _summed(scorer, windows, [0] * len(windows)).reshape(-1, 2)
    return ll[:, 1] - ll[:, 0]


@dataclass(frozen=True)
class Flanks:
    """The bases around a region that each sequence of the table stands in for."""

    left: np.ndarray
    right: np.ndarray
    region: np.ndarray  # the region's own sequence

    @classmethod
    def read(cls, fasta: Path, region: Region, *, window: int) -> Flanks:
        """Flanks of ``region`` in ``fasta`` that fill a ``window`` around it (as far as it goes)."""
        seq = Reference(fasta).tokens(region.contig)
        if region.end > len(seq):
            raise ConfigError(f"--flank-region {region.contig}:{region.start}-{region.end}: past the "
                              f"end of {region.contig} in {fasta} ({len(seq)} bases)")
        side = max(0, (window - (region.end - region.start)) // 2)
        return cls(seq[max(0, region.start - side) : region.start].astype(np.int64),
                   seq[region.end : region.end + side].astype(np.int64),
                   seq[region.start : region.end].astype(np.int64))


def _sequence_scores(scorer: Scorer, table: BenchmarkTable, flanks: Flanks | None) -> np.ndarray:
    tokens = [encode(item).astype(np.int64) for item in table.items]
    if flanks is None:
        return _summed(scorer, tokens, [0] * len(tokens))
    windows = [np.concatenate([flanks.left, t, flanks.right]) for t in tokens]
    first = max(len(flanks.left) - 1, 0)  # term j predicts base j + 1: from the sequence's first base
    got = _summed(scorer, [*windows, np.concatenate([flanks.left, flanks.region, flanks.right])],
                  [first] * (len(windows) + 1))
    return got[:-1] - got[-1]


def _scorers(ckpt: Checkpoint, reference: Path, device: torch.device) -> Iterator[tuple[str, Scorer]]:
    prior = ckpt.model.prior
    if not isinstance(prior, MarkovPrior):
        holdout = [Region(**r) for r in ckpt.meta.get("holdout", [])]
        prior = markov_prior(reference, exclude=holdout)
    yield "model", model_scorer(ckpt.model.to(device), device)
    yield "markov", prior_scorer(prior)
    torch.manual_seed(0)
    fresh = GenomeLM(ckpt.model.config)
    if ckpt.model.prior is not None:
        fresh.attach_prior(ckpt.model.prior)
    yield "random", model_scorer(fresh.to(device), device)


def benchmark_variants(table: BenchmarkTable, checkpoint: Path, *, out: Path,
                       flank_fasta: Path | None = None, flank_region: str | None = None,
                       device: str = "auto", plot: bool = True,
                       resamples: int = 1000) -> VariantBenchmark:
    """Score every row of ``table`` with the three scorers, and write the results into ``out``."""
    if plot:
        from fedgenome.audit.plots import require_matplotlib

        require_matplotlib()  # before minutes of scoring, not after
    ckpt = load_checkpoint(checkpoint)
    window = int(ckpt.meta["data"]["window"])
    fasta = flank_fasta or Path(ckpt.meta["reference"])
    flanks = _flanks(table, flank_fasta, flank_region, window=window)
    reference = Reference(fasta)
    results = []
    for name, scorer in _scorers(ckpt, Path(ckpt.meta["reference"]), pick_device(device)):
        log.info("scoring %d rows: %s", len(table.items), name)
        scores = (_variant_scores(scorer, table, reference, window) if table.kind == "variant"
                  else _sequence_scores(scorer, table, flanks))
        results.append(ScorerResult(
            name, scores, bootstrap(spearman, scores, table.values, resamples=resamples),
            bootstrap(auroc, scores, table.labels, resamples=resamples)
            if table.labels is not None else None))
    return _write(VariantBenchmark(table, sha256_file(table.path), checkpoint, tuple(results), ()), out,
                  plot=plot)


def _flanks(table: BenchmarkTable, fasta: Path | None, region: str | None, *,
            window: int) -> Flanks | None:
    if table.kind == "variant":
        if region is not None:
            raise ConfigError("--flank-region is for tables of sequences; an SNV is scored in the "
                              "window centred on it (drop --flank-region)")
        return None
    if (fasta is None) != (region is None):
        raise ConfigError("a sequence table takes --flank-fasta and --flank-region together (or "
                          "neither, to score each sequence alone)")
    longest = max(len(item) for item in table.items)
    if longest > MAX_SEQUENCE:
        raise InputFileError(f"{table.path}: a sequence of {longest:,} bases; at most "
                             f"{MAX_SEQUENCE:,} are scored at once")
    return Flanks.read(fasta, Region.parse(region), window=window) if fasta and region else None


def _write(got: VariantBenchmark, out: Path, *, plot: bool) -> VariantBenchmark:
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "scores.tsv", out / "benchmark.json"]
    with atomic_path(files[0]) as tmp, open(tmp, "w") as fh:
        label = got.table.labels is not None
        fh.write("\t".join(["row", "item", "value", *(["label"] if label else []), *SCORERS]) + "\n")
        for i, item in enumerate(got.table.items):
            cells = [str(got.table.rows[i]), item, f"{got.table.values[i]:g}"]
            if got.table.labels is not None:
                cells.append(str(int(got.table.labels[i])))
            fh.write("\t".join(cells + [f"{r.scores[i]:.5f}" for r in got.results]) + "\n")
    if plot:
        from fedgenome.experiments.benchmark_plot import benchmark_figure

        files.append(benchmark_figure(got, out / "benchmark.png"))
    done = dataclasses.replace(got, files=tuple(files))
    with atomic_path(files[1]) as tmp:
        tmp.write_text(json.dumps(done.to_json(), indent=2) + "\n")
    return done

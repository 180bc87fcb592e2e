"""Bits per base of a model on each patient's own haplotypes, one value per patient.

They are what a site's private evaluation (:mod:`fedgenome.privacy.evaluation`) clips, sums and
releases with noise.

Every patient is scored on the same ``per_patient`` windows, evenly spaced over the held-out region
and skipping windows that are mostly ``N``; window ``j`` carries the patient's haplotype ``j % 2``.
A patient's value is the bits over all their windows' A/C/G/T targets divided by their count.
With a public panel of variant positions, :func:`patient_bits_at` scores each patient's own bases
at those positions instead (what the patients' genomes add to the reference).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from fedgenome.configs.errors import ConfigError
from fedgenome.configs.schema import Region
from fedgenome.shared.datasets import n_fraction
from fedgenome.shared.genomes import Cohort, Reference
from fedgenome.shared.scoring import position_log_likelihood
from fedgenome.shared.train import IGNORE, split_batch


def window_starts(reference: Reference, region: Region, *, span: int, count: int,
                  max_n_fraction: float) -> list[int]:
    """Up to ``count`` starts of ``span``-base windows, evenly spaced over ``region``, mostly not N."""
    seq = reference.tokens(region.contig)
    candidates = np.linspace(region.start, max(region.start, region.end - span), count * 4).astype(int)
    starts = [int(s) for s in candidates if n_fraction(seq[s:s + span]) <= max_n_fraction]
    if not starts:
        return []
    picks = np.unique(np.linspace(0, len(starts) - 1, min(count, len(starts))).astype(int))
    return [starts[int(i)] for i in picks]


@torch.no_grad()
def patient_bits(model: nn.Module, cohort: Cohort, reference: Reference, region: Region, *,
                 window: int, per_patient: int, max_n_fraction: float, device: torch.device,
                 batch_size: int = 16) -> np.ndarray:
    """(patients,) each patient's bits per base on their own held-out haplotypes (module docstring)."""
    span = window + 1
    starts = window_starts(reference, region, span=span, count=per_patient, max_n_fraction=max_n_fraction)
    if not starts:
        raise ConfigError(f"held-out region {region.contig}:{region.start}-{region.end} has no window of "
                          f"{span} bases that is mostly A/C/G/T: evaluate on another region")
    seq = reference.tokens(region.contig)
    patients = len(cohort.samples)
    rows = [(p, cohort.apply(seq[s:s + span], patient=p, hap=j % 2, contig=region.contig, start=s))
            for p in range(patients) for j, s in enumerate(starts)]
    return _bits(model, rows, patients, targets=slice(None), device=device, batch_size=batch_size)


@torch.no_grad()
def patient_bits_at(model: nn.Module, cohort: Cohort, reference: Reference, contig: str,
                    positions: Sequence[int], *, context: int, device: torch.device,
                    batch_size: int = 64) -> np.ndarray:
    """(patients,) each patient's bits on their own base at each of ``positions`` (0-based), both haplotypes.

    The base at p is predicted from the ``context`` bases of the same haplotype before it; a missing
    genotype (N) is not counted. The positions come from a public panel
    (:mod:`fedgenome.shared.variant_panel`), the same for every site.
    """
    seq = reference.tokens(contig)
    patients = len(cohort.samples)
    rows = [(p, cohort.apply(seq[q - context:q + 1], patient=p, hap=h, contig=contig, start=q - context))
            for p in range(patients) for q in positions for h in (0, 1)]
    return _bits(model, rows, patients, targets=slice(-1, None), device=device, batch_size=batch_size)


def _bits(model: nn.Module, rows: list[tuple[int, np.ndarray]], patients: int, *, targets: slice,
          device: torch.device, batch_size: int) -> np.ndarray:
    """Per patient, bits per base over the ``targets`` positions of their rows (patient, window)."""
    model.eval()
    nats, bases = np.zeros(patients), np.zeros(patients)
    for lo in range(0, len(rows), batch_size):
        chunk = rows[lo:lo + batch_size]
        windows = torch.from_numpy(np.stack([w for _, w in chunk]).astype(np.int64))
        ll = position_log_likelihood(model, windows, device=device)[:, targets].sum(dim=1).numpy()
        counted = (split_batch(windows)[1][:, targets] != IGNORE).sum(dim=1).numpy()
        for (p, _), value, n in zip(chunk, ll, counted, strict=True):
            nats[p] -= value
            bases[p] += n
    return nats / np.maximum(bases, 1) / math.log(2)

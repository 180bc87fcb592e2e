"""A weak variant-effect label from real genotypes: each unseen-cohort SNV's frequency at the hospitals.

Common alleles are tolerated; rare ones less so. For every SNV of chr20 that at least one person of
the unseen cohort (IBS) carries, the table gives the ALT allele's frequency among the training
sites' patients (GBR+FIN, TSI, CEU), so labels come from the hospitals and the scored variants from
the cohort no model trains on. ``fedgenome data variant-labels`` keeps the held-out region by default
(the last 5 Mb of chr20, ``sites.holdout_region``): no model of this project read the reference or
a patient's genome there.

Columns of the TSV: ``variant`` (``CONTIG:POS:REF:ALT``, POS 1-based), ``train_af`` (ALT frequency
over the training patients' called alleles), ``train_alleles`` (alleles called), ``unseen_carriers``
(IBS people carrying ALT), ``common`` (1 when ``min(train_af, 1 - train_af) >= 0.05``, else 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedgenome.configs.schema import Region
from fedgenome.shared.atomic import atomic_path
from fedgenome.shared.fetch import DataPaths
from fedgenome.shared.plink import read_plink
from fedgenome.shared.sites import CONTIG, SITE_RULES, ref_alt, split_samples

COLUMNS = ("variant", "train_af", "train_alleles", "unseen_carriers", "common")
COMMON = 0.05  # minor-allele frequency from which an allele counts as common


@dataclass(frozen=True)
class LabelledVariant:
    """One SNV of the unseen cohort, labelled with its frequency at the training sites."""

    contig: str
    pos: int  # 1-based
    ref: str
    alt: str
    train_af: float
    train_alleles: int
    unseen_carriers: int

    @property
    def common(self) -> bool:
        """Minor-allele frequency at the training sites of at least :data:`COMMON`."""
        return min(self.train_af, 1 - self.train_af) >= COMMON

    def row(self) -> str:
        """A TSV line (no newline)."""
        return (f"{self.contig}:{self.pos}:{self.ref}:{self.alt}\t{self.train_af:.5f}\t"
                f"{self.train_alleles}\t{self.unseen_carriers}\t{int(self.common)}")


def frequency_labels(paths: DataPaths, *, region: Region | None) -> list[LabelledVariant]:
    """The unseen cohort's SNVs in ``region`` (None: all of chr20), by position."""
    data = read_plink(paths.plink_prefix, chrom=CONTIG)
    groups = split_samples(data.samples,
                           source=paths.plink_prefix.with_name(paths.plink_prefix.name + ".fam"))
    ref_is_a1, bases = ref_alt(data, paths.reference)
    alt_copies = np.where(ref_is_a1[:, None], data.a2_counts(), data.a1_counts())  # (snps, people)
    alt_allele = np.where(ref_is_a1, data.a2, data.a1)
    train = [i for rule in SITE_RULES if rule.role == "hospital" for i in groups[rule.name]]
    unseen = [i for rule in SITE_RULES if rule.role == "unseen" for i in groups[rule.name]]
    called = alt_copies[:, train] >= 0
    train_alt = np.where(called, alt_copies[:, train], 0).sum(axis=1)
    train_alleles = 2 * called.sum(axis=1)
    carriers = (alt_copies[:, unseen] > 0).sum(axis=1)
    keep = (carriers > 0) & (train_alleles > 0)
    if region is not None:
        keep &= (data.pos > region.start) & (data.pos <= region.end)
    return [LabelledVariant(CONTIG, int(data.pos[i]), bases[i], str(alt_allele[i]),
                            float(train_alt[i] / train_alleles[i]), int(train_alleles[i]),
                            int(carriers[i]))
            for i in np.flatnonzero(keep)]


def write_labels(rows: list[LabelledVariant], path: Path) -> None:
    """Write the TSV (header :data:`COLUMNS`), whole or not at all."""
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        fh.write("\t".join(COLUMNS) + "\n")
        fh.writelines(row.row() + "\n" for row in rows)

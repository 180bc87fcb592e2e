"""A public panel of variant positions, and the positions of the held-out region a site evaluation scores.

A site's patients differ from the reference only at their variants, and the held-out region's evenly
spaced windows may hold none, so bits per base there measure the reference, not the patients. With
a panel (``site-eval-panel``: a public list of variant positions, e.g. a genotyping array's
manifest or a catalogue such as dbSNP; a PLINK ``.bim`` or a VCF, of which only the positions are
read) the server picks ``site-eval-positions`` of the panel's positions in the held-out region and
sends them with every evaluation; each site then scores each patient's two haplotypes at exactly
those positions (:func:`fedgenome.shared.patient_bits.patient_bits_at`). The positions are public
and the same for every site, so no patient's data chooses what another patient is scored on: the
per-patient clipping bounds the release's sensitivity as before.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pysam

from fedgenome.configs.errors import ConfigError, InputFileError
from fedgenome.configs.schema import MAX_EVAL_POSITIONS, Region
from fedgenome.shared.datasets import n_fraction
from fedgenome.shared.genomes import Reference
from fedgenome.shared.plink import bim_positions
from fedgenome.shared.tokenizer import NUCLEOTIDES


def read_panel(path: str, contig: str) -> npt.NDArray[np.int64]:
    """The panel's 0-based positions on ``contig``, sorted and unique (a ``.bim`` or a VCF)."""
    if path.endswith(".bim"):
        one_based = bim_positions(Path(path), contig)  # its own one-line errors
    else:
        try:
            with pysam.VariantFile(path) as vcf:
                one_based = np.array([rec.pos for rec in vcf if rec.chrom == contig], dtype=np.int64)
        except (OSError, ValueError) as exc:
            raise InputFileError(f"site-eval-panel {path}: not a readable VCF ({exc}); give a public "
                                 "list of variant positions (a VCF or a PLINK .bim)") from None
    return np.unique(one_based - 1)


def panel_positions(panel: npt.NDArray[np.int64], reference: Reference, region: Region, *,
                    count: int, context: int, max_n_fraction: float) -> list[int]:
    """Up to ``count`` panel positions in ``region``, evenly spread, each with a usable context.

    A position qualifies when its ``context`` bases before it lie in the region too, mostly not N,
    and the reference has a base (A/C/G/T) there.
    """
    seq = reference.tokens(region.contig)
    inside = panel[(panel >= region.start + context) & (panel < min(region.end, len(seq)))]
    usable = [int(p) for p in inside
              if seq[p] in NUCLEOTIDES and n_fraction(seq[p - context:p + 1]) <= max_n_fraction]
    if not usable:
        raise ConfigError(f"site-eval-panel: none of its {len(panel):,} positions on {region.contig} "
                          f"lies in the held-out region {region.contig}:{region.start}-{region.end} "
                          f"with {context} clean bases before it; give a panel of that region")
    picks = np.unique(np.linspace(0, len(usable) - 1, min(count, len(usable))).astype(int))
    return [usable[int(i)] for i in picks]


def check_positions(positions: tuple[int, ...], region: Region, *, context: int) -> None:
    """Refuse positions from the server that a site must not score (outside the held-out region)."""
    if not 0 < len(positions) <= MAX_EVAL_POSITIONS:
        raise ConfigError(f"evaluation positions: {len(positions)} sent, expected 1 to {MAX_EVAL_POSITIONS}")
    bad = next((p for p in positions if not region.start + context <= p < region.end), None)
    if bad is not None:
        raise ConfigError(f"evaluation position {bad} from the server: it and the {context} bases "
                          f"before it must lie in the held-out region {region.contig}:{region.start}-"
                          f"{region.end}; refusing to score outside it")

"""Bits a model spends on a cohort's own alleles at its variant positions (bench/quality.py's IBS column)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedgenome.configs.schema import Preset, load_site_manifest
from fedgenome.shared.genomes import Cohort, Reference, load_cohort
from fedgenome.shared.model import GenomeLM
from fedgenome.shared.scoring import variant_site_bits

CPU = torch.device("cpu")


def _one_by_one(model: GenomeLM, reference: Reference, cohort: Cohort, positions: np.ndarray,
                window: int) -> list[float]:
    """Each haplotype's window scored on its own: what the batched, deduplicated scorer must equal."""
    seq, out = reference.tokens("20"), []
    for pos in positions:
        for patient in range(len(cohort.samples)):
            for hap in (0, 1):
                win = cohort.apply(seq[pos - window : pos + 1], patient=patient, hap=hap, contig="20",
                                   start=int(pos) - window)
                x = torch.from_numpy(win[:-1].astype(np.int64))[None]
                with torch.no_grad():
                    logp = F.log_softmax(model(x)[0, -1].float(), dim=-1)
                out.append(-float(logp[int(win[-1])]) / math.log(2))
    return out


@pytest.mark.data
def test_variant_bits_equal_scoring_each_haplotype_alone_and_a_silent_model_pays_two_bits(
        sites_dir: Path, tiny: Preset) -> None:
    site = sites_dir / "unseen-ibs"
    manifest = load_site_manifest(site)
    reference = Reference(manifest.reference)
    cohort = load_cohort(manifest, reference, cache_dir=None)
    window = tiny.data.window
    torch.manual_seed(0)
    model = GenomeLM(tiny.model).eval()
    got = variant_site_bits(model, cohort, reference, contig="20", window=window, device=CPU,
                            max_positions=5, batch_size=7)
    cv = cohort.contigs["20"]
    usable = cv.pos[cv.pos >= window]
    picks = usable[np.unique(np.linspace(0, len(usable) - 1, 5).astype(int))]
    expected = _one_by_one(model, reference, cohort, picks, window)
    assert got.scored == len(expected) == 5 * 2 * len(cohort.samples)
    assert math.isclose(got.bits_per_base, float(np.mean(expected)), rel_tol=1e-5)
    assert 0 < got.alt_fraction < 1  # the positions are variant: some haplotypes carry ALT
    model.silence()  # head at zero: uniform over the four bases
    silent = variant_site_bits(model, cohort, reference, contig="20", window=window, device=CPU,
                               max_positions=5)
    assert math.isclose(silent.bits_per_base, 2.0, abs_tol=1e-3)
    assert math.isclose(silent.alt_bits_per_base, 2.0, abs_tol=1e-3)

"""Bad site files give one clear line naming the file and the fix, and leave nothing behind.

Each case is built as a tiny synthetic site (tests/minisite.py); "nothing behind" means the site's
state/ holds no cohort cache (nor a half-written one) and no ledger.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from fedgenome.configs.errors import ConfigError, InputFileError
from fedgenome.configs.schema import Preset, load_site_manifest
from fedgenome.experiments.training import prepare
from fedgenome.shared.datasets import open_site
from fedgenome.shared.genomes import Reference
from fedgenome.shared.tokenizer import encode
from tests.minisite import SAMPLES, Spec, make_site, reference_sequence, written


def open_(site: Path, tiny: Preset) -> object:
    return open_site(site, tiny.data, seed=0, cache_dir=site / "state")


def one_line(err: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(err.value)
    assert "\n" not in message and message
    return message


@pytest.mark.parametrize(("ref", "vcf", "contigs", "holdout"), [
    ("chr20", "20", ("20",), None),
    ("20", "chr20", ("chr20",), "20:15000-20000"),
    ("chr20", "chr20", ("20",), "chr20:15000-20000"),
])
def test_chr_and_bare_contig_names_are_one_contig_everywhere(
        tmp_path: Path, tiny: Preset, ref: str, vcf: str, contigs: tuple[str, ...],
        holdout: str | None) -> None:
    site = make_site(tmp_path, Spec(ref_contig=ref, vcf_contig=vcf, contigs=contigs,
                                    holdout=holdout, genotype="1|1"))
    data = open_site(site, tiny.data, seed=0, cache_dir=site / "state")
    cohort = data.dataset.cohort  # type: ignore[union-attr]
    contig = contigs[0]
    assert len(cohort.contigs[contig].pos) == 26
    assert data.manifest.holdout[0].contig == contig  # held out under the training name
    seq = reference_sequence()
    window = encode(seq[1000:1100])
    applied = cohort.apply(window, patient=0, hap=0, contig=contig, start=1000)
    assert applied[0] != window[0] and (applied[1:] == window[1:]).all()  # the SNV at 1,001
    assert all(iv.end <= 15_000 for iv in data.dataset.sampler.intervals)  # type: ignore[union-attr]


def test_a_contig_no_file_has_names_the_file_and_both_spellings(tmp_path: Path, tiny: Preset) -> None:
    site = make_site(tmp_path, Spec(contigs=("21",), holdout="20:15000-20000"))
    with pytest.raises(InputFileError) as err:
        open_(site, tiny)
    assert "no contig '21' (nor 'chr21'; it has: 20)" in one_line(err)
    assert written(site) == []


def test_the_same_contig_twice_in_site_toml_is_refused(tmp_path: Path) -> None:
    for contigs in (("20", "20"), ("20", "chr20")):
        site = make_site(tmp_path / "-".join(contigs), Spec(contigs=contigs))
        with pytest.raises(ConfigError) as err:
            load_site_manifest(site)
        assert "the same contig twice" in one_line(err)


def test_a_truncated_bgzf_reference_says_truncated_and_how_to_refetch(tmp_path: Path,
                                                                      tiny: Preset) -> None:
    site = make_site(tmp_path, Spec(bgzip_reference=True))
    ref = site / "ref.fa.gz"
    assert len(Reference(ref).tokens("20")) == 20_000
    ref.write_bytes(ref.read_bytes()[: ref.stat().st_size // 2])
    with pytest.raises(InputFileError) as err:
        open_(site, tiny)
    message = one_line(err)
    assert "truncated" in message and "fedgenome data fetch" in message
    assert written(site) == []


def test_an_unsorted_vcf_is_refused_with_how_to_sort_and_index(tmp_path: Path, tiny: Preset) -> None:
    positions = [1_001, 5_001, 3_001, 7_001]
    site = make_site(tmp_path, Spec(positions=positions, index=False))
    with pytest.raises(InputFileError) as err:
        open_(site, tiny)
    message = one_line(err)
    assert "not sorted (20:3001 comes after 20:5001)" in message
    assert "bcftools sort -Oz -o sorted.vcf.gz" in message and "bcftools index -t" in message
    assert written(site) == []


def test_a_sorted_unindexed_vcf_still_reads_every_contig(tmp_path: Path, tiny: Preset) -> None:
    site = make_site(tmp_path, Spec(index=False))
    cohort = open_site(site, tiny.data, seed=0).dataset.cohort  # type: ignore[union-attr]
    assert len(cohort.contigs["20"].pos) == 26


def test_a_holdout_covering_the_whole_contig_is_refused_naming_it(tmp_path: Path,
                                                                 tiny: Preset) -> None:
    site = make_site(tmp_path, Spec(holdout="20:0-25000"))
    with pytest.raises(ConfigError) as err:
        open_(site, tiny)
    message = one_line(err)
    assert "held-out region 20:0-25000 covers all of 20 (20,000 bases)" in message
    assert "nothing of it is left to train on" in message
    assert written(site) == []


def test_duplicate_sample_names_are_named(tmp_path: Path, tiny: Preset) -> None:
    site = make_site(tmp_path, Spec(samples=(*SAMPLES, "P03", "P07"), index=False))
    with pytest.raises(InputFileError) as err:
        open_(site, tiny)
    assert "duplicate sample names P03, P07 in VCF" in one_line(err)
    assert written(site) == []


def test_haploid_calls_on_an_autosome_are_refused(tmp_path: Path, tiny: Preset) -> None:
    site = make_site(tmp_path, Spec(genotype="1"))
    with pytest.raises(InputFileError) as err:
        open_(site, tiny)
    message = one_line(err)
    assert "haploid genotype of sample P00 at 20:1001" in message and "must be diploid" in message
    assert written(site) == []


def test_haploid_calls_on_x_are_one_allele_on_both_haplotypes(
        tmp_path: Path, tiny: Preset, caplog: pytest.LogCaptureFixture) -> None:
    site = make_site(tmp_path, Spec(ref_contig="chrX", vcf_contig="X", contigs=("X",),
                                    genotype="1"))
    with caplog.at_level(logging.WARNING):
        cohort = open_site(site, tiny.data, seed=0).dataset.cohort  # type: ignore[union-attr]
    haps = cohort.contigs["X"].haplotypes
    assert (haps == 1).all()  # never N on the second haplotype
    assert f"{26 * len(SAMPLES)} haploid calls read as one allele on both haplotypes" in caplog.text


def test_missing_calls_stay_missing_on_both_haplotypes(tmp_path: Path, tiny: Preset) -> None:
    site = make_site(tmp_path, Spec(genotype="."))
    cohort = open_site(site, tiny.data, seed=0).dataset.cohort  # type: ignore[union-attr]
    assert (cohort.contigs["20"].haplotypes == -1).all()


def test_pooled_sites_sharing_a_person_warn_with_the_count(
        tmp_path: Path, tiny: Preset, caplog: pytest.LogCaptureFixture) -> None:
    a = make_site(tmp_path, Spec(name="a"))
    b = make_site(tmp_path, Spec(name="b", samples=("P01", "P02", *[f"Q{i}" for i in range(10)])))
    with caplog.at_level(logging.WARNING):
        prepare([a, b], tiny, preset_name="tiny", device_name="cpu")
    assert "2 sample ids are at more than one of the pooled sites (P01, P02)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        prepare([a], tiny, preset_name="tiny", device_name="cpu")
    assert "more than one of the pooled sites" not in caplog.text


def test_a_vcf_position_past_the_reference_end_is_refused(tmp_path: Path, tiny: Preset) -> None:
    seq = reference_sequence()
    site = make_site(tmp_path, Spec(positions=(1_001,), sequence=seq))
    short = seq[:900]
    (site / "ref.fa").write_text(">20\n" + short + "\n")
    (site / "ref.fa.fai").unlink()
    with pytest.raises(InputFileError) as err:
        open_(site, tiny)
    assert "lies past the end of ref.fa:20 (900 bases)" in one_line(err)
    assert np.asarray(written(site)).size == 0

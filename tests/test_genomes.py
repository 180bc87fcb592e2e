"""Haplotypes from real genotypes, and datasets whose items are single patients."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pysam
import pytest

from fedgenome.configs.errors import InputFileError
from fedgenome.configs.schema import DataConfig, load_site_manifest
from fedgenome.shared.datasets import SiteData, n_fraction, open_site, read_fasta_records
from fedgenome.shared.fetch import DataPaths
from fedgenome.shared.genomes import Reference, load_cohort
from fedgenome.shared.tokenizer import encode, reverse_complement_ids

DATA = DataConfig(window=256)


@pytest.fixture(scope="module")
def ceu(sites_dir: Path) -> SiteData:
    return open_site(sites_dir / "hospital-ceu", DATA, seed=1)


@pytest.mark.data
def test_each_applied_snp_shows_its_allele_and_reference_elsewhere(ceu: SiteData) -> None:
    cohort, ref = ceu.dataset.cohort, ceu.reference.tokens("20")
    cv = cohort.contigs["20"]
    for patient in (0, 7, len(cohort.samples) - 1):
        for hap in (0, 1):
            seq = cohort.apply(ref, patient=patient, hap=hap, contig="20", start=0)
            alleles = cv.haplotypes[:, patient, hap]
            expected = cv.alleles[np.arange(len(cv.pos)), alleles]
            assert np.array_equal(seq[cv.pos], expected)
            assert (alleles == 1).sum() > 100  # real people carry many ALT alleles
            others = np.ones(len(ref), dtype=bool)
            others[cv.pos] = False
            assert np.array_equal(seq[others], ref[others])


@pytest.mark.data
def test_phasing_keeps_each_genotype_and_is_recorded(ceu: SiteData, sites_dir: Path) -> None:
    cohort = ceu.dataset.cohort
    cv = cohort.contigs["20"]
    vf = pysam.VariantFile(str(sites_dir / "hospital-ceu" / "patients.vcf.gz"))
    alt_counts = np.array([[sum(a or 0 for a in s.allele_indices) for s in rec.samples.values()]
                           for rec in vf])
    assert np.array_equal(cv.haplotypes.sum(-1), alt_counts)
    het = cv.haplotypes[..., 0] != cv.haplotypes[..., 1]
    assert cv.flipped.any() and not (cv.flipped & ~het).any()
    again = load_cohort(load_site_manifest(sites_dir / "hospital-ceu"), ceu.reference, cache_dir=None)
    assert np.array_equal(again.contigs["20"].haplotypes, cv.haplotypes)


@pytest.mark.data
def test_cohort_cache_round_trips(ceu: SiteData, sites_dir: Path, tmp_path: Path) -> None:
    manifest = load_site_manifest(sites_dir / "hospital-ceu")
    first = load_cohort(manifest, ceu.reference, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("cohort-*.npz"))) == 1
    second = load_cohort(manifest, ceu.reference, cache_dir=tmp_path)
    assert second.samples == first.samples
    assert np.array_equal(second.contigs["20"].haplotypes, first.contigs["20"].haplotypes)


@pytest.mark.data
def test_items_are_windows_of_one_patient(ceu: SiteData) -> None:
    dataset = ceu.dataset
    assert len(dataset) == 85
    holdout = ceu.manifest.holdout[0]
    ref = ceu.reference.tokens("20")
    for patient in range(0, 85, 7):
        draw = dataset.sample(patient)
        assert len(draw.tokens) == DATA.window + 1
        assert draw.start + DATA.window + 1 <= holdout.start  # never in the held-out region
        assert n_fraction(draw.tokens) <= DATA.max_n_fraction
        forward = reverse_complement_ids(draw.tokens) if draw.reverse else draw.tokens
        expected = dataset.cohort.apply(ref[draw.start : draw.start + DATA.window + 1],
                                        patient=patient, hap=draw.hap, contig="20", start=draw.start)
        assert np.array_equal(forward, expected)
    assert dataset[3].shape == (DATA.window + 1,)


@pytest.mark.data
def test_fasta_site_has_one_item_per_record(tmp_path: Path, data_paths: DataPaths) -> None:
    site = tmp_path / "worms"
    site.mkdir()
    (site / "site.toml").write_text(f'name = "worms"\nkind = "fasta"\nfasta = "{data_paths.ce_fasta}"\n')
    opened = open_site(site, DATA, seed=0)
    records = read_fasta_records(data_paths.ce_fasta)
    assert len(opened.dataset) == len(records) == 7
    for unit, name in enumerate(records):
        draw = opened.dataset.sample(unit)
        forward = reverse_complement_ids(draw.tokens) if draw.reverse else draw.tokens
        assert draw.contig == name
        assert np.array_equal(forward, records[name][draw.start : draw.start + DATA.window + 1])


@pytest.mark.parametrize(("text", "message"), [
    (">a\nACGTXACGT\n", "record 'a': characters outside IUPAC nucleotide codes \\('X'\\)"),
    (">a\nACGT\n>b\n\n>c\nAC\n", "record 'b' is empty"),
    (">a\nACGT\n>a\nACGT\n", "record name 'a' appears twice"),
    ("", "no FASTA records found"),
])
def test_malformed_fasta_is_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.fa"
    path.write_text(text)
    with pytest.raises(InputFileError, match=message):
        read_fasta_records(path)


@pytest.mark.data
def test_vcf_whose_ref_disagrees_with_the_reference(tmp_path: Path, data_paths: DataPaths) -> None:
    seq = Reference(data_paths.reference).tokens("20")
    pos = 30_000_001
    wrong = next(b for b in "ACGT" if encode(b)[0] != seq[pos - 1])
    alt = next(b for b in "ACGT" if b != wrong)
    text = ("##fileformat=VCFv4.2\n##contig=<ID=20,length=63025520>\n"
            '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n'
            f"#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tP1\n"
            f"20\t{pos}\trsX\t{wrong}\t{alt}\t.\tPASS\t.\tGT\t0/1\n")
    (tmp_path / "p.vcf").write_text(text)
    pysam.tabix_compress(str(tmp_path / "p.vcf"), str(tmp_path / "p.vcf.gz"))
    (tmp_path / "site.toml").write_text(
        f'name = "bad"\nreference = "{data_paths.reference}"\nvcf = "p.vcf.gz"\n')
    with pytest.raises(InputFileError, match=f"REF {wrong} at 20:{pos} disagrees with the reference"):
        open_site(tmp_path, DATA, seed=0)

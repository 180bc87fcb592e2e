"""The PLINK reader and the hospital sites built from the 379 real people on chr20."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

import numpy as np
import pysam
import pytest
from typer.testing import CliRunner

import fedgenome.shared.fetch as fetch
import fedgenome.shared.sites as sites_mod
from fedgenome.cmd_data import app
from fedgenome.configs.errors import InputFileError
from fedgenome.configs.schema import Region, load_site_manifest
from fedgenome.configs.validation import read_toml
from fedgenome.shared.fetch import DataPaths
from fedgenome.shared.plink import PlinkData, decode_codes, read_fam, read_plink
from fedgenome.shared.sites import SITE_RULES, ensure_sites, make_sites

pytestmark = pytest.mark.data

CHR20 = 63_025_520
SIZES = {"hospital-gbr-fin": 181, "hospital-tsi": 98, "hospital-ceu": 85, "unseen-ibs": 15}


@pytest.fixture(scope="module")
def chr20(data_paths: DataPaths) -> PlinkData:
    return read_plink(data_paths.plink_prefix, chrom="20")


def _copy_plink(data_paths: DataPaths, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for ext in (".bed", ".bim", ".fam"):
        shutil.copyfile(f"{data_paths.plink_prefix}{ext}", dst / f"EUR_subset{ext}")
    return dst / "EUR_subset"


def _alt_counts(vcf: Path) -> tuple[list[str], list[str], np.ndarray]:
    """Sample names, SNP ids and ALT-allele counts (-1 missing) read back with pysam."""
    with pysam.VariantFile(str(vcf)) as reader:
        samples = list(reader.header.samples)
        ids: list[str] = []
        rows = []
        for rec in reader:
            ids.append(str(rec.id))
            rows.append([-1 if None in s["GT"] else sum(s["GT"]) for s in rec.samples.values()])
    return samples, ids, np.array(rows)


# --- PLINK reader -------------------------------------------------------------------------------

def test_bits_are_read_low_first() -> None:
    packed = np.array([[0b11_10_01_00, 0b00_00_00_10]], dtype=np.uint8)
    assert decode_codes(packed, 5).tolist() == [[0, 1, 2, 3, 2]]


def test_reader_shapes_and_chromosome_filter(data_paths: DataPaths, chr20: PlinkData) -> None:
    everything = read_plink(data_paths.plink_prefix)
    assert everything.codes.shape == (54_051, 379)
    assert chr20.codes.shape == (9_327, 379) and chr20.codes.dtype == np.int8
    assert set(chr20.chrom.tolist()) == {"20"} and chr20.pos.dtype == np.int64
    assert chr20.samples[:2] == ("HG00096", "HG00097")
    assert set(np.unique(everything.codes).tolist()) <= {0, 1, 2, 3}


def test_reader_agrees_with_an_independent_vcf(data_paths: DataPaths) -> None:
    """bio-eagle's EUR_test.vcf.gz holds 2,000 of the same SNPs for the same 379 people."""
    data = read_plink(data_paths.plink_prefix)
    samples, ids, alt = _alt_counts(data_paths.eagle_vcf)
    column = {s: i for i, s in enumerate(data.samples)}
    order = [column[s.split("_", 1)[1]] for s in samples]  # VCF names are FID_IID
    row = {s: i for i, s in enumerate(data.snp_id.tolist())}
    with pysam.VariantFile(str(data_paths.eagle_vcf)) as reader:
        alts = [rec.alts[0] for rec in reader if rec.alts]
    a1_counts, a2_counts = data.a1_counts(), data.a2_counts()
    checked = 0
    for snp, alt_allele, counts in zip(ids, alts, alt, strict=True):
        i = row[snp]
        expected = (a1_counts if data.a1[i] == alt_allele else a2_counts)[i, order]
        assert counts.tolist() == expected.tolist(), snp
        checked += 1
    assert checked == 2_000


def test_bad_magic_and_truncated_bed_are_rejected(data_paths: DataPaths, tmp_path: Path) -> None:
    prefix = _copy_plink(data_paths, tmp_path)
    bed = prefix.with_suffix(".bed")
    good = bed.read_bytes()
    bed.write_bytes(b"\x6c\x1b\x00" + good[3:])  # individual-major: not supported
    with pytest.raises(InputFileError, match="bad magic") as err:
        read_plink(prefix)
    assert str(bed) in str(err.value)
    bed.write_bytes(good[:-1])
    with pytest.raises(InputFileError, match="truncated") as err:
        read_plink(prefix)
    assert str(bed) in str(err.value)


def test_row_count_mismatch_is_rejected(data_paths: DataPaths, tmp_path: Path) -> None:
    prefix = _copy_plink(data_paths, tmp_path)
    fam = prefix.with_suffix(".fam")
    fam.write_text("".join(fam.read_text().splitlines(keepends=True)[:-4]))  # 375 samples
    with pytest.raises(InputFileError, match=r"expected \d+ for 54051 SNPs x 375 samples"):
        read_plink(prefix)


# --- sites --------------------------------------------------------------------------------------

def test_sites_split_the_379_people_by_population(data_paths: DataPaths, sites_dir: Path) -> None:
    seen: dict[str, set[str]] = {}
    for rule in SITE_RULES:
        with pysam.VariantFile(str(sites_dir / rule.name / "patients.vcf.gz")) as reader:
            seen[rule.name] = set(reader.header.samples)
    assert {name: len(s) for name, s in seen.items()} == SIZES
    everyone = set(read_fam(Path(f"{data_paths.plink_prefix}.fam")))
    assert set().union(*seen.values()) == everyone and len(everyone) == 379  # disjoint, complete
    assert all(s.startswith("HG01") for s in seen["unseen-ibs"])
    assert load_site_manifest(sites_dir / "unseen-ibs").role == "unseen"


@pytest.mark.parametrize("site", list(SIZES))
def test_site_genotypes_equal_the_plink_source(chr20: PlinkData, sites_dir: Path,
                                               site: str) -> None:
    vcf = sites_dir / site / "patients.vcf.gz"
    samples, ids, alt = _alt_counts(vcf)
    column = {s: i for i, s in enumerate(chr20.samples)}
    cols = [column[s] for s in samples]
    rows = {s: i for i, s in enumerate(chr20.snp_id.tolist())}
    assert sorted(ids) == sorted(rows)  # every SNP, once
    with pysam.VariantFile(str(vcf)) as reader:
        ref_is_a1 = np.array([rec.ref == chr20.a1[rows[rec.id]] for rec in reader])
    order = [rows[s] for s in ids]
    expected = np.where(ref_is_a1[:, None], chr20.a2_counts()[order][:, cols],
                        chr20.a1_counts()[order][:, cols])
    assert np.array_equal(alt, expected)
    with pysam.VariantFile(str(vcf)) as reader:
        first = next(iter(reader))
        assert not any(s.phased for s in first.samples.values())


def test_every_ref_is_the_reference_base(data_paths: DataPaths, sites_dir: Path) -> None:
    with pysam.FastaFile(str(data_paths.reference)) as fa:
        seq = fa.fetch("20").upper()
    with pysam.VariantFile(str(sites_dir / "hospital-tsi" / "patients.vcf.gz")) as reader:
        records = [(rec.pos, rec.ref, rec.alts or ()) for rec in reader]
    assert len(records) == 9_327
    assert all(seq[pos - 1] == ref and len(alts) == 1 and alts[0] != ref
               for pos, ref, alts in records)
    positions = [pos for pos, _, _ in records]
    assert positions == sorted(positions)


def test_site_vcf_is_indexed(chr20: PlinkData, sites_dir: Path) -> None:
    vcf = sites_dir / "hospital-ceu" / "patients.vcf.gz"
    assert Path(f"{vcf}.tbi").is_file()
    start, end = 30_000_000, 31_000_000  # 0-based, half-open
    expected = int(np.count_nonzero((chr20.pos > start) & (chr20.pos <= end)))
    with pysam.VariantFile(str(vcf)) as reader:
        assert reader.index is not None
        assert sum(1 for _ in reader.fetch("20", start, end)) == expected > 0


def test_manifest_round_trips_with_the_last_5mb_held_out(data_paths: DataPaths,
                                                         sites_dir: Path) -> None:
    for rule in SITE_RULES:
        site = sites_dir / rule.name
        raw = read_toml(site / "site.toml")
        assert raw["vcf"] == "patients.vcf.gz" and Path(raw["reference"]).is_absolute()
        manifest = load_site_manifest(site)
        assert (manifest.name, manifest.role, manifest.kind) == (rule.name, rule.role, "vcf")
        assert manifest.reference == data_paths.reference.resolve()
        assert manifest.vcf == (site / "patients.vcf.gz").resolve() and manifest.vcf.is_file()
        assert manifest.contigs == ("20",)
        assert manifest.holdout == (Region(contig="20", start=CHR20 - 5_000_000, end=CHR20),)
        assert (manifest.privacy.epsilon_budget, manifest.privacy.delta) == (8.0, 1e-5)


def test_ref_alt_mismatch_names_the_snp(data_paths: DataPaths, chr20: PlinkData,
                                        tmp_path: Path) -> None:
    prefix = _copy_plink(data_paths, tmp_path / "plink")
    i = 100
    with pysam.FastaFile(str(data_paths.reference)) as fa:
        base = fa.fetch("20", int(chr20.pos[i]) - 1, int(chr20.pos[i])).upper()
    a1, a2 = [b for b in "ACGT" if b != base][:2]
    bim = prefix.with_suffix(".bim")
    lines = bim.read_text().splitlines(keepends=True)
    k = next(n for n, line in enumerate(lines) if line.split()[1] == chr20.snp_id[i])
    cols = lines[k].split()
    lines[k] = "\t".join([*cols[:4], a1, a2]) + "\n"
    bim.write_text("".join(lines))
    out = tmp_path / "sites"
    with pytest.raises(InputFileError, match=f"SNP {chr20.snp_id[i]} at 20:{chr20.pos[i]}"):
        make_sites(dataclasses.replace(data_paths, plink_prefix=prefix), out)
    assert not out.exists() or not any(out.iterdir())


def test_unknown_sample_is_rejected(data_paths: DataPaths, tmp_path: Path) -> None:
    prefix = _copy_plink(data_paths, tmp_path / "plink")
    fam = prefix.with_suffix(".fam")
    fam.write_text(fam.read_text().replace("HG00097", "XY00097", 1))
    with pytest.raises(InputFileError, match="'XY00097' matches no site"):
        make_sites(dataclasses.replace(data_paths, plink_prefix=prefix), tmp_path / "sites")


def test_failed_build_leaves_nothing(data_paths: DataPaths, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(sites_mod, "write_vcf", boom)
    out = tmp_path / "sites"
    with pytest.raises(OSError, match="disk full"):
        make_sites(data_paths, out)
    assert list(out.iterdir()) == []


def test_ensure_sites_keeps_sites_already_built(data_paths: DataPaths, sites_dir: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def no_rebuild(*args: object, **kwargs: object) -> None:
        raise AssertionError("sites were rebuilt")

    monkeypatch.setattr(sites_mod, "make_sites", no_rebuild)
    assert ensure_sites(data_paths, sites_dir) == [sites_dir / r.name for r in SITE_RULES]
    with pytest.raises(AssertionError, match="rebuilt"):
        ensure_sites(data_paths, sites_dir, holdout_bases=1_000_000)


def test_cli_make_sites_prints_the_summary(data_paths: DataPaths, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(fetch, "_run", lambda *a, **k: pytest.fail("apt-get must not run"))
    out = tmp_path / "sites"
    with caplog.at_level(logging.INFO):
        result = CliRunner().invoke(app, ["make-sites", "--out", str(out), "--cache",
                                          str(data_paths.cache), "--holdout-bases", "1000000"])
    assert result.exit_code == 0, result.output
    for name, size in SIZES.items():
        assert name in result.output and str(size) in result.output
    assert "9,327" in result.output
    holdout = load_site_manifest(out / "hospital-tsi").holdout
    assert holdout == (Region(contig="20", start=CHR20 - 1_000_000, end=CHR20),)

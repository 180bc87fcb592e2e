"""Tiny synthetic hospital sites (a 20 kb reference, a dozen patients) for tests of bad inputs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pysam

LENGTH = 20_000
HOLDOUT = (15_000, 20_000)  # on the site's contig: the last 5 kb, held out
SAMPLES = tuple(f"P{i:02d}" for i in range(12))


@dataclass
class Spec:
    """What to build; every default gives a valid site."""

    ref_contig: str = "20"
    vcf_contig: str = "20"
    contigs: Sequence[str] = ("20",)
    holdout: str | None = None  # CONTIG:START-END; default: the last 5 kb of contigs[0]
    samples: Sequence[str] = SAMPLES
    genotype: str = "0/1"  # of every call ("1" is haploid)
    positions: Sequence[int] = tuple(range(1_001, 14_001, 500))  # 1-based SNV positions
    index: bool = True
    bgzip_reference: bool = False
    site_toml_extra: str = ""
    name: str = "mini"
    sequence: str = field(default="", repr=False)


def reference_sequence(seed: int = 0) -> str:
    """A random ACGT contig, the same for every site built with ``seed``."""
    rng = np.random.default_rng(seed)
    return "".join(rng.choice(list("ACGT"), size=LENGTH))


def write_reference(path: Path, contig: str, seq: str, *, bgzip: bool) -> Path:
    """A FASTA of one contig with its index (BGZF plus .gzi when ``bgzip``)."""
    plain = path.with_suffix(".fa") if bgzip else path
    plain.write_text(f">{contig}\n" + "\n".join(seq[i:i + 60] for i in range(0, len(seq), 60)) + "\n")
    if bgzip:
        pysam.tabix_compress(str(plain), str(path), force=True)
        plain.unlink()
    pysam.faidx(str(path))
    return path


def vcf_text(spec: Spec, seq: str) -> str:
    """The VCF's text: one SNV (REF = the reference base) per position, every call ``genotype``."""
    alt = {"A": "C", "C": "G", "G": "T", "T": "A"}
    lines = ["##fileformat=VCFv4.2", f"##contig=<ID={spec.vcf_contig},length={LENGTH}>",
             '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
             "\t".join(["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT",
                        *spec.samples])]
    for pos in spec.positions:
        ref = seq[pos - 1]
        lines.append("\t".join([spec.vcf_contig, str(pos), ".", ref, alt[ref], ".", "PASS", ".",
                                "GT", *[spec.genotype] * len(spec.samples)]))
    return "\n".join(lines) + "\n"


def make_site(root: Path, spec: Spec | None = None) -> Path:
    """A site directory ``root/<name>`` holding site.toml, ref.fa(.gz) and patients.vcf(.gz)."""
    spec = spec or Spec()
    site = root / spec.name
    site.mkdir(parents=True)
    seq = spec.sequence or reference_sequence()
    ref = write_reference(site / ("ref.fa.gz" if spec.bgzip_reference else "ref.fa"),
                          spec.ref_contig, seq, bgzip=spec.bgzip_reference)
    plain = site / "patients.vcf"
    plain.write_text(vcf_text(spec, seq))
    vcf = plain
    if spec.index:
        vcf = site / "patients.vcf.gz"
        pysam.tabix_compress(str(plain), str(vcf), force=True)
        pysam.tabix_index(str(vcf), preset="vcf", force=True)
        plain.unlink()
    contig = spec.contigs[0]
    holdout = spec.holdout or f"{contig}:{HOLDOUT[0]}-{HOLDOUT[1]}"
    hc, span = holdout.rsplit(":", 1)
    start, end = span.split("-")
    contigs = ", ".join(f'"{c}"' for c in spec.contigs)
    (site / "site.toml").write_text(
        f'name = "{spec.name}"\nkind = "vcf"\nreference = "{ref.name}"\nvcf = "{vcf.name}"\n'
        f"contigs = [{contigs}]\n"
        f'holdout = [{{ contig = "{hc}", start = {start}, end = {end} }}]\n{spec.site_toml_extra}')
    return site


def written(site: Path) -> list[str]:
    """What a run left in the site's state/ and keys/ (empty when it wrote nothing)."""
    return sorted(str(p.relative_to(site)) for d in ("state", "keys") if (site / d).exists()
                  for p in (site / d).rglob("*"))

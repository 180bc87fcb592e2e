"""Genomes as token arrays: the reference, and patients' haplotypes built from their genotypes.

A :class:`Cohort` holds a site's SNVs and each patient's two haplotypes as allele indices. Unphased
heterozygous genotypes are phased by a per-patient seeded draw (recorded in ``Cohort.flipped`` and
in the on-disk cache), so a patient's haplotypes are the same in every process.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pysam

from configs.schema import SiteManifest
from shared.atomic import atomic_path
from shared.errors import InputFileError
from shared.tokenizer import IUPAC, Ids, N, encode

log = logging.getLogger(__name__)

_IUPAC_BYTES = np.zeros(256, dtype=bool)
_IUPAC_BYTES[[ord(c) for c in IUPAC] + [ord(c.lower()) for c in IUPAC]] = True


def check_sequence(raw: bytes, *, where: str) -> None:
    """Raise :class:`InputFileError` if ``raw`` holds characters outside the IUPAC codes."""
    values = np.unique(np.frombuffer(raw, dtype=np.uint8))
    bad = values[~_IUPAC_BYTES[values]]
    if bad.size:
        shown = ", ".join(repr(chr(b)) for b in bad[:5])
        raise InputFileError(f"{where}: characters outside IUPAC nucleotide codes ({shown}); "
                             "fix or remove them (allowed: ACGTN and RYSWKMBDHVU, any case)")


class Reference:
    """A reference FASTA (plain or BGZF with its index), read one contig at a time into tokens."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._fasta = pysam.FastaFile(str(path))
        except (OSError, ValueError) as exc:
            raise InputFileError(
                f"{path}: cannot open as an indexed FASTA ({exc}); it must be plain or "
                "BGZF-compressed (bgzip), with a .fai index (samtools faidx) beside it"
            ) from None
        self._cache: dict[str, Ids] = {}

    @property
    def contigs(self) -> dict[str, int]:
        """Contig names and lengths."""
        return dict(zip(self._fasta.references, self._fasta.lengths, strict=True))

    def tokens(self, contig: str) -> Ids:
        """The whole contig as token ids (read once, then cached)."""
        if contig not in self._cache:
            if contig not in self.contigs:
                names = ", ".join(list(self.contigs)[:10])
                raise InputFileError(f"{self.path}: no contig '{contig}' (it has: {names}); "
                                     "use the reference the site's VCF was called against")
            raw = self._fasta.fetch(contig).encode("ascii")
            check_sequence(raw, where=f"{self.path}:{contig}")
            self._cache[contig] = encode(raw)
        return self._cache[contig]


@dataclass(frozen=True)
class ContigVariants:
    """A contig's SNVs and every patient's two haplotypes at them."""

    pos: npt.NDArray[np.int64]  # (V,) 0-based positions, sorted
    alleles: Ids  # (V, A) token of allele a (a = 0 is REF); unused slots hold N
    haplotypes: npt.NDArray[np.int8]  # (V, P, 2) allele index on each haplotype; -1 = missing
    flipped: npt.NDArray[np.bool_]  # (V, P) unphased heterozygotes whose alleles the draw swapped


@dataclass(frozen=True)
class Cohort:
    """The patients of one site and their variants, per contig."""

    samples: tuple[str, ...]
    contigs: dict[str, ContigVariants]

    def apply(self, window: Ids, *, patient: int, hap: int, contig: str, start: int) -> Ids:
        """Put patient's haplotype alleles into a copy of the reference ``window`` at ``start``."""
        out = window.copy()
        cv = self.contigs.get(contig)
        if cv is None:
            return out
        lo, hi = np.searchsorted(cv.pos, [start, start + len(window)])
        idx = cv.haplotypes[lo:hi, patient, hap].astype(np.int64)  # (v,)
        alleles = cv.alleles[np.arange(lo, hi), np.maximum(idx, 0)]
        alleles[idx < 0] = N  # a missing genotype is an unknown base
        out[cv.pos[lo:hi] - start] = alleles
        return out


def phase_draw(seed: int, sample: str, contig: str, n: int) -> npt.NDArray[np.bool_]:
    """The per-patient draw that decides which of a contig's unphased heterozygotes are swapped."""
    digest = hashlib.sha256(f"{seed}:{sample}:{contig}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little")).random(n) < 0.5


def load_cohort(manifest: SiteManifest, reference: Reference, *, cache_dir: Path | None) -> Cohort:
    """Read a site's VCF into a :class:`Cohort`, using (and refreshing) an on-disk cache."""
    assert manifest.vcf is not None  # guaranteed by SiteManifest validation
    key = _cache_key(manifest)
    cache = cache_dir / f"cohort-{key}.npz" if cache_dir is not None else None
    if cache is not None and cache.exists():
        return _read_cache(cache)
    cohort = _read_vcf(manifest, reference)
    if cache is not None:
        _write_cache(cache, cohort)
    return cohort


def _cache_key(manifest: SiteManifest) -> str:
    assert manifest.vcf is not None
    try:
        st = manifest.vcf.stat()
    except OSError:
        raise InputFileError(f"{manifest.vcf}: VCF not found or unreadable; check the 'vcf' entry "
                             "of the site's site.toml") from None
    text = f"{manifest.vcf}:{st.st_size}:{st.st_mtime_ns}:{manifest.phasing_seed}:{manifest.contigs}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _read_vcf(manifest: SiteManifest, reference: Reference) -> Cohort:
    assert manifest.vcf is not None
    try:
        vf = pysam.VariantFile(str(manifest.vcf))
    except (OSError, ValueError) as exc:
        raise InputFileError(f"{manifest.vcf}: cannot read as VCF/BCF ({exc}); "
                             "provide a valid bgzipped VCF") from None
    samples = tuple(vf.header.samples)
    if not samples:
        raise InputFileError(f"{manifest.vcf}: the VCF has no samples; a site VCF holds one "
                             "column per patient")
    contigs = {c: _read_contig(vf, manifest, reference, c, samples) for c in manifest.contigs}
    return Cohort(samples=samples, contigs=contigs)


def _read_contig(vf: pysam.VariantFile, manifest: SiteManifest, reference: Reference,
                 contig: str, samples: tuple[str, ...]) -> ContigVariants:
    ref_tokens = reference.tokens(contig)
    pos, alleles, gts, phased, skipped = [], [], [], [], 0
    records = vf.fetch(contig) if vf.index is not None else (r for r in vf if r.chrom == contig)
    for rec in records:
        ref, alts = rec.ref or "", tuple(rec.alts or ())
        if not alts or any(len(a) != 1 or a not in "ACGTacgt" for a in (ref, *alts)):
            skipped += 1  # indels, symbolic alleles and monomorphic sites are not applied
            continue
        if encode(ref)[0] != ref_tokens[rec.pos - 1]:
            raise InputFileError(
                f"{manifest.vcf}: REF {ref} at {contig}:{rec.pos} disagrees with the reference "
                f"base {reference.path.name}:{contig}:{rec.pos} = "
                f"{'ACGTN'[int(ref_tokens[rec.pos - 1]) - 5]}; use the reference the VCF was "
                "called against")
        calls = list(rec.samples.values())
        pos.append(rec.pos - 1)
        alleles.append(encode(ref + "".join(alts)))
        gts.append([[-1 if a is None else a for a in (*(c.allele_indices or ()), None, None)[:2]]
                    for c in calls])
        phased.append([c.phased for c in calls])
    if skipped:
        log.info("%s: %s: %d non-SNV records not applied to haplotypes", manifest.vcf, contig,
                 skipped)
    width = max((len(a) for a in alleles), default=1)
    allele_arr = np.full((len(alleles), width), N, dtype=np.uint8)
    for i, a in enumerate(alleles):
        allele_arr[i, : len(a)] = a
    hap = np.asarray(gts, dtype=np.int8).reshape(len(pos), len(samples), 2)
    het = (hap[..., 0] != hap[..., 1]) & (hap >= 0).all(-1) & ~np.asarray(phased, dtype=bool)
    draws = np.stack([phase_draw(manifest.phasing_seed, s, contig, len(pos)) for s in samples], axis=1)
    flipped = het & draws.reshape(len(pos), len(samples))
    hap[flipped] = hap[flipped][:, ::-1]
    return ContigVariants(np.asarray(pos, dtype=np.int64), allele_arr, hap, flipped)


def _write_cache(path: Path, cohort: Cohort) -> None:
    arrays: dict[str, npt.NDArray[np.generic]] = {"samples": np.asarray(cohort.samples)}
    for name, cv in cohort.contigs.items():
        for field in ("pos", "alleles", "haplotypes", "flipped"):
            arrays[f"{name}/{field}"] = getattr(cv, field)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]


def _read_cache(path: Path) -> Cohort:
    with np.load(path) as data:
        names = sorted({k.split("/")[0] for k in data.files if "/" in k})
        contigs = {n: ContigVariants(*(data[f"{n}/{f}"] for f in
                                       ("pos", "alleles", "haplotypes", "flipped")))
                   for n in names}
        return Cohort(samples=tuple(str(s) for s in data["samples"]), contigs=contigs)

"""Genomes as token arrays: the reference, and patients' haplotypes built from their genotypes.

A :class:`Cohort` holds a site's SNVs and each patient's two haplotypes as allele indices. Unphased
heterozygous genotypes are phased by a per-patient seeded draw (recorded in ``Cohort.flipped`` and
in the on-disk cache), so a patient's haplotypes are the same in every process.

Inputs are checked, never guessed at: a VCF must be sorted by position (an unsorted one is refused
with how to sort and index it), its sample names unique, and its calls diploid. A haploid call
(``GT = 1``) is a single copy of the contig: on X, Y and the mitochondrion (``chrX`` males) it is
read as that allele on both haplotypes, and counted in a log line; on any other contig haploid
calls are refused, since there they mean a broken VCF. Contig names may differ by the ``chr``
prefix between ``site.toml``, the VCF and the reference (:mod:`fedgenome.configs.contigs`).
"""

from __future__ import annotations

import gzip
import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pysam

from fedgenome.configs.contigs import contig_key, match_contig
from fedgenome.configs.errors import InputFileError
from fedgenome.configs.schema import SiteManifest
from fedgenome.shared.atomic import atomic_path
from fedgenome.shared.tokenizer import IUPAC, Ids, N, encode

log = logging.getLogger(__name__)

HAPLOID_CONTIGS = frozenset({"X", "Y", "M", "MT"})  # contig keys where one copy is normal
BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")
SORT_FIX = ("sort and index it: bcftools sort -Oz -o sorted.vcf.gz {vcf} && bcftools index -t "
            "sorted.vcf.gz (or pysam.tabix_index(path, preset='vcf')), then point 'vcf' in "
            "site.toml at sorted.vcf.gz")
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
        if not path.is_file():
            raise InputFileError(f"{path}: reference FASTA not found; check the path (a site's "
                                 "'reference' in site.toml), or fetch it: fedgenome data fetch")
        _check_bgzf_end(path)
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

    def name(self, contig: str) -> str:
        """The reference's own name for ``contig`` (``chr20`` for ``20`` and back)."""
        return match_contig(contig, self.contigs, where=str(self.path),
                            fix="use the reference the site's VCF was called against")

    def length(self, contig: str) -> int:
        """The length of ``contig`` (either naming style)."""
        return self.contigs[self.name(contig)]

    def tokens(self, contig: str) -> Ids:
        """The whole contig as token ids (read once, then cached)."""
        if contig not in self._cache:
            name = self.name(contig)
            try:
                raw = self._fasta.fetch(name).encode("ascii")
            except (OSError, ValueError) as exc:
                raise InputFileError(f"{self.path}: cannot read contig {name} ({exc}): the file is "
                                     "truncated or corrupt; fetch it again (fedgenome data fetch) "
                                     "or rebuild it with bgzip and samtools faidx") from None
            if len(raw) != self.contigs[name]:
                raise InputFileError(f"{self.path}: contig {name} has {len(raw)} bases, its index "
                                     f"says {self.contigs[name]}: the file is truncated or its "
                                     "index stale; fetch it again or rebuild the .fai")
            check_sequence(raw, where=f"{self.path}:{name}")
            self._cache[contig] = encode(raw)
        return self._cache[contig]


def _check_bgzf_end(path: Path) -> None:
    """Refuse a BGZF file that lacks the end-of-file block every complete BGZF file ends with."""
    with open(path, "rb") as fh:
        if fh.read(4) != BGZF_EOF[:4]:  # plain text (or plain gzip, refused by pysam)
            return
        fh.seek(0, 2)
        fh.seek(max(fh.tell() - len(BGZF_EOF), 0))
        if fh.read() != BGZF_EOF:
            raise InputFileError(f"{path}: the BGZF file is truncated (no end-of-file block); "
                                 "fetch it again (fedgenome data fetch) or recompress it with "
                                 "bgzip, then rebuild its index (samtools faidx)")


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
        dupes = _duplicate_samples(manifest.vcf)
        if dupes:
            raise InputFileError(f"{manifest.vcf}: duplicate sample names {', '.join(dupes[:5])} in "
                                 "VCF; give every patient one column with a unique name "
                                 "(bcftools reheader -s names.txt)") from None
        raise InputFileError(f"{manifest.vcf}: cannot read as VCF/BCF ({exc}); "
                             "provide a valid bgzipped VCF") from None
    samples = tuple(vf.header.samples)
    if not samples:
        raise InputFileError(f"{manifest.vcf}: the VCF has no samples; a site VCF holds one "
                             "column per patient")
    contigs = {c: _read_contig(vf, manifest, reference, c, samples) for c in manifest.contigs}
    return Cohort(samples=samples, contigs=contigs)


def _duplicate_samples(path: Path) -> list[str]:
    """Sample names that the ``#CHROM`` header line of a (b)gzipped or plain VCF lists twice."""
    try:
        with open(path, "rb") as raw:
            gz = raw.read(2) == b"\x1f\x8b"
        with (gzip.open(path, "rt", errors="replace") if gz else open(path, errors="replace")) as fh:
            line = next((x for x in fh if x.startswith("#CHROM")), "")
    except (OSError, EOFError, gzip.BadGzipFile):
        return []
    names = line.rstrip("\n").split("\t")[9:]
    return sorted({n for n in names if names.count(n) > 1})


def _records(vf: pysam.VariantFile, manifest: SiteManifest,
             contig: str) -> Iterator[pysam.VariantRecord]:
    """The VCF's records on ``contig`` (either naming style), refusing positions out of order."""
    known = {*vf.header.contigs, *(vf.index or ())}
    fix = (f"rename the VCF's contigs (bcftools annotate --rename-chrs) or fix 'contigs' in "
           f"{manifest.vcf.parent if manifest.vcf else ''}/site.toml")
    if vf.index is not None:
        name = match_contig(contig, known, where=str(manifest.vcf), fix=fix)
        records: Iterator[pysam.VariantRecord] = vf.fetch(name)
    else:
        if known:
            match_contig(contig, known, where=str(manifest.vcf), fix=fix)
        vf.reset()  # each contig reads the whole unindexed file from its start
        records = (r for r in vf if contig_key(r.chrom) == contig_key(contig))
    last = 0
    for rec in records:
        if rec.pos < last:
            raise InputFileError(f"{manifest.vcf}: not sorted ({contig}:{rec.pos} comes after "
                                 f"{contig}:{last}); " + SORT_FIX.format(vcf=manifest.vcf))
        last = rec.pos
        yield rec


def _genotype(call: tuple[int | None, ...], *, one_copy: bool) -> tuple[int, int] | None:
    """A call's two allele indices (-1 = missing); None for a haploid call where two are needed."""
    if len(call) == 2:
        a, b = call
        return (-1 if a is None else a, -1 if b is None else b)
    if len(call) == 0 or call == (None,):
        return (-1, -1)
    if len(call) == 1 and one_copy and (allele := call[0]) is not None:
        return (allele, allele)  # one copy (chrX in a male): the same allele on both haplotypes
    return None


def _read_contig(vf: pysam.VariantFile, manifest: SiteManifest, reference: Reference,
                 contig: str, samples: tuple[str, ...]) -> ContigVariants:
    ref_tokens = reference.tokens(contig)
    one_copy = contig_key(contig) in HAPLOID_CONTIGS
    pos, alleles, gts, phased, skipped, haploid = [], [], [], [], 0, 0
    for rec in _records(vf, manifest, contig):
        ref, alts = rec.ref or "", tuple(rec.alts or ())
        if not alts or any(len(a) != 1 or a not in "ACGTacgt" for a in (ref, *alts)):
            skipped += 1  # indels, symbolic alleles and monomorphic sites are not applied
            continue
        _check_ref(manifest, reference, ref_tokens, contig, rec.pos, ref)
        calls = list(rec.samples.values())
        row = [_genotype(tuple(c.allele_indices or ()), one_copy=one_copy) for c in calls]
        if None in row:
            sample = samples[row.index(None)]
            call = tuple(calls[row.index(None)].allele_indices or ())
            raise InputFileError(_ploidy_error(manifest, contig, rec.pos, sample, call))
        haploid += sum(len(c.allele_indices or ()) == 1 and gt != (-1, -1)
                       for c, gt in zip(calls, row, strict=True))
        pos.append(rec.pos - 1)
        alleles.append(encode(ref + "".join(alts)))
        gts.append(row)
        phased.append([c.phased for c in calls])
    if skipped:
        log.info("%s: %s: %d non-SNV records not applied to haplotypes", manifest.vcf, contig,
                 skipped)
    if haploid:
        log.warning("%s: %s: %d haploid calls read as one allele on both haplotypes (a single "
                    "copy of %s)", manifest.vcf, contig, haploid, contig)
    return _contig_variants(manifest, contig, samples, pos, alleles, gts, phased)


def _check_ref(manifest: SiteManifest, reference: Reference, ref_tokens: Ids, contig: str,
               pos: int, ref: str) -> None:
    """Refuse a record whose position or REF base the reference does not have."""
    if pos > len(ref_tokens):
        raise InputFileError(f"{manifest.vcf}: {contig}:{pos} lies past the end of "
                             f"{reference.path.name}:{contig} ({len(ref_tokens)} bases); use the "
                             "reference the VCF was called against")
    if encode(ref)[0] != ref_tokens[pos - 1]:
        raise InputFileError(
            f"{manifest.vcf}: REF {ref} at {contig}:{pos} disagrees with the reference "
            f"base {reference.path.name}:{contig}:{pos} = "
            f"{'ACGTN'[int(ref_tokens[pos - 1]) - 5]}; use the reference the VCF was "
            "called against")


def _ploidy_error(manifest: SiteManifest, contig: str, pos: int, sample: str,
                  call: tuple[int | None, ...]) -> str:
    what = "haploid" if len(call) == 1 else f"{len(call)}-ploid"
    return (f"{manifest.vcf}: {what} genotype of sample {sample} at {contig}:{pos}; calls on "
            f"{contig} must be diploid (0/1), only X, Y and MT may hold one copy: fix the VCF's "
            "calls (bcftools +fixploidy) or drop the contig from 'contigs'")


def _contig_variants(manifest: SiteManifest, contig: str, samples: tuple[str, ...],
                     pos: list[int], alleles: list[Ids], gts: list[list[tuple[int, int] | None]],
                     phased: list[list[bool]]) -> ContigVariants:
    """Arrays of a contig's SNVs; unphased heterozygotes phased by each patient's seeded draw."""
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
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]
    except OSError as exc:  # a full disk: the temporary file is gone, nothing half-written stays
        raise InputFileError(f"{path.parent}: cannot write the cohort cache ({exc.strerror or exc}); "
                             "free some space or make the site's state directory writable") from None


def _read_cache(path: Path) -> Cohort:
    with np.load(path) as data:
        names = sorted({k.split("/")[0] for k in data.files if "/" in k})
        contigs = {n: ContigVariants(*(data[f"{n}/{f}"] for f in
                                       ("pos", "alleles", "haplotypes", "flipped")))
                   for n in names}
        return Cohort(samples=tuple(str(s) for s in data["samples"]), contigs=contigs)

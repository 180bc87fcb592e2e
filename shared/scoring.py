"""Zero-shot variant effect scores (ALT minus REF log-likelihood), and bits at variant positions.

For each SNV the model scores a window centred on the variant twice, once with the reference base
and once with the alternative, summing log p(next base) over the window. A negative delta means the
model finds the ALT sequence less likely (a candidate for a damaging change).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pysam
import torch
import torch.nn.functional as F
from torch import nn

from fedgenome.configs.errors import InputFileError
from fedgenome.shared.genomes import Cohort, Reference
from fedgenome.shared.tokenizer import encode
from fedgenome.shared.train import IGNORE, autocast, eval_autocast, split_batch

log = logging.getLogger(__name__)
COLUMNS = ("chrom", "pos", "id", "ref", "alt", "ll_ref", "ll_alt", "delta")
TOP_COLUMN = "top_positions"
"""The extra column of ``score --explain``: ``POS:TERM`` of the positions that contribute most."""


@dataclass(frozen=True)
class VariantScore:
    """One ALT allele's score (log-likelihoods in nats)."""

    chrom: str
    pos: int
    id: str
    ref: str
    alt: str
    ll_ref: float
    ll_alt: float
    top: tuple[tuple[int, float], ...] | None = None
    """With ``explain``: (1-based position, its term of ``delta``) of the largest terms, largest first."""

    @property
    def delta(self) -> float:
        """ll_alt - ll_ref."""
        return self.ll_alt - self.ll_ref

    def row(self) -> str:
        """A TSV line (no newline); with ``top``, its ``POS:TERM,...`` column last."""
        cells = [self.chrom, str(self.pos), self.id, self.ref, self.alt,
                 f"{self.ll_ref:.4f}", f"{self.ll_alt:.4f}", f"{self.delta:.4f}"]
        if self.top is not None:
            cells.append(",".join(f"{pos}:{term:+.4f}" for pos, term in self.top))
        return "\t".join(cells)


@torch.no_grad()
def position_log_likelihood(model: nn.Module, windows: torch.Tensor, *,
                            device: torch.device) -> torch.Tensor:
    """The log p(base | bases before it) at each position of windows (N, L) -> (N, L-1); 0 at non-bases."""
    x, y = split_batch(windows.to(device))
    with autocast(device):
        logits = model(x)
    logp = F.log_softmax(logits.float(), dim=-1)  # (N, L-1, V)
    picked = logp.gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (N, L-1)
    return (picked * (y != IGNORE)).cpu()


def sequence_log_likelihood(model: nn.Module, windows: torch.Tensor, *,
                            device: torch.device) -> torch.Tensor:
    """Sum of log p(next base) over each window (N, L) -> (N,), A/C/G/T targets only."""
    return position_log_likelihood(model, windows, device=device).sum(dim=1)


def _snvs(vcf: Path) -> Iterator[tuple[str, int, str, str, str]]:
    """(chrom, 1-based pos, id, ref, alt) for every SNV ALT allele of a VCF; others are skipped."""
    try:
        vf = pysam.VariantFile(str(vcf))
    except (OSError, ValueError) as exc:
        raise InputFileError(f"{vcf}: cannot read as VCF/BCF ({exc}); provide a valid VCF") from None
    skipped = 0
    for rec in vf:
        ref = (rec.ref or "").upper()
        for alt in rec.alts or ():
            if len(ref) == 1 and len(alt) == 1 and alt.upper() in "ACGT":
                yield rec.chrom, rec.pos, rec.id or ".", ref, alt.upper()
            else:
                skipped += 1
    if skipped:
        log.info("%s: %d non-SNV alleles skipped (only SNVs are scored)", vcf, skipped)


_Pending = tuple[tuple[str, int, str, str, str], int, np.ndarray, np.ndarray]  # key, start, REF, ALT


def snv_windows(reference: Reference, chrom: str, pos: int, ref: str, alt: str, *, window: int,
                source: Path) -> tuple[int, np.ndarray, np.ndarray]:
    """(start, REF window, ALT window) of the SNV at 1-based ``pos``.

    The REF window is the ``window`` reference bases centred on the SNV (shifted inwards at a
    contig's ends); the ALT window is the same with ALT there.

    Raises:
        InputFileError: ``ref`` is not the reference base at ``pos`` (``source`` is named).
    """
    seq = reference.tokens(chrom)
    if not 1 <= pos <= len(seq) or encode(ref)[0] != seq[pos - 1]:
        raise InputFileError(f"{source}: REF {ref} at {chrom}:{pos} disagrees with "
                             f"{reference.path.name}; use the reference the variants were called on")
    start = min(max(pos - 1 - window // 2, 0), max(len(seq) - window, 0))
    ref_win = seq[start : start + window].astype(np.int64)
    alt_win = ref_win.copy()
    alt_win[pos - 1 - start] = encode(alt)[0]
    return start, ref_win, alt_win


def score_variants(model: nn.Module, reference: Reference, vcf: Path, *, window: int,
                   device: torch.device, batch_size: int = 8, top: int = 0) -> Iterator[VariantScore]:
    """Score every SNV of ``vcf`` with ``window``-base windows centred on the variant.

    ``top > 0`` also names the ``top`` positions whose terms of ``delta`` are largest in size:
    ``delta`` is exactly the sum over the window of log p_ALT(base) - log p_REF(base) at each
    position (each given the bases before it), so those terms say where the model's reading of the
    ALT window departs from the REF one (zero before the variant: the model is causal).
    """
    model.eval()
    pending: list[_Pending] = []
    for chrom, pos, vid, ref, alt in _snvs(vcf):
        start, ref_win, alt_win = snv_windows(reference, chrom, pos, ref, alt, window=window,
                                              source=vcf)
        pending.append(((chrom, pos, vid, ref, alt), start, ref_win, alt_win))
        if len(pending) == batch_size:
            yield from _flush(model, pending, device, top=top)
            pending = []
    yield from _flush(model, pending, device, top=top)


def _flush(model: nn.Module, pending: list[_Pending], device: torch.device, *,
           top: int) -> Iterator[VariantScore]:
    if not pending:
        return
    windows = torch.from_numpy(np.stack([w for _, _, r, a in pending for w in (r, a)]))
    terms = position_log_likelihood(model, windows, device=device).view(len(pending), 2, -1)  # (P,2,L-1)
    for (key, start, _, _), pair in zip(pending, terms, strict=True):
        ll_ref, ll_alt = (float(v) for v in pair.sum(dim=1))
        best = None
        if top > 0:
            diff = (pair[1] - pair[0]).numpy()  # (L-1,) term j predicts window base j + 1
            order = np.argsort(-np.abs(diff), kind="stable")[:top]
            best = tuple((start + int(j) + 2, float(diff[j])) for j in order)
        yield VariantScore(*key, ll_ref=ll_ref, ll_alt=ll_alt, top=best)


@dataclass(frozen=True)
class VariantSiteBits:
    """Bits the model spends on a cohort's own alleles at its variant positions."""

    bits_per_base: float  # over every (haplotype, variant position) scored
    alt_bits_per_base: float  # over those where the haplotype carries a non-reference allele
    scored: int
    alt_fraction: float


@torch.no_grad()
def variant_site_bits(model: nn.Module, cohort: Cohort, reference: Reference, *, contig: str,
                      window: int, device: torch.device, max_positions: int = 1000,
                      batch_size: int = 64, within: tuple[int, int] | None = None) -> VariantSiteBits:
    """Bits per base of each haplotype's allele at the cohort's variant positions of ``contig``.

    The model reads the ``window`` bases of the haplotype before each variant and predicts the base
    at it. A model that learnt only the reference expects the reference allele; one that learnt
    from patients' genomes knows that other alleles occur there. Up to ``max_positions`` evenly
    spaced variant positions are scored, for every patient's two haplotypes; ``within`` (0-based
    start, end) keeps only positions in that stretch (a held-out region).
    """
    cv = cohort.contigs[contig]
    seq = reference.tokens(contig)
    usable = cv.pos[cv.pos >= window]
    if within is not None:
        usable = usable[(usable >= within[0]) & (usable < within[1])]
    picks = usable[np.unique(np.linspace(0, len(usable) - 1, min(max_positions, len(usable))).astype(int))]
    rows, is_alt = [], []
    for pos in picks:
        ref_win = seq[pos - window : pos + 1]
        for patient in range(len(cohort.samples)):
            for hap in (0, 1):
                hap_win = cohort.apply(ref_win, patient=patient, hap=hap, contig=contig,
                                       start=int(pos) - window)
                rows.append(hap_win.astype(np.int64))
                is_alt.append(hap_win[-1] != ref_win[-1])
    # Most haplotypes read the same window at a position: score each distinct window once.
    unique, inverse = np.unique(np.stack(rows), axis=0, return_inverse=True)
    per_window = np.empty(len(unique))
    model.eval()
    for lo in range(0, len(unique), batch_size):
        x, y = split_batch(torch.from_numpy(unique[lo : lo + batch_size]).to(device))
        with eval_autocast(device):
            logits = model(x)
        logp = F.log_softmax(logits[:, -1].float(), dim=-1)  # (n, V): the variant position
        target = y[:, -1]
        bits = -logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1) / math.log(2)
        per_window[lo : lo + len(x)] = torch.where(target != IGNORE, bits, torch.nan).cpu().numpy()
    row_bits = per_window[inverse.reshape(-1)]
    ok = ~np.isnan(row_bits)
    alt = np.asarray(is_alt) & ok
    total, scored = float(row_bits[ok].sum()), int(ok.sum())
    alt_total, alt_scored = float(row_bits[alt].sum()), int(alt.sum())
    return VariantSiteBits(total / max(scored, 1), alt_total / max(alt_scored, 1), scored,
                           alt_scored / max(scored, 1))

"""``fedgenome explain``: a checkpoint's saturation mutagenesis of a region or around a variant.

Writes, into the output directory (each file atomically): ``mutagenesis.tsv`` (one row per
position: the reference base, the log-likelihood change for A, C, G, T and the importance),
``mutagenesis.png`` (the heat map, positions x bases, over a per-position importance track) and,
for a variant, ``shift.tsv`` (per position, p_alt - p_ref of each next base) drawn under the heat map.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedgenome.configs.errors import ConfigError
from fedgenome.configs.schema import Region
from fedgenome.shared.atomic import atomic_path
from fedgenome.shared.checkpoint import load_checkpoint
from fedgenome.shared.explain import (
    DEFAULT_HORIZON,
    MAX_WINDOW,
    Mutagenesis,
    haplotype_shift,
    saturation_mutagenesis,
)
from fedgenome.shared.genomes import Reference
from fedgenome.shared.tokenizer import encode
from fedgenome.shared.train import pick_device

log = logging.getLogger(__name__)
BASE_COLUMNS = ("A", "C", "G", "T")


@dataclass(frozen=True)
class Variant:
    """``CONTIG:POS:REF:ALT``, POS 1-based as in a VCF; an SNV."""

    contig: str
    pos: int
    ref: str
    alt: str

    @classmethod
    def parse(cls, text: str) -> Variant:
        """Read ``CONTIG:POS:REF:ALT`` (e.g. ``20:60000123:A:G``)."""
        parts = text.rsplit(":", 3)
        if len(parts) != 4 or not parts[1].replace(",", "").isdigit():
            raise ConfigError(f"--variant {text!r}: expected CONTIG:POS:REF:ALT with a 1-based POS, "
                              "e.g. 20:60000123:A:G")
        contig, pos, ref, alt = parts[0], int(parts[1].replace(",", "")), parts[2].upper(), parts[3].upper()
        if len(ref) != 1 or len(alt) != 1 or ref == alt or not {ref, alt} <= set(BASE_COLUMNS) or pos < 1:
            raise ConfigError(f"--variant {text!r}: only SNVs are explained: REF and ALT must be two "
                              "different bases of A, C, G, T, and POS at least 1")
        return cls(contig, pos, ref, alt)


@dataclass(frozen=True)
class Explanation:
    """What :func:`explain` computed and wrote."""

    mutagenesis: Mutagenesis
    shift: np.ndarray | None  # (L, 4) for a variant
    files: tuple[Path, ...]


def explain(checkpoint: Path, *, out: Path, region: str | None = None, variant: str | None = None,
            reference: Path | None = None, window: int | None = None, device: str = "auto",
            horizon: int | None = DEFAULT_HORIZON, plot: bool = True) -> Explanation:
    """Explain ``region`` (or the window centred on ``variant``) with the checkpoint's model.

    ``horizon``: the bases after each substitution rescored (``None``: to the window's end, exact).
    """
    if (region is None) == (variant is None):
        raise ConfigError("pass one of --region CONTIG:START-END or --variant CONTIG:POS:REF:ALT")
    if plot:
        from fedgenome.audit.plots import require_matplotlib

        require_matplotlib()  # before minutes of scoring, not after
    ckpt = load_checkpoint(checkpoint)
    ref = Reference(reference or Path(ckpt.meta["reference"]))
    snv = Variant.parse(variant) if variant is not None else None
    span = Region.parse(region) if region is not None else _centred(snv, ref, window or ckpt.meta[
        "data"]["window"])
    if span.end - span.start > MAX_WINDOW:
        raise ConfigError(f"region {span.contig}:{span.start}-{span.end}: {span.end - span.start} bases; "
                          f"explain at most {MAX_WINDOW} at once")
    seq = ref.tokens(span.contig)
    if span.end > len(seq):
        raise ConfigError(f"region {span.contig}:{span.start}-{span.end} ends past the contig "
                          f"({len(seq)} bases in {ref.path.name})")
    tokens = seq[span.start:span.end].copy()
    dev = pick_device(device)
    model = ckpt.model.to(dev)
    result = saturation_mutagenesis(model, tokens, contig=span.contig, start=span.start, device=dev,
                                    horizon=horizon)
    shift = None
    if snv is not None:
        at = snv.pos - 1 - span.start
        if tokens[at] != encode(snv.ref)[0]:
            raise ConfigError(f"--variant: REF {snv.ref} at {snv.contig}:{snv.pos} disagrees with "
                              f"{ref.path.name}; use the reference the variant was called on")
        alt = tokens.copy()
        alt[at] = encode(snv.alt)[0]
        shift = haplotype_shift(model, tokens, alt, device=dev)
    files = _write(out, result, shift, snv, plot=plot)
    return Explanation(mutagenesis=result, shift=shift, files=files)


def _centred(snv: Variant | None, ref: Reference, window: int) -> Region:
    assert snv is not None
    length = len(ref.tokens(snv.contig))
    start = min(max(snv.pos - 1 - window // 2, 0), max(length - window, 0))
    return Region(contig=snv.contig, start=start, end=min(start + window, length))


def _write(out: Path, result: Mutagenesis, shift: np.ndarray | None, snv: Variant | None, *,
           plot: bool) -> tuple[Path, ...]:
    out.mkdir(parents=True, exist_ok=True)
    written = [_tsv(out / "mutagenesis.tsv", result, result.delta, "delta", extra=result.importance)]
    if shift is not None:
        written.append(_tsv(out / "shift.tsv", result, shift, "shift"))
    if plot:
        from fedgenome.experiments.explain_plot import mutagenesis_png

        png = mutagenesis_png(result, shift=shift, variant_at=None if snv is None else snv.pos - 1)
        with atomic_path(out / "mutagenesis.png") as tmp:
            tmp.write_bytes(png)
        written.append(out / "mutagenesis.png")
    return tuple(written)


def _tsv(path: Path, result: Mutagenesis, values: np.ndarray, what: str,
         extra: np.ndarray | None = None) -> Path:
    header = ["contig", "pos", "ref", *(f"{what}_{b}" for b in BASE_COLUMNS)] + (
        ["importance"] if extra is not None else [])
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        fh.write("\t".join(header) + "\n")
        for i, base in enumerate(result.sequence):
            cells = [result.contig, str(result.start + i + 1), base, *(_cell(v) for v in values[i])]
            if extra is not None:
                cells.append(_cell(extra[i]))
            fh.write("\t".join(cells) + "\n")
    return path


def _cell(value: float) -> str:
    return "NA" if np.isnan(value) else f"{value:.5f}"

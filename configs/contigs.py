"""Contig names: ``chr20`` (UCSC style) and ``20`` (Ensembl, 1000 Genomes) name the same contig.

A site's ``site.toml``, its VCF and its reference may each use either style. Every lookup goes
through :func:`match_contig`, which takes the name as written when the file has it, else the one
name in the file that differs only by the ``chr`` prefix; anything else is a one-line error.
"""

from __future__ import annotations

from collections.abc import Iterable

from fedgenome.configs.errors import InputFileError


def contig_key(name: str) -> str:
    """The name without a leading ``chr``: equal keys name the same contig."""
    return name[3:] if name.startswith("chr") and len(name) > 3 else name


def match_contig(name: str, available: Iterable[str], *, where: str, fix: str) -> str:
    """The name ``where`` uses for contig ``name``: ``name`` itself, or its ``chr`` alias.

    Raises:
        InputFileError: ``where`` has no such contig (``fix`` says what to do), or two names alias it.
    """
    names = list(available)
    if name in names:
        return name
    aliases = [n for n in names if contig_key(n) == contig_key(name)]
    if len(aliases) == 1:
        return aliases[0]
    if aliases:
        raise InputFileError(f"{where}: contigs {aliases} both match '{name}'; rename one of them")
    shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
    raise InputFileError(f"{where}: no contig '{name}' (nor '{_alias(name)}'; it has: "
                         f"{shown or 'none'}); {fix}")


def _alias(name: str) -> str:
    return contig_key(name) if contig_key(name) != name else f"chr{name}"

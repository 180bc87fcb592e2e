"""A site's immutable data kept between messages: the reference, the cohort, presets, noise levels.

A long-lived ClientApp worker (``client/worker.py``) serves every message of a run in one process,
so the expensive, read-only inputs of a round need not be read again per message: the reference
(decoding chr20 into tokens takes about 2 s), the patients' genotypes and the parsed presets.
Entries are keyed by the site directory and the size and modification time of every file they
were read from (``site.toml``, the reference and its index, the VCF and its index, the FASTA, the
preset), so a changed file is read again; each cache holds at most a few entries, least recently
used first out. Cached arrays are made read-only, so a caller that writes into one fails loudly
instead of corrupting later rounds. The datasets built over them (their window generators and
seeds) are new for every message, and nothing mutable is kept here: the ledger, ``state/`` (planted
canaries included), the model and the Opacus engine are read or built per message by their owners.
The data settings (window, augmentation) shape only those per-message datasets, so they are not
part of the key. The calibrated noise multiplier (a search over the accountant, seconds of CPU) is
a pure function of the DP settings, the site's privacy settings, the sampling rate and the steps,
so it is kept per such combination.

This module lives in the app bundle: a new run (a new bundle) imports it afresh, with empty caches.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np

from fedgenome.configs.contigs import contig_key
from fedgenome.configs.schema import (
    DataConfig,
    DPConfig,
    Preset,
    SitePrivacy,
    load_site_manifest,
    preset_path,
)
from fedgenome.configs.schema import load_preset as _load_preset
from fedgenome.privacy import round_plan
from fedgenome.privacy.mechanism import Mechanism
from fedgenome.shared.datasets import SiteData, SiteSource, read_site_source
from fedgenome.shared.datasets import open_site as _open_site
from fedgenome.shared.genomes import Reference

log = logging.getLogger(__name__)
MAX_SITES = 4  # the bench's one-process loop holds three sites; a worker serves one
MAX_REFERENCES = 2  # sites usually share one reference: one copy of its tokens
V = TypeVar("V")


class BoundedCache(Generic[V]):
    """A least-recently-used map of at most ``size`` entries."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[Hashable, V] = OrderedDict()

    def get(self, key: Hashable, make: Callable[[], V]) -> V:
        """The value under ``key``, made (and the oldest entry dropped if full) when missing."""
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = make()
        self._items[key] = value
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        """Forget every entry."""
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


_sources: BoundedCache[SiteSource] = BoundedCache(MAX_SITES)
_references: BoundedCache[Reference] = BoundedCache(MAX_REFERENCES)
_presets: BoundedCache[Preset] = BoundedCache(8)
_noise: BoundedCache[float] = BoundedCache(32)


def file_key(*paths: Path | None) -> tuple[tuple[str, int, int], ...]:
    """(path, size, mtime in ns) of each existing file among ``paths``: changes when a file does."""
    out = []
    for path in paths:
        if path is not None and path.exists():
            stat = path.stat()
            out.append((str(path.resolve()), stat.st_size, stat.st_mtime_ns))
    return tuple(out)


def _index_files(path: Path) -> tuple[Path, ...]:
    return tuple(path.with_name(path.name + ext) for ext in (".fai", ".gzi", ".tbi", ".csi"))


def cached_reference(path: Path) -> Reference:
    """The reference at ``path`` with its contigs decoded once and kept read-only."""
    def read() -> Reference:
        reference = Reference(path)
        log.info("caching the reference %s", path)
        return reference

    return _references.get(file_key(path, *_index_files(path)), read)


def site_source(site_dir: Path, *, cache_dir: Path | None) -> SiteSource:
    """The site's manifest, reference and cohort (or FASTA records), read once per file version."""
    manifest = load_site_manifest(site_dir)
    inputs = [site_dir / "site.toml"]
    for path in (manifest.reference, manifest.vcf, manifest.fasta):
        if path is not None:
            inputs += [path, *_index_files(path)]
    key = (str(site_dir.resolve()), str(cache_dir), file_key(*inputs))

    def read() -> SiteSource:
        source = read_site_source(site_dir, cache_dir=cache_dir, open_reference=cached_reference)
        _freeze(source)
        return source

    return _sources.get(key, read)


def _freeze(source: SiteSource) -> None:
    """Decode the contigs a site uses now (not in a later round) and make every array read-only."""
    arrays: list[np.ndarray] = []
    if source.reference is not None:
        wanted = {*source.manifest.contigs, *(r.contig for r in source.manifest.holdout)}
        present = {contig_key(c) for c in source.reference.contigs}  # 'chr20' or '20'
        arrays += [source.reference.tokens(c) for c in sorted(wanted) if contig_key(c) in present]
    if source.cohort is not None:
        for variants in source.cohort.contigs.values():
            arrays += [variants.pos, variants.alleles, variants.haplotypes, variants.flipped]
    for array in (source.records or {}).values():
        arrays.append(array)
    for array in arrays:
        array.setflags(write=False)


def open_site(site_dir: Path, data: DataConfig, *, seed: int, cache_dir: Path | None = None) -> SiteData:
    """:func:`fedgenome.shared.datasets.open_site` over the cached inputs: a fresh dataset every call."""
    return _open_site(site_dir, data, seed=seed, cache_dir=cache_dir,
                      source=site_source(site_dir, cache_dir=cache_dir))


def load_preset(name: str) -> Preset:
    """:func:`fedgenome.configs.schema.load_preset`, parsed once per version of the preset's file.

    ``name`` comes from the server, so it must be a shipped preset's name: a path is refused
    before anything is opened or even looked at.
    """
    path = preset_path(name)
    return _presets.get((name, file_key(path)), lambda: _load_preset(name))


def noise_for(*, dp: DPConfig, site: SitePrivacy, sample_rate: float, total_steps: int,
              reserved: tuple[Mechanism, ...] = ()) -> float:
    """:func:`fedgenome.privacy.round_plan.noise_for`, computed once per combination of its arguments."""
    return _noise.get((dp, site, sample_rate, total_steps, reserved), lambda: round_plan.noise_for(
        dp=dp, site=site, sample_rate=sample_rate, total_steps=total_steps, reserved=reserved))


def clear() -> None:
    """Forget everything cached (tests)."""
    for cache in (_sources, _references, _presets, _noise):
        cache.clear()

"""Markov baselines on the held-out region: bits per base for each order 1..12 and each smoothing.

Counts every order 0..12 on chr20 minus the held-out region (both strands, everything allowed, as
the cached best-k baseline is counted), scores evenly spaced held-out windows (``tile_windows``),
and prints one row per smoothing and order. Then builds (or reads) the cached best-k baseline and
prints the order and smoothing it picked on its validation slice (never on the held-out windows),
its held-out bits, the time to build it and the cache size. Usage:

    .venv/bin/python bench/markov_orders.py [--windows 64 128] [--window 512] [--cache DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from fedgenome.configs.schema import Region
from fedgenome.shared.datasets import allowed_intervals, tile_windows
from fedgenome.shared.fetch import default_cache, fetch_data
from fedgenome.shared.genomes import Reference
from fedgenome.shared.kmers import MAX_ORDER, count_kmers
from fedgenome.shared.markov import MarkovBaseline
from fedgenome.shared.reference_markov import reference_baseline
from fedgenome.shared.smoothing import CANDIDATES

HOLDOUT = Region(contig="20", start=58_025_520, end=63_025_520)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--cache", type=Path, default=default_cache())
    args = parser.parse_args()
    paths = fetch_data(args.cache)
    ref = Reference(paths.reference)
    tokens = ref.tokens(HOLDOUT.contig)
    sets = {n: tile_windows({HOLDOUT.contig: tokens}, [HOLDOUT], window=args.window, count=n,
                            max_n_fraction=0.5) for n in args.windows}
    start = time.perf_counter()
    pieces = [ref.tokens(i.contig)[i.start:i.end] for i in allowed_intervals(ref.contigs, [HOLDOUT])]
    counts = count_kmers(pieces, MAX_ORDER)
    print(f"counted orders 0..{MAX_ORDER} on {sum(len(p) for p in pieces):,} bases x 2 strands "
          f"in {time.perf_counter() - start:.1f} s")
    header = " ".join(f"{k:>6}" for k in range(1, MAX_ORDER + 1))
    print(f"{'held-out windows':>16} {'smoothing':>15} {header}")
    for windows in sets.values():
        for name in CANDIDATES:
            bits = MarkovBaseline(MAX_ORDER, smoothing=name, counts=counts).bits_by_order(windows)
            print(f"{f'{len(windows)} x {args.window}':>16} {name:>15} "
                  + " ".join(f"{b:6.4f}" for b in bits[1:]))
    start = time.perf_counter()
    built = reference_baseline(paths.reference, exclude=[HOLDOUT], cache=args.cache)
    size = sum(f.stat().st_size for f in built.cache_path.iterdir())
    fit, slices = built.fit, ", ".join(f"{r.contig}:{r.start}-{r.end}" for r in built.validation)
    print(f"best-k pick on the validation slice {slices}: order {fit.order}, {fit.smoothing} "
          f"(validation {fit.validation_bits[fit.smoothing][fit.order]:.4f} bits/base)")
    for windows in sets.values():
        print(f"  held-out {len(windows)} x {args.window}: {built.model.bits_per_base(windows):.4f} "
              "bits/base")
    print(f"build {built.build_seconds:.1f} s; this call {time.perf_counter() - start:.2f} s "
          f"({'cache hit' if built.from_cache else 'built'}); cache {size / 2**20:.0f} MiB in "
          f"{built.cache_path}")


if __name__ == "__main__":
    main()

"""Local optimizer across rounds: reset AdamW, persistent AdamW moments, or SGD clients + FedAdam.

Every variant runs the same federated rounds in one process (``fedgenome.experiments.inprocess``: the server's
round loop, the real sites' ClientApp handler, patient-level DP-SGD at one fixed sigma, ledgers),
on fresh copies of the real hospital sites, from the same initial model and seeds, and reports
the held-out bits per base of the global model (the server's held-out region) after every round:

* ``today``: AdamW reset every round, the learning rate running warm-up-free cosine within each
  round (what main did before the run-wide schedule);
* ``reset``: AdamW reset every round, one cosine schedule over the run;
* ``persist``: AdamW whose moments persist at each site across rounds, one schedule over the run;
* ``sgd+fedadam``: SGD with momentum at the sites (reset every round), FedAdam at the server.

Usage::

    .venv/bin/python bench/fedopt.py [--preset tiny] [--rounds 8] [--local-steps 5] [--seeds 0 1]
    .venv/bin/python bench/fedopt.py --combine run1.log run2.log   # one table from earlier runs
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import fedgenome.client.site
from fedgenome.configs.schema import FederationConfig
from fedgenome.configs.validation import validate
from fedgenome.experiments.inprocess import run_in_process
from fedgenome.shared.fetch import default_cache, fetch_data
from fedgenome.shared.schedule import LRSchedule
from fedgenome.shared.sites import copy_site, make_sites

SITES = ("hospital-gbr-fin", "hospital-tsi", "hospital-ceu")
VARIANTS: dict[str, dict[str, Any]] = {
    "today": {"optimizer-state": "reset"},
    "reset": {"optimizer-state": "reset"},
    "persist": {"optimizer-state": "persist"},
    "sgd+fedadam": {"optimizer-state": "reset", "local-optimizer": "sgd", "strategy": "fedadam"},
}


@dataclass(frozen=True)
class Result:
    variant: str
    seed: int
    initial: float
    bits: tuple[float, ...]  # held-out bits per base after each round
    seconds: float


class _PerRound(LRSchedule):
    """main's schedule: each round its own cosine from lr, no warm-up."""

    @classmethod
    def of_federation(cls, fed: FederationConfig) -> LRSchedule:
        return LRSchedule(lr=fed.lr, total_steps=fed.local_steps, warmup_steps=0,
                          min_lr_ratio=fed.min_lr_ratio)


@contextlib.contextmanager
def per_round_schedule() -> Iterator[None]:
    """Make the sites run main's per-round schedule (every round starts at step 0)."""
    patch = {"LRSchedule": _PerRound, "first_step": lambda global_round, local_steps: 0}
    saved = {name: getattr(fedgenome.client.site, name) for name in patch}
    for name, value in patch.items():
        setattr(fedgenome.client.site, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(fedgenome.client.site, name, value)


def copy_sites(src: Path, dst: Path) -> list[Path]:
    """Fresh copies of the sites (own keys, ledgers, state) sharing the real VCFs."""
    return [copy_site(src / name, dst / name) for name in SITES]


def run(variant: str, seed: int, args: argparse.Namespace, sites_src: Path, root: Path) -> Result:
    work = root / f"{variant}-{seed}"
    sites = copy_sites(sites_src, work / "sites")
    config = {"preset": args.preset, "num-server-rounds": args.rounds,
              "local-steps": args.local_steps, "noise-multiplier": args.sigma,
              "patients-per-step": 8, "eval-windows": args.eval_windows, "min-nodes": 3,
              "lr": args.lr, "warmup-steps": args.warmup, "seed": seed,
              "server-lr": args.server_lr, "run-dir": str(work / "run"),
              "reference": str(fetch_data(default_cache()).reference), **VARIANTS[variant]}
    if variant == "sgd+fedadam":
        config["lr"] = args.sgd_lr
    fed = validate(FederationConfig, config, source=variant)
    start = time.perf_counter()
    schedule = per_round_schedule() if variant == "today" else contextlib.nullcontext()
    with schedule:
        report = run_in_process(fed, sites)
    assert report.initial_bits_per_base is not None
    return Result(variant, seed, report.initial_bits_per_base,
                  tuple(r.heldout_bits_per_base for r in report.rounds), time.perf_counter() - start)


def table(results: list[Result], rounds: int) -> str:
    """Mean held-out bits per base at a few rounds; gain = initial - final; rise = worst round-to-round
    increase (0 for a run that only improved); vs persist = final minus persist's final at the same
    seed (paired), mean [min, max]."""
    marks = sorted({1, rounds // 2, rounds} - {0})
    head = (f"{'variant':12} {'seeds':>5} " + " ".join(f"{'round ' + str(m):>9}" for m in marks)
            + f" {'sd final':>8} {'gain':>7} {'max rise':>8} {'vs persist, paired':>26} {'s/run':>6}")
    lines = [head, "-" * len(head)]
    for variant in VARIANTS:
        rows = [r for r in results if r.variant == variant]
        if not rows:
            continue
        at = [statistics.mean(r.bits[m - 1] for r in rows) for m in marks]
        sd = statistics.stdev([r.bits[-1] for r in rows]) if len(rows) > 1 else float("nan")
        gain = statistics.mean(r.initial - r.bits[-1] for r in rows)
        rise = max(max(0.0, b - a) for r in rows for a, b in itertools.pairwise((r.initial, *r.bits)))
        secs = statistics.mean(r.seconds for r in rows)
        ref = {r.seed: r.bits[-1] for r in results if r.variant == "persist"}
        paired = [r.bits[-1] - ref[r.seed] for r in rows if r.seed in ref]
        vs = (f"{statistics.mean(paired):+.4f} [{min(paired):+.4f}, {max(paired):+.4f}]" if paired
              else "-")
        lines.append(f"{variant:12} {len(rows):5d} " + " ".join(f"{v:9.4f}" for v in at)
                     + f" {sd:8.4f} {gain:7.4f} {rise:8.4f} {vs:>26} {secs:6.0f}")
    return "\n".join(lines)


def parse_line(line: str) -> Result:
    """A result from a per-run line this script printed (to combine runs made apart)."""
    head, rest = line.split(": initial ", 1)
    variant, seed = head.split(" seed ")
    initial, per_round = rest.split(", per round ")
    bits, seconds = per_round.rsplit(" (", 1)
    return Result(variant, int(seed), float(initial), tuple(float(b) for b in bits.split()),
                  float(seconds.removesuffix(" s)")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--local-steps", type=int, default=5)
    parser.add_argument("--sigma", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW peak lr")
    parser.add_argument("--sgd-lr", type=float, default=0.1, help="SGD clients' peak lr")
    parser.add_argument("--server-lr", type=float, default=0.01, help="FedAdam eta")
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--eval-windows", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--combine", nargs="+", type=Path, default=None,
                        help="only print the table of the per-run lines in these earlier outputs")
    args = parser.parse_args()
    if args.combine:
        lines = [line for path in args.combine for line in path.read_text().splitlines()
                 if " seed " in line and ", per round " in line]
        print(table([parse_line(line) for line in lines], args.rounds))
        return
    torch.set_num_threads(2)
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("flwr").setLevel(logging.ERROR)
    results = []
    with tempfile.TemporaryDirectory(prefix="fedopt-") as tmp:
        make_sites(fetch_data(default_cache()), Path(tmp) / "src")
        for seed in args.seeds:
            for variant in args.variants:
                results.append(run(variant, seed, args, Path(tmp) / "src", Path(tmp)))
                r = results[-1]
                print(f"{variant} seed {seed}: initial {r.initial:.4f}, per round "
                      + " ".join(f"{b:.4f}" for b in r.bits) + f" ({r.seconds:.0f} s)", flush=True)
    print(f"\npreset {args.preset}, sites {', '.join(SITES)}, {args.rounds} rounds x "
          f"{args.local_steps} steps, sigma {args.sigma}, AdamW lr {args.lr}, SGD lr {args.sgd_lr}, "
          f"FedAdam eta {args.server_lr}, warm-up {args.warmup}; held-out bits per base "
          f"(mean over seeds; gain = initial - final)")
    print(table(results, args.rounds))


if __name__ == "__main__":
    main()

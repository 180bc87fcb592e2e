"""What secure aggregation costs: the same rounds with plain aggregation and with SecAgg+.

Both runs are real deployments (a SuperLink and one SuperNode per site on 127.0.0.1, TLS and
SuperNode authentication on) of the same rounds of private local steps on fresh copies of the same
sites. Prints each run's wall time and server-side seconds per round, and the ratio
SecAgg+ / plain measured in this one run. Usage:

    .venv/bin/python bench/secagg_overhead.py [--preset tiny] [--rounds 2] [--local-steps 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from fedgenome.localfed import LocalFederation
from fedgenome.shared.fetch import default_cache, fetch_data
from fedgenome.shared.sites import make_sites

SITES = ("hospital-ceu", "hospital-tsi", "hospital-gbr-fin")  # SecAgg+ wants at least 3


def run(work: Path, name: str, config: dict[str, Any]) -> tuple[float, list[float], str]:
    """One deployment on fresh sites: wall time of the run, seconds per round, final status."""
    make_sites(fetch_data(default_cache()), work / f"sites-{name}")
    sites = [work / f"sites-{name}" / s for s in SITES]
    with LocalFederation(work / f"fed-{name}", sites) as federation:
        begin = time.perf_counter()
        run_id = federation.submit({**config, "run-dir": str(work / f"run-{name}")})
        status = federation.wait(run_id, timeout=3600)
        wall = time.perf_counter() - begin
    rounds = json.loads((work / f"run-{name}" / "report.json").read_text())["rounds"]
    return wall, [float(r["seconds"]) for r in rounds], status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--local-steps", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fedgenome-secaggbench-"))
    config = {"preset": args.preset, "num-server-rounds": args.rounds,
              "local-steps": args.local_steps, "patients-per-step": 8, "eval-windows": 8,
              "min-nodes": len(SITES), "reference": str(fetch_data(default_cache()).reference)}
    plain = run(work, "plain", config)
    secure = run(work, "secagg", {**config, "aggregation": "secagg+"})
    print(f"preset {args.preset}, {len(SITES)} sites, {args.rounds} rounds x {args.local_steps} "
          "private steps, TLS + authenticated SuperNodes")
    for label, (wall, rounds, status) in (("plain", plain), ("secagg+", secure)):
        per_round = ", ".join(f"{s:.1f}" for s in rounds)
        print(f"{label:8s} run wall time {wall:7.1f} s (per round: {per_round} s; {status})")
    print(f"SecAgg+ / plain wall time: {secure[0] / plain[0]:.2f}x; "
          f"per round: {sum(secure[1]) / sum(plain[1]):.2f}x")


if __name__ == "__main__":
    main()

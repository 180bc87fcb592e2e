"""What secure aggregation costs: the same rounds with plain aggregation and with SecAgg+.

Both runs are real deployments (a SuperLink and one SuperNode per site on 127.0.0.1, TLS and
SuperNode authentication on) of the same rounds of private local steps on fresh copies of the same
sites. Prints each run's wall time and server-side seconds per round, and the ratio
SecAgg+ / plain measured in this one run. Usage:

    .venv/bin/python bench/secagg_overhead.py [--preset tiny] [--rounds 2] [--local-steps 3]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchkit import bench_config, federation_args, work_dir

from fedgenome.experiments.runner import Experiment, run_experiment
from fedgenome.shared.fetch import default_cache

SITES = ("hospital-ceu", "hospital-tsi", "hospital-gbr-fin")  # SecAgg+ wants at least 3


def run(work: Path, name: str, config: dict[str, Any]) -> tuple[float, list[float], str]:
    """One deployment on fresh sites: wall time of the run, seconds per round, final status."""
    spec = Experiment(run_dir=work / f"run-{name}", cache=default_cache(), run_config=config,
                      hospitals=SITES, publish_pki=False, check_completed=False,
                      sites_dir=work / f"sites-{name}", federation_dir=work / f"fed-{name}")
    result = run_experiment(spec)
    rounds = json.loads((spec.run_dir / "report.json").read_text())["rounds"]
    return result.run_seconds, [float(r["seconds"]) for r in rounds], result.status


def main() -> None:
    args = federation_args(__doc__, preset="tiny", rounds=2, local_steps=3)
    work = work_dir("secaggbench")
    config = bench_config(args)
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

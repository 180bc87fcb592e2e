"""Federation overhead: the same rounds through Flower's real deployment vs in one process.

(a) a SuperLink with TLS and one authenticated SuperNode per site on 127.0.0.1, each site's
messages served by its long-lived ClientApp worker, run R rounds of S private steps at every site;
(b) the same rounds in this process: each site's ``SiteNode.train_round`` in turn, the mean of the
deltas, and the same held-out evaluation the ServerApp does after every round.
Start-up (the processes, then the run's submission and ServerApp start) is timed apart; the ratio
compares the rounds' wall time, from the start of round 1 to the report of round R. The fixed cost
of a deployed round is its time minus that of its slowest site's ClientApp call (from the workers'
journals): messaging, polling, validation, aggregation, evaluation, checkpoint. In (a) the sites
train at once, each with its share of the cores; in (b) one after another with all of them, so the
last line also compares (a) with what it would take at its own parallelism if messages were free:
its slowest site's calls plus the server's own work (aggregation, evaluation) as (b) timed it.
Usage:

    .venv/bin/python bench/fl_overhead.py [--preset small] [--rounds 3] [--local-steps 3]
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from benchkit import bench_config, federation_args, work_dir
from flwr.app import Array, ArrayRecord

from fedgenome.client.node import JOURNAL
from fedgenome.client.site import SiteNode
from fedgenome.configs.schema import FederationConfig
from fedgenome.experiments.runner import Experiment, run_experiment
from fedgenome.server.report import RoundRecord
from fedgenome.server.rounds import Federation
from fedgenome.shared import wire
from fedgenome.shared.fetch import default_cache, fetch_data
from fedgenome.shared.sites import make_sites
from fedgenome.shared.train import evaluate

SITES = ("hospital-gbr-fin", "hospital-tsi", "hospital-ceu")


def fresh_sites(root: Path) -> list[Path]:
    make_sites(fetch_data(default_cache()), root)
    return [root / name for name in SITES]


def deployed(work: Path, config: dict[str, Any]) -> dict[str, Any]:
    """Run (a); its timings and the sites' journals."""
    reported: dict[int, float] = {}
    records: list[RoundRecord] = []

    def on_round(record: RoundRecord) -> None:
        reported[record.round] = time.monotonic()  # the runner's clock
        records.append(record)

    spec = Experiment(run_dir=work / "run-a", cache=default_cache(), run_config=config,
                      hospitals=SITES, publish_pki=False, check_completed=False,
                      sites_dir=work / "sites-a", federation_dir=work / "fed")
    result = run_experiment(spec, on_round=on_round)
    first_start = reported[1] - records[0].seconds
    journals = {s.name: [json.loads(x) for x in (s / "state" / JOURNAL).read_text().splitlines()]
                for s in result.sites}
    return {"status": result.status, "startup": result.startup_seconds,
            "submit": first_start - result.submitted_at, "run": result.run_seconds,
            "rounds": reported[max(reported)] - first_start,
            "ends": [reported[r.round] for r in records], "first_start": first_start,
            "records": records, "journals": journals}


def direct(work: Path, config: dict[str, Any], rounds: int) -> dict[str, Any]:
    """Run (b); per-round wall times and the bytes each site would send."""
    sites = fresh_sites(work / "sites-b")
    fed = FederationConfig.model_validate({**config, "run-dir": str(work / "run-b")})
    torch.manual_seed(0)
    server = Federation(fed)  # the ServerApp's model (with its Markov prior) and held-out windows
    windows, model = server.eval_windows, server.model
    global_ = wire.state_to_arrays(model.state_dict())
    nodes = [SiteNode(s) for s in sites]
    seconds, sent, evals, train = [], [], [], []
    for rnd in range(1, rounds + 1):
        begin = time.perf_counter()
        orders = wire.RoundConfig.from_config(server.round_config(rnd))  # run key, prior fingerprint
        replies = [node.train_round(global_, fed, global_round=rnd, run_key=orders.run_key,
                                    markov_prior=orders.markov_prior) for node in nodes]
        train.append(time.perf_counter() - begin)
        deltas = [r.delta for r in replies if r.delta is not None]
        global_ = {k: global_[k] + np.mean([d[k].astype(np.float32) for d in deltas], axis=0)
                   for k in global_}
        model.load_state_dict(wire.arrays_to_state(global_))
        scored = time.perf_counter()
        evaluate(model, windows, device=torch.device("cpu"))
        evals.append(time.perf_counter() - scored)
        seconds.append(time.perf_counter() - begin)
        sent += [ArrayRecord({wire.PACKED: Array(wire.pack(d, wire.WIRE_DTYPE))}).count_bytes()
                 for d in deltas]
    fp32 = ArrayRecord({wire.PACKED: Array(wire.pack(global_, np.float32))}).count_bytes()
    return {"seconds": seconds, "sent": float(np.mean(sent)), "fp32": fp32, "evals": evals,
            "train": train}


def slowest_calls(a: dict[str, Any]) -> list[float]:
    """Per round: the longest ClientApp call of any site in it (the workers' journals)."""
    return [max((t["seconds"] for tasks in a["journals"].values() for t in tasks
                 if t["round"] == str(record.round)), default=0.0) for record in a["records"]]


def main() -> None:
    args = federation_args(__doc__, preset="small", rounds=3, local_steps=3)
    work = work_dir("flbench")
    config = {**bench_config(args), "min-nodes": len(SITES),
              "reference": str(fetch_data(default_cache()).reference)}
    a = deployed(work, config)
    b = direct(work, config, args.rounds)
    per_a = np.diff([a["first_start"], *a["ends"]])
    slowest = slowest_calls(a)
    fixed = [r - c for r, c in zip(per_a, slowest, strict=True)]
    server_b = [s - t for s, t in zip(b["seconds"], b["train"], strict=True)]
    total_b = sum(b["seconds"])
    print(f"preset {args.preset}, {len(SITES)} sites ({', '.join(SITES)}), {args.rounds} rounds x "
          f"{args.local_steps} private steps; TLS, authenticated SuperNodes, long-lived ClientApp "
          f"workers; deployment status {a['status']}")
    print(f"start-up (SuperLink, SuperNodes, workers):   {a['startup']:7.1f} s (not in the ratio)")
    print(f"submit to round 1 (flwr run, ServerApp):     {a['submit']:7.1f} s (not in the ratio)")
    print(f"(a) deployment, rounds' wall time:           {a['rounds']:7.1f} s "
          f"(per round: {', '.join(f'{s:.1f}' for s in per_a)} s; whole run {a['run']:.1f} s)")
    print(f"(b) same rounds in one process:              {total_b:7.1f} s "
          f"(per round: {', '.join(f'{s:.1f}' for s in b['seconds'])} s)")
    print(f"wall-time ratio (a)/(b):                     {a['rounds'] / total_b:7.2f}x")
    if args.rounds > 1:
        steady = sum(per_a[1:]) / sum(b["seconds"][1:])
        print(f"  rounds 2-{args.rounds} only:                          {steady:7.2f}x")
    print(f"fixed cost per round (round minus its slowest site's ClientApp call): "
          f"{', '.join(f'{s:.2f}' for s in fixed)} s; mean {np.mean(fixed):.2f} s")
    print(f"  of which the server's own work, as (b) timed it (mean, evaluation): "
          f"{np.mean(server_b):.2f} s ({np.mean(b['evals']):.2f} s) per round")
    ideal = sum(slowest) + sum(server_b)
    print(f"(a) / (its slowest site's calls + (b)'s server work), same parallelism: "
          f"{a['rounds'] / ideal:.2f}x")
    print(f"bytes sent per site per round:               {int(b['sent']):,} "
          f"(fp32 model {b['fp32']:,}; ratio {b['sent'] / b['fp32']:.2f}x)")


if __name__ == "__main__":
    main()

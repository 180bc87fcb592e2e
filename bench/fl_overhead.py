"""Federation overhead: the same local DP steps through Flower's real deployment vs in one process.

(a) a SuperLink and one SuperNode per site on 127.0.0.1 with TLS run R rounds of S private steps;
(b) the same rounds run directly: each site's ``SiteNode.train_round`` called in this process.
Prints the wall-time ratio (a)/(b) with start-up reported apart, and the bytes each site sends per
round (its float16 delta as Flower serializes it) against the float32 model size. Usage:

    .venv/bin/python bench/fl_overhead.py [--preset tiny] [--rounds 2] [--local-steps 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from client.site import SiteNode
from configs.schema import FederationConfig, load_preset
from fedgenome.localfed import LocalFederation
from shared import wire
from shared.fetch import default_cache, fetch_data
from shared.model import GenomeLM
from shared.sites import make_sites

SITES = ("hospital-ceu", "hospital-tsi")


def fresh_sites(root: Path) -> list[Path]:
    make_sites(fetch_data(default_cache()), root)
    return [root / name for name in SITES]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--local-steps", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fedgenome-flbench-"))
    paths = fetch_data(default_cache())
    config = {"preset": args.preset, "num-server-rounds": args.rounds,
              "local-steps": args.local_steps, "patients-per-step": 8, "eval-windows": 8,
              "min-nodes": len(SITES), "reference": str(paths.reference)}

    sites = fresh_sites(work / "sites-a")
    start = time.perf_counter()
    with LocalFederation(work / "fed", sites) as federation:
        startup = time.perf_counter() - start
        begin = time.perf_counter()
        run_id = federation.submit({**config, "run-dir": str(work / "run-a")})
        status = federation.wait(run_id, timeout=3600)
        deployed = time.perf_counter() - begin
    rounds = json.loads((work / "run-a" / "report.json").read_text())["rounds"]

    sites = fresh_sites(work / "sites-b")
    fed = FederationConfig.model_validate({**config, "run-dir": str(work / "run-b")})
    torch.manual_seed(0)
    global_ = wire.state_to_arrays(GenomeLM(load_preset(args.preset).model).state_dict())
    nodes = [SiteNode(s) for s in sites]
    begin = time.perf_counter()
    sent = []
    for rnd in range(1, args.rounds + 1):
        replies = [node.train_round(global_, fed, global_round=rnd) for node in nodes]
        deltas = [r.delta for r in replies if r.delta is not None]
        sent += [ArrayRecord({k: Array(v) for k, v in d.items()}).count_bytes() for d in deltas]
        global_ = {k: global_[k] + np.mean([d[k].astype(np.float32) for d in deltas], axis=0)
                   for k in global_}
    direct = time.perf_counter() - begin
    fp32 = ArrayRecord({k: Array(v) for k, v in global_.items()}).count_bytes()

    print(f"preset {args.preset}, {len(SITES)} sites, {args.rounds} rounds x {args.local_steps} "
          f"private steps; deployment status {status}")
    print(f"start-up (SuperLink + SuperNodes, TLS):  {startup:7.1f} s (not in the ratio)")
    per_round = ", ".join(f"{r['seconds']:.1f}" for r in rounds)
    print(f"(a) real deployment, run wall time:     {deployed:7.1f} s "
          f"(server-side per round: {per_round} s)")
    print(f"(b) same rounds in one process:         {direct:7.1f} s")
    print(f"wall-time ratio (a)/(b):                {deployed / direct:7.2f}x")
    print(f"bytes sent per site per round:          {int(np.mean(sent)):,} "
          f"(fp32 model {fp32:,}; ratio {np.mean(sent) / fp32:.2f}x)")


if __name__ == "__main__":
    main()

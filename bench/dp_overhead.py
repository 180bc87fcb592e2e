"""DP-SGD overhead: step time of patient-level DP (hooks, ghost) over plain training, one process.

Trains the `small` preset on real patient windows (the CEU site, built from the cached data) and
prints, per mode, the median step time over interleaved rounds, its ratio to plain training, and
the peak resident memory of the step. Usage:

    .venv/bin/python bench/dp_overhead.py [--preset small] [--rounds 4] [--batch 8]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from configs.schema import DPConfig, load_preset
from privacy.engine import PrivateSetup, make_private, private_step
from shared.datasets import open_site
from shared.fetch import default_cache, fetch_data
from shared.model import GenomeLM
from shared.sites import ensure_sites
from shared.train import lm_loss, make_optimizer, split_batch

CPU = torch.device("cpu")


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> float:
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    return peak_rss_mib()


def plain_step(model: GenomeLM, optimizer: torch.optim.Optimizer) -> Callable[[torch.Tensor], None]:
    def step(batch: torch.Tensor) -> None:
        x, y = split_batch(batch)
        optimizer.zero_grad(set_to_none=True)
        lm_loss(model(x), y).backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    return step


def private(mode: str, preset_name: str, batch: int,
            dataset: torch.utils.data.Dataset[torch.Tensor]) -> Callable[[torch.Tensor], None]:
    preset = load_preset(preset_name)
    model = GenomeLM(preset.model)
    dp = DPConfig(noise_multiplier=1.0, max_grad_norm=1.0, patients_per_step=batch,
                  grad_sample_mode=mode)  # type: ignore[arg-type]
    setup: PrivateSetup = make_private(model=model, optimizer=make_optimizer(model, preset.train),
                                       dataset=dataset, settings=dp, noise_multiplier=1.0)

    def step(windows: torch.Tensor) -> None:
        private_step(setup, windows, device=CPU)
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--modes", default="hooks,ew,ghost")
    args = parser.parse_args()
    torch.set_num_threads(2)
    preset = load_preset(args.preset)
    sites = Path(tempfile.mkdtemp(prefix="fedgenome-bench-")) / "sites"
    ensure_sites(fetch_data(default_cache()), sites)
    site = open_site(sites / "hospital-ceu", preset.data, seed=0, cache_dir=sites / "state")
    batch = torch.stack([site.dataset[i] for i in range(args.batch)])  # (B, W+1) real windows
    model = GenomeLM(preset.model)
    steps = {"plain": plain_step(model, make_optimizer(model, preset.train))}
    for mode in args.modes.split(","):
        steps[mode] = private(mode, args.preset, args.batch, site.dataset)
    times: dict[str, list[float]] = {name: [] for name in steps}
    peaks: dict[str, float] = {}
    for name, step in steps.items():  # warm-up, and peak memory of one step
        base = reset_peak()
        step(batch)
        peaks[name] = peak_rss_mib() - base
    for _ in range(args.rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step(batch)
            times[name].append(time.perf_counter() - start)
    plain = statistics.median(times["plain"])
    print(f"preset {args.preset}: {model.num_params():,} parameters, {args.batch} patients x "
          f"{preset.data.window} bases per step, median of {args.rounds} interleaved rounds")
    print(f"{'mode':8} {'s/step':>8} {'x plain':>8} {'peak +MiB':>10}")
    for name in steps:
        median = statistics.median(times[name])
        print(f"{name:8} {median:8.3f} {median / plain:8.2f} {peaks[name]:10.0f}")


if __name__ == "__main__":
    main()

"""DP-SGD overhead: step time of patient-level DP over plain training of the same model and batch.

Trains the `small` preset on real patient windows (the CEU site, built from the cached data) and
prints, per mode, the median step time over interleaved rounds, the median and range of its ratio to
the plain step of the same round (paired, so that a machine slowing down for a while moves both),
and the peak resident memory of the step. Modes: ``hooks`` (the default: Opacus hooks
with the lean backward and matrix-vector clipping of ``privacy/``), ``ghost`` (Opacus' ghost
clipping, one window per patient only), and ``opacus-hooks`` (Opacus' stock hooks path, for
reference). Every step runs under the precision training uses (``fedgenome.shared.train.autocast``). Usage:

    .venv/bin/python bench/dp_overhead.py [--preset small] [--rounds 5] [--batch 8] [--windows-per-patient K]
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
from opacus import PrivacyEngine

from fedgenome.configs.schema import DPConfig, Preset, Region, load_preset
from fedgenome.privacy.engine import make_private, per_sample_loss, private_step
from fedgenome.shared.datasets import open_site
from fedgenome.shared.fetch import default_cache, fetch_data
from fedgenome.shared.markov_prior import build_model
from fedgenome.shared.sites import ensure_sites
from fedgenome.shared.train import autocast, make_optimizer, pick_device, split_batch, train_step

Step = Callable[[torch.Tensor], None]
REFERENCE = fetch_data(default_cache()).reference  # the Markov prior's public reference
HOLDOUT = Region.parse("20:58025520-63025520")


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> float:
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    return peak_rss_mib()


def plain_step(preset: Preset, device: torch.device) -> Step:
    model = build_model(preset.model, reference=REFERENCE, exclude=[HOLDOUT]).to(device)
    optimizer = make_optimizer(model, preset.train)

    def step(windows: torch.Tensor) -> None:
        train_step(model, optimizer, windows, lr=1e-3, grad_clip=1.0, device=device)
    return step


def private(mode: str, preset: Preset, batch: int, dataset: torch.utils.data.Dataset[torch.Tensor],
            device: torch.device) -> Step:
    model = build_model(preset.model, reference=REFERENCE, exclude=[HOLDOUT]).to(device)
    dp = DPConfig(noise_multiplier=1.0, max_grad_norm=1.0, patients_per_step=batch,
                  grad_sample_mode=mode)  # type: ignore[arg-type]
    setup = make_private(model=model, optimizer=make_optimizer(model, preset.train), dataset=dataset,
                         settings=dp, noise_multiplier=1.0)

    def step(windows: torch.Tensor) -> None:
        private_step(setup, windows, device=device)
    return step


def opacus_stock(preset: Preset, batch: int, dataset: torch.utils.data.Dataset[torch.Tensor],
                 device: torch.device) -> Step:
    model = build_model(preset.model, reference=REFERENCE, exclude=[HOLDOUT]).to(device)
    module, optimizer, _ = PrivacyEngine(accountant="rdp").make_private(
        module=model, optimizer=make_optimizer(model, preset.train),
        data_loader=torch.utils.data.DataLoader(dataset, batch_size=batch), noise_multiplier=1.0,
        max_grad_norm=1.0, poisson_sampling=True)

    def step(windows: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        x, y = split_batch(windows.to(device))
        with autocast(device):
            logits = module(x)
        per_sample_loss(logits, y).mean().backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8, help="patients per step")
    parser.add_argument("--windows-per-patient", type=int, default=None)
    parser.add_argument("--modes", default="hooks,ghost,opacus-hooks")
    args = parser.parse_args()
    torch.set_num_threads(2)
    preset = load_preset(args.preset)
    if args.windows_per_patient is not None:
        preset = preset.model_copy(update={"data": preset.data.model_copy(
            update={"windows_per_patient": args.windows_per_patient})})
    k = preset.data.windows_per_patient
    device = pick_device(preset.train.device)
    sites = Path(tempfile.mkdtemp(prefix="fedgenome-bench-")) / "sites"
    ensure_sites(fetch_data(default_cache()), sites)
    site = open_site(sites / "hospital-ceu", preset.data, seed=0, cache_dir=sites / "state")
    batch = torch.stack([site.dataset[i] for i in range(args.batch)])  # (B, [k,] W+1) real windows
    steps: dict[str, Step] = {"plain": plain_step(preset, device)}
    for mode in args.modes.split(","):
        if mode == "ghost" and k > 1:
            continue  # Opacus' ghost norms need one window per sample
        steps[mode] = (opacus_stock(preset, args.batch, site.dataset, device) if mode == "opacus-hooks"
                       else private(mode, preset, args.batch, site.dataset, device))
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
    params = build_model(preset.model, reference=REFERENCE, exclude=[HOLDOUT]).num_params()
    with autocast(device):
        dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
    print(f"preset {args.preset}: {params:,} parameters, {args.batch} patients x {k} window(s) x "
          f"{preset.data.window} bases per step, {device} ({dtype or 'float32'}), median of "
          f"{args.rounds} interleaved rounds")
    print(f"{'mode':13} {'s/step':>8} {'x plain':>8} {'ratio range':>12} {'peak +MiB':>10}")
    for name in steps:
        ratios = [t / p for t, p in zip(times[name], times["plain"], strict=True)]  # same round
        spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
        print(f"{name:13} {statistics.median(times[name]):8.3f} {statistics.median(ratios):8.2f} "
              f"{spread:>12} {peaks[name]:10.0f}")

if __name__ == "__main__":
    main()

"""Plain training throughput on CPU: precision, threads, batch shape and ``torch.compile``.

Times a plain training step (``fedgenome.shared.train.train_step``: forward, loss, backward, clip, AdamW) of
the preset's model with its Markov prior on real patient windows (the CEU site), for each variant
below, interleaved over rounds, and prints the median step time, tokens per second and the ratio
to the default (bf16 autocast where the CPU has AMX, all threads, the preset's batch shape):

* ``float32``: autocast off (``FEDGENOME_CPU_BF16=0``);
* ``threads N``: ``torch.set_num_threads(N)`` for N below the default;
* ``shape PxK``: the same tokens as P patients x K windows instead of the preset's batch;
* ``compile``: the model under ``torch.compile`` (Inductor; its compile time is printed apart),
  with ``--compile`` only, since compiling takes minutes on 2 cores.

Usage::

    .venv/bin/python bench/throughput.py [--preset small] [--rounds 5] [--compile]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import torch

from fedgenome.configs.schema import Preset, Region, load_preset
from fedgenome.shared.datasets import open_site
from fedgenome.shared.fetch import default_cache, fetch_data
from fedgenome.shared.markov_prior import build_model
from fedgenome.shared.sites import ensure_sites
from fedgenome.shared.train import CPU_BF16_ENV, cpu_bf16, make_optimizer, train_step

HOLDOUT = Region.parse("20:58025520-63025520")
CPU = torch.device("cpu")
Variant = Callable[[], None]


def step_fn(preset: Preset, windows: torch.Tensor, *, compiled: bool = False) -> Variant:
    """One plain training step of a fresh model on ``windows`` (B, [k,] W+1)."""
    model = build_model(preset.model, reference=fetch_data(default_cache()).reference, exclude=[HOLDOUT])
    optimizer = make_optimizer(model, preset.train)
    trained = cast(torch.nn.Module, torch.compile(model)) if compiled else model

    def step() -> None:
        train_step(trained, optimizer, windows, lr=1e-4, grad_clip=1.0, device=CPU)
    return step


def with_env(step: Variant, **env: str) -> Variant:
    def run() -> None:
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            step()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    return run


def with_threads(step: Variant, threads: int) -> Variant:
    def run() -> None:
        saved = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            step()
        finally:
            torch.set_num_threads(saved)
    return run


def variants(preset: Preset, batch: torch.Tensor, args: argparse.Namespace) -> dict[str, Variant]:
    threads = torch.get_num_threads()
    default = step_fn(preset, batch)
    out: dict[str, Variant] = {"default": default,
                               "float32": with_env(step_fn(preset, batch), **{CPU_BF16_ENV: "0"})}
    for n in range(1, threads):
        out[f"threads {n}"] = with_threads(step_fn(preset, batch), n)
    p, k = batch.shape[0], batch.shape[1] if batch.dim() == 3 else 1
    flat = batch.reshape(p * k, -1)
    for shape in ((p * k, 1), (p // 2, 2 * k)):
        if shape != (p, k) and shape[0] > 0:
            out[f"shape {shape[0]}x{shape[1]}"] = step_fn(preset, flat.reshape(shape[0], shape[1], -1))
    if args.compile:
        compiled = step_fn(preset, batch, compiled=True)
        start = time.perf_counter()
        compiled()
        print(f"torch.compile: first step (compilation) {time.perf_counter() - start:.1f} s")
        out["compile"] = compiled
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--patients", type=int, default=8)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    args = parser.parse_args()
    preset = load_preset(args.preset)
    sites = Path(tempfile.mkdtemp(prefix="fedgenome-bench-")) / "sites"
    ensure_sites(fetch_data(default_cache()), sites)
    site = open_site(sites / "hospital-ceu", preset.data, seed=0, cache_dir=sites / "state")
    batch = torch.stack([site.dataset[i] for i in range(args.patients)])  # (P, [k,] W+1)
    steps = variants(preset, batch, args)
    for step in steps.values():  # warm-up
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    tokens = batch[..., 1:].numel()
    base = statistics.median(times["default"])
    print(f"preset {args.preset}, {tokens:,} tokens per step ({tuple(batch.shape)}), "
          f"{torch.get_num_threads()} threads, default precision "
          f"{'bf16 autocast (AMX)' if cpu_bf16() else 'float32'}; median of {args.rounds} rounds")
    print(f"{'variant':12} {'s/step':>8} {'tokens/s':>9} {'x default':>9}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:12} {median:8.3f} {tokens / median:9,.0f} {median / base:9.2f}")


if __name__ == "__main__":
    main()

"""GPU throughput: tokens per second, model FLOPs utilisation and the DP / plain step ratio.

Trains one preset (default: ``base`` on CUDA, ``tiny`` on CPU) on random A/C/G/T windows for a few
plain steps and a few patient-level DP-SGD steps (``privacy/``: Opacus per-sample gradients in
``--mode``, clipping, noise) of the same batch, under the precision training uses (bf16 autocast
on CUDA, fused AdamW), and prints the median step time of each, tokens per second, the model FLOPs
utilisation of the plain step and the DP / plain ratio. It needs no data: the model is the
network alone (the Markov prior is a table lookup on the host, outside the FLOP count), so it
runs on a machine that reaches nothing. FLOPs per token: 6 x parameters (forward and backward)
plus 6 x attention layers x window x d_model (causal attention's scores and weighted sum); MFU
divides by the GPU's dense bf16 peak (``--peak-tflops``, else a table of known GPUs). Usage:

    .venv/bin/python bench/gpu.py [--device cuda|cpu] [--preset base] [--batch 8] [--steps 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from fedgenome.configs.schema import DPConfig, Preset, load_preset
from fedgenome.privacy.engine import make_private, private_step
from fedgenome.shared.model import CausalSelfAttention, GenomeLM
from fedgenome.shared.tokenizer import NUCLEOTIDES
from fedgenome.shared.train import autocast, make_optimizer, pick_device, train_step

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "GH200": 989.0, "A100": 312.0, "L40S": 362.0,
                    "L4": 121.0, "A10": 125.0, "V100": 125.0}
"""Dense bf16 (V100: fp16) tensor-core peaks in TFLOP/s, by a substring of the device name."""


def windows(n: int, k: int, span: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """(n, [k,] span) random A/C/G/T token windows."""
    g = torch.Generator().manual_seed(seed)
    shape = (n, k, span) if k > 1 else (n, span)
    return (torch.randint(0, 4, shape, generator=g) + NUCLEOTIDES[0]).to(device)


def flops_per_token(model: GenomeLM, window: int) -> float:
    """Training FLOPs of one token: 6 x parameters plus causal attention's 6 x layers x T x C."""
    attention = sum(isinstance(m, CausalSelfAttention) for m in model.modules())
    return 6.0 * model.num_params() + 6.0 * attention * window * model.config.d_model


def timed(step: Callable[[], object], *, steps: int, warmup: int, device: torch.device) -> float:
    """Median seconds of ``step`` over ``steps`` runs after ``warmup`` (synchronised on CUDA)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    """The device's dense bf16 peak: ``given``, else from the table for a known GPU, else None."""
    if given is not None or device.type != "cuda":
        return given
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in sorted(PEAK_BF16_TFLOPS.items(), key=lambda kv: -len(kv[0]))
                 if k in name), None)


def measure(preset: Preset, *, device: torch.device, batch: int, steps: int, warmup: int,
            mode: str) -> dict[str, float | int | str]:
    """Plain and DP step times of ``preset`` on one batch of ``batch`` patients."""
    config = preset.model.model_copy(update={"markov_prior": False})
    k, span = preset.data.windows_per_patient, preset.data.window + 1
    data = windows(batch, k, span, device)
    torch.manual_seed(0)
    model = GenomeLM(config).to(device)
    optimizer = make_optimizer(model, preset.train)
    plain = timed(lambda: train_step(model, optimizer, data, lr=1e-4, grad_clip=1.0, device=device),
                  steps=steps, warmup=warmup, device=device)
    dp_model = GenomeLM(config).to(device)
    dataset = list(windows(4 * batch, k, span, torch.device("cpu"), seed=1))
    setup = make_private(model=dp_model, optimizer=make_optimizer(dp_model, preset.train),
                         dataset=dataset,  # type: ignore[arg-type]
                         settings=DPConfig(noise_multiplier=1.0, max_grad_norm=1.0, patients_per_step=batch,
                                           grad_sample_mode=mode),  # type: ignore[arg-type]
                         noise_multiplier=1.0)
    dp = timed(lambda: private_step(setup, data, device=device), steps=steps, warmup=warmup, device=device)
    tokens = batch * k * preset.data.window
    return {"parameters": model.num_params(), "tokens_per_step": tokens, "plain_s": plain, "dp_s": dp,
            "plain_tokens_per_s": tokens / plain, "dp_tokens_per_s": tokens / dp, "dp_over_plain": dp / plain,
            "flops_per_token": flops_per_token(model, preset.data.window)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--device", default="auto", help="cuda, cpu or auto (default)")
    parser.add_argument("--preset", default=None, help="default: base on CUDA, tiny on CPU")
    parser.add_argument("--batch", type=int, default=None, help="patients per step (default: 8 on CUDA, 4)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--mode", default="hooks", help="DP grad-sample mode (privacy.grad_sample_mode)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    device = pick_device(args.device)
    name = args.preset or ("base" if device.type == "cuda" else "tiny")
    preset = load_preset(name)
    got = measure(preset, device=device, batch=args.batch or (8 if device.type == "cuda" else 4),
                  steps=args.steps, warmup=args.warmup, mode=args.mode)
    peak = peak_tflops(device, args.peak_tflops)
    achieved = float(got["plain_tokens_per_s"]) * float(got["flops_per_token"])
    with autocast(device):
        dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
    label = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"cpu ({torch.get_num_threads()} threads)")
    out = {"device": label, "preset": name, "precision": str(dtype or "float32"), "mode": args.mode, **got,
           "achieved_tflops": achieved / 1e12, "mfu": None if peak is None else achieved / (peak * 1e12)}
    if args.json:
        print(json.dumps(out))
        return
    print(f"{label}, preset {name} ({got['parameters']:,} parameters, network only), "
          f"{got['tokens_per_step']:,} tokens per step, {out['precision']}, DP mode {args.mode}")
    print(f"plain: {got['plain_s']:.3f} s/step, {got['plain_tokens_per_s']:,.0f} tokens/s, "
          f"{out['achieved_tflops']:.2f} TFLOP/s, MFU "
          + ("n/a (no known peak: pass --peak-tflops)" if out["mfu"] is None else f"{out['mfu']:.1%}"))
    print(f"DP:    {got['dp_s']:.3f} s/step, {got['dp_tokens_per_s']:,.0f} tokens/s, "
          f"{got['dp_over_plain']:.2f}x plain")


if __name__ == "__main__":
    main()
